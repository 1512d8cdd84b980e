"""Everything members and admins read, in Russian and English, in one place.

An owner may edit the strings; keep the {placeholders}. Dates are shown in
UTC, written out the way each language writes them.
"""
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

LANGUAGES = ("ru", "en")

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "greeting": "Welcome to {club}!\nMembership gives you access to the club. Choose a plan:",
        "greeting_active": "Welcome back to {club}!\nYour membership is active until {date} ({days_left}).\nRenew in advance and the time adds up:",
        "plan_button": "{title}: {price}",
        "renew_button": "Renew: {title}, {price}",
        "trial_button": "{title}: free trial",
        "status_active": "Your membership is active until {date} ({days_left}).",
        "status_none": "You have no active membership. Send /start to choose a plan.",
        "status_expired": "Your membership ended on {date}. Send /start to renew.",
        "help": (
            "I sell membership in {club}.\n\n"
            "/start: plans and payment\n"
            "/status: your membership\n"
            "/link: the way into the club again\n"
            "/code NAME: apply a discount code\n"
            "/gift: give membership to someone\n"
            "/paysupport: help with a payment\n"
            "/help: this message\n\n"
            "Payment is made in @CryptoBot. Access opens as soon as the payment arrives."
        ),
        "unknown_command": "I don't know that command. Send /help to see what I can do.",
        "invoice": (
            "{title}: {price}\n\n"
            "Pay the invoice in @CryptoBot. Access opens as soon as the payment arrives; "
            "if it does not, press \"Check payment\".\nThe invoice is valid until {date}."
        ),
        "pay_button": "Pay {price}",
        "check_button": "Check payment",
        "check_paid": "Payment received!",
        "check_waiting": "No payment yet. If you have paid, wait a minute and check again.",
        "check_expired": "This invoice has expired. Send /start to get a new one.",
        "check_unknown": "I can't find this invoice. Send /start to get a new one.",
        "check_mismatch": "A payment arrived but does not match the invoice; the club's admins have been told.",
        "check_failed": "I can't reach @CryptoBot right now. Please try again in a minute.",
        "payments_unavailable": "Payments are unavailable right now. Please try again in a few minutes.",
        "plan_unknown": "This plan is no longer offered. Send /start to see the current plans.",
        "activated": "Payment received, thank you!\nYour membership is active until {date} ({days_left}).",
        "way_in_approved": "Your request to join is approved: {chats}.",
        "way_in_links": "Not in the club yet? Open the link and send a join request; it is approved at once:",
        "trial_used": "The free trial can be taken once, and you have already had it. Choose a paid plan with /start.",
        "join_button": "Join {chat}",
        "chat_untitled": "the club",
        "payment_mismatch": (
            "A payment for your invoice arrived, but it does not match the invoice "
            "({paid} instead of {asked}), so access was not opened. The club's admins "
            "have been told and will contact you."
        ),
        "admin_mismatch": (
            "Payment mismatch: member {user_id}, invoice {invoice_id}, plan {plan}: "
            "asked {asked}, paid {paid}. No access was given."
        ),
        "join_request_plans": "To join {chat}, you need a membership. Choose a plan, and your request will be approved as soon as you pay:",
        "reminder": "Your membership ends on {date} ({days_left}). Renew now and the time adds up:",
        "expired_notice": "Your membership has ended, so you have been removed from {chats}. To come back, choose a plan; you will be let in again as soon as you pay:",
        "chat_added": "The bot was added to {title} (id {chat_id}). {rights} To sell access to it, add {chat_id} to CLUB_CHAT_IDS in .env and restart ClubBot.",
        "chat_added_rights_ok": "Its rights there are enough: it can invite and remove members.",
        "chat_added_rights_missing": "It still needs: {missing}.",
        "admin_rights_lost": "The bot has lost its rights in {chat}: {missing}. Until it is an admin there with the rights to invite users and ban users, it can neither let members in nor remove them.",
        "admin_rights_back": "The bot's rights in {chat} are back. Removals missed meanwhile are being done now.",
        "right_admin": "it is not an admin",
        "right_invite": "cannot invite users",
        "right_ban": "cannot ban users",
        "granted": "An admin has given you {duration} of membership.\nYour membership is active until {date} ({days_left}).",
        "admin_stats": "Members: {members}\nActive: {active}\nExpiring within 7 days: {expiring}\nPending invoices: {pending}\nRevenue, 30 days: {revenue}\nPayments a day, 30 days: {sparkline} ({payments} in all)",
        "admin_no_revenue": "none",
        "code_applied": "Code applied: the discounted prices are below. It stays with you for 24 hours.",
        "code_invalid": "This code does not work: it may be mistyped, used up, expired or not for this plan.",
        "code_too_many": "Too many tries with codes. Please try again in an hour.",
        "code_usage": "To apply a discount code, send /code NAME.",
        "gift_redeemed": "Gift accepted: {duration} of membership is yours. The way in follows.",
        "gift_granted": "A gift: {duration} of membership.\nYour membership is active until {date} ({days_left}).",
        "gift_used": "This gift link was already used.",
        "gift_invalid": "This gift link does not work: check that it was copied whole.",
        "admin_gifts": "Gift links: {created} made ({bought} bought by members), {redeemed} redeemed",
        "admin_referrals": "Referrals: {referred} members came by an invitation, {bonuses} bonuses given ({time})",
        "admin_referrers": "Top referrers (member: referred, paid, time earned):\n{lines}",
        "admin_no_referrers": "No one has come by a referral link yet.",
        "admin_usage_referrals": "Usage: /referrals: the members who invited the most.",
        "admin_referrals_off": "Referrals are off: set REFERRAL_BONUS (e.g. 7d) in .env and restart to turn them on.",
        "admin_usage_gift": "Usage: /gift create PLAN COUNT (up to {max} single-use links, sent as a CSV file), /gift list",
        "admin_gift_created": "{count} gift links for plan {plan}, each single-use. They work from now on; keep the file safe.",
        "admin_gift_done_before": "These gift links were made before (the command came again); no new ones.",
        "admin_gift_not_sent": "The file could not be sent, so no links were made. Please try again.",
        "admin_gift_list": "Gift links (id, plan, made, redeemed):\n{lines}",
        "admin_no_gifts": "No gift links yet. Make some: /gift create PLAN COUNT",
        "link_invalid": "This link does not work: check that it was copied whole.",
        "referral_own_link": "This is your own invitation link: share it with friends.",
        "referral_status": "Invite friends with your link: {link}\nFor each friend who pays for the first time, you get {bonus} free. Friends who paid so far: {count}; time earned: {earned}.",
        "referral_granted": "A friend you invited has paid for membership: {duration} is yours as thanks.\nYour membership is active until {date} ({days_left}).",
        "invoice_stars": "{title}: {price}\n\nPay with Telegram Stars: press the button below. Access opens as soon as the payment arrives.",
        "invoice_stars_renews": "{title}: {price} a month\n\nPay with Telegram Stars: press the button below. Access opens as soon as the payment arrives, and the membership renews by itself every 30 days until you cancel it (/status).",
        "stars_unknown": "This invoice is not one of mine. Send /start to get a new one.",
        "paysupport": "The club's admins have been told, and will write to you here about your payment. A payment can be refunded: the time it bought is then taken back.",
        "stars_not_yours": "This invoice was made for someone else. Send /start to get your own.",
        "stars_paid_already": "This invoice is paid already. Send /status to see your membership.",
        "stars_plan_changed": "This plan or its price has changed. Send /start to see the current plans.",
        "stars_renewing": "Your membership already renews by itself every month: there is nothing more to pay. /status shows when.",
        "status_renews": "It renews automatically on {date}.",
        "status_renewal_off": "Automatic renewal is cancelled: it ends as shown, unless you resume it.",
        "renewal_cancel_button": "Cancel renewal",
        "renewal_resume_button": "Resume renewal",
        "renewal_canceled": "Renewal cancelled. Your membership runs to the end of the time paid for.",
        "renewal_resumed": "Renewal resumed: your membership renews automatically again.",
        "renewal_none": "You have no subscription that renews.",
        "renewal_failed": "Telegram did not take the change right now. Please try again in a minute.",
        "refunded": "Your payment of {price} was refunded. Your membership is active until {date} ({days_left}).",
        "refunded_ended": "Your payment of {price} was refunded, and with it the membership it paid for has ended.",
        "refunded_gift": "Your payment of {price} for a gift was refunded; the gift link no longer works.",
        "gift_button": "🎁 Give as a gift",
        "gift_choose": "Choose a plan to give. When it is paid, I send you a link to pass on: whoever opens it first gets the membership.",
        "gift_no_plans": "There are no paid plans to give right now.",
        "gift_resent": "The links of gifts you bought that I could not deliver before are on their way again.",
        "gift_yours": "Gifts you bought:\n{gifts}",
        "gift_line_waiting": "{gift} ({title}): not taken yet",
        "gift_line_taken": "{gift} ({title}): taken",
        "invoice_gift": "This is a gift: when it is paid, you get a link to pass on, and your own membership does not change.",
        "gift_bought": "Thank you! Your gift is paid: {title} ({duration}).\nPass this link on; whoever opens it first gets the membership. It works once:\n{link}\n\nI will tell you when it is taken.",
        "gift_taken": "Your gift {gift} was taken: its membership has begun.",
        "code_price": "{price} instead of {old}",
        "invoice_code": "Discount code {code}: {old} without it.",
        "admin_codes": "Discount codes (name, discount, plans, uses/limit, until, state, revenue):\n{codes}",
        "admin_no_codes": "No discount codes yet. Create one: /code add NAME --percent 20",
        "admin_code_added": "Code {code} ({discount}) created. Members apply it with /code {code} or the link {link}",
        "admin_code_disabled": "Code {code} disabled: no new invoices are made with it.",
        "admin_usage_code": "Usage: /code add NAME (--percent P | --off AMOUNT) [--plans a,b] [--uses N] [--until YYYY-MM-DD] [--first-payment-only], /code disable NAME, /codes",
        "admin_code_bad_name": "\"{code}\" cannot be a code: use 1 to 32 letters, digits, _ or -, and not add, disable or list.",
        "admin_code_bad_percent": "--percent {value}: a whole number from 1 to 99.",
        "admin_code_bad_off": "--off {value}: a positive amount, like 1.5.",
        "admin_code_bad_uses": "--uses {value}: a whole number from 1 to 1000000.",
        "admin_code_bad_until": "--until {value}: a date in the future, YYYY-MM-DD (the code works to the end of that day, UTC).",
        "admin_code_bad_plans": "--plans: no paid plan {plans}; name paid plans by their ids, comma-separated.",
        "admin_code_too_low": "Refused: plan {plan} ({price}) would cost less than 1% of its price or less than the currency allows.",
        "admin_code_exists": "A code named {code} exists already (names are case-insensitive).",
        "admin_code_unknown": "There is no active code named {code}.",
        "admin_usage_grant": "Usage: /grant USER DURATION, e.g. /grant @name 30d or /grant 123456789 7d",
        "admin_usage_revoke": "Usage: /revoke USER, e.g. /revoke @name",
        "admin_usage_user": "Usage: /user USER, e.g. /user @name or /user 123456789",
        "admin_usage_broadcast": "Usage: /broadcast TEXT: sends TEXT to every member with time left.",
        "admin_unknown_user": "I don't know {user}: they have not talked to the bot yet. Use their numeric id.",
        "admin_bad_duration": "'{duration}' is not a duration like 30d, 12h or 90m.",
        "admin_duration_too_long": "'{duration}' is longer than {limit}, the most that can be given at once.",
        "admin_grant_too_far": "Not done: {user} would then be active for more than {limit} from now. Nothing was changed.",
        "admin_ambiguous_user": "{user} names more than one member: {candidates}. Nothing was changed; use the numeric id.",
        "admin_candidate": "id {user_id} (last seen {seen})",
        "admin_seen_unknown": "unknown",
        "admin_granted": "Done: {user} is active until {date}.",
        "admin_revoked": "Done: {user}'s membership is ended; they are being removed from the club.",
        "admin_nothing_to_revoke": "{user} has no membership to end.",
        "admin_user": "{user}, language {language}, first seen {since}\n{status}\n\nPayments:\n{invoices}\n\nHistory:\n{history}",
        "admin_user_active": "Active until {date}.",
        "admin_user_inactive": "No time left.",
        "admin_none": "none",
        "admin_broadcast_progress": "Broadcast to {total} members: {sent} sent, {failed} failed.",
        "admin_broadcast_done": "Broadcast finished: {sent} sent, {failed} failed, of {total}.",
        "admin_export_caption": "Members and payments, {date}.",
        "admin_alert_token": "Crypto Pay refuses the app token ({error}). No invoice can be created or checked until CRYPTO_PAY_TOKEN is fixed.",
        "admin_alert_token_back": "Crypto Pay accepts the app token again.",
        "admin_chat_migrated": "The group {chat} was upgraded to a supergroup, and Telegram gave it a new id: {new} (it was {old}). ClubBot follows it already; write {new} instead of {old} in CLUB_CHAT_IDS so that it still does after a restart.",
        "admin_alert_webhook": "A payment was found by polling, but its webhook never came (invoice {invoice_id}). Check the webhook URL in @CryptoBot (My Apps, your app, Webhooks): it should be {url}, and enabled.",
        "admin_alert_webhook_unusable": "CryptoBot sent a correctly signed webhook that ClubBot cannot use ({error}). It was answered 200, so that CryptoBot keeps the webhook enabled, and kept in the database (table unusable_webhooks, record {record_id}). Payments are still confirmed by polling. Further such webhooks are kept without another alert until one is used again.",
        "admin_alert_invoice_unreadable": "Crypto Pay returns invoice {invoice_id} (member {user_id}) in a form ClubBot cannot read ({error}). It stays pending and is asked about again at every poll: if it was paid, the member gets access as soon as it reads correctly.",
        "admin_usage_refund": "Usage: /refund PAYMENT: the Crypto Pay invoice id, or the Stars charge id, as /user shows it.",
        "refund_payment_invoice": "invoice {ref}",
        "refund_payment_stars": "Stars payment {ref}",
        "refund_unknown": "There is no payment {payment}: give its Crypto Pay invoice id, or its Stars charge id, as /user shows it.",
        "refund_not_paid": "The {payment} is {status}, not paid: only a paid payment can be refunded. Nothing was changed.",
        "refund_already": "The {payment} was already refunded. Nothing was changed.",
        "refund_confirm": "Refund {price} to {user} for {payment} (plan {plan}, {asked}, paid {date})? It takes back up to {duration} of the time it bought; with no time left, the member is removed.",
        "refund_confirm_gift": "It was a gift not taken yet: its link stops working.",
        "refund_confirm_gift_taken": "It was a gift, taken by {user}: the time is taken back from them.",
        "refund_confirm_bonus": "The referral bonus it earned {user} ({duration}) is taken back too.",
        "refund_button": "Refund {price}",
        "refund_cancel_button": "Cancel",
        "refund_canceled": "Cancelled: nothing was refunded.",
        "refund_admins_only": "Only the club's admins can refund.",
        "refund_done": "Refunded {price} to {user} for {payment}. Time taken back: {taken}. The member is told.",
        "refund_removed": "They have no time left, and are being removed from the club.",
        "refund_low_balance": "Not refunded: the app's balance has {available}, less than {price}. Top up the app in @CryptoBot (Crypto Pay > My Apps), then run the refund again. Nothing was taken back.",
        "refund_refused": "Not refunded: the {payment} was refused ({error}). {advice} Nothing was taken back; run the refund again once that is fixed.",
        "refund_no_advice": "",
        "refund_outage": "Crypto Pay did not answer ({error}); run the refund again: it will not pay twice.",
        "refund_outage_stars": "Telegram did not answer ({error}); run the refund again: it will not refund twice.",
        "days_left_one": "{n} day left",
        "days_left_many": "{n} days left",
        "hours_left_one": "{n} hour left",
        "hours_left_many": "{n} hours left",
        "hours_left_less": "less than an hour left",
        "duration_days_one": "{n} day",
        "duration_days_many": "{n} days",
        "duration_hours_one": "{n} hour",
        "duration_hours_many": "{n} hours",
        "duration_minutes_one": "{n} minute",
        "duration_minutes_many": "{n} minutes",
    },
    "ru": {
        "greeting": "Добро пожаловать в {club}!\nПодписка открывает доступ в клуб. Выберите тариф:",
        "greeting_active": "С возвращением в {club}!\nВаша подписка активна до {date} ({days_left}).\nПродлите заранее, и время сложится:",
        "plan_button": "{title}: {price}",
        "renew_button": "Продлить: {title}, {price}",
        "trial_button": "{title}: бесплатно",
        "status_active": "Ваша подписка активна до {date} ({days_left}).",
        "status_none": "У вас нет активной подписки. Отправьте /start, чтобы выбрать тариф.",
        "status_expired": "Ваша подписка закончилась {date}. Отправьте /start, чтобы продлить.",
        "help": (
            "Я продаю подписку на {club}.\n\n"
            "/start — тарифы и оплата\n"
            "/status — ваша подписка\n"
            "/link — снова получить вход в клуб\n"
            "/code КОД — применить код скидки\n"
            "/gift — подарить подписку\n"
            "/paysupport — помощь с оплатой\n"
            "/help — это сообщение\n\n"
            "Оплата проходит в @CryptoBot. Доступ открывается сразу после оплаты."
        ),
        "unknown_command": "Я не знаю такой команды. Отправьте /help, чтобы увидеть, что я умею.",
        "invoice": (
            "{title}: {price}\n\n"
            "Оплатите счёт в @CryptoBot. Доступ откроется сразу после оплаты; "
            "если этого не произошло, нажмите «Проверить оплату».\nСчёт действует до {date}."
        ),
        "pay_button": "Оплатить {price}",
        "check_button": "Проверить оплату",
        "check_paid": "Оплата получена!",
        "check_waiting": "Оплата ещё не поступила. Если вы уже оплатили, подождите минуту и проверьте снова.",
        "check_expired": "Срок этого счёта истёк. Отправьте /start, чтобы получить новый.",
        "check_unknown": "Не могу найти этот счёт. Отправьте /start, чтобы получить новый.",
        "check_mismatch": "Оплата поступила, но не совпадает со счётом; администраторы клуба уведомлены.",
        "check_failed": "Не удаётся связаться с @CryptoBot. Попробуйте через минуту.",
        "payments_unavailable": "Оплата сейчас недоступна. Попробуйте через несколько минут.",
        "plan_unknown": "Этого тарифа больше нет. Отправьте /start, чтобы увидеть текущие тарифы.",
        "activated": "Оплата получена, спасибо!\nВаша подписка активна до {date} ({days_left}).",
        "way_in_approved": "Ваша заявка на вступление одобрена: {chats}.",
        "way_in_links": "Ещё не в клубе? Откройте ссылку и отправьте заявку — она будет одобрена сразу:",
        "trial_used": "Бесплатный пробный период можно взять один раз, и вы его уже использовали. Выберите платный тариф: /start.",
        "join_button": "Войти в {chat}",
        "chat_untitled": "клуб",
        "payment_mismatch": (
            "Оплата по вашему счёту поступила, но не совпадает со счётом "
            "({paid} вместо {asked}), поэтому доступ не открыт. Администраторы клуба "
            "уведомлены и свяжутся с вами."
        ),
        "admin_mismatch": (
            "Несовпадение оплаты: участник {user_id}, счёт {invoice_id}, тариф {plan}: "
            "запрошено {asked}, оплачено {paid}. Доступ не выдан."
        ),
        "join_request_plans": "Чтобы вступить в {chat}, нужна подписка. Выберите тариф — заявка будет одобрена сразу после оплаты:",
        "reminder": "Ваша подписка заканчивается {date} ({days_left}). Продлите сейчас, и время сложится:",
        "expired_notice": "Ваша подписка закончилась, поэтому вы удалены из {chats}. Чтобы вернуться, выберите тариф — вас впустят сразу после оплаты:",
        "chat_added": "Бота добавили в {title} (id {chat_id}). {rights} Чтобы продавать доступ туда, добавьте {chat_id} в CLUB_CHAT_IDS в .env и перезапустите ClubBot.",
        "chat_added_rights_ok": "Прав там достаточно: он может приглашать и удалять участников.",
        "chat_added_rights_missing": "Ему ещё нужно: {missing}.",
        "admin_rights_lost": "Бот потерял права в {chat}: {missing}. Пока он не станет там администратором с правами приглашать и блокировать пользователей, он не может ни впускать участников, ни удалять их.",
        "admin_rights_back": "Права бота в {chat} восстановлены. Пропущенные удаления выполняются сейчас.",
        "right_admin": "он не администратор",
        "right_invite": "не может приглашать пользователей",
        "right_ban": "не может блокировать пользователей",
        "granted": "Администратор выдал вам {duration} подписки.\nВаша подписка активна до {date} ({days_left}).",
        "admin_stats": "Участников: {members}\nАктивных: {active}\nИстекает в ближайшие 7 дней: {expiring}\nНеоплаченных счетов: {pending}\nВыручка за 30 дней: {revenue}\nОплат в день за 30 дней: {sparkline} (всего {payments})",
        "admin_no_revenue": "нет",
        "code_applied": "Код применён: цены со скидкой ниже. Он действует для вас 24 часа.",
        "code_invalid": "Этот код не подходит: он введён с ошибкой, исчерпан, истёк или не действует для этого тарифа.",
        "code_too_many": "Слишком много попыток ввести код. Попробуйте через час.",
        "code_usage": "Чтобы применить код скидки, отправьте /code КОД.",
        "gift_redeemed": "Подарок принят: вам {duration} подписки. Сейчас придёт способ войти.",
        "gift_granted": "Подарок: {duration} подписки.\nВаша подписка активна до {date} ({days_left}).",
        "gift_used": "Эта подарочная ссылка уже использована.",
        "gift_invalid": "Эта подарочная ссылка не работает: проверьте, что она скопирована целиком.",
        "admin_gifts": "Подарочные ссылки: создано {created} (куплено участниками {bought}), использовано {redeemed}",
        "admin_referrals": "Рефералы: пришли по приглашению {referred}, выдано бонусов {bonuses} ({time})",
        "admin_referrers": "Лучшие по приглашениям (участник: пришли, оплатили, заработано):\n{lines}",
        "admin_no_referrers": "По реферальным ссылкам ещё никто не приходил.",
        "admin_usage_referrals": "Использование: /referrals — участники, пригласившие больше всех.",
        "admin_referrals_off": "Рефералы выключены: задайте REFERRAL_BONUS (например, 7d) в .env и перезапустите бота.",
        "admin_usage_gift": "Использование: /gift create ТАРИФ КОЛИЧЕСТВО (до {max} одноразовых ссылок, файлом CSV), /gift list",
        "admin_gift_created": "Подарочных ссылок на тариф {plan}: {count}, каждая одноразовая. Они уже работают; храните файл бережно.",
        "admin_gift_done_before": "Эти подарочные ссылки уже были созданы (команда пришла повторно); новых нет.",
        "admin_gift_not_sent": "Файл не удалось отправить, поэтому ссылки не созданы. Попробуйте ещё раз.",
        "admin_gift_list": "Подарочные ссылки (id, тариф, создана, использована):\n{lines}",
        "admin_no_gifts": "Подарочных ссылок пока нет. Создайте: /gift create ТАРИФ КОЛИЧЕСТВО",
        "link_invalid": "Эта ссылка не работает: проверьте, что она скопирована целиком.",
        "referral_own_link": "Это ваша собственная ссылка-приглашение: поделитесь ею с друзьями.",
        "referral_status": "Приглашайте друзей по своей ссылке: {link}\nЗа каждого друга, который оплатит впервые, вы получите {bonus} бесплатно. Оплатили друзей: {count}; заработано: {earned}.",
        "referral_granted": "Приглашённый вами друг оплатил подписку: вам в благодарность {duration}.\nВаша подписка активна до {date} ({days_left}).",
        "invoice_stars": "{title}: {price}\n\nОплатите звёздами Telegram: нажмите кнопку ниже. Доступ откроется сразу после оплаты.",
        "invoice_stars_renews": "{title}: {price} в месяц\n\nОплатите звёздами Telegram: нажмите кнопку ниже. Доступ откроется сразу после оплаты, а подписка будет продлеваться сама каждые 30 дней, пока вы её не отмените (/status).",
        "stars_unknown": "Это не мой счёт. Отправьте /start, чтобы получить новый.",
        "paysupport": "Администраторы клуба получили ваш запрос и напишут вам здесь об оплате. Платёж можно вернуть: тогда оплаченное им время отменяется.",
        "stars_not_yours": "Этот счёт выставлен другому человеку. Отправьте /start, чтобы получить свой.",
        "stars_paid_already": "Этот счёт уже оплачен. Отправьте /status, чтобы увидеть свою подписку.",
        "stars_plan_changed": "Этот тариф или его цена изменились. Отправьте /start, чтобы увидеть текущие тарифы.",
        "stars_renewing": "Ваша подписка уже продлевается сама каждый месяц: платить больше ничего не нужно. Когда — показывает /status.",
        "status_renews": "Она продлится автоматически {date}.",
        "status_renewal_off": "Автопродление отменено: подписка закончится, как указано, если вы его не возобновите.",
        "renewal_cancel_button": "Отменить продление",
        "renewal_resume_button": "Возобновить продление",
        "renewal_canceled": "Продление отменено. Подписка действует до конца оплаченного срока.",
        "renewal_resumed": "Продление возобновлено: подписка снова продлевается автоматически.",
        "renewal_none": "У вас нет подписки с продлением.",
        "renewal_failed": "Telegram сейчас не принял изменение. Попробуйте ещё раз через минуту.",
        "refunded": "Ваш платёж {price} возвращён. Подписка активна до {date} ({days_left}).",
        "refunded_ended": "Ваш платёж {price} возвращён, и оплаченная им подписка закончилась.",
        "refunded_gift": "Ваш платёж {price} за подарок возвращён; подарочная ссылка больше не работает.",
        "gift_button": "🎁 Подарить",
        "gift_choose": "Выберите тариф в подарок. После оплаты я пришлю ссылку, которую можно передать: подписку получит тот, кто откроет её первым.",
        "gift_no_plans": "Сейчас нет платных тарифов, которые можно подарить.",
        "gift_resent": "Ссылки на купленные вами подарки, которые я не смог доставить раньше, отправляются снова.",
        "gift_yours": "Ваши подарки:\n{gifts}",
        "gift_line_waiting": "{gift} ({title}): ещё не принят",
        "gift_line_taken": "{gift} ({title}): принят",
        "invoice_gift": "Это подарок: после оплаты вы получите ссылку, которую можно передать; ваша собственная подписка не меняется.",
        "gift_bought": "Спасибо! Подарок оплачен: {title} ({duration}).\nПередайте эту ссылку; подписку получит тот, кто откроет её первым. Она работает один раз:\n{link}\n\nЯ сообщу, когда подарок примут.",
        "gift_taken": "Ваш подарок {gift} принят: подписка по нему началась.",
        "code_price": "{price} вместо {old}",
        "invoice_code": "Код скидки {code}: без него {old}.",
        "admin_codes": "Коды скидок (код, скидка, тарифы, использовано/лимит, до, состояние, выручка):\n{codes}",
        "admin_no_codes": "Кодов скидок пока нет. Создать: /code add КОД --percent 20",
        "admin_code_added": "Код {code} ({discount}) создан. Участники применяют его командой /code {code} или по ссылке {link}",
        "admin_code_disabled": "Код {code} отключён: новые счета с ним не выставляются.",
        "admin_usage_code": "Формат: /code add КОД (--percent P | --off СУММА) [--plans a,b] [--uses N] [--until ГГГГ-ММ-ДД] [--first-payment-only], /code disable КОД, /codes",
        "admin_code_bad_name": "«{code}» не может быть кодом: от 1 до 32 латинских букв, цифр, _ или -, и не add, disable или list.",
        "admin_code_bad_percent": "--percent {value}: целое число от 1 до 99.",
        "admin_code_bad_off": "--off {value}: положительная сумма, например 1.5.",
        "admin_code_bad_uses": "--uses {value}: целое число от 1 до 1000000.",
        "admin_code_bad_until": "--until {value}: дата в будущем, ГГГГ-ММ-ДД (код действует до конца этого дня по UTC).",
        "admin_code_bad_plans": "--plans: нет платного тарифа {plans}; укажите id платных тарифов через запятую.",
        "admin_code_too_low": "Отказано: тариф {plan} ({price}) стоил бы меньше 1% цены или меньше, чем позволяет валюта.",
        "admin_code_exists": "Код {code} уже есть (регистр букв не важен).",
        "admin_code_unknown": "Активного кода {code} нет.",
        "admin_usage_grant": "Формат: /grant ПОЛЬЗОВАТЕЛЬ СРОК, например /grant @name 30d или /grant 123456789 7d",
        "admin_usage_revoke": "Формат: /revoke ПОЛЬЗОВАТЕЛЬ, например /revoke @name",
        "admin_usage_user": "Формат: /user ПОЛЬЗОВАТЕЛЬ, например /user @name или /user 123456789",
        "admin_usage_broadcast": "Формат: /broadcast ТЕКСТ — отправляет ТЕКСТ всем участникам с активной подпиской.",
        "admin_unknown_user": "Я не знаю {user}: этот пользователь ещё не писал боту. Укажите числовой id.",
        "admin_bad_duration": "«{duration}» — не срок вида 30d, 12h или 90m.",
        "admin_duration_too_long": "«{duration}» — дольше, чем {limit}: больше за один раз выдать нельзя.",
        "admin_grant_too_far": "Не выполнено: тогда {user} был бы активен больше чем на {limit} вперёд. Ничего не изменено.",
        "admin_ambiguous_user": "{user} — так назван не один участник: {candidates}. Ничего не изменено; укажите числовой id.",
        "admin_candidate": "id {user_id} (последний раз {seen})",
        "admin_seen_unknown": "неизвестно",
        "admin_granted": "Готово: {user} активен до {date}.",
        "admin_revoked": "Готово: подписка {user} прекращена, пользователь удаляется из клуба.",
        "admin_nothing_to_revoke": "У {user} нет подписки, которую можно прекратить.",
        "admin_user": "{user}, язык {language}, впервые {since}\n{status}\n\nОплаты:\n{invoices}\n\nИстория:\n{history}",
        "admin_user_active": "Активен до {date}.",
        "admin_user_inactive": "Подписки нет.",
        "admin_none": "нет",
        "admin_broadcast_progress": "Рассылка {total} участникам: отправлено {sent}, ошибок {failed}.",
        "admin_broadcast_done": "Рассылка завершена: отправлено {sent}, ошибок {failed}, из {total}.",
        "admin_export_caption": "Участники и оплаты, {date}.",
        "admin_alert_token": "Crypto Pay не принимает токен приложения ({error}). Пока CRYPTO_PAY_TOKEN не исправлен, счета нельзя ни создать, ни проверить.",
        "admin_alert_token_back": "Crypto Pay снова принимает токен приложения.",
        "admin_chat_migrated": "Группа {chat} стала супергруппой, и Telegram дал ей новый id: {new} (был {old}). ClubBot уже работает с новым id; впишите {new} вместо {old} в CLUB_CHAT_IDS, чтобы так было и после перезапуска.",
        "admin_alert_webhook": "Оплата найдена опросом, но её webhook не пришёл (счёт {invoice_id}). Проверьте адрес webhook в @CryptoBot (My Apps, ваше приложение, Webhooks): он должен быть {url} и включён.",
        "admin_alert_webhook_unusable": "CryptoBot прислал webhook с верной подписью, который ClubBot не может использовать ({error}). На него ответили 200, чтобы CryptoBot не отключил webhook, и сохранили в базе (таблица unusable_webhooks, запись {record_id}). Оплаты по-прежнему подтверждаются опросом. Следующие такие webhook сохраняются без нового уведомления, пока какой-нибудь не будет использован.",
        "admin_alert_invoice_unreadable": "Crypto Pay возвращает счёт {invoice_id} (участник {user_id}) в виде, который ClubBot не может прочитать ({error}). Счёт остаётся ожидающим и проверяется при каждом опросе: если он оплачен, участник получит доступ, как только счёт прочитается.",
        "admin_usage_refund": "Использование: /refund ПЛАТЁЖ — номер счёта Crypto Pay или charge id платежа в звёздах, как их показывает /user.",
        "refund_payment_invoice": "счёт {ref}",
        "refund_payment_stars": "платёж в звёздах {ref}",
        "refund_unknown": "Платежа {payment} нет: укажите номер счёта Crypto Pay или charge id платежа в звёздах, как их показывает /user.",
        "refund_not_paid": "{payment}: статус {status}, а не оплачен; вернуть можно только оплаченный платёж. Ничего не изменено.",
        "refund_already": "{payment}: деньги уже возвращены. Ничего не изменено.",
        "refund_confirm": "Вернуть {price} участнику {user} за {payment} (тариф {plan}, {asked}, оплачен {date})? Будет снято до {duration} купленного им времени; если времени не останется, участник будет удалён.",
        "refund_confirm_gift": "Это подарок, ещё не полученный: его ссылка перестанет работать.",
        "refund_confirm_gift_taken": "Это подарок, его получил {user}: время будет снято у него.",
        "refund_confirm_bonus": "Реферальный бонус, который платёж принёс {user} ({duration}), тоже будет снят.",
        "refund_button": "Вернуть {price}",
        "refund_cancel_button": "Отмена",
        "refund_canceled": "Отменено: ничего не возвращено.",
        "refund_admins_only": "Возвраты делают только администраторы клуба.",
        "refund_done": "Возвращено {price} участнику {user} за {payment}. Снято времени: {taken}. Участник получит сообщение.",
        "refund_removed": "Времени у него не осталось, он удаляется из клуба.",
        "refund_low_balance": "Не возвращено: на балансе приложения {available}, меньше чем {price}. Пополните приложение в @CryptoBot (Crypto Pay > My Apps) и запустите возврат снова. Время не снято.",
        "refund_refused": "Не возвращено: {payment} — отказ ({error}). {advice} Время не снято; запустите возврат снова, когда это будет исправлено.",
        "refund_no_advice": "",
        "refund_outage": "Crypto Pay не ответил ({error}); запустите возврат снова: дважды он не заплатит.",
        "refund_outage_stars": "Telegram не ответил ({error}); запустите возврат снова: дважды он не вернёт.",
        "days_left_one": "остался {n} день",
        "days_left_few": "осталось {n} дня",
        "days_left_many": "осталось {n} дней",
        "hours_left_one": "остался {n} час",
        "hours_left_few": "осталось {n} часа",
        "hours_left_many": "осталось {n} часов",
        "hours_left_less": "осталось меньше часа",
        "duration_days_one": "{n} день",
        "duration_days_few": "{n} дня",
        "duration_days_many": "{n} дней",
        "duration_hours_one": "{n} час",
        "duration_hours_few": "{n} часа",
        "duration_hours_many": "{n} часов",
        "duration_minutes_one": "{n} минута",
        "duration_minutes_few": "{n} минуты",
        "duration_minutes_many": "{n} минут",
    },
}

MONTHS = {
    "en": ["January", "February", "March", "April", "May", "June", "July",
           "August", "September", "October", "November", "December"],
    "ru": ["января", "февраля", "марта", "апреля", "мая", "июня", "июля",
           "августа", "сентября", "октября", "ноября", "декабря"],
}


def language_for(language_code: str | None, default: str) -> str:
    """'ru' or 'en' from a Telegram language_code such as 'ru', 'en-US'; else the default."""
    code = (language_code or "").lower().split("-")[0]
    return code if code in LANGUAGES else default


def t(lang: str, key: str, **values: object) -> str:
    table = TEXTS.get(lang, TEXTS["en"])
    template = table[key] if key in table else TEXTS["en"][key]
    return template.format(**values)


def plural_form(lang: str, n: int) -> str:
    """'one', 'few' or 'many' for Russian; 'one' or 'many' for English."""
    if lang == "ru":
        if n % 10 == 1 and n % 100 != 11:
            return "one"
        if 2 <= n % 10 <= 4 and not 12 <= n % 100 <= 14:
            return "few"
        return "many"
    return "one" if n == 1 else "many"


def counted(lang: str, stem: str, n: int) -> str:
    return t(lang, f"{stem}_{plural_form(lang, n)}", n=n)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_SECOND = int((datetime(1, 1, 1, tzinfo=UTC) - _EPOCH).total_seconds())
_LAST_SECOND = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds())


def utc(timestamp: float) -> datetime:
    """The moment of a unix timestamp, held within the years datetime can show (1 to 9999).

    Every stored timestamp must format: a database from before durations were bounded
    may hold an expiry thousands of years away, and one crash here would silence
    /status, the sender and the export.
    """
    if timestamp != timestamp:  # NaN, should sqlite ever hand back a REAL
        timestamp = 0
    return _EPOCH + timedelta(seconds=min(_LAST_SECOND, max(_FIRST_SECOND, timestamp)))


def format_date(timestamp: int, lang: str) -> str:
    moment = utc(timestamp)
    month = MONTHS.get(lang, MONTHS["en"])[moment.month - 1]
    return f"{moment.day} {month} {moment.year}, {moment:%H:%M} UTC"


def days_left(expires_at: int, now: int, lang: str) -> str:
    """The time a membership has left, counted one way wherever it is shown: days from 2 days
    up, hours below, each rounded to the nearest. Rounded, not cut down: the activation message
    and a /status a second later both say "30 days" of a 30-day plan, and a reminder queued
    3 days before the end says 3 days even when it goes out a minute later."""
    seconds = min(expires_at, _LAST_SECOND) - now  # counted to the last date format_date shows
    if not seconds >= 1800:  # NaN included
        return t(lang, "hours_left_less")
    hours = int((seconds + 1800) // 3600)  # int(): an old row may hold a REAL
    if hours < 48:
        return counted(lang, "hours_left", hours)
    return counted(lang, "days_left", int((seconds + 43200) // 86400))


def log_date(timestamp: int) -> str:
    """A moment as the log lines write it, e.g. '2026-12-28 14:03 UTC' (an expiry, not epoch seconds)."""
    return f"{utc(timestamp):%Y-%m-%d %H:%M} UTC"


def duration_text(seconds: int, lang: str) -> str:
    for stem, size in (("duration_days", 86400), ("duration_hours", 3600), ("duration_minutes", 60)):
        if seconds >= size and seconds % size == 0:
            return counted(lang, stem, seconds // size)
    return counted(lang, "duration_minutes", max(1, round(seconds / 60)))


def price(amount: Decimal, currency: str) -> str:
    text = format(amount.normalize(), "f") if amount == amount.to_integral() else format(amount, "f")
    return f"{text} ⭐" if currency == "XTR" else f"{text} {currency}"
