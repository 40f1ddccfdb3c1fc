"""fenxiao.withdrawal-states records over money-out: one per accepted transition, valid against the published schema."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from schemas.events import Invalid, Withdrawal, decode
from streams import names
from streams.engine import config
from streams.engine.ledger import Ledger, State, seq_key
from streams.pipeline.sequencer import withdrawal_state_record
from tests.unit.test_published_schemas import validator

MONEY_OUT = Path(__file__).resolve().parents[1] / "fixtures" / "v2" / "money-out"


def test_money_out_states_one_per_accepted_transition() -> None:
    records = [json.loads(line) for line in (MONEY_OUT / "events.jsonl").read_text(encoding="utf-8").splitlines()]
    events = []
    for r in records:
        ev = decode(r["topic"], json.dumps(r["value"]).encode())
        if not isinstance(ev, Invalid):
            events.append((seq_key(names.TOPIC_RANK[r["topic"]], ev), ev))
    events.sort(key=lambda t: t[0])
    state = State()
    ledger = Ledger(config.load(MONEY_OUT / "fenxiao.toml"), state)
    out = []
    for key, ev in events:
        res = ledger.step(ev, key)
        if isinstance(ev, Withdrawal) and not res.rejection and not res.duplicate:
            out.append(withdrawal_state_record(ev, state))
    check = validator(names.WITHDRAWAL_STATES)
    for topic, key, value in out:
        assert topic == names.WITHDRAWAL_STATES
        assert key == str(value["distributor_id"]).encode()
        assert not list(check.iter_errors(value)), value
    # expected.json's w: entries: 8 held (requests), 5 withdrawn (paid, so approved first), 3 released.
    statuses = Counter(str(v["status"]) for _, _, v in out)
    assert statuses["requested"] == 8 and statuses["paid"] == 5
    assert statuses["rejected"] + statuses["failed"] == 3
    assert statuses["approved"] >= 5
    ids = [v["id"] for _, _, v in out]
    assert len(ids) == len(set(ids)), "a transition is emitted once"
    # wd-4-12 (30000 cents): fee = max(10, (30000 * 60 + 5000) // 10000) = 180.
    paid = next(v for _, _, v in out if v["id"] == "wd-4-12:paid")
    assert (paid["amount_cents"], paid["fee_cents"], paid["payout_cents"]) == (30000, 180, 29820)
    assert not any(v["fee_cents"] is not None for _, _, v in out if v["status"] in ("rejected", "failed"))
    assert not validator(names.WITHDRAWAL_STATES).is_valid({**paid, "status": "cancelled"})
