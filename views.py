"""What members and admins see that both the handlers and the outbox build: their language,
a plan's title, the plans as buttons, a club chat's name."""
from __future__ import annotations

from telebot import types

import codes
import texts
from config import Plan
from runtime import App
from tg import chat_title


def member_language(app: App, user_id: int) -> str:
    row = app.db.member(user_id)
    return texts.language_for(row["language"] if row else None, app.config.default_language)


def plan_title(plan: Plan, lang: str) -> str:
    return plan.title or texts.duration_text(plan.duration, lang)


def plans_keyboard(app: App, lang: str, renew: bool, user_id: int | None = None,
                   gift_button: bool = False, for_gift: bool = False) -> types.InlineKeyboardMarkup:
    """The plans as buttons; those that the member's attached code covers show the old and the new
    price. `for_gift`: the paid plans, to buy as a gift; `gift_button`: a last button that shows them."""
    code = None if user_id is None else codes.attached(app.db, user_id, app.now())
    keyboard = types.InlineKeyboardMarkup()
    for plan in app.config.plans:
        title = plan_title(plan, lang)
        if plan.is_trial:
            if renew or for_gift:
                continue
            label = texts.t(lang, "trial_button", title=title)
        else:
            price = texts.price(plan.amount, plan.currency)
            if code is not None and codes.covers(code, plan, for_gift):
                price = texts.t(lang, "code_price", price=texts.price(codes.price_for(plan, code), plan.currency),
                                old=price)
            label = texts.t(lang, "renew_button" if renew and not for_gift else "plan_button", title=title,
                            price=price)
        keyboard.add(types.InlineKeyboardButton(label, callback_data=f"{'gift' if for_gift else 'plan'}:{plan.id}"))
    if gift_button and any(not plan.is_trial for plan in app.config.plans):
        keyboard.add(types.InlineKeyboardButton(texts.t(lang, "gift_button"), callback_data=GIFT_MENU))
    return keyboard


GIFT_MENU = "gifts"  # the callback of the button that shows the plans to give


def deep_link(bot_username: str | None, kind: str, value: str) -> str:
    """t.me/<bot>?start=<kind>-<value>: a discount code (c), gift link (g) or invitation (r)."""
    return f"https://t.me/{bot_username or '<bot>'}?start={kind}-{value}"


def chat_name(app: App, chat_id: int, lang: str) -> str:
    """A club chat as members read it: its title, or "the club" while Telegram does not say."""
    return chat_title(app, chat_id) or texts.t(lang, "chat_untitled")
