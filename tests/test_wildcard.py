"""EC2 filter wildcards matched in memory, against the regular expression they mean."""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ebsemu.service.wildcard import Wildcard


def as_regex(pattern: str) -> re.Pattern[str]:
    out: list[str] = []
    chars = iter(pattern)
    for ch in chars:
        if ch == "\\":
            out.append(re.escape(next(chars, "\\")))
        else:
            out.append({"*": ".*", "?": "."}.get(ch) or re.escape(ch))
    return re.compile("".join(out), re.DOTALL)


@given(st.text("ab*?\\", max_size=8), st.text("ab*?\\\n", max_size=10))
def test_a_wildcard_matches_what_its_regular_expression_matches(pattern: str, text: str) -> None:
    assert Wildcard.parse(pattern).fullmatch(text) == bool(as_regex(pattern).fullmatch(text))


def test_wildcards_of_ec2_filters() -> None:
    assert Wildcard.parse("us-*-1?").fullmatch("us-east-1a")
    assert not Wildcard.parse("us-*-1?").fullmatch("us-east-1")
    assert Wildcard.parse("a\\*b").fullmatch("a*b") and not Wildcard.parse("a\\*b").fullmatch("axb")
    assert Wildcard.parse("\\?").fullmatch("?") and not Wildcard.parse("\\?").fullmatch("x")
    assert Wildcard.parse("*").fullmatch("") and not Wildcard.parse("?").fullmatch("")
    assert Wildcard.parse("").fullmatch("") and not Wildcard.parse("").fullmatch("x")


def test_stars_that_cannot_match_cost_the_pattern_times_the_value() -> None:
    """A backtracking regular expression takes minutes over this; the matcher returns at
    once (the test's timeout is what fails it otherwise)."""
    assert not Wildcard.parse("*" * 60 + "Z").fullmatch("x" * 255)
    assert not Wildcard.parse("*a" * 60 + "Z").fullmatch("a" * 255)
    assert Wildcard.parse("*a" * 60).fullmatch("a" * 255)
