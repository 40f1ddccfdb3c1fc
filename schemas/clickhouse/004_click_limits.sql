-- Click-spam rate limiting (issue #6): clicks the engine did not use for attribution.
--
-- The engine lets at most [clicks] max_per_visitor clicks of one visitor, and max_per_ip of one ip,
-- bind per fixed event-time window; later clicks of that window are valid input but do not become the
-- visitor's latest click. It emits each one on fenxiao.clicks-limited (keyed by visitor_id, one record
-- per click event_id). Every limited click is also a row of `clicks` (the raw input), so the funnel's
-- attributed clicks are clicks minus limited clicks. See docs/decisions.md, "Click spam".
-- Every statement is IF NOT EXISTS, so the migration can simply be run again.

CREATE TABLE IF NOT EXISTS limited_clicks
(
    event_id    String                 COMMENT 'event_id of the limited click (the same id as its row in clicks); the dedupe key',
    ts          DateTime64(3, 'UTC')   COMMENT 'Event time of the click, UTC, millisecond precision',
    visitor_id  String                 COMMENT 'Visitor that clicked',
    ip          String                 COMMENT 'Client IP address of the click; empty string when none',
    ref         String                 COMMENT 'user_id of the distributor whose link was clicked',
    campaign_id String                 COMMENT 'Campaign of the link; empty string when none',
    reason      LowCardinality(String) COMMENT 'Which limit it hit: visitor_rate (clicks.max_per_visitor) or ip_rate (clicks.max_per_ip)',
    inserted_at DateTime64(3, 'UTC') DEFAULT now64(3, 'UTC') COMMENT 'Wall-clock time the sink wrote the row, UTC; diagnostics only'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(ts)
ORDER BY event_id
COMMENT 'Records of topic fenxiao.clicks-limited: clicks over the rate limit, not used for attribution (read with FINAL)';

ALTER TABLE funnel_daily
    ADD COLUMN IF NOT EXISTS limited_clicks SimpleAggregateFunction(sum, UInt64) DEFAULT 0
    COMMENT 'Clicks on the distributor''s links that were over the rate limit (included in clicks; attributed = clicks - limited_clicks)';

CREATE MATERIALIZED VIEW IF NOT EXISTS funnel_daily_limited_mv TO funnel_daily
AS SELECT
    toDate(ts)                       AS day,
    ref                              AS distributor_id,
    campaign_id,
    toUInt64(0)                      AS clicks,
    uniqStateIf(visitor_id, false)   AS visitors,
    toUInt64(0)                      AS signups,
    toUInt64(count())                AS limited_clicks
FROM limited_clicks
GROUP BY day, distributor_id, campaign_id
COMMENT 'Adds every block inserted into limited_clicks to funnel_daily';
