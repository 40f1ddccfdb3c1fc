"""Every topic name, Redis key prefix and environment variable name, in one place."""

from __future__ import annotations

CLICKS = "fenxiao.clicks"
SIGNUPS = "fenxiao.signups"
ORDERS = "fenxiao.orders"
TIERS = "fenxiao.tiers"
DISTRIBUTORS = "fenxiao.distributors"
ADJUSTMENTS = "fenxiao.adjustments"
WITHDRAWALS = "fenxiao.withdrawals"
COMMISSIONS = "fenxiao.commissions"
BINDINGS = "fenxiao.bindings"
DEAD_LETTERS = "fenxiao.dead-letters"
CLICKS_LIMITED = "fenxiao.clicks-limited"  # clicks over the rate limit, not used for attribution (docs/decisions.md)
WITHDRAWAL_STATES = "fenxiao.withdrawal-states"  # one record per accepted withdrawal transition, key distributor_id
# Contract v2 inputs, consumed by the worker beside the v1 ones.
V2_INPUT_TOPICS: tuple[str, ...] = (DISTRIBUTORS, ADJUSTMENTS, WITHDRAWALS)

INPUT_TOPICS: tuple[str, ...] = (TIERS, CLICKS, SIGNUPS, ORDERS, *V2_INPUT_TOPICS)
# Staged topology (FENXIAO_TOPOLOGY=staged, docs/decisions.md): the attribution stage forwards every order step,
# a first payment with its locked terms, keyed by order_id, plus watermarks; the credit stage's group reads it.
ORDER_STEPS = "fenxiao.order-steps"
# Its partitions when the engine creates it: at least this many, so 1, 2, 3, 4 or 6 credit workers get equal shares.
ORDER_STEPS_MIN_PARTITIONS = 12
INTERNAL_TOPICS: tuple[str, ...] = (ORDER_STEPS,)
CREDIT_GROUP_SUFFIX = "-credit"
OUTPUT_TOPICS: tuple[str, ...] = (COMMISSIONS, BINDINGS, DEAD_LETTERS, CLICKS_LIMITED, WITHDRAWAL_STATES)

# What the ClickHouse sink reads (signups reach ClickHouse as bindings), with its own consumer group.
SINK_SOURCES: tuple[str, ...] = (
    COMMISSIONS,
    BINDINGS,
    CLICKS,
    ORDERS,
    DEAD_LETTERS,
    TIERS,
    CLICKS_LIMITED,
    WITHDRAWAL_STATES,  # sunk into withdrawal_states for the payouts report
)
SINK_GROUP_SUFFIX = ".sink"

# Contract v2's full tie-break: tiers < distributors < clicks < signups < orders < adjustments < withdrawals.
TOPIC_RANK_V2: dict[str, int] = {
    TIERS: 0,
    DISTRIBUTORS: 1,
    CLICKS: 2,
    SIGNUPS: 3,
    ORDERS: 4,
    ADJUSTMENTS: 5,
    WITHDRAWALS: 6,
}
# The one same-ts rank the worker and every tool use (v1's relative order tiers < clicks < signups < orders holds).
TOPIC_RANK: dict[str, int] = TOPIC_RANK_V2

ENV_PREFIX = "FENXIAO_"
ENV_KAFKA = "FENXIAO_KAFKA"
ENV_REDIS_URL = "FENXIAO_REDIS_URL"
ENV_CLICKHOUSE_URL = "FENXIAO_CLICKHOUSE_URL"
ENV_CLICKHOUSE_PATH = "FENXIAO_CLICKHOUSE_PATH"
ENV_VAR_DIR = "FENXIAO_VAR_DIR"
ENV_CONFIG = "FENXIAO_CONFIG"
ENV_TOKEN_KEY = "FENXIAO_TOKEN_KEY"
ENV_PARTITIONS = "FENXIAO_PARTITIONS"
ENV_WEB_PORT = "FENXIAO_WEB_PORT"
ENV_WEB_HOST = "FENXIAO_WEB_HOST"
ENV_APP_ID = "FENXIAO_APP_ID"
ENV_BATCH_SIZE = "FENXIAO_BATCH_SIZE"
ENV_CRASH_AT = "FENXIAO_CRASH_AT"
ENV_SINK_FAULT = "FENXIAO_SINK_FAULT"
ENV_SINK_PORT = "FENXIAO_SINK_PORT"  # the sink process's HTTP port (reports, /status); default web port + 1000
ENV_SINK_NICE = "FENXIAO_SINK_NICE"  # the sink process's CPU niceness (0-19): commissions first on a busy machine
ENV_SINK_PARENT = "FENXIAO_SINK_PARENT"  # set by a worker on the sink it spawns: that worker's pid
ENV_ADVERTISED_URL = "FENXIAO_ADVERTISED_URL"  # where other workers reach this one's API (default http://host:port)
ENV_TOPOLOGY = "FENXIAO_TOPOLOGY"  # single (default: one active worker, standbys) or staged (active workers share)
ENV_CREDIT_OWNER = "FENXIAO_CREDIT_OWNER"  # set by a worker on the credit stage it spawns: the worker's owner id
ENV_COMPRESSION = "FENXIAO_COMPRESSION"  # codec of every record the worker produces (docs/producers.md)
ENV_KAFKA_JVM_OPTS = "FENXIAO_KAFKA_JVM_OPTS"  # extra JVM options of the local stack's broker, after its own

# Redis keys. Prefix "fx:"; see docs/redis.md for the full layout.
REDIS_PREFIX = "fx:"
KEY_USER = (
    "fx:u:"  # + user_id -> hash (i inviter, t signup ts ms, d distributor, e signup event id, r tier, rt tier ts key)
)
KEY_CLICK = "fx:c:"  # + visitor_id -> hash (latest binding click: t ts ms, r ref, k order key; w window, n its count)
KEY_IP_CLICKS = "fx:ci:"  # + window id + ":" + ip -> string: clicks from that ip that bound in that window; short TTL
KEY_ORDER = "fx:o:"  # + order_id -> hash (locked order state, JSON in field s)
KEY_BALANCE = "fx:b:"  # + user_id -> hash (p pending, a available, l lifetime, r reserved, w withdrawn)
KEY_DEAD = "fx:dl"  # set of event ids already dead-lettered (a redelivery does not repeat them)
KEY_SETTLE = "fx:settle"  # zset order_id -> settle_at ms, completed but not settled
# The lease, epoch and journal share the hash tag {m}: on a Redis Cluster one script checks and writes them together.
KEY_EPOCH = "fx:{m}:epoch"  # string: set once the state is complete; its absence means Redis lost (or never had) it
KEY_LEASE = "fx:{m}:lease"  # string: the one worker allowed to apply events to this Redis, with a TTL
KEY_JOURNAL = "fx:{m}:journal"  # hash (cluster only): seq, commands of the last batch, redone after a crash
KEY_SLOT_MARK = "fx:sm:"  # + "{tag}" (cluster only), one per hash slot -> string "epoch|journal seq applied there"
# Contract v2 state, written by the worker's commit (docs/redis.md). The user hash fx:u: gains `s` (last status
# event: active|frozen|revoked; absent = as at signup) and `sk` (its sequence key).
KEY_WITHDRAWAL = "fx:w:"  # + withdrawal_id -> hash (s JSON state, e JSON list of the event ids that moved it)
KEY_WITHDRAWAL_QUEUE = "fx:wq"  # zset withdrawal_id -> requested ts ms: open (requested or approved) withdrawals
KEY_DISTRIBUTOR_WITHDRAWALS = "fx:wu:"  # + distributor_id -> zset withdrawal_id -> requested ts ms
KEY_ADJUSTMENTS = "fx:adj"  # hash adjustment_id -> the event id that applied it (a repeat is duplicate_adjustment)
# Staged topology (streams/state/credit_store.py, credit_cluster.py): order marks, the credit stage's positions.
KEY_ORDER_MARKS = "fx:om"  # set of order ids the attribution stage saw paid or cancelled (their state is in fx:o:)
KEY_CREDIT_POS = "fx:{m}:cr:pos"  # hash order-steps partition -> next offset the credit stage applies (commit point)
KEY_CREDIT_POS_BEFORE = "fx:cr:pos"  # the positions' name until 2026-12-04 (outside {m}): renamed at start
KEY_CREDIT_JOURNAL = "fx:{m}:cr:journal"  # hash (cluster only): lanes; lane L: s:L seq, n:L + e:L unlanded batch
KEY_CREDIT_MARK = "fx:cm:"  # + "{tag}" (cluster only), per slot a credit batch wrote -> hash lane -> seq applied
KEY_CREDIT_STATUS = "fx:cr:st:"  # + worker owner id -> string: that worker's credit stage status JSON, short TTL
KEY_CREDIT_ALIVE = "fx:cr:alive"  # sorted set: credit stage owner -> expiry epoch ms of its last status
KEY_ACTIVE_WEB = "fx:active:web"  # string: the lease holder's advertised API URL; standbys pass requests to it
KEY_TOPOLOGY = "fx:topology"  # string: the topology this Redis's state was built by (single or staged)
KEY_SEQ = "fx:seq"  # hash: the sequencer's last applied key, for operators
ENV_SHARE_BASE_URL = "FENXIAO_SHARE_BASE_URL"

# Read models for the distributor API (issue 3), written by streams/state/projections.py; see docs/api.md.
KEY_FEED = "fx:lg:"  # + user_id -> stream: that distributor's ledger entries, compact fields, MAXLEN ~ capped
KEY_FEED_ALL = "fx:lg"  # stream: every ledger entry (field u = beneficiary), for the operator ticker, MAXLEN ~ capped
KEY_TEAM = "fx:tm:"  # + level + ":" + user_id -> zset, score 0, member "{bind ts ms:013d}|{user_id}" (lex = time order)
KEY_BOARD = "fx:lb:"  # + metric:period:bucket[:campaign] -> zset distributor -> cents or count
KEY_LIVE = "fx:lv:"  # + epoch second[:campaign] -> hash o orders, g gmv cents, c commission cents; short TTL

# The read-model projector (streams/state/projector.py, in the `fenxiao sink` process). Its keys share the hash tag
# {pj}, so on a Redis Cluster one script checks the lease, moves the offsets and records what was projected.
KEY_PJ_LEASE = "fx:{pj}:lease"  # string: the one projector allowed to write the read models, with a TTL
KEY_PJ_OFFSETS = "fx:{pj}:offsets"  # hash "topic:partition" -> next offset to project (written with the batch)
KEY_PJ_SEEN = "fx:{pj}:seen:"  # + UTC day of the event -> set: entry ids, bound users, paid events already projected
KEY_PJ_JOURNAL = "fx:{pj}:journal"  # hash (cluster only): seq and commands of the last batch, redone after a crash
KEY_PJ_SLOT_MARK = "fx:pm:"  # + "{tag}" (cluster only), one per hash slot -> the projector journal seq applied there
PROJECTOR_SOURCES: tuple[str, ...] = (COMMISSIONS, BINDINGS)

# Webhooks (streams/sinks/webhooks.py, in the `fenxiao sink` process; docs/webhooks.md).
WEBHOOK_SOURCES: tuple[str, ...] = (COMMISSIONS, WITHDRAWAL_STATES)
WEBHOOK_GROUP_SUFFIX = ".webhooks"  # the deliverer's consumer group: <app id>.webhooks
ENV_WEBHOOK_SECRET = "FENXIAO_WEBHOOK_SECRET"  # default [webhooks] secret_env: the HMAC signing secret
KEY_WEBHOOK_FAILED = "fx:wh:failed"  # stream: deliveries given up after max_attempts (url, id, reason, body), capped
KEY_WEBHOOK_STATUS = "fx:wh:status"  # hash: field s = the deliverer's status JSON, read by the worker's /status

# The write API (streams/api/routes.py, streams/api/commands.py); it reads the withdrawal keys the worker writes.
KEY_IDEMPOTENCY = "fx:idem:"  # + Idempotency-Key -> string JSON {h body hash, id, event_id, topic, key, value, st}; TTL
KEY_AUDIT = "fx:audit"  # stream: one entry per operator write (who, at, method, path, body, event_id), MAXLEN ~ capped

# Operator CLI (streams/ops/operator_cli.py): where the worker's HTTP API answers, and a ready-made operator token.
ENV_API_URL = "FENXIAO_API_URL"  # default http://127.0.0.1:$FENXIAO_WEB_PORT
ENV_TOKEN = "FENXIAO_TOKEN"  # a bearer token; unset: the CLI mints a short-lived operator token from FENXIAO_TOKEN_KEY
