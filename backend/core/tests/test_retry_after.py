"""core.retry_after: the one reader of Retry-After for the LLM client and the webhook sender."""

from email.utils import formatdate

import pytest

from core.retry_after import retry_after_seconds

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after": "-3"}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "250", "retry-after": "9"}, 0.25),
        ({"retry-after": formatdate(NOW + 20, usegmt=True)}, 20.0),
        ({"retry-after": formatdate(NOW - 20, usegmt=True)}, 0.0),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
        (None, None),
    ],
)
def test_retry_after_seconds(headers, expected):
    assert retry_after_seconds(headers, now=NOW) == expected


def test_a_date_without_zone_is_utc():
    headers = {"retry-after": formatdate(NOW + 30, usegmt=True).replace("GMT", "-0000")}

    assert retry_after_seconds(headers, now=NOW) == 30.0
