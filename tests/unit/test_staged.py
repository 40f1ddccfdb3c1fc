"""The staged topology's two stages, run in memory: the spec's examples still give their expected.json exactly.

The attribution stage (Ledger.attribute_order for orders, Ledger.step for the rest) forwards order steps and
watermarks; the credit stage (streams.pipeline.credit.apply_batch) applies them per partition, loading and
writing orders through an in-memory stand-in of its Redis store (encoded as the store encodes them), with the
partitions' batches interleaved at random: another worker's partitions may be ahead or behind.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from schemas.events import Invalid, Order, Withdrawal, decode
from streams import names
from streams.engine import config, outcome, reference
from streams.engine.ledger import INVALID_EVENT, Ledger, State, Terms, seq_key
from streams.ops import flashsale
from streams.ops.demo import program_toml
from streams.pipeline.consume import Held
from streams.pipeline.credit import apply_batch
from streams.pipeline.outputs import java_partition
from streams.pipeline.steps import PACK_BYTES, PACK_STEPS, StepValue, decode_steps, pack, step_of, terms_of
from streams.state.referral_store import decode_order, encode_order

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
NOW_MS = 1_796_169_600_000  # 2026-12-02T00:00Z, as test_examples: after every example's freeze but two-level's


def _raw(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else json.dumps(value, separators=(",", ":")).encode()


def attribute(records: list[dict[str, Any]], program: config.Program, now_ms: int, parts: int, wm_every: int):  # type: ignore[no-untyped-def]
    """The attribution stage over the records in spec order: its own outputs and each partition's step records."""
    decoded = []
    dead: list[dict[str, Any]] = []
    for i, rec in enumerate(records):
        ev = decode(rec["topic"], _raw(rec["value"]))
        if isinstance(ev, Invalid):
            dead.append({"topic": rec["topic"], "offset": i, "event_id": ev.event_id, "reason": INVALID_EVENT})
            continue
        decoded.append((seq_key(names.TOPIC_RANK_V2[rec["topic"]], ev), i, rec["topic"], ev))
    decoded.sort(key=lambda t: (t[0], t[1]))
    ledger = Ledger(program, State())
    entries: list[dict[str, Any]] = []
    bindings: list[dict[str, Any]] = []
    steps: dict[int, list[bytes]] = {p: [] for p in range(parts)}
    pending: list[tuple[str, StepValue]] = []

    def mark(until: int) -> None:
        """A batch ends: its steps packed per partition, each closed by the watermark (as the sequencer does)."""
        for p, raw in pack(pending, until, parts):
            steps[p].append(raw)
        pending.clear()

    for n, (key, i, topic, ev) in enumerate(decoded):
        if n and n % wm_every == 0:
            mark(key[0] - 1)  # strictly before every event not yet applied
        if isinstance(ev, Withdrawal):
            raise AssertionError("the staged topology refuses withdrawals")
        if isinstance(ev, Order):
            res, terms, forward = ledger.attribute_order(ev)
            if forward:
                pending.append((ev.order_id, step_of(Held(ev, topic, 0, i, None, _raw(records[i]["value"])), terms)))
        else:
            res = ledger.step(ev, key)
        entries.extend(e.as_record() for e in res.entries)
        bindings.extend(b.as_record() for b in res.bindings)
        if res.rejection:
            dead.append({"topic": topic, "offset": i, "event_id": ev.event_id, "reason": res.rejection})
    mark(now_ms)
    return entries, bindings, dead, steps


class FakeRedis:
    """What the credit store keeps: encoded orders, the settle index, dead ids; loads and writes as it does."""

    def __init__(self) -> None:
        self.orders: dict[str, str] = {}
        self.settle: dict[str, int] = {}
        self.dead: set[str] = set()

    def load(self, order_ids: set[str], event_ids: list[str], until: int) -> State:
        state = State(complete=False)
        for oid in order_ids | {o for o, at in self.settle.items() if at <= until}:
            raw = self.orders.get(oid)
            state.orders[oid] = None if raw is None else decode_order(raw)
        for oid, at in self.settle.items():
            if at <= until:
                state.settle_index[oid] = at
        state.dead_ids = self.dead & set(event_ids)
        state.dead_checked = set(event_ids)
        return state

    def commit(self, state: State) -> None:
        for oid in state.dirty_orders:
            o = state.orders[oid]
            assert o is not None
            self.orders[oid] = encode_order(o)
            if o.settle_at_ms is not None and not o.settled:
                self.settle[oid] = o.settle_at_ms
            else:
                self.settle.pop(oid, None)
        self.dead |= state.new_dead_ids


def credit(
    program: config.Program, steps: dict[int, list[bytes]], parts: int, rng: random.Random, redo: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The credit stage: random batches of random partitions until every step is applied (redo: each twice)."""
    redis = FakeRedis()
    pos = dict.fromkeys(steps, 0)
    entries: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    while any(pos[p] < len(steps[p]) for p in steps):
        todo = [p for p in steps if pos[p] < len(steps[p])]
        chosen = rng.sample(todo, rng.randint(1, len(todo)))
        batch: dict[int, list[tuple[StepValue, Order | None]]] = {}
        for p in chosen:
            n = rng.randint(1, 3)
            recs = []
            for raw in steps[p][pos[p] : pos[p] + n]:
                for v in decode_steps(raw):
                    ev = None if v.w is not None else decode(v.t, v.r)
                    assert ev is None or isinstance(ev, Order)
                    recs.append((v, ev))
            batch[p] = recs
            pos[p] += len(steps[p][pos[p] : pos[p] + n])
        orders = {ev.order_id for recs in batch.values() for _, ev in recs if ev is not None}
        events = [ev.event_id for recs in batch.values() for _, ev in recs if ev is not None]
        until = max((v.w for recs in batch.values() for v, _ in recs if v.w is not None), default=-1)
        for attempt in range(2 if redo else 1):
            state = redis.load(orders, events, until)
            out = apply_batch(program, state, batch, parts)
            if attempt == 0 and redo:
                continue  # produced, then crashed before the commit: the batch is applied again
            redis.commit(state)
            for topic, _, value in out:
                if topic == names.COMMISSIONS:
                    entries.append(value)
                elif topic == names.DEAD_LETTERS:
                    dead.append(
                        {
                            "topic": value["topic"],
                            "offset": value["offset"],
                            "event_id": value["event_id"],
                            "reason": value["reason"],
                        }
                    )
    return entries, dead


def staged_outcome(
    records: list[dict[str, Any]], program: config.Program, parts: int, seed: int, redo: bool = False
) -> dict[str, Any]:
    a_entries, bindings, a_dead, steps = attribute(records, program, NOW_MS, parts, wm_every=3 + seed % 5)
    b_entries, b_dead = credit(program, steps, parts, random.Random(seed), redo)
    return outcome.summarize([*a_entries, *b_entries], bindings, [*a_dead, *b_dead])


def load(name: str) -> tuple[list[dict[str, Any]], config.Program, dict[str, Any]]:
    d = FIXTURES / name
    records = [json.loads(line) for line in (d / "events.jsonl").read_text().splitlines() if line.strip()]
    return records, config.load(d / "fenxiao.toml"), json.loads((d / "expected.json").read_text())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("parts", [1, 3, 8])
@pytest.mark.parametrize("name", ["basic", "two-level", "messy"])
def test_the_spec_examples_through_both_stages(name: str, parts: int, seed: int) -> None:
    records, program, expected = load(name)
    got = staged_outcome(records, program, parts, seed)
    assert not outcome.diff(got, expected), "\n".join(outcome.diff(got, expected))
    assert got == expected


@pytest.mark.parametrize("name", ["basic", "messy"])
def test_a_batch_applied_twice_changes_nothing(name: str) -> None:
    """A credit worker that produced a batch and died before its commit: the redo gives the same outcome."""
    records, program, expected = load(name)
    assert staged_outcome(records, program, 4, 5, redo=True) == expected


@pytest.mark.parametrize("seed", [3, 8])
def test_a_generated_sale_equals_the_reference(seed: int) -> None:
    """A flash sale with binds at first purchase, refunds, cancels and settlements: as one worker's order."""
    start = datetime(2026, 11, 11, tzinfo=UTC)
    records = list(flashsale.generate(300, 600, seed, start, 1800))
    program = config.parse(program_toml(freeze_seconds=60))
    ref = reference.run(records, program, NOW_MS)
    want = outcome.summarize(ref.entries, ref.bindings, ref.dead_letters)
    assert want["totals"]["accrued"] > 0 and want["totals"]["settled"] > 0 and want["totals"]["reversed"] < 0
    assert staged_outcome(records, program, 6, seed) == want


def _order_held(order_id: str, offset: int, raw_size: int = 0) -> Held:
    value = {"event_id": f"e-{order_id}-{offset}", "ts": "2026-11-11T00:00:00.000Z", "order_id": order_id}
    value |= {"type": "paid", "buyer_id": "b", "amount_cents": 100, "pad": "x" * raw_size}
    raw = json.dumps(value).encode()
    ev = decode(names.ORDERS, raw)
    assert isinstance(ev, Order)
    return Held(ev, names.ORDERS, 2, offset, b"b\xff", raw)


def test_packed_records_keep_each_partitions_steps_in_order_and_end_with_the_watermark() -> None:
    """Every step lands on its order's partition, in batch order, then each partition's watermark, once."""
    parts = 5
    oids = [f"o{n % 37}" for n in range(300)]
    steps = [(oid, step_of(_order_held(oid, n), None)) for n, oid in enumerate(oids)]
    got: dict[int, list[StepValue]] = {p: [] for p in range(parts)}
    for p, raw in pack(steps, 1234, parts):
        got[p].extend(decode_steps(raw))
    for p in range(parts):
        want = [o for oid, o in steps if java_partition(oid.encode(), parts) == p]
        assert got[p][:-1] == want
        assert got[p][-1] == StepValue(w=1234)
    assert pack([], None, parts) == []
    assert [p for p, _ in pack([], 7, 3)] == [0, 1, 2]


def test_a_large_batch_is_split_into_records_under_the_size_limits() -> None:
    """No record holds more than PACK_STEPS steps or much more than PACK_BYTES of raw input; nothing is lost."""
    many = [("same", step_of(_order_held("same", n), None)) for n in range(PACK_STEPS * 2 + 3)]
    sizes = [len(decode_steps(raw)) for _, raw in pack(many, None, 1)]
    assert sizes == [PACK_STEPS, PACK_STEPS, 3]
    big = [("same", step_of(_order_held("same", n, raw_size=100_000), None)) for n in range(7)]
    records = pack(big, None, 1)
    assert len(records) > 1 and all(len(raw) < PACK_BYTES + 110_000 for _, raw in records)
    assert [v.o for _, raw in records for v in decode_steps(raw)] == list(range(7))


def test_a_step_keeps_its_record_and_terms_exactly() -> None:
    """Key and raw bytes that are not UTF-8 text, and itemized terms, come back as they went."""
    h = _order_held("o1", 9)
    h = Held(h.event, h.topic, h.partition, h.offset, b"\x00\xfe", h.raw + b" \xff")
    terms = Terms(["a", None, "c"], [1000, 0, 200], 3000, [[1, 2], [3, 4], [5, 6]])
    ((_, raw),) = pack([("o1", step_of(h, terms))], None, 1)
    (v,) = decode_steps(raw)
    assert (v.t, v.p, v.o, v.k, v.r) == (names.ORDERS, 2, 9, b"\x00\xfe", h.raw)
    assert terms_of(v) == terms


def test_a_step_written_before_packing_is_still_read() -> None:
    """A one-step JSON record (the format before packed records) left in the topic by an older attribution stage."""
    old = {
        "t": "fenxiao.orders",
        "p": 1,
        "o": 42,
        "k": "b\u00ff",
        "r": '{"a":1}',
        "x": {"b": ["u1", None], "r": [1000, 0], "m": 3000},
    }
    (v,) = decode_steps(json.dumps(old).encode())
    assert (v.t, v.p, v.o, v.k, v.r, v.w) == ("fenxiao.orders", 1, 42, b"b\xff", b'{"a":1}', None)
    assert terms_of(v) == Terms(["u1", None], [1000, 0], 3000, None)
    assert decode_steps(b'{"w": 77}') == [StepValue(w=77)]
