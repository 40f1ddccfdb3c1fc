"""Opens ClickHouse as the processes use it: the backend the settings name, wrapped from outside by test faults."""

from __future__ import annotations

from streams.settings import Settings, get_settings
from streams.sinks import faults
from streams.sinks.clickhouse import ChdbBackend, ClickHouse, ServerBackend


def connect(settings: Settings | None = None) -> ClickHouse:
    """The server when FENXIAO_CLICKHOUSE_URL is set, else embedded chDB at settings.chdb_path."""
    settings = settings or get_settings()
    if settings.clickhouse_url is not None:
        return faults.inject(ServerBackend(settings.clickhouse_url.get_secret_value()), settings)
    return faults.inject(ChdbBackend(settings.chdb_path), settings)
