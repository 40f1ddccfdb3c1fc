"""The Faust application: one consumer group, raw bytes in and out (decoding happens in schemas.events)."""

from __future__ import annotations

import faust
from faust.app.base import BootStrategy

from streams.settings import get_settings

_s = get_settings()


class _Boot(BootStrategy):
    """faust without its consumer: the input topics are read by streams.pipeline.consume (aiokafka directly)."""

    enable_kafka_consumer = False


class App(faust.App):
    """The fenxiao app: web views, tasks and timers from faust; no faust consumer group."""

    BootStrategy = _Boot


app = App(
    _s.app_id,
    broker=f"kafka://{_s.kafka}",
    store="memory://",
    datadir=str(_s.var_dir / "faust"),  # faust creates it even with memory tables; keep it out of the cwd
    topic_partitions=_s.partitions,
    topic_allow_declare=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    stream_wait_empty=False,
    broker_commit_interval=1.0,
    # faust's default is 60 s: a SIGKILLed worker's partitions would wait a minute for its replacement.
    broker_session_timeout=10.0,
    broker_heartbeat_interval=3.0,
    producer_acks=-1,
    producer_linger_ms=5,
    producer_compression_type=_s.compression_type,
    web_enabled=True,
    web_port=_s.web_port,
    web_host=_s.web_host,
    autodiscover=False,
)
