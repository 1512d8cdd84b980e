import re
import string

import pytest

import texts


def placeholders(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def test_every_text_exists_in_both_languages_with_the_same_placeholders():
    english, russian = texts.TEXTS["en"], texts.TEXTS["ru"]
    plural_only = {k for k in russian if re.search(r"_few$", k)}
    assert set(english) == set(russian) - plural_only
    for key, template in english.items():
        assert placeholders(template) == placeholders(russian[key]), key


@pytest.mark.parametrize("n, form", [(1, "one"), (2, "few"), (4, "few"), (5, "many"), (11, "many"),
                                     (12, "many"), (21, "one"), (22, "few"), (111, "many"), (365, "many")])
def test_russian_plurals(n, form):
    assert texts.plural_form("ru", n) == form


def test_dates_read_naturally_in_each_language():
    assert texts.format_date(1_800_000_000, "en") == "15 January 2027, 08:00 UTC"
    assert texts.format_date(1_800_000_000, "ru") == "15 января 2027, 08:00 UTC"
    assert texts.days_left(1_800_000_000 + 2 * 86400 + 5, 1_800_000_000, "ru") == "осталось 2 дня"
    assert texts.days_left(1_800_000_000 + 3600, 1_800_000_000, "en") == "1 hour left"


def test_language_codes_map_to_russian_english_or_the_default():
    assert texts.language_for("ru", "en") == "ru"
    assert texts.language_for("en-GB", "ru") == "en"
    assert texts.language_for("de", "ru") == "ru"
    assert texts.language_for(None, "en") == "en"


DAY = 86400


@pytest.mark.parametrize("left, en, ru", [
    (30 * DAY, "30 days left", "осталось 30 дней"),
    (30 * DAY - 1, "30 days left", "осталось 30 дней"),  # a second later, as /status after the activation
    (30 * DAY - 11 * 3600, "30 days left", "осталось 30 дней"),
    (29 * DAY + 11 * 3600, "29 days left", "осталось 29 дней"),
    (3 * DAY - 60, "3 days left", "осталось 3 дня"),  # the 3-day reminder, sent a minute late
    (2 * DAY, "2 days left", "осталось 2 дня"),
    (47 * 3600 + 1799, "47 hours left", "осталось 47 часов"),
    (DAY - 60, "24 hours left", "осталось 24 часа"),  # the 1-day reminder
    (21 * 3600, "21 hours left", "остался 21 час"),
    (3600, "1 hour left", "остался 1 час"),
    (1799, "less than an hour left", "осталось меньше часа"),
])
def test_time_left_is_counted_one_way_rounded_to_the_nearest_day_or_below_two_days_hour(left, en, ru):
    now = 1_800_000_000
    assert texts.days_left(now + left, now, "en") == en
    assert texts.days_left(now + left, now, "ru") == ru


def test_log_lines_write_moments_as_utc_dates():
    assert texts.log_date(1_796_514_180) == "2026-12-05 23:43 UTC"
    assert texts.log_date(10**15) == "9999-12-31 23:59 UTC"  # held within what a date can show
