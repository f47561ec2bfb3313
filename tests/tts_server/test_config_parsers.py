"""Setting values parsed from text: what each parser takes and what it refuses."""

import pytest

from tts_server.config_parsers import bool_value, int_tuple, none_or_at_least, optional_int, optional_str


def test_optional_values_read_unset_as_none():
    assert [optional_int(t) for t in ("", "None", "AUTO", " 7")] == [None, None, None, 7]
    assert optional_str("") is None and optional_str("x") == "x"
    with pytest.raises(ValueError):
        optional_int("many")


def test_bools_take_the_usual_words_and_refuse_others():
    assert [bool_value(t) for t in ("1", "True", "yes", "ON", "0", "false", "No", "off")] == [True] * 4 + [False] * 4
    with pytest.raises(ValueError, match="expected one of"):
        bool_value("maybe")


def test_int_tuples_and_optional_limits():
    assert int_tuple("10, 20,") == (10, 20) and int_tuple("") == ()
    assert none_or_at_least(None, 1) and none_or_at_least(1, 1) and not none_or_at_least(0, 1)
