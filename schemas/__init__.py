"""The event contract: input events, output records and the ClickHouse schema."""
