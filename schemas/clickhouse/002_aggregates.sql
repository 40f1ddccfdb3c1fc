-- Incrementally maintained aggregates for reports and dashboards.
--
-- A materialized view sees each block inserted into its source table exactly once and
-- adds it to a SummingMergeTree, so a duplicate row in the source would be counted twice
-- here (FINAL on the source does not help). streams/sink.py therefore inserts only rows
-- whose key is not stored yet; if an aggregate is ever suspected wrong, rebuild it from
-- the raw tables with streams.sink.rebuild_aggregates() while the worker is stopped.
--
-- Rows of a SummingMergeTree are summed only when parts merge: always read with
-- sum(...) GROUP BY the ORDER BY key. Days and minutes are UTC.

CREATE TABLE IF NOT EXISTS commission_daily
(
    day               Date                   COMMENT 'UTC calendar day of the ledger entry ts',
    beneficiary_id    String                 COMMENT 'Distributor (user_id) whose balance the entries moved',
    level             UInt8                  COMMENT 'Distribution level 1..3 of the beneficiary for the orders',
    campaign_id       String                 COMMENT 'Campaign of the orders; empty string when none',
    accrued_cents     Int64                  COMMENT 'Sum of accrued entries in cents (>= 0): commission earned, into pending',
    reversed_cents    Int64                  COMMENT 'Sum of reversed entries in cents (<= 0): taken back from pending',
    settled_cents     Int64                  COMMENT 'Sum of settled entries in cents (>= 0): moved from pending to available',
    clawed_back_cents Int64                  COMMENT 'Sum of clawed_back entries in cents (<= 0): taken back from available',
    entries           UInt64                 COMMENT 'Number of ledger entries summed into this row'
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (beneficiary_id, day, level, campaign_id)
COMMENT 'Commission per distributor per UTC day per level per campaign, by kind; fed by commission_daily_mv';

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
GROUP BY day, beneficiary_id, level, campaign_id
COMMENT 'Adds every block inserted into ledger_entries to commission_daily';

CREATE TABLE IF NOT EXISTS campaign_minute
(
    minute         DateTime('UTC') COMMENT 'Start of the UTC minute of the event ts',
    campaign_id    String          COMMENT 'Campaign; empty string for orders without one',
    paid_orders    UInt64          COMMENT 'Number of paid order events',
    gmv_cents      Int64           COMMENT 'Sum of amount_cents of paid order events, in cents (gross, before refunds)',
    refunded_cents Int64           COMMENT 'Sum of amount_cents of refunded order events, in cents (>= 0)',
    accrued_cents  Int64           COMMENT 'Sum of accrued commission ledger entries, in cents'
)
ENGINE = SummingMergeTree
PARTITION BY toYYYYMM(minute)
ORDER BY (campaign_id, minute)
COMMENT 'Per campaign per UTC minute: orders, GMV, refunds and commission accrued; fed by campaign_minute_orders_mv and campaign_minute_ledger_mv';

CREATE MATERIALIZED VIEW IF NOT EXISTS campaign_minute_orders_mv TO campaign_minute
AS SELECT
    toDateTime(toStartOfMinute(ts), 'UTC')                AS minute,
    campaign_id,
    countIf(type = 'paid')                                AS paid_orders,
    sumIf(ifNull(amount_cents, 0), type = 'paid')         AS gmv_cents,
    sumIf(ifNull(amount_cents, 0), type = 'refunded')     AS refunded_cents,
    toInt64(0)                                            AS accrued_cents
FROM orders
WHERE type IN ('paid', 'refunded')
GROUP BY minute, campaign_id
COMMENT 'Adds paid and refunded order events inserted into orders to campaign_minute';

CREATE MATERIALIZED VIEW IF NOT EXISTS campaign_minute_ledger_mv TO campaign_minute
AS SELECT
    toDateTime(toStartOfMinute(ts), 'UTC') AS minute,
    campaign_id,
    toUInt64(0)                            AS paid_orders,
    toInt64(0)                             AS gmv_cents,
    toInt64(0)                             AS refunded_cents,
    sum(amount_cents)                      AS accrued_cents
FROM ledger_entries
WHERE kind = 'accrued'
GROUP BY minute, campaign_id
COMMENT 'Adds accrued ledger entries inserted into ledger_entries to campaign_minute';
