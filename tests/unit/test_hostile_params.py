"""Pure input checks of issue #6: hostile tokens, stream ids, report limits and periods are refused cleanly."""

from __future__ import annotations

import pytest

from streams.api import auth
from streams.api import routes as api
from streams.sinks import reports

KEY = "k" * 32


@pytest.mark.parametrize(
    "token",
    ["fx1.a.\u00e9", "fx1.\u00e9.b", "fx1.\udcff.b", "fx1.a.b\udce9", "\u202efx1.a.b", "fx1.🙂.🙂", "ｆｘ1.a.b"],
)
def test_non_ascii_tokens_are_malformed_not_a_crash(token: str) -> None:
    with pytest.raises(auth.AuthError, match="malformed"):
        auth.verify(KEY, token, now=1001)


def test_a_valid_token_with_a_non_ascii_subject_still_verifies() -> None:
    p = auth.verify(KEY, auth.issue(KEY, auth.DISTRIBUTOR, "分销🙂\u202e", 60, now=1000), now=1001)
    assert p.subject == "分销🙂\u202e" and not p.may_read("分销🙂")


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [("0-0", "0-0"), ("007-01", "7-1"), (f"{2**64 - 1}-{2**64 - 1}", f"{2**64 - 1}-{2**64 - 1}"), (None, None)],
)
def test_stream_ids_are_canonical(raw: str | None, canonical: str | None) -> None:
    assert api._stream_id(raw, "bad") == canonical


@pytest.mark.parametrize(
    "raw",
    ["1-1\n", "1-1\r\nevent: x", f"{2**64}-0", f"0-{2**64}", "9" * 21 + "-0", "１-1", "٣-1", "1", "-1-1", "*", "+", ""],
)
def test_bad_stream_ids_are_400(raw: str) -> None:
    with pytest.raises(api.ApiError) as e:
        api._stream_id(raw, "bad id")
    assert (e.value.status, e.value.message) == (400, "bad id")


@pytest.mark.parametrize("limit", ["²", "１２", "٣", "0", "-1", "100001", "1e3", " 5", "5\n", "NaN", "9" * 5000])
def test_report_limits_are_ascii_whole_numbers(limit: str) -> None:
    with pytest.raises(reports.ReportError, match="limit"):
        reports._limit({"limit": limit})


@pytest.mark.parametrize(
    ("kind", "at"), [("month", "0000-01"), ("quarter", "0000-Q1"), ("month", "9999-12"), ("quarter", "9999-Q4")]
)
def test_periods_outside_the_calendar_are_report_errors(kind: str, at: str) -> None:
    with pytest.raises(reports.ReportError, match="year"):
        reports.parse_period(kind, at)


def test_the_calendar_edges_still_parse() -> None:
    assert reports.parse_period("month", "0001-01").start.year == 1
    assert reports.parse_period("quarter", "9998-Q4").end.year == 9999
