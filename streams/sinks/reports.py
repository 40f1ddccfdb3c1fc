"""Reports read from ClickHouse: the outcome in expected.json's shape, the demo summary, and the operators' BI reports.

Every BI report is a function `(ch, params) -> Report` over the `ClickHouse` protocol, so the same
SQL runs on embedded chDB and on a server, and the worker's `/reports/{name}` page runs the very
same function. User input reaches SQL only as `{name:Type}` parameters. Money stays integer cents;
ratios are integer basis points (bps, 1/10000), rendered as percentages only for display.
GMV counts only the paid events the engine accepted (see 003_reports.sql and docs/decisions.md).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from streams.sinks import sink
from streams.sinks.clickhouse import ChdbBackend, ClickHouse


def outcome(ch: ClickHouse) -> dict[str, Any]:
    """Balances, bindings, entry sums and totals as ClickHouse holds them (v2's four balances once money moved out)."""
    daily = sink.daily_commissions(ch)
    agg = {
        "accrued": sum(r.accrued_cents for r in daily.values()),
        "reversed": sum(r.reversed_cents for r in daily.values()),
        "settled": sum(r.settled_cents for r in daily.values()),
        "clawed_back": sum(r.clawed_back_cents for r in daily.values()),
    }
    if sink.has_money_out(ch):
        balances: dict[str, dict[str, int]] = {
            u: {
                "available_cents": b.available_cents,
                "pending_cents": b.pending_cents,
                "reserved_cents": b.reserved_cents,
                "withdrawn_cents": b.withdrawn_cents,
            }
            for u, b in sorted(sink.balances_v2(ch).items())
        }
    else:
        balances = {u: {"available_cents": a, "pending_cents": p} for u, (p, a) in sorted(sink.balances(ch).items())}
    return {
        "balances": balances,
        "bindings": dict(sorted(sink.bindings(ch).items())),
        "entries": dict(sorted(sink.entry_sums(ch).items())),
        "totals": sink.ledger_totals(ch),
        "aggregate_totals": agg,
    }


def _yuan(cents: int) -> str:
    """¥1,234.56 from integer cents, without going through a float."""
    sign = "-" if cents < 0 else ""
    whole, frac = divmod(abs(cents), 100)
    return f"{sign}¥{whole:,}.{frac:02d}"


def _percent(bps: int | None) -> str:
    """12.34% from integer basis points (display only); '-' when the ratio is undefined."""
    if bps is None:
        return "-"
    sign = "-" if bps < 0 else ""
    whole, frac = divmod(abs(bps), 100)
    return f"{sign}{whole}.{frac:02d}%"


def ratio_bps(part: int, whole: int) -> int | None:
    """part/whole in integer basis points, rounded half up; None when whole is 0 (no denominator, no ratio)."""
    if whole == 0:
        return None
    sign = -1 if (part < 0) != (whole < 0) else 1
    return sign * ((abs(part) * 20000 // abs(whole) + 1) // 2)


def print_demo_report(path: Path, console: Console) -> None:
    """Commission by level, the top distributors and the busiest minutes of the sale."""
    with ChdbBackend(path) as ch:
        levels = Table(title="commission by level (what the program costs)")
        for col in ("level", "accrued", "reversed", "settled", "clawed back", "entries"):
            levels.add_column(col, justify="right")
        rows = ch.query(
            "SELECT level, sum(accrued_cents), sum(reversed_cents), sum(settled_cents), sum(clawed_back_cents),"
            " sum(entries) FROM commission_daily GROUP BY level ORDER BY level"
        )
        for level, acc, rev, sett, claw, n in rows:
            levels.add_row(str(level), _yuan(acc), _yuan(rev), _yuan(sett), _yuan(claw), f"{n:,}")
        console.print(levels)
        top = Table(title="top 10 distributors (net commission and adjustments)")
        for col in ("distributor", "net earned", "available 可提现", "withdrawn 已提现"):
            top.add_column(col, justify="right")
        # Net earned includes what is paid out or being paid: a withdrawal spends earnings, it does not undo them.
        for user, b in sorted(sink.balances_v2(ch).items(), key=lambda kv: sum(kv[1]), reverse=True)[:10]:
            top.add_row(user, _yuan(sum(b)), _yuan(b.available_cents), _yuan(b.withdrawn_cents))
        console.print(top)
        minutes = Table(title="the sale minute by minute (UTC)")
        for col in ("minute", "paid orders", "GMV", "commission accrued"):
            minutes.add_column(col, justify="right")
        per_minute: dict[Any, list[int]] = {}
        for (minute, _campaign), r in sink.campaign_minutes(ch).items():
            acc = per_minute.setdefault(minute, [0, 0, 0])
            acc[0] += r.paid_orders
            acc[1] += r.gmv_cents
            acc[2] += r.accrued_cents
        busy = [(m, v) for m, v in sorted(per_minute.items()) if any(v)]
        for minute, (orders, gmv, accrued) in busy[:15]:
            minutes.add_row(f"{minute:%H:%M}", f"{orders:,}", _yuan(gmv), _yuan(accrued))
        console.print(minutes)


# --- the BI reports ------------------------------------------------------------------------------------------------

Cell = str | int | None
TEXT, COUNT, CENTS, BPS = "text", "count", "cents", "bps"


class ReportError(ValueError):
    """A report parameter the report cannot use; the message names the parameter and what it accepts."""


@dataclass(frozen=True)
class Column:
    """One report column: its JSON key, its heading and how its integer values are shown."""

    key: str
    label: str
    kind: str = COUNT


@dataclass(frozen=True)
class Chart:
    """What to draw: bars or lines of some columns against the first one (cents plotted as yuan)."""

    kind: str  # "bar" | "barh" | "line"
    y: tuple[str, ...]
    y2: tuple[str, ...] = ()  # drawn as lines on a second axis
    title: str = ""
    x: tuple[str, ...] = ()  # columns whose values, joined, label a row (default: the first column)
    total_row: bool = False  # the last row is a total: not drawn (it would dwarf the others)


@dataclass
class Report:
    """A report's result: plain JSON-able cells, so the worker can send it and the CLI render it identically."""

    name: str
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    params: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    chart: Chart | None = None

    def records(self) -> list[dict[str, Cell]]:
        """Rows as {column key: value}, the JSON form."""
        return [dict(zip((c.key for c in self.columns), row, strict=True)) for row in self.rows]

    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild the report elsewhere (the worker's page answers with this)."""
        return {
            "report": self.name,
            "title": self.title,
            "params": self.params,
            "columns": [{"key": c.key, "label": c.label, "kind": c.kind} for c in self.columns],
            "rows": self.records(),
            "notes": self.notes,
            "chart": None
            if self.chart is None
            else {
                "kind": self.chart.kind,
                "y": self.chart.y,
                "y2": self.chart.y2,
                "title": self.chart.title,
                "x": self.chart.x,
                "total_row": self.chart.total_row,
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Report:
        """The inverse of to_json()."""
        columns = [Column(c["key"], c["label"], c["kind"]) for c in data["columns"]]
        chart = data.get("chart")
        return cls(
            name=data["report"],
            title=data["title"],
            columns=columns,
            rows=[[r.get(c.key) for c in columns] for r in data["rows"]],
            params=dict(data.get("params") or {}),
            notes=list(data.get("notes") or []),
            chart=None
            if not chart
            else Chart(
                chart["kind"],
                tuple(chart["y"]),
                tuple(chart.get("y2") or ()),
                chart.get("title", ""),
                tuple(chart.get("x") or ()),
                bool(chart.get("total_row", False)),
            ),
        )


def _show(value: Cell, kind: str) -> str:
    """A cell as table text."""
    if value is None:
        return "-"
    if isinstance(value, int):
        if kind == CENTS:
            return _yuan(value)
        if kind == BPS:
            return _percent(value)
        return f"{value:,}"
    return str(value)


def render_table(report: Report, console: Console) -> None:
    """The report as a rich table, its notes underneath."""
    table = Table(title=report.title)
    for c in report.columns:
        table.add_column(c.label, justify="left" if c.kind == TEXT else "right")
    for row in report.rows:
        table.add_row(*(_show(v, c.kind) for v, c in zip(row, report.columns, strict=True)))
    console.print(table)
    for note in report.notes:
        console.print(f"[dim]{note}[/]")


def render_csv(report: Report) -> str:
    """The report as CSV: column keys as the header, raw integers (cents, bps) as values."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([c.key for c in report.columns])
    for row in report.rows:
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def render_chart(report: Report, path: Path) -> Path:
    """Draw the report's chart to a PNG (matplotlib, Agg backend: no display needed)."""
    if report.chart is None or not report.rows:
        raise ReportError(f"report {report.name} has {'no chart' if report.chart is None else 'no rows to chart'}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec = report.chart
    drawn = report.rows[:-1] if spec.total_row else report.rows
    by_key = {c.key: (i, c) for i, c in enumerate(report.columns)}
    label_at = [by_key[k][0] for k in spec.x] or [0]
    labels = [" ".join(str(row[i]) for i in label_at) for row in drawn]

    def series(key: str) -> tuple[str, list[float]]:
        index, column = by_key[key]
        unit = " (¥)" if column.kind == CENTS else " (%)" if column.kind == BPS else ""
        divisor = 100 if column.kind in (CENTS, BPS) else 1
        # Floats only to draw: cents -> yuan, bps -> percent.
        values = [0.0 if row[index] is None else int(row[index] or 0) / divisor for row in drawn]
        return column.label + unit, values

    fig, ax = plt.subplots(figsize=(max(8.0, min(24.0, 0.25 * len(labels) + 4)), 5.5), dpi=110)
    positions = list(range(len(labels)))
    if spec.kind == "line":
        for key in spec.y:
            name, values = series(key)
            ax.plot(positions, values, marker="." if len(labels) < 60 else None, label=name)
    else:
        width = 0.8 / max(1, len(spec.y))
        for n, key in enumerate(spec.y):
            name, values = series(key)
            shifted = [p + (n - (len(spec.y) - 1) / 2) * width for p in positions]
            if spec.kind == "barh":
                ax.barh(shifted, values, height=width, label=name)
            else:
                ax.bar(shifted, values, width=width, label=name)
    if spec.kind == "barh":
        ax.set_yticks(positions, labels)
        ax.invert_yaxis()
    else:
        step = max(1, len(labels) // 20)
        ax.set_xticks(positions[::step], labels[::step], rotation=45, ha="right")
    all_cents = all(by_key[k][1].kind == CENTS for k in spec.y)
    # Past two series the legend names them; the axis says the unit, or the label would run off the figure.
    ax.set_ylabel("amount (¥)" if len(spec.y) > 2 and all_cents else ", ".join(series(k)[0] for k in spec.y))
    lines, names_ = ax.get_legend_handles_labels()
    if spec.y2:
        ax2 = ax.twinx()
        for key in spec.y2:
            name, values = series(key)
            ax2.plot(positions, values, color="tab:red", marker=".", label=name)
        ax2.set_ylabel(", ".join(series(k)[0] for k in spec.y2))
        more_lines, more_names = ax2.get_legend_handles_labels()
        lines, names_ = lines + more_lines, names_ + more_names
    ax.legend(lines, names_, loc="best")
    ax.set_title(spec.title or report.title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


# --- parameters ----------------------------------------------------------------------------------------------------

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_QUARTER = re.compile(r"(\d{4})-Q([1-4])", re.IGNORECASE)


@dataclass(frozen=True)
class Period:
    """A calendar month or quarter in UTC: [start, end)."""

    kind: str
    label: str
    start: date
    end: date

    @property
    def end_instant(self) -> datetime:
        """The first instant after the period (when an evaluation of it takes effect)."""
        return datetime(self.end.year, self.end.month, self.end.day, tzinfo=UTC)


def _month_start(year: int, month: int) -> date:
    """First day of a month, months past 12 rolling into the next year."""
    return date(year + (month - 1) // 12, (month - 1) % 12 + 1, 1)


def parse_period(kind: str, at: str) -> Period:
    """`month` + 2026-11, or `quarter` + 2026-Q4 (or a month inside it) -> Period."""
    if kind not in ("month", "quarter"):
        raise ReportError(f"period must be month or quarter, got {kind!r}")
    quarter = _QUARTER.fullmatch(at.strip())
    month = _MONTH.fullmatch(at.strip())
    if quarter is not None and kind == "quarter":
        year, first = int(quarter.group(1)), (int(quarter.group(2)) - 1) * 3 + 1
    elif month is not None and 1 <= int(month.group(2)) <= 12:
        year, first = int(month.group(1)), int(month.group(2))
        if kind == "quarter":
            first = (first - 1) // 3 * 3 + 1
    else:
        wanted = "YYYY-MM" if kind == "month" else "YYYY-Qn or YYYY-MM"
        raise ReportError(f"at must be {wanted} for a {kind}, got {at[:40]!r}")
    if not 1 <= year < 9999:
        raise ReportError(f"at must be a year from 0001 to 9998, got {at[:40]!r}")
    start = _month_start(year, first)
    end = _month_start(year, first + (1 if kind == "month" else 3))
    label = f"{year}-{first:02d}" if kind == "month" else f"{year}-Q{(first - 1) // 3 + 1}"
    return Period(kind, label, start, end)


def _limit(params: Mapping[str, str], default: int = 20) -> int:
    """The `limit` parameter: rows to show, 1..100000."""
    text = params.get("limit") or str(default)
    if not (text.isascii() and text.isdigit() and len(text) <= 6) or not 1 <= int(text) <= 100_000:
        raise ReportError(f"limit must be a whole number 1..100000, got {text[:40]!r}")
    return int(text)


def _required(params: Mapping[str, str], name: str) -> str:
    """A parameter the report cannot run without (any text: it is only ever data)."""
    value = params.get(name)
    if not value:
        raise ReportError(f"this report needs --{name}")
    return value


def _latest_month(ch: ClickHouse) -> str:
    """The month of the newest ledger day, the natural default for a leaderboard; this month when empty."""
    rows = ch.query("SELECT max(day), count() FROM commission_daily")
    day = rows[0][0] if rows and rows[0][1] else datetime.now(UTC).date()
    return f"{day.year}-{day.month:02d}"


# --- SQL building blocks -------------------------------------------------------------------------------------------

# One row per ACCEPTED paid event: its order row arrived and no dead letter names it. `{where}` narrows the
# paid events first (a semi-join on paid_orders' key), so a campaign or a distributor does not merge them all.
_ACCEPTED = (
    "SELECT event_id, max(paid_at) AS at, max(buyer_id) AS buyer, max(campaign_id) AS campaign,"
    " max(amount_cents) AS amount, max(level1_id) AS l1, max(level2_id) AS l2, max(level3_id) AS l3"
    " FROM paid_orders {where} GROUP BY event_id HAVING max(seen) = 1 AND max(rejected) = 0"
)


def accepted(where: str = "") -> str:
    """The accepted-paid-orders subquery, optionally narrowed by a fixed, parameterized condition."""
    return _ACCEPTED.format(
        where=f"WHERE event_id IN (SELECT event_id FROM paid_orders WHERE {where})" if where else ""
    )


def _iso_minute(moment: datetime) -> str:
    """2026-11-11T00:03Z: a minute bucket as text."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%MZ")


# --- the reports ---------------------------------------------------------------------------------------------------


def leaderboard(ch: ClickHouse, params: Mapping[str, str]) -> Report:
    """Best distributors of a month or quarter by net earnings, attributed GMV or recruits (monthly awards)."""
    metric = params.get("metric") or "earnings"
    period = parse_period(params.get("period") or "month", params.get("at") or _latest_month(ch))
    limit = _limit(params)
    bounds: dict[str, object] = {"start": period.start, "end": period.end, "limit": limit}
    if metric == "earnings":
        rows = ch.query(
            "SELECT beneficiary_id, sum(accrued_cents + reversed_cents + clawed_back_cents) AS net,"
            " sum(accrued_cents), sum(reversed_cents + clawed_back_cents), sum(settled_cents)"
            " FROM commission_daily WHERE day >= {start:Date} AND day < {end:Date}"
            " GROUP BY beneficiary_id ORDER BY net DESC, beneficiary_id LIMIT {limit:UInt32}",
            bounds,
        )
        columns = [
            Column("rank", "#"),
            Column("distributor", "distributor", TEXT),
            Column("earnings_cents", "net earnings", CENTS),
            Column("accrued_cents", "accrued", CENTS),
            Column("taken_back_cents", "reversed + clawed back", CENTS),
            Column("settled_cents", "settled", CENTS),
        ]
    elif metric == "gmv":
        rows = ch.query(
            f"SELECT l1, sum(amount) AS gmv, count() FROM ({accepted()})"
            " WHERE l1 != '' AND toDate(at) >= {start:Date} AND toDate(at) < {end:Date}"
            " GROUP BY l1 ORDER BY gmv DESC, l1 LIMIT {limit:UInt32}",
            bounds,
        )
        columns = [
            Column("rank", "#"),
            Column("distributor", "distributor", TEXT),
            Column("gmv_cents", "GMV (level 1)", CENTS),
            Column("orders", "orders"),
        ]
    elif metric == "recruits":
        rows = ch.query(
            "SELECT assumeNotNull(inviter_id) AS inviter, count() AS n FROM bindings FINAL"
            " WHERE inviter_id IS NOT NULL AND toDate(ts) >= {start:Date} AND toDate(ts) < {end:Date}"
            " GROUP BY inviter ORDER BY n DESC, inviter LIMIT {limit:UInt32}",
            bounds,
        )
        columns = [Column("rank", "#"), Column("distributor", "distributor", TEXT), Column("recruits", "recruits")]
    else:
        raise ReportError(f"metric must be earnings, gmv or recruits, got {metric[:40]!r}")
    return Report(
        "leaderboard",
        f"best distributors of {period.label} by {metric}",
        columns,
        [[rank, str(r[0]), *(int(v) for v in r[1:])] for rank, r in enumerate(rows, 1)],
        {"period": period.kind, "at": period.label, "metric": metric, "limit": str(limit)},
        [
            "earnings = accrued + reversed + clawed back (settling only moves money to available)",
            "GMV = accepted paid orders where the distributor earned at level 1 (refused paid events excluded)",
        ],
        Chart("barh", (columns[2].key,), title=f"top distributors {period.label}: {metric}"),
    )


def funnel(ch: ClickHouse, params: Mapping[str, str]) -> Report:
    """Click -> signup -> first order per distributor and overall: where the referral traffic converts."""
    campaign = params.get("campaign") or ""
    limit = _limit(params, 50)
    picked = "({all:UInt8} = 1 OR campaign_id = {campaign:String})"
    args: dict[str, object] = {"all": 0 if campaign else 1, "campaign": campaign, "limit": limit}
    top = ch.query(
        f"SELECT distributor_id, sumIf(clicks, {picked}) AS c, uniqMergeIf(visitors, {picked}) AS v,"
        f" sum(signups) AS s, sumIf(limited_clicks, {picked}) AS l FROM funnel_daily WHERE distributor_id != ''"
        " GROUP BY distributor_id ORDER BY c DESC, s DESC, distributor_id",
        args,
    )
    overall = ch.query(
        f"SELECT sumIf(clicks, {picked}), uniqMergeIf(visitors, {picked}), sum(signups),"
        f" sumIf(limited_clicks, {picked}) FROM funnel_daily WHERE distributor_id != ''",
        args,
    )
    first = ch.query(
        "SELECT b.inviter, count() FROM"
        f" (SELECT buyer, argMin(campaign, at) AS first_campaign FROM ({accepted()}) GROUP BY buyer) AS f"
        " INNER JOIN (SELECT user_id, assumeNotNull(inviter_id) AS inviter FROM bindings FINAL"
        " WHERE inviter_id IS NOT NULL) AS b ON b.user_id = f.buyer"
        " WHERE {all:UInt8} = 1 OR f.first_campaign = {campaign:String} GROUP BY b.inviter",
        args,
    )
    first_by = {str(d): int(n) for d, n in first}
    rows: list[list[Cell]] = []
    seen: set[str] = set()
    for d, clicks, visitors, signups, limited in top:
        seen.add(str(d))
        orders = first_by.get(str(d), 0)
        rows.append(_funnel_row(str(d), int(clicks), int(limited), int(visitors), int(signups), orders))
    # Distributors with first orders but no clicks or signups in the funnel (bound at their first order).
    for d in sorted(set(first_by) - seen):
        rows.append(_funnel_row(d, 0, 0, 0, 0, first_by[d]))
    rows.sort(key=lambda r: (-int(r[1] or 0), -int(r[5] or 0), str(r[0])))
    clicks, visitors, signups, limited = (int(v or 0) for v in overall[0]) if overall else (0, 0, 0, 0)
    total = _funnel_row("(all distributors)", clicks, limited, visitors, signups, sum(first_by.values()))
    return Report(
        "funnel",
        "referral funnel" + (f" for campaign {campaign}" if campaign else ""),
        [
            Column("distributor", "distributor", TEXT),
            Column("clicks", "clicks"),
            Column("limited_clicks", "limited clicks"),
            Column("visitors", "distinct visitors"),
            Column("signups", "signups"),
            Column("first_orders", "first orders"),
            Column("signup_rate_bps", "signup / visitor", BPS),
            Column("order_rate_bps", "first order / signup", BPS),
        ],
        [*rows[:limit], total],
        {"campaign": campaign, "limit": str(limit)},
        [
            "signups: users who signed up bound to the distributor (a signup carries no campaign, so --campaign"
            " does not filter them); first orders: users bound to the distributor whose first accepted paid"
            " order falls in the campaign (or any, without --campaign); distinct visitors are uniq() estimates",
            "clicks: clicks counted for attribution; limited clicks: clicks over the click-spam limit ([clicks] in"
            " fenxiao.toml), which bind nobody and are not in clicks",
        ],
        Chart("bar", ("clicks", "visitors", "signups", "first_orders"), title="referral funnel"),
    )


def _funnel_row(who: str, clicks: int, limited: int, visitors: int, signups: int, orders: int) -> list[Cell]:
    """One funnel row; attributed clicks exclude limited ones (floored at 0 while the sink catches up)."""
    counted = max(clicks - limited, 0)
    return [who, counted, limited, visitors, signups, orders, ratio_bps(signups, visitors), ratio_bps(orders, signups)]


def levels(ch: ClickHouse, params: Mapping[str, str]) -> Report:
    """Commission per level and as a share of accepted GMV: what the program costs."""
    rows = ch.query(
        "SELECT level, sum(accrued_cents), sum(reversed_cents), sum(settled_cents), sum(clawed_back_cents),"
        " sum(entries) FROM commission_daily GROUP BY level ORDER BY level"
    )
    gmv_row = ch.query(f"SELECT sum(amount), count() FROM ({accepted()})")
    gmv, orders = (int(gmv_row[0][0] or 0), int(gmv_row[0][1] or 0)) if gmv_row else (0, 0)
    out: list[list[Cell]] = []
    sums = [0, 0, 0, 0, 0, 0]
    for level, acc, rev, sett, claw, n in rows:
        net = int(acc) + int(rev) + int(claw)
        values = [int(acc), int(rev), int(sett), int(claw), net, int(n)]
        sums = [a + b for a, b in zip(sums, values, strict=True)]
        out.append([f"level {level}", *values, ratio_bps(net, gmv)])
    out.append(["all levels", *sums, ratio_bps(sums[4], gmv)])
    return Report(
        "levels",
        f"commission by level: {_yuan(gmv)} accepted GMV in {orders:,} paid orders",
        [
            Column("level", "level", TEXT),
            Column("accrued_cents", "accrued", CENTS),
            Column("reversed_cents", "reversed", CENTS),
            Column("settled_cents", "settled", CENTS),
            Column("clawed_back_cents", "clawed back", CENTS),
            Column("net_cents", "net commission", CENTS),
            Column("entries", "entries"),
            Column("share_of_gmv_bps", "share of GMV", BPS),
        ],
        out,
        {},
        [
            f"GMV = {gmv} cents over {orders} accepted paid orders (gross, before refunds)",
            "net commission = accrued + reversed + clawed back; share of GMV in basis points, half up",
        ],
        Chart("bar", ("accrued_cents", "net_cents"), ("share_of_gmv_bps",), "commission by level"),
    )


def campaign(ch: ClickHouse, params: Mapping[str, str]) -> Report:
    """A campaign minute by minute: accepted paid orders, GMV and commission accrued."""
    cid = _required(params, "id")
    orders = ch.query(
        f"SELECT toStartOfMinute(at) AS m, count(), sum(amount) FROM ({accepted('campaign_id = {id:String}')})"
        " GROUP BY m ORDER BY m",
        {"id": cid},
    )
    commission = ch.query(
        "SELECT minute, sum(accrued_cents) FROM campaign_minute WHERE campaign_id = {id:String} GROUP BY minute",
        {"id": cid},
    )
    per: dict[str, list[int]] = {}
    for minute, n, gmv in orders:
        per.setdefault(_iso_minute(minute), [0, 0, 0])[:2] = [int(n), int(gmv)]
    for minute, accrued in commission:
        per.setdefault(_iso_minute(minute), [0, 0, 0])[2] = int(accrued)
    rows: list[list[Cell]] = [[m, n, g, a, ratio_bps(a, g)] for m, (n, g, a) in sorted(per.items())]
    total = [sum(v[i] for v in per.values()) for i in range(3)]
    return Report(
        "campaign",
        f"campaign {cid[:64]}: {total[0]:,} orders, {_yuan(total[1])} GMV, {_yuan(total[2])} commission accrued",
        [
            Column("minute", "minute (UTC)", TEXT),
            Column("orders", "paid orders"),
            Column("gmv_cents", "GMV", CENTS),
            Column("accrued_cents", "commission accrued", CENTS),
            Column("commission_bps", "commission / GMV", BPS),
        ],
        rows,
        {"id": cid},
        ["paid orders and GMV count accepted paid events only; commission is accrued before any refund"],
        Chart("bar", ("gmv_cents",), ("accrued_cents",), f"campaign {cid[:40]}: GMV and commission per minute"),
    )


def refunds(ch: ClickHouse, params: Mapping[str, str]) -> Report:
    """Refund and clawback rates per distributor, worst first: where refunds eat commission (abuse spotting)."""
    limit = _limit(params, 50)
    rows = ch.query(
        "SELECT beneficiary_id, uniqExactIf(order_id, kind = 'accrued') AS orders,"
        " uniqExactIf(order_id, kind IN ('reversed', 'clawed_back')) AS refunded,"
        " sumIf(amount_cents, kind = 'accrued') AS acc, sumIf(amount_cents, kind = 'reversed') AS rev,"
        " sumIf(amount_cents, kind = 'clawed_back') AS claw"
        " FROM ledger_entries FINAL WHERE kind IN ('accrued', 'reversed', 'settled', 'clawed_back')"
        " GROUP BY beneficiary_id"
        " ORDER BY if(acc = 0, 0, intDiv(-(rev + claw) * 10000, acc)) DESC, acc DESC, beneficiary_id"
        " LIMIT {limit:UInt32}",
        {"limit": limit},
    )
    out: list[list[Cell]] = []
    for user, n, refunded, acc, rev, claw in rows:
        out.append(
            [
                str(user),
                int(n),
                int(refunded),
                int(acc),
                int(rev),
                int(claw),
                ratio_bps(int(refunded), int(n)),
                ratio_bps(-(int(rev) + int(claw)), int(acc)),
                ratio_bps(-int(claw), int(acc)),
            ]
        )
    return Report(
        "refunds",
        "refunds and clawbacks by distributor (worst refund rate first)",
        [
            Column("distributor", "distributor", TEXT),
            Column("orders", "orders earned on"),
            Column("refunded_orders", "orders refunded"),
            Column("accrued_cents", "accrued", CENTS),
            Column("reversed_cents", "reversed", CENTS),
            Column("clawed_back_cents", "clawed back", CENTS),
            Column("refunded_order_rate_bps", "refunded orders", BPS),
            Column("refund_rate_bps", "commission refunded", BPS),
            Column("clawback_rate_bps", "clawed back after settling", BPS),
        ],
        out,
        {"limit": str(limit)},
        ["rates are shares of accrued commission; a clawback is a refund after the money became available"],
        Chart("barh", ("refund_rate_bps", "clawback_rate_bps"), title="refund and clawback rates"),
    )


_TEAM_MEMBERS = (
    "WITH b AS (SELECT user_id, assumeNotNull(inviter_id) AS inviter, ts FROM bindings FINAL"
    " WHERE inviter_id IS NOT NULL)"
    " SELECT toDate(ts) AS day, countIf(lvl = 1), countIf(lvl = 2), countIf(lvl = 3) FROM ("
    " SELECT 1 AS lvl, ts FROM b WHERE inviter = {d:String}"
    " UNION ALL SELECT 2 AS lvl, ts FROM b WHERE inviter IN (SELECT user_id FROM b WHERE inviter = {d:String})"
    " UNION ALL SELECT 3 AS lvl, ts FROM b WHERE inviter IN (SELECT user_id FROM b WHERE inviter IN"
    " (SELECT user_id FROM b WHERE inviter = {d:String}))"
    ") GROUP BY day ORDER BY day"
)


def team(ch: ClickHouse, params: Mapping[str, str]) -> Report:
    """A distributor's team per level over time: members (cumulative) and the GMV it earned on per day."""
    who = _required(params, "distributor")
    members = ch.query(_TEAM_MEMBERS, {"d": who})
    gmv = ch.query(
        "SELECT toDate(at) AS day, sumIf(amount, l1 = {d:String}), sumIf(amount, l2 = {d:String}),"
        " sumIf(amount, l3 = {d:String})"
        f" FROM ({accepted('level1_id = {d:String} OR level2_id = {d:String} OR level3_id = {d:String}')})"
        " GROUP BY day ORDER BY day",
        {"d": who},
    )
    per: dict[str, list[int]] = {}
    for day, *joined in members:
        per.setdefault(day.isoformat(), [0] * 6)[:3] = [int(v) for v in joined]
    for day, *cents in gmv:
        per.setdefault(day.isoformat(), [0] * 6)[3:] = [int(v) for v in cents]
    rows: list[list[Cell]] = []
    size = [0, 0, 0]
    for day, values in sorted(per.items()):
        size = [s + v for s, v in zip(size, values[:3], strict=True)]
        rows.append([day, *size, *values[3:]])
    return Report(
        "team",
        f"team of {who[:64]}: {size[0]:,} / {size[1]:,} / {size[2]:,} members at levels 1 / 2 / 3",
        [
            Column("day", "day (UTC)", TEXT),
            Column("level1_members", "L1 members"),
            Column("level2_members", "L2 members"),
            Column("level3_members", "L3 members"),
            Column("level1_gmv_cents", "L1 GMV", CENTS),
            Column("level2_gmv_cents", "L2 GMV", CENTS),
            Column("level3_gmv_cents", "L3 GMV", CENTS),
        ],
        rows,
        {"distributor": who},
        [
            "members: users bound under the distributor (directly = L1, through one = L2, two = L3), cumulative;"
            " GMV: accepted paid orders on which the distributor earned at that level, per day",
        ],
        Chart("line", ("level1_members", "level2_members", "level3_members"), title=f"team of {who[:40]}"),
    )


def performance(ch: ClickHouse, params: Mapping[str, str]) -> Report:
    """Per distributor in a period: sales (level 1, 2, 3 and own purchases), recruits, and the tier at its end."""
    period = parse_period(params.get("period") or "month", _required(params, "at"))
    bounds: dict[str, object] = {"start": period.start, "end": period.end}
    # Each accepted paid order counts for its level 1..3 beneficiaries (lvl 1..3) and for its buyer (lvl 0, own
    # purchases) when the buyer signed up; recruits are bindings that name the distributor.
    rows = ch.query(
        "SELECT d, sumIf(g, lvl = 1), sumIf(g, lvl = 2), sumIf(g, lvl = 3), sumIf(g, lvl = 0), sum(r) FROM ("
        " SELECT tupleElement(p, 1) AS d, tupleElement(p, 2) AS lvl, amount AS g, toUInt64(0) AS r"
        f" FROM ({accepted()})"
        " ARRAY JOIN [(l1, toUInt8(1)), (l2, toUInt8(2)), (l3, toUInt8(3)), (buyer, toUInt8(0))] AS p"
        " WHERE d != '' AND toDate(at) >= {start:Date} AND toDate(at) < {end:Date}"
        " AND (lvl != 0 OR d IN (SELECT user_id FROM bindings))"
        " UNION ALL SELECT assumeNotNull(inviter_id) AS d, toUInt8(0) AS lvl, toInt64(0) AS g, toUInt64(1) AS r"
        " FROM bindings FINAL"
        " WHERE inviter_id IS NOT NULL AND toDate(ts) >= {start:Date} AND toDate(ts) < {end:Date}"
        ") GROUP BY d",
        bounds,
    )
    tiers = ch.query(
        "SELECT user_id, argMax(tier, (ts, event_id)) FROM tier_events FINAL"
        " WHERE ts < toDateTime64({end:Date}, 3, 'UTC') + toIntervalMillisecond(1) GROUP BY user_id",
        bounds,
    )
    current = {str(u): str(t) for u, t in tiers}
    stats = {str(d): (int(g1), int(g2), int(g3), int(own), int(r)) for d, g1, g2, g3, own, r in rows}
    out: list[list[Cell]] = []
    for user in sorted(set(stats) | set(current)):
        g1, g2, g3, own, recruits = stats.get(user, (0, 0, 0, 0, 0))
        out.append([user, g1, g2, g3, g1 + g2 + g3, own, recruits, current.get(user, "")])
    return Report(
        "performance",
        f"distributor performance in {period.label}",
        [
            Column("distributor", "distributor", TEXT),
            Column("gmv_cents", "GMV (level 1)", CENTS),
            Column("level2_gmv_cents", "GMV (level 2)", CENTS),
            Column("level3_gmv_cents", "GMV (level 3)", CENTS),
            Column("team_gmv_cents", "team GMV (levels 1-3)", CENTS),
            Column("own_sales_cents", "own purchases", CENTS),
            Column("recruits", "recruits"),
            Column("tier", "tier at period end", TEXT),
        ],
        out,
        {"period": period.kind, "at": period.label, "end": period.end_instant.isoformat()},
        [
            "GMV at level l: accepted paid orders on which the distributor earned at level l (gross of refunds);"
            " own purchases: accepted paid orders the distributor bought themself",
            "tier at period end: the latest tier event at or before the end of the period ('' = none: standard)",
        ],
    )


# One row per withdrawal transition, with the channel of its request (every state record should carry it; the
# request's row always does). `{where}` narrows the withdrawals by a fixed, parameterized condition.
_TRANSITIONS = (
    "SELECT s.withdrawal_id AS wid, s.status AS status, s.amount_cents AS amount, ifNull(s.fee_cents, 0) AS fee,"
    " ifNull(s.payout_cents, s.amount_cents - ifNull(s.fee_cents, 0)) AS payout, toDate(s.ts) AS day,"
    " c.channel AS channel"
    " FROM withdrawal_states AS s FINAL"
    " INNER JOIN (SELECT withdrawal_id, max(channel) AS channel FROM withdrawal_states FINAL {where}"
    " GROUP BY withdrawal_id) AS c ON c.withdrawal_id = s.withdrawal_id"
)
NO_CHANNEL = "(none)"


def payouts(ch: ClickHouse, params: Mapping[str, str]) -> Report:
    """Withdrawals per UTC day and channel: requested, paid (amount, fee, payout), rejected and failed, in cents."""
    bounds: dict[str, object] = {"d": params.get("distributor") or ""}
    where = "WHERE {d:String} = '' OR distributor_id = {d:String}"
    picked = ""
    label = "all time"
    if params.get("at"):
        period = parse_period(params.get("period") or "month", params["at"])
        bounds |= {"start": period.start, "end": period.end}
        picked = " WHERE day >= {start:Date} AND day < {end:Date}"
        label = period.label
    rows = ch.query(
        "SELECT day, channel,"
        " countIf(status = 'requested'), sumIf(amount, status = 'requested'),"
        " countIf(status = 'paid'), sumIf(amount, status = 'paid'), sumIf(fee, status = 'paid'),"
        " sumIf(payout, status = 'paid'),"
        " countIf(status = 'rejected'), sumIf(amount, status = 'rejected'),"
        " countIf(status = 'failed'), sumIf(amount, status = 'failed')"
        f" FROM ({_TRANSITIONS.format(where=where)}){picked}"
        " GROUP BY day, channel HAVING countIf(status != 'approved') > 0 ORDER BY day, channel",
        bounds,
    )
    open_rows = ch.query(
        "SELECT count(), sum(amount) FROM (SELECT withdrawal_id, any(amount_cents) AS amount,"
        " countIf(status IN ('rejected', 'paid', 'failed')) AS done FROM withdrawal_states FINAL"
        f" {where} GROUP BY withdrawal_id) WHERE done = 0",
        bounds,
    )
    out: list[list[Cell]] = []
    total = [0] * 10
    for day, channel, *values in rows:
        numbers = [int(v) for v in values]
        total = [a + b for a, b in zip(total, numbers, strict=True)]
        out.append([day.isoformat(), str(channel) or NO_CHANNEL, *numbers])
    if out:
        out.append(["all days", "all channels", *total])
    open_count, open_cents = (int(open_rows[0][0] or 0), int(open_rows[0][1] or 0)) if open_rows else (0, 0)
    who = params.get("distributor")
    return Report(
        "payouts",
        f"payouts {label}{f' of {who[:64]}' if who else ''}: {_yuan(total[3])} paid out of {_yuan(total[1])} requested",
        [
            Column("day", "day (UTC)", TEXT),
            Column("channel", "channel", TEXT),
            Column("requested", "requested"),
            Column("requested_cents", "requested amount", CENTS),
            Column("paid", "paid"),
            Column("paid_cents", "paid amount", CENTS),
            Column("fee_cents", "fees", CENTS),
            Column("payout_cents", "paid to distributors", CENTS),
            Column("rejected", "rejected"),
            Column("rejected_cents", "rejected amount", CENTS),
            Column("failed", "failed"),
            Column("failed_cents", "failed amount", CENTS),
        ],
        out,
        {
            k: v
            for k, v in (
                ("period", params.get("period") or ""),
                ("at", label if params.get("at") else ""),
                ("distributor", who or ""),
            )
            if v
        },
        [
            "each transition counts on the UTC day of its event: a request made on one day and paid on the next"
            " is requested on the first and paid on the second; channel is the request's ('(none)' = not given)",
            "paid amount = fees + paid to distributors; rejected and failed amounts went back to available",
            f"open now: {open_count} withdrawal(s) of {_yuan(open_cents)} requested or approved, not yet settled",
        ],
        Chart(
            "bar",
            ("requested_cents", "paid_cents", "rejected_cents", "failed_cents"),
            ("fee_cents",),
            title="payouts per day and channel",
            x=("day", "channel"),
            total_row=True,
        ),
    )


ReportFunction = Callable[[ClickHouse, Mapping[str, str]], Report]

REPORTS: dict[str, ReportFunction] = {
    "leaderboard": leaderboard,
    "funnel": funnel,
    "levels": levels,
    "campaign": campaign,
    "refunds": refunds,
    "team": team,
    "performance": performance,
    "payouts": payouts,
}
PARAMS: tuple[str, ...] = ("period", "metric", "at", "campaign", "id", "distributor", "limit")


def run(ch: ClickHouse, name: str, params: Mapping[str, str]) -> Report:
    """Run report `name`: the one entry point of the CLI and the worker page (unknown names and parameters refused)."""
    function = REPORTS.get(name)
    if function is None:
        raise ReportError(f"unknown report {name[:40]!r}; expected one of {', '.join(REPORTS)}")
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise ReportError(f"unknown parameter {unknown[0][:40]!r}; expected some of {', '.join(PARAMS)}")
    return function(ch, {k: v for k, v in params.items() if v})


def report_rows(report: Report) -> Sequence[Mapping[str, Cell]]:
    """Rows keyed by column: what tests and the tier evaluator read."""
    return report.records()


# --- running a report: here, or through the worker that owns the embedded ClickHouse --------------------------------


class WorkerUnavailable(Exception):
    """The worker's report page could not answer; the message says why and what to do."""


def from_worker(name: str, params: Mapping[str, str], port: int, token_key: str, timeout: float = 300.0) -> Report:
    """GET the worker's /reports/{name} with a short-lived operator token and rebuild the Report it sends."""
    import json
    import urllib.error
    import urllib.parse
    import urllib.request

    from streams.api import auth

    token = auth.issue(token_key, auth.OPERATOR, None, ttl_seconds=600)
    query = urllib.parse.urlencode({k: v for k, v in params.items() if v})
    url = f"http://127.0.0.1:{port}/reports/{urllib.parse.quote(name, safe='')}" + (f"?{query}" if query else "")
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Report.from_json(json.loads(response.read()))
    except urllib.error.HTTPError as e:
        try:
            message = str(json.loads(e.read()).get("error", ""))
        except ValueError:
            message = ""
        if e.code == 400:
            raise ReportError(message or "the worker refused the report parameters") from None
        if e.code in (401, 403):
            raise WorkerUnavailable(
                f"the worker on port {port} refused the operator token ({message or e.code}): run this with the"
                " same FENXIAO_TOKEN_KEY as the worker"
            ) from None
        if e.code == 404:
            raise WorkerUnavailable(
                f"the process on port {port} has no /reports page: it is not a fenxiao worker of this version"
            ) from None
        raise WorkerUnavailable(f"the worker on port {port} failed the report: {message or e.code}") from None
    except (urllib.error.URLError, OSError, ValueError, KeyError) as e:
        reason = getattr(e, "reason", e)
        raise WorkerUnavailable(f"no worker answers on port {port} ({reason})") from None
