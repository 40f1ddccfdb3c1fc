-- Raw tables: one row per output record or input event, exactly as the pipeline saw it.
--
-- They are the truth every report is computed from. Delivery is at-least-once, so the
-- same row can be offered again after a crash; streams/sink.py drops rows whose key is
-- already stored before inserting (the materialized views of 002 must never see a
-- duplicate), and the ReplacingMergeTree engines plus FINAL in the report queries are the
-- second line of defence should one get in anyway (another writer, a manual insert).
--
-- Conventions: names are unqualified (migrate() runs in the configured database, `fenxiao`
-- by default); times are DateTime64(3, 'UTC'); money is Int64 cents (分), never Float;
-- optional ids are '' when absent (ids are non-empty by contract, so '' is unambiguous).
-- Every statement is IF NOT EXISTS so a half-applied migration can simply be run again.

CREATE TABLE IF NOT EXISTS ledger_entries
(
    entry_id        String                 COMMENT 'Deterministic id of the ledger entry (a replay produces the same id); the dedupe key',
    source_event_id String                 COMMENT 'event_id of the input event that caused this money movement',
    ts              DateTime64(3, 'UTC')   COMMENT 'Event time of the source event, UTC, millisecond precision',
    order_id        String                 COMMENT 'Order the commission belongs to',
    buyer_id        String                 COMMENT 'Buyer of the order (a user_id, or the id of a guest who never signed up)',
    beneficiary_id  String                 COMMENT 'Distributor (user_id) whose balance this entry moves',
    level           UInt8                  COMMENT 'Distribution level of the beneficiary for this order: 1, 2 or 3 (一级/二级/三级)',
    kind            LowCardinality(String) COMMENT 'accrued (+, into pending) | reversed (-, out of pending) | settled (+, pending to available) | clawed_back (-, out of available)',
    amount_cents    Int64                  COMMENT 'Signed amount in cents (分); the sign follows kind',
    campaign_id     String                 COMMENT 'Campaign of the order; empty string when the order had none',
    inserted_at     DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') COMMENT 'Wall-clock time the sink wrote the row, UTC; diagnostics only, not part of the record',
    CONSTRAINT kind_known CHECK kind IN ('accrued', 'reversed', 'settled', 'clawed_back'),
    CONSTRAINT level_range CHECK level BETWEEN 1 AND 3
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY entry_id
COMMENT 'One row per ledger entry of topic fenxiao.commissions; balances and commission reports are sums over it (read with FINAL)';

CREATE TABLE IF NOT EXISTS bindings
(
    user_id    String                 COMMENT 'User whose inviter (上级) this record states',
    inviter_id Nullable(String)       COMMENT 'The inviter user_id; NULL when the user has no inviter',
    ts         DateTime64(3, 'UTC')   COMMENT 'Event time of the event that decided the binding, UTC',
    source     LowCardinality(String) COMMENT 'What decided it: signup | click | order',
    version    UInt64 MATERIALIZED toUInt64(toUnixTimestamp64Milli(ts)) * 2 + toUInt64(isNotNull(inviter_id))
               COMMENT 'Replacing version: the latest ts wins; at equal ts a record with an inviter beats one without (a binding is permanent once set)'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY user_id
COMMENT 'Referral tree from topic fenxiao.bindings: the latest record per user_id wins (read with FINAL)';

CREATE TABLE IF NOT EXISTS clicks
(
    event_id    String               COMMENT 'Input event id; a repeated id is a redelivery (the dedupe key)',
    ts          DateTime64(3, 'UTC') COMMENT 'Event time of the click, UTC, millisecond precision',
    visitor_id  String               COMMENT 'Anonymous visitor (browser/device) that clicked',
    ref         String               COMMENT 'user_id of the distributor who shared the link',
    campaign_id String               COMMENT 'Campaign of the link; empty string when none',
    product_id  String               COMMENT 'Product the link pointed to; empty string when none',
    ip          String               COMMENT 'Client IP address as sent by the producer; empty string when none',
    user_agent  String               COMMENT 'Client User-Agent header; empty string when none',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') COMMENT 'Wall-clock time the sink wrote the row, UTC; diagnostics only'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY event_id
COMMENT 'Raw input events of topic fenxiao.clicks, one row per event_id (read with FINAL)';

CREATE TABLE IF NOT EXISTS orders
(
    event_id     String                 COMMENT 'Input event id; a repeated id is a redelivery (the dedupe key)',
    ts           DateTime64(3, 'UTC')   COMMENT 'Event time of the order event, UTC, millisecond precision',
    order_id     String                 COMMENT 'Order the event is about (several events per order)',
    type         LowCardinality(String) COMMENT 'paid | refunded | completed | cancelled',
    buyer_id     String                 COMMENT 'Buyer: a user_id, or a guest id when the buyer never signed up',
    amount_cents Nullable(Int64)        COMMENT 'Cents (分): paid = the commissionable amount, refunded = the amount refunded now; NULL for completed/cancelled',
    campaign_id  String                 COMMENT 'Campaign of the order; empty string when none',
    ref          String                 COMMENT 'user_id of the distributor named on the order link; empty string when none',
    visitor_id   String                 COMMENT 'Anonymous visitor id of the buyer, for click attribution; empty string when none',
    inserted_at  DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') COMMENT 'Wall-clock time the sink wrote the row, UTC; diagnostics only'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY event_id
COMMENT 'Raw input events of topic fenxiao.orders, one row per event_id (read with FINAL)';
