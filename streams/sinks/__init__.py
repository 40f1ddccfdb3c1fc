"""ClickHouse: the backends, migrations, the batching sink, its process and the reports over it."""
