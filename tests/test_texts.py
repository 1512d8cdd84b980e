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
    assert texts.days_left(1_800_000_000 + 3600, 1_800_000_000, "en") == "less than a day left"


def test_language_codes_map_to_russian_english_or_the_default():
    assert texts.language_for("ru", "en") == "ru"
    assert texts.language_for("en-GB", "ru") == "en"
    assert texts.language_for("de", "ru") == "ru"
    assert texts.language_for(None, "en") == "en"
