-- portwatch schema, version 1: what `store::Storage` persists, for the PostgreSQL backend.
--
-- Applied by `store::postgres::migrate` in one transaction, under the migrations' advisory
-- lock, and recorded in `portwatch_schema`. Never edit a released migration: add the next file
-- (`0002_….sql`) and list it in `migrate::MIGRATIONS`.
--
-- Records are stored as the sled backend stores them: the protocol's own messages,
-- prost-encoded, in a `record bytea` column (one schema, versioned by its field numbers), so
-- both backends read and write the same bytes. Only what a `Storage` call looks up, orders by or
-- filters on is a column of its own, and each such column is written from the record in the
-- same statement, so the two never disagree. Times the database compares are `timestamptz`
-- (microseconds, as the records' timestamps); sequence numbers are `bigint` (the agent's u64
-- sequence never reaches 2^63).

-- Tenants (`put_tenant`, `get_tenant`, `list_tenants`).
CREATE TABLE tenants (
    id      text PRIMARY KEY,
    record  bytea NOT NULL
);

-- API tokens. They have no wire form: the record is the store's JSON `TokenRecord`, as in sled.
-- Looked up by the hash of the presented secret (`token_by_hash`) on every call, and by id.
CREATE TABLE tokens (
    id      text PRIMARY KEY,
    hash    text NOT NULL UNIQUE,
    record  jsonb NOT NULL
);

-- Probe regions (`put_region`, `delete_region`, ...), keyed by name.
CREATE TABLE regions (
    name    text PRIMARY KEY,
    record  bytea NOT NULL
);

-- Agents, and the highest result sequence number acknowledged to each (`acked_seq`): `ingest`
-- moves it in the same transaction as the results it acknowledges.
CREATE TABLE agents (
    id          text PRIMARY KEY,
    region      text NOT NULL,
    acked_seq   bigint NOT NULL DEFAULT 0 CHECK (acked_seq >= 0),
    record      bytea
);
-- An agent's acknowledged sequence may be known before its record is (a result batch from an
-- agent the store has not seen yet): `record` is then NULL.
CREATE INDEX agents_region ON agents (region);

-- Monitors. A tenant's monitors are listed page by page in id order and counted for its plan
-- quota (`tenant_monitors`, `tenant_monitor_count(s)`) without reading any other tenant's.
CREATE TABLE monitors (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX monitors_tenant ON monitors (tenant_id, id);

-- The latest result of each monitor from each region (`latest_for`, `all_latest`). `ingest`
-- replaces a row only with a result checked later, so a replayed old result never hides a
-- newer one.
CREATE TABLE latest_results (
    monitor_id  text NOT NULL,
    region      text NOT NULL,
    checked_at  timestamptz NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (monitor_id, region)
);

-- Every stored result (`history`, `prune_history`), partitioned by time so that retention drops
-- whole partitions instead of deleting rows. The key is the sled history key's parts: a
-- replayed result (same monitor, time, region, agent and sequence) hits the key and is not
-- stored twice. The backend creates the day partitions ahead of time
-- (`history_YYYYMMDD`, `FOR VALUES FROM (day) TO (day + 1)`); the default partition only
-- catches results outside them (an agent with a wrong clock), so an insert never fails for want
-- of a partition.
CREATE TABLE history (
    monitor_id  text NOT NULL,
    checked_at  timestamptz NOT NULL,
    region      text NOT NULL,
    agent_id    text NOT NULL,
    seq         bigint NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (monitor_id, checked_at, region, agent_id, seq)
) PARTITION BY RANGE (checked_at);
CREATE TABLE history_default PARTITION OF history DEFAULT;

-- Incidents. At most one open incident per monitor (`open_incident`), enforced by the partial
-- unique index rather than by the writer's care.
CREATE TABLE incidents (
    id          text PRIMARY KEY,
    monitor_id  text NOT NULL,
    open        boolean NOT NULL,
    record      bytea NOT NULL
);
CREATE UNIQUE INDEX incidents_one_open ON incidents (monitor_id) WHERE open;
CREATE INDEX incidents_monitor ON incidents (monitor_id);

-- Notification channels of each tenant.
CREATE TABLE channels (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX channels_tenant ON channels (tenant_id);

-- The notification outbox: one row per delivery (the store's `OutboxRecord`, prost-encoded).
-- `subject_id` and `kind` answer `delivery_channels` (which channels an incident or outage was
-- already sent to); `pending`/`due_at` are the pending index (`pending_deliveries`): a row is
-- pending exactly while its delivery's state is PENDING. `claimed_by`/`claim_until` let any
-- coordinator's worker claim a due delivery (`FOR UPDATE SKIP LOCKED`), one attempt at a time;
-- a claim that outlives its deadline is free again. `updated_at` drives `prune_deliveries`.
CREATE TABLE deliveries (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    subject_id  text NOT NULL,
    kind        integer NOT NULL,
    pending     boolean NOT NULL,
    due_at      timestamptz,
    claimed_by  text,
    claim_until timestamptz,
    updated_at  timestamptz NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE pending;
CREATE INDEX deliveries_subject ON deliveries (subject_id, kind);
CREATE INDEX deliveries_settled ON deliveries (updated_at) WHERE NOT pending;

-- The current outage of each probe region (`region_outages`, `put_outage_with_deliveries`):
-- a row while the region is out or its recovery is not yet announced.
CREATE TABLE region_outages (
    region  text PRIMARY KEY,
    record  bytea NOT NULL
);

-- Ownership of monitors for a cluster of coordinators: each shard of monitors is decided by
-- the owner of its lease until `expires_at`, judged by the database's clock (`now()`), never a
-- coordinator's. `epoch` grows by one at every change of owner; incident and delivery writes
-- check it in their own transaction, so a paused former owner's writes are refused.
CREATE TABLE leases (
    shard       integer PRIMARY KEY CHECK (shard >= 0),
    owner       text NOT NULL,
    epoch       bigint NOT NULL CHECK (epoch > 0),
    expires_at  timestamptz NOT NULL
);
