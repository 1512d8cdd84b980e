-- ClubBot's schema. Each "-- version: N" section is a migration, applied in
-- order, once, inside one transaction that also sets PRAGMA user_version = N.
-- Never edit a released section: add a new one below.

-- version: 1

-- A Telegram user who has talked to the bot (or asked to join a club chat).
CREATE TABLE members (
    user_id       INTEGER PRIMARY KEY,           -- Telegram user id
    uuid          TEXT    NOT NULL UNIQUE,
    username      TEXT,
    first_name    TEXT,
    language      TEXT,                          -- Telegram language_code as last seen
    created_at    INTEGER NOT NULL,
    trial_used_at INTEGER                        -- a free plan, once per member ever
);
CREATE INDEX members_username ON members(username COLLATE NOCASE);

-- One Crypto Pay invoice: what we asked for and what became of it.
CREATE TABLE invoices (
    id            INTEGER PRIMARY KEY,
    payment_uuid  TEXT    NOT NULL UNIQUE,       -- sent as the invoice's payload
    invoice_id    INTEGER UNIQUE,                -- Crypto Pay's id; NULL while being created
    user_id       INTEGER NOT NULL REFERENCES members(user_id),
    plan_id       TEXT    NOT NULL,
    duration      INTEGER NOT NULL,              -- seconds of access it buys
    amount        TEXT    NOT NULL,              -- decimal string, as asked
    currency      TEXT    NOT NULL,              -- asset (crypto) or fiat code
    currency_type TEXT    NOT NULL CHECK (currency_type IN ('crypto', 'fiat')),
    status        TEXT    NOT NULL CHECK (status IN ('creating', 'pending', 'paid', 'expired', 'mismatch', 'failed')),
    pay_url       TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    paid_at       INTEGER,
    paid_asset    TEXT,
    paid_amount   TEXT,
    applied_by    TEXT                           -- webhook, poller, button
);
-- The poller's list; the condition is written as its queries write it, so they use it.
CREATE INDEX invoices_pending ON invoices(id, invoice_id) WHERE status = 'pending';
CREATE INDEX invoices_member ON invoices(user_id);
-- Covers /stats (revenue and payments a day) without touching the table.
CREATE INDEX invoices_paid ON invoices(paid_at, currency, amount) WHERE status = 'paid';

-- The member's paid time; one row a member, for all club chats.
CREATE TABLE subscriptions (
    user_id      INTEGER PRIMARY KEY REFERENCES members(user_id),
    expires_at   INTEGER NOT NULL,
    period_start INTEGER NOT NULL,               -- start of the current unbroken membership
    updated_at   INTEGER NOT NULL
);

-- Join requests to club chats, so that a payment can approve a waiting one.
CREATE TABLE join_requests (
    chat_id      INTEGER NOT NULL,
    user_id      INTEGER NOT NULL,
    user_chat_id INTEGER,
    requested_at INTEGER NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('waiting', 'approved', 'declined', 'gone')),
    decided_at   INTEGER,
    PRIMARY KEY (chat_id, user_id)
);
CREATE INDEX join_requests_waiting ON join_requests(requested_at) WHERE status = 'waiting';

-- A member's personal invite link (creates_join_request) per club chat.
CREATE TABLE invite_links (
    user_id    INTEGER NOT NULL,
    chat_id    INTEGER NOT NULL,
    link       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, chat_id)
);

-- Telegram work to do, written in the same transaction as the change it
-- reports, and done by the sender with retries.
CREATE TABLE outbox (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL,
    chat_id         INTEGER NOT NULL,            -- the recipient
    payload         TEXT    NOT NULL DEFAULT '{}',
    priority        INTEGER NOT NULL DEFAULT 5,  -- lower goes first
    status          TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    done_at         INTEGER,
    last_error      TEXT,
    dedupe_key      TEXT                         -- work that must be queued once, whoever queues it
);
CREATE INDEX outbox_due ON outbox(priority, next_attempt_at) WHERE status = 'pending';
CREATE UNIQUE INDEX outbox_dedupe ON outbox(dedupe_key) WHERE dedupe_key IS NOT NULL;

-- Every change of money or access, with its cause.
CREATE TABLE audit (
    id         INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    user_id    INTEGER,
    action     TEXT    NOT NULL,
    cause      TEXT    NOT NULL,                 -- webhook, poller, button, admin, scheduler, bot
    invoice_id INTEGER,
    detail     TEXT    NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_member ON audit(user_id, at);

-- version: 2

-- Which expiry of the member's the removal was queued for (NULL: none yet).
ALTER TABLE subscriptions ADD COLUMN removed_for INTEGER;
-- Every member with time left, and every one whose removal is still to queue; queries
-- by expiry repeat its condition. One index instead of two: each activation writes it.
CREATE INDEX subscriptions_unhandled ON subscriptions(expires_at) WHERE removed_for IS NOT expires_at;

-- Reminders sent, once per point before each expiry.
CREATE TABLE reminders (
    user_id    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,                 -- the expiry it reminded of
    point      INTEGER NOT NULL,                 -- seconds before expiry (a REMIND_BEFORE entry)
    sent_at    INTEGER NOT NULL,
    PRIMARY KEY (user_id, expires_at, point)
);

-- Small named state: the bot's rights per club chat.
CREATE TABLE state (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- version: 3

-- Broadcasts to active members: the admin's progress message and the counts.
CREATE TABLE broadcasts (
    id          INTEGER PRIMARY KEY,
    admin_chat  INTEGER NOT NULL,
    message_id  INTEGER,                         -- the progress message, edited as it goes
    text        TEXT    NOT NULL,
    total       INTEGER NOT NULL,
    sent        INTEGER NOT NULL DEFAULT 0,
    failed      INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    finished_at INTEGER
);

-- version: 4

-- The amount as Crypto Pay created the invoice (it may write it differently from the
-- plan's); a payment is checked against this one when it is set.
ALTER TABLE invoices ADD COLUMN invoice_amount TEXT;

-- version: 5

-- When the member last talked to the bot: their username is as current as this.
ALTER TABLE members ADD COLUMN seen_at INTEGER;

-- When a webhook for this invoice arrived (NULL: none yet), whoever applied it.
ALTER TABLE invoices ADD COLUMN webhook_at INTEGER;

-- Work that must not pile up while it waits: at most one pending row per key (a
-- flood of /link is one row). dedupe_key stays "once ever".
ALTER TABLE outbox ADD COLUMN pending_key TEXT;
CREATE UNIQUE INDEX outbox_pending ON outbox(pending_key) WHERE status = 'pending' AND pending_key IS NOT NULL;

-- Bans ClubBot made and has not lifted yet. Written before the ban is asked for and
-- deleted after its unban: whatever fails between, the unban follows.
CREATE TABLE bans (
    chat_id   INTEGER NOT NULL,
    user_id   INTEGER NOT NULL,
    banned_at INTEGER NOT NULL,
    PRIMARY KEY (chat_id, user_id)
);

-- Telegram updates as they arrive (the inbox): stored before they are confirmed to
-- Telegram, handled once each, in fair turns between members.
CREATE TABLE updates (
    update_id   INTEGER PRIMARY KEY,
    member_id   INTEGER,                         -- whose update it is; NULL if no one's
    body        TEXT    NOT NULL,                -- the update as Telegram sent it (JSON)
    received_at INTEGER NOT NULL,
    status      TEXT    NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'dropped')),
    done_at     INTEGER
);
CREATE INDEX updates_pending ON updates(update_id) WHERE status = 'pending';

-- Commands whose effect must happen once: the key of the message that asked
-- ("<chat id>:<message id>"), written in the same transaction as the effect.
CREATE TABLE commands (
    key TEXT PRIMARY KEY,
    at  INTEGER NOT NULL
);

-- Correctly signed webhooks that could not be used, kept for the owner to look at.
CREATE TABLE unusable_webhooks (
    id          INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    error       TEXT    NOT NULL,
    body        BLOB    NOT NULL
);

-- Expiries handled (removed_for = expires_at); those in the future again after a clock
-- correction are found here and handled once more when they really come.
CREATE INDEX subscriptions_handled ON subscriptions(expires_at) WHERE removed_for = expires_at;

-- For a fiat invoice, the assets it may be paid in as ACCEPTED_ASSETS said when it was
-- made ('' = any; NULL for crypto): an invoice is reused only while that still holds.
ALTER TABLE invoices ADD COLUMN accepted_assets TEXT;

-- When an admin revoked the member's time (NULL: not revoked, or paid since). A revoked
-- member has no time whatever the clock says.
ALTER TABLE subscriptions ADD COLUMN revoked_at INTEGER;

-- version: 6
-- Discount codes. A code takes a percent or an amount (in each plan's own currency) off
-- the plans it covers ('' = all); its limit and window are checked when an invoice is made.
CREATE TABLE codes (
    id          INTEGER PRIMARY KEY,
    name        TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    percent     INTEGER CHECK (percent BETWEEN 1 AND 99),
    off         TEXT,                            -- decimal string; exactly one of percent, off
    plans       TEXT    NOT NULL DEFAULT '',     -- plan ids, comma-separated; '' = every paid plan
    max_uses    INTEGER,                         -- NULL: no limit
    until_at    INTEGER,                         -- usable before this second; NULL: no end
    first_only  INTEGER NOT NULL DEFAULT 0,      -- only for a member who has never paid
    disabled_at INTEGER,
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    CHECK ((percent IS NULL) != (off IS NULL))
);

-- An invoice made with a code: which, and the plan's price before the discount (amount is
-- what the member was asked).
ALTER TABLE invoices ADD COLUMN code_id INTEGER REFERENCES codes(id);
ALTER TABLE invoices ADD COLUMN full_amount TEXT;

-- The code a member applied, attached to their next invoices until code_until.
ALTER TABLE members ADD COLUMN code_id INTEGER REFERENCES codes(id);
ALTER TABLE members ADD COLUMN code_until INTEGER;

-- A use of a code: written with the payment it discounted, in the same transaction, once.
CREATE TABLE code_uses (
    invoice_row INTEGER PRIMARY KEY REFERENCES invoices(id),
    code_id     INTEGER NOT NULL REFERENCES codes(id),
    user_id     INTEGER NOT NULL,
    at          INTEGER NOT NULL
);
CREATE INDEX code_uses_code ON code_uses(code_id);

-- A member's wrong codes, for the limit on tries (old rows are deleted as new ones come).
CREATE TABLE code_tries (
    id      INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL,
    at      INTEGER NOT NULL
);
CREATE INDEX code_tries_user ON code_tries(user_id, at);

-- version: 7
-- Gift links made by the owner. Only the sha256 of each link's token is kept (a copy of the
-- database gives no usable link), with a short public id: its hash's first 8 characters.
CREATE TABLE gifts (
    id          INTEGER PRIMARY KEY,
    token_hash  TEXT    NOT NULL UNIQUE,
    short_id    TEXT    NOT NULL,
    plan_id     TEXT    NOT NULL,
    duration    INTEGER NOT NULL CHECK (duration > 0),  -- the plan's, when the link was made
    created_at  INTEGER NOT NULL,
    created_by  TEXT    NOT NULL,
    redeemed_by INTEGER,                                -- the member who opened it first
    redeemed_at INTEGER
);

-- version: 8
-- A plan bought as a gift (1): once paid, it makes a gift link for the buyer to pass on
-- instead of giving the buyer time.
ALTER TABLE invoices ADD COLUMN gift INTEGER NOT NULL DEFAULT 0;

-- Gift links an admin makes in Telegram are stored before their file is sent, not working
-- (ready 0) until it was; batch: the command's key ("<chat id>:<message id>").
ALTER TABLE gifts ADD COLUMN ready INTEGER NOT NULL DEFAULT 1;
ALTER TABLE gifts ADD COLUMN batch TEXT;
CREATE INDEX gifts_batch ON gifts(batch) WHERE batch IS NOT NULL;

-- The invoice that paid for a gift link a member bought (NULL: made by the owner).
ALTER TABLE gifts ADD COLUMN invoice_row INTEGER REFERENCES invoices(id);
CREATE UNIQUE INDEX gifts_invoice ON gifts(invoice_row) WHERE invoice_row IS NOT NULL;
-- A bought gift's link that could not be delivered (the buyer had blocked the bot, say): it
-- keeps its token, and is sent again when the buyer asks for their gifts.
CREATE INDEX outbox_gift_undelivered ON outbox(chat_id) WHERE kind = 'gift_bought' AND status = 'failed';

-- Referrals. A member's public referral code (t.me/<bot>?start=r-<ref>), made when first
-- shown; who referred the member (first link wins), and when.
ALTER TABLE members ADD COLUMN ref TEXT;
CREATE UNIQUE INDEX members_ref ON members(ref) WHERE ref IS NOT NULL;
ALTER TABLE members ADD COLUMN referred_by INTEGER;
ALTER TABLE members ADD COLUMN referred_at INTEGER;
CREATE INDEX members_referred_by ON members(referred_by) WHERE referred_by IS NOT NULL;

-- The bonus a referrer earned by a referred member's first payment: once per referred member
-- (the key), in the payment's transaction. duration 0: earned but withheld (the referrer's
-- time was revoked by an admin). taken_back_at: the payment was refunded.
CREATE TABLE referral_bonuses (
    referred_id   INTEGER PRIMARY KEY,
    referrer_id   INTEGER NOT NULL,
    invoice_row   INTEGER NOT NULL REFERENCES invoices(id),
    duration      INTEGER NOT NULL,
    at            INTEGER NOT NULL,
    taken_back_at INTEGER
);
CREATE INDEX referral_bonuses_referrer ON referral_bonuses(referrer_id);

-- version: 9
-- Telegram Stars. A Stars invoice is an invoices row too: currency 'XTR', currency_type
-- 'stars', no Crypto Pay invoice_id, pay_url its invoice link, payment_uuid its payload. Each
-- Stars payment, the first and every monthly renewal, has its own row, keyed by Telegram's
-- charge id: applied once. A renewal's row names the row of the subscription's first payment.
-- sqlite changes no CHECK in place, so the invoices table is rebuilt (migrate() runs with
-- foreign keys off, and checks them before it commits): its CHECKs now allow 'stars' and the
-- status 'refunded', and it gains charge_id and renewal_of; rows, ids and indexes as they were.
CREATE TABLE invoices_v9 (
    id            INTEGER PRIMARY KEY,
    payment_uuid  TEXT    NOT NULL UNIQUE,
    invoice_id    INTEGER UNIQUE,
    user_id       INTEGER NOT NULL REFERENCES members(user_id),
    plan_id       TEXT    NOT NULL,
    duration      INTEGER NOT NULL,
    amount        TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    currency_type TEXT    NOT NULL CHECK (currency_type IN ('crypto', 'fiat', 'stars')),
    status        TEXT    NOT NULL CHECK (status IN ('creating', 'pending', 'paid', 'expired', 'mismatch', 'failed',
                                                     'refunded')),
    pay_url       TEXT,
    created_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    paid_at       INTEGER,
    paid_asset    TEXT,
    paid_amount   TEXT,
    applied_by    TEXT,
    invoice_amount TEXT,
    webhook_at    INTEGER,
    accepted_assets TEXT,
    code_id       INTEGER REFERENCES codes(id),
    full_amount   TEXT,
    gift          INTEGER NOT NULL DEFAULT 0,
    charge_id     TEXT,
    renewal_of    INTEGER REFERENCES invoices(id)
);
INSERT INTO invoices_v9 (id, payment_uuid, invoice_id, user_id, plan_id, duration, amount, currency, currency_type,
                          status, pay_url, created_at, expires_at, paid_at, paid_asset, paid_amount, applied_by,
                          invoice_amount, webhook_at, accepted_assets, code_id, full_amount, gift, charge_id,
                          renewal_of)
    SELECT id, payment_uuid, invoice_id, user_id, plan_id, duration, amount, currency, currency_type,
           status, pay_url, created_at, expires_at, paid_at, paid_asset, paid_amount, applied_by,
           invoice_amount, webhook_at, accepted_assets, code_id, full_amount, gift, NULL, NULL
    FROM invoices;
DROP TABLE invoices;
ALTER TABLE invoices_v9 RENAME TO invoices;
CREATE INDEX invoices_pending ON invoices(id, invoice_id) WHERE status = 'pending';
CREATE INDEX invoices_member ON invoices(user_id);
CREATE INDEX invoices_paid ON invoices(paid_at, currency, amount) WHERE status = 'paid';
CREATE UNIQUE INDEX invoices_charge ON invoices(charge_id) WHERE charge_id IS NOT NULL;

-- A member's Stars subscription: a 30-day Stars plan renews every month until cancelled.
-- charge_id: its first payment's, which names it to Telegram; payload: its invoice's, which
-- every renewal carries; renews_at: when Telegram charges next (subscription_expiration_date).
CREATE TABLE star_subscriptions (
    charge_id   TEXT PRIMARY KEY,
    user_id     INTEGER NOT NULL,
    payload     TEXT    NOT NULL,
    plan_id     TEXT    NOT NULL,
    renews_at   INTEGER NOT NULL,
    canceled_at INTEGER,              -- the member cancelled the renewal (our button)
    updated_at  INTEGER NOT NULL
);
CREATE INDEX star_subscriptions_member ON star_subscriptions(user_id);

-- Refunds, one per payment (the key), for both ways to pay. 'sending': asked of Telegram or
-- Crypto Pay, the answer not recorded yet (a retry asks again: refundStarPayment refuses a
-- second refund, and a transfer's spend_id is accepted once); 'failed': refused, may be
-- tried again; 'done': the money went back and the time was taken back, in one transaction.
CREATE TABLE refunds (
    invoice_row INTEGER PRIMARY KEY REFERENCES invoices(id),
    status      TEXT    NOT NULL CHECK (status IN ('sending', 'failed', 'done')),
    method      TEXT    NOT NULL CHECK (method IN ('stars', 'transfer')),
    asset       TEXT    NOT NULL,
    amount      TEXT    NOT NULL,
    spend_id    TEXT,
    transfer_id INTEGER,
    time_taken  INTEGER,
    by          TEXT    NOT NULL,
    started_at  INTEGER NOT NULL,
    done_at     INTEGER,
    error       TEXT
);
