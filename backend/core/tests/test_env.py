"""core.env: one parser of environment variables; a bad value names the variable and what is allowed."""

import pytest

from core.env import Env, check_number
from core.errors import ImproperlyConfigured


def test_blank_or_unset_means_the_default():
    env = Env({"A": "  ", "B": ""})

    assert (env.int("A", 3), env.float("B", 1.5), env.bool("C", True), env.str("A", "x")) == (
        3,
        1.5,
        True,
        "x",
    )
    assert env.list("A", ["d"]) == ["d"]


def test_typed_values():
    env = Env({"I": "42", "F": "0.25", "T": "Yes", "N": "off", "L": "a, b,,c", "C": "local"})

    assert (env.int("I", 0), env.float("F", 0.0), env.bool("T", False), env.bool("N", True)) == (
        42,
        0.25,
        True,
        False,
    )
    assert env.list("L") == ["a", "b", "c"]
    assert env.choice("C", "x", ("local", "remote")) == "local"


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (lambda env: env.int("V", 1), "expected an integer."),
        (lambda env: env.int("V", 1, minimum=0), "expected an integer."),
        (lambda env: env.float("V", 1.0), "expected a number."),
        (lambda env: env.bool("V", False), "expected true or false (also 1/0, yes/no, on/off)."),
        (lambda env: env.choice("V", "a", ("a", "b")), "expected a or b."),
    ],
)
def test_a_bad_value_names_the_variable_the_value_and_what_is_allowed(call, expected):
    with pytest.raises(ImproperlyConfigured) as raised:
        call(Env({"V": "nope"}))

    assert str(raised.value) == f"V='nope' is invalid: {expected}"


def test_minimums():
    with pytest.raises(ImproperlyConfigured, match=r"^V='-1' is invalid: expected an integer >= 0\.$"):
        Env({"V": "-1"}).int("V", 1, minimum=0)
    with pytest.raises(ImproperlyConfigured, match=r"^V='0.01' is invalid: expected a number >= 0.1\.$"):
        Env({"V": "0.01"}).float("V", 1.0, minimum=0.1)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(-0.5, "a number from 0 to 2"), (2.5, "a number from 0 to 2"), (float("nan"), "a number from 0 to 2")],
)
def test_check_number_with_a_maximum_names_both_bounds(value, expected):
    check_number("X", 0.0, minimum=0.0, inclusive=True, maximum=2.0)  # the bounds themselves are allowed
    check_number("X", 2.0, minimum=0.0, inclusive=True, maximum=2.0)
    with pytest.raises(ImproperlyConfigured, match=expected):
        check_number("X", value, minimum=0.0, inclusive=True, maximum=2.0)


def test_check_number_above_a_minimum_and_at_most_a_maximum():
    with pytest.raises(ImproperlyConfigured, match="a number above 0 and at most 2"):
        check_number("X", 0.0, minimum=0.0, inclusive=False, maximum=2.0)
