"""Fault injection for the ClickHouse sink's tests; off unless FENXIAO_SINK_FAULT or a sink_insert crash point is set.

FENXIAO_SINK_FAULT (what a chDB error or an unreachable server looks like to the sink):
  fail:N           the first N insert attempts raise InjectedFault (a ClickHouseError) and write nothing
  lost-ack:N       the first N inserts write their rows, then raise (a timeout after the server committed)
  fail-while:PATH  every insert attempt raises while PATH exists: the test decides when the outage ends
FENXIAO_CRASH_AT=sink_insert:N (or sink_insert.TABLE:N, counting that table's inserts only) kills the
worker with SIGKILL right after the N-th insert has written its rows, before the sink task returns and
its batch's offsets are acked: the replay that follows is the worst case for double counting.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from streams.settings import Settings
from streams.sinks.clickhouse import ClickHouse, ClickHouseError
from streams.sinks.sink import TABLES

log = logging.getLogger(__name__)

CRASH_POINT = "sink_insert"


class InjectedFault(ClickHouseError):
    """An insert failure made up by fault injection; the sink retries it like any ClickHouse error."""


class FaultyClickHouse:
    """A ClickHouse connection whose inserts fail or kill the process as FENXIAO_SINK_FAULT / FENXIAO_CRASH_AT say."""

    def __init__(self, inner: ClickHouse, fault: str | None, crash_at: str | None) -> None:
        self._inner = inner
        mode, _, arg = (fault or "").partition(":")
        self._mode = mode
        self._left = int(arg) if mode in ("fail", "lost-ack") else 0
        self._while = Path(arg) if mode == "fail-while" else None
        point, _, n = (crash_at or "").partition(":")
        self._crash_point, self._crash_after = point, int(n) if n and point.startswith(CRASH_POINT) else 0
        self.attempts = 0
        self._crash_count = 0

    def __getattr__(self, name: str) -> Any:
        """Everything but insert is the real connection's (max_param_bytes and the like)."""
        return getattr(self._inner, name)

    def command(self, sql: str, params: Mapping[str, object] | None = None) -> None:
        """Passed through: only the sink's inserts fail."""
        self._inner.command(sql, params)

    def query(self, sql: str, params: Mapping[str, object] | None = None) -> list[tuple[Any, ...]]:
        """Passed through: the sink's existence checks must see what the failed inserts did or did not write."""
        return self._inner.query(sql, params)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        """Fail, write then fail, or write then die, as configured; only the sink's tables (migrations go through)."""
        if table not in TABLES:
            self._inner.insert(table, columns, rows)
            return
        self.attempts += 1
        failing = self._left > 0 or (self._while is not None and self._while.exists())
        self._left = max(self._left - 1, 0)
        if failing and self._mode != "lost-ack":
            raise InjectedFault(f"fault injection: insert {self.attempts} into {table} refused ({self._mode})")
        self._inner.insert(table, columns, rows)
        if failing:
            raise InjectedFault(f"fault injection: insert {self.attempts} into {table} written, then failed")
        if self._crash_point in (CRASH_POINT, f"{CRASH_POINT}.{table}"):
            self._crash_count += 1
            if self._crash_count == self._crash_after:
                log.warning(
                    "fault injection: SIGKILL after sink insert %d (%s, %d rows)", self.attempts, table, len(rows)
                )
                os.kill(os.getpid(), signal.SIGKILL)

    def close(self) -> None:
        """Passed through."""
        self._inner.close()


def inject(ch: ClickHouse, settings: Settings) -> ClickHouse:
    """The sink's connection: the real one unless the settings ask for a sink fault or a sink crash point."""
    if settings.sink_fault is None and not (settings.crash_at or "").startswith(CRASH_POINT):
        return ch
    log.warning("fault injection on the ClickHouse sink: %s, crash at %s", settings.sink_fault, settings.crash_at)
    return FaultyClickHouse(ch, settings.sink_fault, settings.crash_at)
