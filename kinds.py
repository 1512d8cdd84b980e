"""The kinds of outbox work: one name each, declared once. outbox.KINDS has one function per
kind (a test holds the two lists together), so a misspelt kind fails at import or in that
test, never as an "unknown kind" row at run time."""
from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    # members
    ACTIVATED = "activated"  # a payment or trial applied: "active until" and the way in
    GRANTED = "granted"  # time given: by an admin, a gift link or a referral bonus
    GIFT_BOUGHT = "gift_bought"  # a plan bought as a gift was paid: its link, to the buyer
    GIFT_REDEEMED = "gift_redeemed"  # to the buyer: the gift they bought was taken
    REFUNDED = "refunded"  # a payment's money went back, and the time it bought
    WAY_IN = "way_in"  # the way in again (/start, /link, a removal undone)
    APPROVE = "approve"  # approve a join request of a member with time
    JOIN_PLANS = "join_plans"  # a join request without time: the plans
    DECLINE = "decline"  # a join request that waited a day unpaid
    REMINDER = "reminder"
    EXPIRE = "expire"  # the removal at expiry or revoke
    LIFT_BAN = "lift_ban"  # the unban that follows a ban, retried until done
    EXPIRED_NOTICE = "expired_notice"
    PAYMENT_MISMATCH = "payment_mismatch"
    TEXT = "text"
    BROADCAST = "broadcast"
    # admins
    BROADCAST_STARTED = "broadcast_started"  # the progress message
    ADMIN_MISMATCH = "admin_mismatch"
    ADMIN_RIGHTS = "admin_rights"
    ADMIN_CHAT_ADDED = "admin_chat_added"
    ADMIN_TOKEN = "admin_token"
    ADMIN_WEBHOOK = "admin_webhook"
    ADMIN_WEBHOOK_UNUSABLE = "admin_webhook_unusable"
    ADMIN_INVOICE_UNREADABLE = "admin_invoice_unreadable"
    ADMIN_MIGRATED = "admin_migrated"
