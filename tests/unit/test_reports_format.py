"""Report plumbing without ClickHouse: periods, integer ratios and money text, JSON round trip, CSV, charts."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from streams.sinks import reports
from streams.sinks.reports import BPS, CENTS, TEXT, Chart, Column, Report, ReportError, parse_period, ratio_bps


def sample() -> Report:
    return Report(
        "campaign",
        "campaign d11",
        [
            Column("minute", "minute", TEXT),
            Column("orders", "orders"),
            Column("gmv_cents", "GMV", CENTS),
            Column("share_bps", "share", BPS),
        ],
        [["2026-11-11T00:03Z", 3, 123456, 1250], ["2026-11-11T00:04Z", 0, 0, None]],
        {"id": "d11"},
        ["a note"],
        Chart("bar", ("gmv_cents",), ("share_bps",), "t"),
    )


@pytest.mark.parametrize(
    ("kind", "at", "label", "start", "end"),
    [
        ("month", "2026-11", "2026-11", date(2026, 11, 1), date(2026, 12, 1)),
        ("month", "2026-12", "2026-12", date(2026, 12, 1), date(2027, 1, 1)),
        ("quarter", "2026-Q4", "2026-Q4", date(2026, 10, 1), date(2027, 1, 1)),
        ("quarter", "2026-q1", "2026-Q1", date(2026, 1, 1), date(2026, 4, 1)),
        ("quarter", "2026-11", "2026-Q4", date(2026, 10, 1), date(2027, 1, 1)),
    ],
)
def test_periods(kind: str, at: str, label: str, start: date, end: date) -> None:
    p = parse_period(kind, at)
    assert (p.label, p.start, p.end) == (label, start, end)


@pytest.mark.parametrize(
    ("kind", "at"),
    [("month", "2026-13"), ("month", "2026-Q4"), ("week", "2026-11"), ("month", "'; DROP"), ("quarter", "2026-Q5")],
)
def test_bad_periods_are_refused(kind: str, at: str) -> None:
    with pytest.raises(ReportError):
        parse_period(kind, at)


def test_ratios_are_integer_basis_points_half_up() -> None:
    assert ratio_bps(1, 3) == 3333
    assert ratio_bps(2, 3) == 6667
    assert ratio_bps(1, 20000) == 1  # 0.5 bp rounds up
    assert ratio_bps(-1, 3) == -3333
    assert ratio_bps(5, 0) is None
    assert ratio_bps(10**15, 10**15 + 1) == 10000


def test_money_and_percent_text_without_floats() -> None:
    assert reports._yuan(123456789) == "¥1,234,567.89"
    assert reports._yuan(-5) == "-¥0.05"
    assert reports._percent(1250) == "12.50%"
    assert reports._percent(-7) == "-0.07%"
    assert reports._percent(None) == "-"


def test_json_round_trip_is_exact() -> None:
    report = sample()
    again = Report.from_json(report.to_json())
    assert again == report


def test_csv_has_keys_and_raw_integers() -> None:
    assert reports.render_csv(sample()) == (
        "minute,orders,gmv_cents,share_bps\n2026-11-11T00:03Z,3,123456,1250\n2026-11-11T00:04Z,0,0,\n"
    )


def test_chart_is_a_png(tmp_path: Path) -> None:
    out = reports.render_chart(sample(), tmp_path / "c.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_chart_says_so(tmp_path: Path) -> None:
    report = sample()
    report.chart = None
    with pytest.raises(ReportError, match="no chart"):
        reports.render_chart(report, tmp_path / "c.png")
