-- Tables and aggregates for the BI reports (streams/reports.py) and tier evaluation (streams/tier_rules.py).
--
-- GMV must count only the paid events the engine ACCEPTED. The raw `orders` table holds every
-- valid order event, including `paid` events the engine refused (order_already_paid,
-- order_cancelled), so GMV is not read from it alone: `paid_orders` merges, per paid event_id,
-- the order row, the event's accrued ledger entries (who earned at which level) and any dead
-- letter for the event. Its columns are SimpleAggregateFunction(max, ...): merging the same row
-- twice changes nothing, so a replayed sink batch, a backfill run twice, or sources arriving in
-- any order (the ledger entry before the order, the dead letter last) all give the same result.
-- A paid event is accepted when its order row arrived (seen = 1) and no dead letter names it
-- (rejected = 0). Always read with max(...) GROUP BY event_id (parts merge lazily).
-- See docs/decisions.md, "Reports and tiers".

CREATE TABLE IF NOT EXISTS dead_letters
(
    offset      UInt64                 COMMENT 'Offset of the refused input record in its partition (part of the dedupe key)',
    topic       LowCardinality(String) COMMENT 'Input topic of the refused record, e.g. fenxiao.orders (part of the dedupe key)',
    partition   UInt32                 COMMENT 'Partition of the refused input record (part of the dedupe key)',
    event_id    String                 COMMENT 'event_id of the refused event; empty string when it was unreadable',
    reason      LowCardinality(String) COMMENT 'Why it was refused: invalid_event, duplicate_user, order_cancelled, order_already_paid, over_refund, unknown_order, ...',
    detail      String                 COMMENT 'Readable explanation from the engine',
    raw         String                 COMMENT 'The original record value as text (undecodable bytes as \\xNN)',
    ts          Nullable(DateTime64(3, 'UTC')) COMMENT 'ts of the refused event (or of the record when unreadable), UTC; NULL when not a valid time',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') COMMENT 'Wall-clock time the sink wrote the row, UTC; diagnostics only'
)
ENGINE = ReplacingMergeTree
ORDER BY (topic, partition, offset)
COMMENT 'Records of topic fenxiao.dead-letters, one per refused input record (read with FINAL)';

CREATE TABLE IF NOT EXISTS tier_events
(
    event_id    String               COMMENT 'Input event id of the tier event (the dedupe key); tier evaluation uses tier:{user}:{period}:{tier}',
    ts          DateTime64(3, 'UTC') COMMENT 'From when the tier applies (orders paid at or after it), UTC',
    user_id     String               COMMENT 'User whose tier is set',
    tier        String               COMMENT 'Tier name of the config (an unknown name prices as standard)',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') COMMENT 'Wall-clock time the sink wrote the row, UTC; diagnostics only'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY event_id
COMMENT 'Valid events of topic fenxiao.tiers (operator changes and published tier evaluations); a user''s tier at t is the latest event at or before t';

CREATE TABLE IF NOT EXISTS paid_orders
(
    event_id     String                                          COMMENT 'event_id of the paid order event (= source_event_id of its accrued ledger entries)',
    paid_at      SimpleAggregateFunction(max, DateTime64(3, 'UTC')) COMMENT 'Event time of the paid event, UTC',
    order_id     SimpleAggregateFunction(max, String)            COMMENT 'Order that was paid',
    buyer_id     SimpleAggregateFunction(max, String)            COMMENT 'Buyer of the order',
    campaign_id  SimpleAggregateFunction(max, String)            COMMENT 'Campaign of the order; empty string when none',
    amount_cents SimpleAggregateFunction(max, Int64)             COMMENT 'Paid (commissionable) amount in cents (分): the GMV of the order',
    seen         SimpleAggregateFunction(max, UInt8)             COMMENT '1 once the paid event itself is stored in orders',
    rejected     SimpleAggregateFunction(max, UInt8)             COMMENT '1 when the engine dead-lettered the event (order_already_paid, order_cancelled): not GMV',
    level1_id    SimpleAggregateFunction(max, String)            COMMENT 'Distributor paid at level 1 (an accrued entry); empty when nobody earned at level 1',
    level2_id    SimpleAggregateFunction(max, String)            COMMENT 'Distributor paid at level 2; empty when nobody',
    level3_id    SimpleAggregateFunction(max, String)            COMMENT 'Distributor paid at level 3; empty when nobody'
)
ENGINE = AggregatingMergeTree
ORDER BY event_id
COMMENT 'One row per paid event after merging: accepted GMV and who it is attributed to per level; fed by the three paid_orders_*_mv views';

CREATE MATERIALIZED VIEW IF NOT EXISTS paid_orders_orders_mv TO paid_orders
AS SELECT
    event_id,
    ts                     AS paid_at,
    order_id,
    buyer_id,
    campaign_id,
    ifNull(amount_cents, 0) AS amount_cents,
    toUInt8(1)             AS seen,
    toUInt8(0)             AS rejected,
    ''                     AS level1_id,
    ''                     AS level2_id,
    ''                     AS level3_id
FROM orders
WHERE type = 'paid'
COMMENT 'The paid event itself: amount, buyer, campaign';

CREATE MATERIALIZED VIEW IF NOT EXISTS paid_orders_ledger_mv TO paid_orders
AS SELECT
    source_event_id                       AS event_id,
    ts                                    AS paid_at,
    order_id,
    buyer_id,
    campaign_id,
    toInt64(0)                            AS amount_cents,
    toUInt8(0)                            AS seen,
    toUInt8(0)                            AS rejected,
    if(level = 1, beneficiary_id, '')     AS level1_id,
    if(level = 2, beneficiary_id, '')     AS level2_id,
    if(level = 3, beneficiary_id, '')     AS level3_id
FROM ledger_entries
WHERE kind = 'accrued'
COMMENT 'Who earned on the paid event, per level (accrued entries exist only for accepted paid events)';

CREATE MATERIALIZED VIEW IF NOT EXISTS paid_orders_dead_letters_mv TO paid_orders
AS SELECT
    event_id,
    toDateTime64(0, 3, 'UTC') AS paid_at,
    ''                        AS order_id,
    ''                        AS buyer_id,
    ''                        AS campaign_id,
    toInt64(0)                AS amount_cents,
    toUInt8(0)                AS seen,
    toUInt8(1)                AS rejected,
    ''                        AS level1_id,
    ''                        AS level2_id,
    ''                        AS level3_id
FROM dead_letters
WHERE topic = 'fenxiao.orders' AND event_id != ''
COMMENT 'Marks a refused order event; rows for refused refunds/cancels never have seen = 1 and are ignored';

CREATE TABLE IF NOT EXISTS funnel_daily
(
    day            Date                                  COMMENT 'UTC day of the click or of the signup',
    distributor_id String                                COMMENT 'The sharing distributor (click ref) or the inviter of the signup; empty string for signups without an inviter',
    campaign_id    String                                COMMENT 'Campaign of the clicked link; empty string for links without one and for signups (a signup carries no campaign)',
    clicks         SimpleAggregateFunction(sum, UInt64)  COMMENT 'Number of clicks on the distributor''s links',
    visitors       AggregateFunction(uniq, String)       COMMENT 'Distinct visitor_ids who clicked (uniq state: read with uniqMerge; exact for small counts, ~1% error when large)',
    signups        SimpleAggregateFunction(sum, UInt64)  COMMENT 'Users who signed up bound to this distributor (binding source signup or click)'
)
ENGINE = AggregatingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (distributor_id, day, campaign_id)
COMMENT 'Funnel per distributor per UTC day: clicks, distinct visitors, signups; first orders come from paid_orders joined to bindings at query time';

CREATE MATERIALIZED VIEW IF NOT EXISTS funnel_daily_clicks_mv TO funnel_daily
AS SELECT
    toDate(ts)              AS day,
    ref                     AS distributor_id,
    campaign_id,
    toUInt64(count())       AS clicks,
    uniqState(visitor_id)   AS visitors,
    toUInt64(0)             AS signups
FROM clicks
GROUP BY day, distributor_id, campaign_id
COMMENT 'Adds every block inserted into clicks to funnel_daily';

CREATE MATERIALIZED VIEW IF NOT EXISTS funnel_daily_signups_mv TO funnel_daily
AS SELECT
    toDate(ts)                    AS day,
    ifNull(inviter_id, '')        AS distributor_id,
    ''                            AS campaign_id,
    toUInt64(0)                   AS clicks,
    uniqStateIf(user_id, false)   AS visitors,
    toUInt64(count())             AS signups
FROM bindings
WHERE source IN ('signup', 'click')
GROUP BY day, distributor_id
COMMENT 'Adds every signup binding inserted into bindings to funnel_daily (one per user: a signup is decided once)';

-- Backfill from rows stored before this migration. Safe to run again: paid_orders merges with max,
-- and funnel_daily is filled only when it is still empty.
INSERT INTO paid_orders
SELECT event_id, ts, order_id, buyer_id, campaign_id, ifNull(amount_cents, 0), 1, 0, '', '', ''
FROM orders FINAL WHERE type = 'paid';

INSERT INTO paid_orders
SELECT source_event_id, ts, order_id, buyer_id, campaign_id, 0, 0, 0,
       if(level = 1, beneficiary_id, ''), if(level = 2, beneficiary_id, ''), if(level = 3, beneficiary_id, '')
FROM ledger_entries FINAL WHERE kind = 'accrued';

INSERT INTO funnel_daily
SELECT toDate(ts) AS day, ref, campaign_id, count(), uniqState(visitor_id), 0
FROM clicks FINAL
WHERE (SELECT count() FROM funnel_daily) = 0
GROUP BY day, ref, campaign_id;

INSERT INTO funnel_daily
SELECT toDate(ts) AS day, ifNull(inviter_id, ''), '', 0, uniqStateIf(user_id, false), count()
FROM (SELECT DISTINCT user_id, inviter_id, ts FROM bindings WHERE source IN ('signup', 'click'))
WHERE (SELECT sum(signups) FROM funnel_daily) = 0
GROUP BY day, ifNull(inviter_id, '');
