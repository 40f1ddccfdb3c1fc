"""The `fenxiao` console script: one entry point, each subcommand delegating to its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True)


class CliError(Exception):
    """A one-line error for the user that says what to do."""


def _stack(args: argparse.Namespace) -> int:
    from streams.ops import stack

    return stack.run_command(args.action)


def _worker(args: argparse.Namespace) -> int:
    from streams.pipeline import worker

    try:
        return worker.run(args.config, args.loglevel, standby=args.standby, sink=not args.no_sink)
    except worker.WorkerError as e:
        raise CliError(str(e)) from e


def _credit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.engine.config import ConfigError, load
    from streams.pipeline import credit
    from streams.settings import get_settings

    settings = get_settings()
    try:
        program = load(Path(args.config) if args.config else settings.config)
    except ConfigError as e:
        raise CliError(str(e)) from e
    return credit.run(settings, program, args.loglevel)


def _sink(args: argparse.Namespace) -> int:
    import os

    from streams import names
    from streams.sinks import sink_process

    if args.config:
        if not os.path.isfile(args.config):
            raise CliError(f"no such config file: {args.config}")
        os.environ[names.ENV_CONFIG] = args.config
    return sink_process.run(args.loglevel)


def _positive(text: str) -> float:
    """An argparse type for rates and speeds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _count(text: str) -> int:
    """An argparse type for how many users or orders."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _replay(args: argparse.Namespace) -> int:
    """Validate the file first (nothing half-sent), then produce it where settings say Kafka is."""
    import os

    from streams import names
    from streams.ops import replay
    from streams.settings import get_settings

    if not os.path.isfile(args.file):
        raise CliError(
            f"no such file: {args.file} — pass a scenario .jsonl (e.g. ../shared/spec/examples/basic/events.jsonl)"
        )
    bootstrap = get_settings().kafka
    try:
        n = replay.run_replay(args.file, bootstrap, args.rate, args.speed)
    except replay.BrokerUnreachable:
        raise CliError(
            f"cannot reach Kafka at {bootstrap}: set {names.ENV_KAFKA} to the broker's host:port,"
            " or start the local one with `fenxiao stack up`"
        ) from None
    except (replay.ReplayInputError, replay.ReplayError) as e:
        raise CliError(str(e)) from None
    err.print(f"replayed {n:,} records from {args.file} into {bootstrap}")
    return 0


def _generate(args: argparse.Namespace) -> int:
    """Stream the seeded sale to a file with a progress bar; the file replays with `fenxiao replay`."""
    from collections.abc import Iterator
    from datetime import datetime
    from typing import Any

    from streams.ops import flashsale
    from streams.ops.replay import progress_bar

    try:
        start = datetime.fromisoformat(args.start)
    except ValueError:
        raise CliError(f"--start must be an ISO date-time like 2026-11-11T00:00:00Z, got {args.start}") from None
    records = flashsale.generate(args.users, args.orders, args.seed, start, args.duration, args.campaign)
    with progress_bar() as bar:
        task = bar.add_task(f"generate {args.out}", total=None)

        def counted() -> Iterator[dict[str, Any]]:
            for i, rec in enumerate(records, 1):
                if i % 5000 == 0:
                    bar.update(task, completed=i)
                yield rec

        try:
            n = flashsale.write_jsonl(args.out, counted())
        except OSError as e:
            raise CliError(f"cannot write {args.out}: {e.strerror}") from None
        bar.update(task, completed=n, total=n)
    err.print(f"wrote {n:,} records ({args.users:,} users, {args.orders:,} orders, seed {args.seed}) to {args.out}")
    return 0


def _add_replay_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`replay` and `generate`: get scenario traffic into Kafka."""
    r = sub.add_parser("replay", help="produce a scenario .jsonl into the input topics")
    r.add_argument("file", help="one Kafka record per line: {topic, key, value}")
    r.add_argument("--rate", type=_positive, help="at most this many records per second")
    r.add_argument("--speed", type=_positive, help="follow the events' ts: 1 = real time, 60 = a minute per second")
    r.set_defaults(func=_replay)

    g = sub.add_parser("generate", help="write a seeded 双11 flash sale as a scenario .jsonl")
    g.add_argument("--users", type=_count, default=10_000, help="users who sign up (default 10000)")
    g.add_argument("--orders", type=_count, default=100_000, help="orders placed (default 100000)")
    g.add_argument("--seed", type=int, default=1, help="same seed, same file (default 1)")
    g.add_argument("--out", required=True, help="the .jsonl to write")
    g.add_argument("--start", default="2026-11-11T00:00:00Z", help="when the sale opens (default 2026-11-11T00:00Z)")
    g.add_argument("--duration", type=_positive, default=3600.0, help="seconds the order wall lasts (default 3600)")
    g.add_argument("--campaign", default="d11", help="campaign_id of campaign orders (default d11)")
    g.set_defaults(func=_generate)


def _demo(args: argparse.Namespace) -> int:
    from streams.ops import demo

    try:
        return demo.run(args.users, args.orders, args.duration, args.seed, args.speed, args.exit_when_done)
    except demo.DemoError as e:
        raise CliError(str(e)) from e


def _bi_report(args: argparse.Namespace) -> int:
    """Run a BI report on ClickHouse here, or through the running sink process when it owns the embedded data dir."""
    from pathlib import Path

    from streams import names
    from streams.settings import get_settings
    from streams.sinks import clickhouse, reports, warehouse

    settings = get_settings()
    params = {k: str(v) for k in reports.PARAMS if (v := getattr(args, k, None)) is not None}
    try:
        try:
            ch = warehouse.connect(settings)
        except clickhouse.ChdbLockedError as locked:
            try:
                report = reports.from_worker(
                    args.name, params, settings.sink_port, settings.token_key.get_secret_value()
                )
            except reports.WorkerUnavailable as e:
                raise CliError(
                    f"{locked} Reading through the sink process failed too: {e}. Start the worker (its sink serves"
                    f" /reports on {names.ENV_SINK_PORT}={settings.sink_port}), or stop the process holding the"
                    " data dir."
                ) from None
        except clickhouse.ClickHouseError as e:
            raise CliError(str(e)) from e
        else:
            try:
                clickhouse.migrate(ch)
                report = reports.run(ch, args.name, params)
            except clickhouse.ClickHouseError as e:
                raise CliError(f"report {args.name} failed: {e}") from e
            finally:
                ch.close()
        if args.chart:
            err.print(f"chart written to {reports.render_chart(report, Path(args.chart))}")
    except reports.ReportError as e:
        raise CliError(str(e)) from e
    if args.format == "json":
        import json

        print(json.dumps(report.to_json(), indent=1, ensure_ascii=False))
    elif args.format == "csv":
        sys.stdout.write(reports.render_csv(report))
    else:
        reports.render_table(report, Console())
    return 0


def _tiers(args: argparse.Namespace) -> int:
    """`tiers evaluate`: compute each distributor's tier for a period from ClickHouse and publish the changes."""
    from streams.engine import tier_rules

    try:
        result = tier_rules.evaluate_command(args.period, args.config, publish=not args.dry_run)
    except tier_rules.TierEvaluationError as e:
        raise CliError(str(e)) from e
    for event in result.events:
        v = event["value"]
        print(f"{v['user_id']}\t{result.current.get(v['user_id']) or 'standard'} -> {v['tier']}\t{v['event_id']}")
    verb = "would publish" if args.dry_run else "published"
    err.print(
        f"{len(result.events)} tier change(s) {verb} for {result.period} ({result.evaluated} distributors evaluated)"
    )
    return 0


def _add_report_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`report` (totals and the BI reports) and `tiers evaluate`."""
    from streams.sinks.reports import REPORTS

    rp = sub.add_parser("report", help="reports from ClickHouse")
    rp.add_argument(
        "name",
        choices=["totals", *REPORTS],
        help="totals: the ledger as ClickHouse holds it; leaderboard, funnel, levels, campaign, refunds, team,"
        " performance, payouts: BI reports (docs/reports.md)",
    )
    rp.add_argument("--format", choices=["table", "csv", "json"], default="table")
    rp.add_argument("--chart", metavar="OUT.png", help="also draw the report's chart to this PNG")
    rp.add_argument("--period", choices=["month", "quarter"], help="leaderboard/performance/payouts: month or quarter")
    rp.add_argument("--metric", choices=["earnings", "gmv", "recruits"], help="leaderboard: what to rank by")
    rp.add_argument("--at", help="leaderboard/performance/payouts: 2026-11 (month) or 2026-Q4 (quarter)")
    rp.add_argument("--campaign", help="funnel: only this campaign's clicks and first orders")
    rp.add_argument("--id", help="campaign: the campaign_id")
    rp.add_argument("--distributor", help="team, payouts: the distributor's user_id")
    rp.add_argument("--limit", help="rows to show (leaderboard 20, funnel/refunds 50)")
    rp.set_defaults(func=_report)

    t = sub.add_parser("tiers", help="tier upgrades from performance (阶梯式分佣)")
    t.add_argument("action", choices=["evaluate"])
    t.add_argument("--period", required=True, help="the period evaluated: 2026-11 (month) or 2026-Q4 (quarter)")
    t.add_argument("--config", help="fenxiao.toml with [tier_rules] (default: $FENXIAO_CONFIG or ./fenxiao.toml)")
    t.add_argument("--dry-run", action="store_true", help="print the changes without publishing them")
    t.set_defaults(func=_tiers)


def _report(args: argparse.Namespace) -> int:
    import json

    if args.name != "totals":
        return _bi_report(args)

    from streams import names
    from streams.settings import get_settings
    from streams.sinks import clickhouse, reports, sink_process, warehouse

    settings = get_settings()
    try:
        ch = warehouse.connect(settings)
    except clickhouse.ChdbLockedError as locked:
        try:
            data = sink_process.get_json(
                settings.sink_port, "/outcome", settings.token_key.get_secret_value(), timeout=300.0
            )
        except (OSError, ValueError) as e:
            raise CliError(
                f"{locked} Reading through the sink process on {names.ENV_SINK_PORT}={settings.sink_port} failed"
                f" too: {e}"
            ) from None
    except clickhouse.ClickHouseError as e:
        raise CliError(str(e)) from e
    else:
        try:
            data = reports.outcome(ch)
        finally:
            ch.close()
    if args.format == "json":
        print(json.dumps(data, indent=1, sort_keys=True))
    elif args.format == "csv":
        print("kind,raw_ledger_cents,daily_aggregate_cents")
        for kind, total in data["totals"].items():
            print(f"{kind},{total},{data['aggregate_totals'][kind]}")
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title="ledger totals (cents)")
        t.add_column("kind")
        t.add_column("raw ledger", justify="right")
        t.add_column("daily aggregate", justify="right")
        for kind, total in data["totals"].items():
            t.add_row(kind, f"{total:,}", f"{data['aggregate_totals'][kind]:,}")
        Console().print(t)
    return 0


def _token(args: argparse.Namespace) -> int:
    """Print a signed API token for a distributor or an operator, keyed by FENXIAO_TOKEN_KEY."""
    from streams import names
    from streams.api import auth
    from streams.settings import get_settings

    if args.ttl <= 0:
        raise CliError(f"--ttl must be a positive number of seconds, got {args.ttl}")
    key = get_settings().token_key.get_secret_value()
    if key == auth.DEV_TOKEN_KEY:
        err.print(f"[yellow]warning:[/] {names.ENV_TOKEN_KEY} is not set; this token is signed with the dev key")
    if args.distributor is not None:
        if args.subject is not None:
            raise CliError("--distributor ID already names the subject; drop --subject")
        role, subject = auth.DISTRIBUTOR, args.distributor
    elif args.operator or args.role == auth.OPERATOR:
        role, subject = auth.OPERATOR, args.subject  # the operator's name in the audit of their writes
    else:
        if not args.subject:
            raise CliError("--role distributor needs --subject USER_ID (the distributor's user_id)")
        role, subject = auth.DISTRIBUTOR, args.subject
    print(auth.issue(key, role, subject, args.ttl))
    return 0


def _add_token_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`token`: a bearer token for the worker's API and dashboard."""
    t = sub.add_parser("token", help="print a bearer token for the API and the dashboard")
    who = t.add_mutually_exclusive_group(required=True)
    who.add_argument("--distributor", metavar="ID", help="a token that reads only this distributor's data")
    who.add_argument("--operator", action="store_true", help="a token that reads everything")
    who.add_argument("--role", choices=["operator", "distributor"], help="the token's role (with --subject)")
    t.add_argument("--subject", help="who the token speaks for: an operator's name (for the audit) or a user_id")
    t.add_argument("--ttl", type=int, default=86400, help="seconds until it expires (default 86400)")
    t.set_defaults(func=_token)


def _ops(args: argparse.Namespace) -> int:
    """The operator commands (streams/ops/operator_cli.py): their errors already name the fix."""
    from streams.ops import operator_cli as ops_cli

    try:
        return ops_cli.run(args)
    except ops_cli.OpsError as e:
        raise CliError(escape(str(e))) from None  # the API's text is data, never rich markup


def _webhooks(args: argparse.Namespace) -> int:
    """`fenxiao webhooks failed|redeliver`: the given-up deliveries, and sending them again once fixed."""
    import asyncio
    from pathlib import Path

    from streams.engine import config
    from streams.settings import get_settings
    from streams.sinks import webhooks

    settings = get_settings()
    redis_url = settings.redis_url.get_secret_value()
    if args.action == "failed":

        async def rows() -> list[webhooks.Failure]:
            from streams.state import redis_conn

            r = redis_conn.connect_async(redis_url, decode_responses=True)
            try:
                return await webhooks.failures(r, args.limit)
            finally:
                await r.aclose()

        for f in asyncio.run(rows()):
            g = f.fields
            where = f"{g.get('url')}  {g.get('id')}  {g.get('type')}"
            print(f"{f.stream_id}  {where}  attempts {g.get('attempts')}  {g.get('reason')}")
        return 0
    path = Path(args.config) if args.config else settings.config
    try:
        rules = config.load(path).webhooks
        if rules is None:
            raise CliError(f"{path} has no [webhooks] section: nothing to redeliver to")
        secret, previous = webhooks.secret_of(rules), webhooks.previous_secret_of(rules)
    except (config.ConfigError, webhooks.WebhookError) as e:
        raise CliError(str(e)) from e
    done = asyncio.run(webhooks.redeliver(redis_url, rules, secret, args.url, args.limit, previous))
    for reason in done.reasons[:20]:
        err.print(f"[yellow]still failing:[/] {escape(reason)}")
    print(f"redelivered {done.sent}, still failing {done.failed}, skipped {done.skipped}")
    return 0 if done.failed == 0 else 1


def _add_webhooks_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`webhooks failed|redeliver` (docs/webhooks.md)."""
    h = sub.add_parser("webhooks", help="list webhook deliveries that were given up, or send them again")
    h.add_argument("action", choices=["failed", "redeliver"])
    h.add_argument("--config", help="the program config with [webhooks] (default: $FENXIAO_CONFIG or ./fenxiao.toml)")
    h.add_argument("--url", help="redeliver only to this URL, as `failed` and /status show it")
    h.add_argument("--limit", type=int, default=1000, help="at most this many, oldest first (default 1000)")
    h.set_defaults(func=_webhooks)


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    p = argparse.ArgumentParser(prog="fenxiao", description="Streaming commission engine for distribution programs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="start, stop or show the local Kafka and Redis")
    s.add_argument("action", choices=["up", "down", "status"])
    s.set_defaults(func=_stack)

    w = sub.add_parser("worker", help="run the commission worker in the foreground")
    w.add_argument("--config", help="the program config, fenxiao.toml (default: $FENXIAO_CONFIG or ./fenxiao.toml)")
    w.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    w.add_argument(
        "--standby",
        action="store_true",
        help="wait for the running worker's lease and take over when it stops (hot standby), instead of refusing",
    )
    w.add_argument(
        "--no-sink",
        action="store_true",
        help="do not spawn the `fenxiao sink` child (ClickHouse, reports, API read models): run one elsewhere",
    )
    w.set_defaults(func=_worker)

    sk = sub.add_parser(
        "sink", help="run the ClickHouse sink, the API read-model projector and the report server (one per chDB dir)"
    )
    sk.add_argument(
        "--config",
        help="the program config (accepted so worker and sink share a command line; the sink reads none of it)",
    )
    sk.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    sk.set_defaults(func=_sink)

    cr = sub.add_parser(
        "credit",
        help="run the staged topology's credit stage (a staged worker spawns it; run one alone to add capacity)",
    )
    cr.add_argument("--config", help="the program config, fenxiao.toml (default: $FENXIAO_CONFIG or ./fenxiao.toml)")
    cr.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    cr.set_defaults(func=_credit)

    _add_replay_commands(sub)
    _add_token_command(sub)
    _add_webhooks_command(sub)

    d = sub.add_parser("demo", help="stack + worker + a generated flash sale, live, a report; stays up until Ctrl-C")
    d.add_argument("--users", type=_count, default=3000, help="users in the referral forest (default 3000)")
    d.add_argument("--orders", type=_count, default=20000, help="orders in the sale (default 20000)")
    d.add_argument("--duration", type=_positive, default=60.0, help="seconds of sale, replayed in real time")
    d.add_argument("--seed", type=int, default=11, help="generator seed")
    d.add_argument("--speed", type=_positive, default=4.0, help="replay speed against the events' ts (default 4x)")
    d.add_argument(
        "--exit-when-done",
        action="store_true",
        help="stop the worker and exit after the report (scripts, tests); by default it stays up until Ctrl-C",
    )
    d.set_defaults(func=_demo)

    _add_report_commands(sub)
    from streams.ops import operator_cli as ops_cli

    ops_cli.add_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn known failures into one readable line."""
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "ops"):
            return _ops(args)
        rc: int = args.func(args)
        return rc
    except CliError as e:
        err.print(f"[bold red]error:[/] {e}")
        return 2
    except ValidationError as e:
        if e.title != "Settings":
            raise
        from streams import settings

        for line in settings.explain(e).splitlines():
            err.print(f"[bold red]error:[/] {escape(line)}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
