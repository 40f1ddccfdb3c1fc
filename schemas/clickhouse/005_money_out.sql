-- Contract v2 (issue #13): the money-out ledger kinds and the withdrawal states.
--
-- Entries of the kinds held, released, withdrawn and adjusted have level 0 and no order, buyer or
-- campaign: as for every optional id of 001 (ids are non-empty by contract), those are stored as ''.
-- They carry withdrawal_id or adjustment_id (and reason for adjusted; fee_cents and payout_cents for
-- withdrawn), which become columns here, '' / NULL on the entries of an order.
--
-- Commission aggregates stay commission only: commission_daily_mv is re-created to read the four order
-- kinds (no level-0 row was ever stored: 001's level_range refused them), and the payouts report reads
-- withdrawal_states. See docs/decisions.md, "Money out in ClickHouse".
-- Every statement is IF [NOT] EXISTS, so a half-applied migration can simply be run again.

ALTER TABLE ledger_entries
    ADD COLUMN IF NOT EXISTS withdrawal_id String DEFAULT ''
    COMMENT 'Withdrawal of a held, released or withdrawn entry; empty string on other kinds';

ALTER TABLE ledger_entries
    ADD COLUMN IF NOT EXISTS adjustment_id String DEFAULT ''
    COMMENT 'Adjustment (operator credit or debit, or award) of an adjusted entry; empty string on other kinds';

ALTER TABLE ledger_entries
    ADD COLUMN IF NOT EXISTS reason String DEFAULT ''
    COMMENT 'Operator''s reason of an adjusted entry; empty string when the entry has none';

ALTER TABLE ledger_entries
    ADD COLUMN IF NOT EXISTS fee_cents Nullable(Int64)
    COMMENT 'Fee withheld from the payout of a withdrawn entry, in cents (分); NULL on other kinds';

ALTER TABLE ledger_entries
    ADD COLUMN IF NOT EXISTS payout_cents Nullable(Int64)
    COMMENT 'What reached the distributor for a withdrawn entry (amount - fee), in cents (分); NULL on other kinds';

ALTER TABLE ledger_entries DROP CONSTRAINT IF EXISTS kind_known;

ALTER TABLE ledger_entries DROP CONSTRAINT IF EXISTS level_range;

ALTER TABLE ledger_entries ADD CONSTRAINT IF NOT EXISTS kind_known_v2
    CHECK kind IN ('accrued', 'reversed', 'settled', 'clawed_back', 'held', 'released', 'withdrawn', 'adjusted');

ALTER TABLE ledger_entries ADD CONSTRAINT IF NOT EXISTS level_of_kind
    CHECK if(kind IN ('held', 'released', 'withdrawn', 'adjusted'), level = 0, level BETWEEN 1 AND 3);

ALTER TABLE ledger_entries COMMENT COLUMN kind
    'accrued (+, into pending) | reversed (-, out of pending) | settled (+, pending to available) | clawed_back (-, out of available) | held (-, available to reserved) | released (+, reserved back to available) | withdrawn (-, out of reserved) | adjusted (+/-, on available)';

ALTER TABLE ledger_entries COMMENT COLUMN level
    'Distribution level of the beneficiary for this order: 1, 2 or 3 (一级/二级/三级); 0 for held, released, withdrawn and adjusted';

ALTER TABLE ledger_entries COMMENT COLUMN order_id
    'Order the commission belongs to; empty string for held, released, withdrawn and adjusted (null in the record)';

ALTER TABLE ledger_entries COMMENT COLUMN buyer_id
    'Buyer of the order (a user_id, or the id of a guest who never signed up); empty string when the entry has no order';

DROP VIEW IF EXISTS commission_daily_mv;

CREATE MATERIALIZED VIEW IF NOT EXISTS commission_daily_mv TO commission_daily
AS SELECT
    toDate(ts)                                AS day,
    beneficiary_id,
    level,
    campaign_id,
    sumIf(amount_cents, kind = 'accrued')     AS accrued_cents,
    sumIf(amount_cents, kind = 'reversed')    AS reversed_cents,
    sumIf(amount_cents, kind = 'settled')     AS settled_cents,
    sumIf(amount_cents, kind = 'clawed_back') AS clawed_back_cents,
    count()                                   AS entries
FROM ledger_entries
WHERE kind IN ('accrued', 'reversed', 'settled', 'clawed_back')
GROUP BY day, beneficiary_id, level, campaign_id
COMMENT 'Adds the commission entries (the four order kinds) of every block inserted into ledger_entries to commission_daily';

CREATE TABLE IF NOT EXISTS withdrawal_states
(
    id             String                 COMMENT 'withdrawal_id:status, one per accepted transition (the dedupe key)',
    withdrawal_id  String                 COMMENT 'The withdrawal (the Idempotency-Key of its request)',
    distributor_id String                 COMMENT 'Distributor (user_id) who requested it',
    status         LowCardinality(String) COMMENT 'The state it moved to: requested | approved | rejected | paid | failed',
    amount_cents   Int64                  COMMENT 'Amount requested in cents (分), on every transition of the withdrawal',
    channel        String                 COMMENT 'Payout channel of the request (wechat, alipay, bank, ...); empty string when none',
    fee_cents      Nullable(Int64)        COMMENT 'Fee withheld in cents (分), locked at the request; NULL when the record has none',
    payout_cents   Nullable(Int64)        COMMENT 'amount - fee in cents (分); NULL when the record has none',
    ts             DateTime64(3, 'UTC')   COMMENT 'Event time of the withdrawals event that made the transition, UTC',
    event_id       String                 COMMENT 'event_id of that withdrawals event',
    inserted_at    DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') COMMENT 'Wall-clock time the sink wrote the row, UTC; diagnostics only',
    CONSTRAINT status_known CHECK status IN ('requested', 'approved', 'rejected', 'paid', 'failed')
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY id
COMMENT 'Records of topic fenxiao.withdrawal-states: every accepted withdrawal transition with its channel and fee (read with FINAL)';
