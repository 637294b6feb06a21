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
-- sequence never reaches 2^63). Text keys are `COLLATE "C"`: they sort by their bytes, as sled's
-- keys do, so both backends list in the same order (ids sort by creation time) whatever the
-- database's default collation.

-- Tenants (`put_tenant`, `get_tenant`, `list_tenants`).
CREATE TABLE tenants (
    id      text COLLATE "C" PRIMARY KEY,
    record  bytea NOT NULL
);

-- API tokens. They have no wire form: the record is the store's JSON `TokenRecord`, as in sled.
-- Looked up by the hash of the presented secret (`token_by_hash`) on every call, and by id.
CREATE TABLE tokens (
    id      text COLLATE "C" PRIMARY KEY,
    hash    text COLLATE "C" NOT NULL UNIQUE,
    record  jsonb NOT NULL
);

-- Probe regions (`put_region`, `delete_region`, ...), keyed by name.
CREATE TABLE regions (
    name    text COLLATE "C" PRIMARY KEY,
    record  bytea NOT NULL
);

-- Agents, and the highest result sequence number acknowledged to each (`acked_seq`): `ingest`
-- moves it in the same transaction as the results it acknowledges.
CREATE TABLE agents (
    id          text COLLATE "C" PRIMARY KEY,
    region      text COLLATE "C" NOT NULL,
    acked_seq   bigint NOT NULL DEFAULT 0 CHECK (acked_seq >= 0),
    record      bytea
);
-- An agent's acknowledged sequence may be known before its record is (a result batch from an
-- agent the store has not seen yet): `record` is then NULL.
CREATE INDEX agents_region ON agents (region);

-- Monitors. A tenant's monitors are listed page by page in id order and counted for its plan
-- quota (`tenant_monitors`, `tenant_monitor_count(s)`) without reading any other tenant's.
CREATE TABLE monitors (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text COLLATE "C" NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX monitors_tenant ON monitors (tenant_id, id);

-- The latest result of each monitor from each region (`latest_for`, `all_latest`). `ingest`
-- replaces a row only with a result checked later, so a replayed old result never hides a
-- newer one.
CREATE TABLE latest_results (
    monitor_id  text COLLATE "C" NOT NULL,
    region      text COLLATE "C" NOT NULL,
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
    monitor_id  text COLLATE "C" NOT NULL,
    checked_at  timestamptz NOT NULL,
    region      text COLLATE "C" NOT NULL,
    agent_id    text COLLATE "C" NOT NULL,
    seq         bigint NOT NULL,
    record      bytea NOT NULL,
    PRIMARY KEY (monitor_id, checked_at, region, agent_id, seq)
) PARTITION BY RANGE (checked_at);
CREATE TABLE history_default PARTITION OF history DEFAULT;

-- Creates the day partitions of `history` from today to `ahead` days after it (UTC, by
-- the database's clock), those missing; returns how many it created. Serialised by an advisory
-- lock so coordinators that call it at once do not race on the catalogue. A day whose rows
-- already sit in the default partition (results stamped far ahead) keeps them there: its
-- partition is skipped with a warning rather than failing the caller.
CREATE FUNCTION portwatch_history_partitions(ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    today date := (now() AT TIME ZONE 'UTC')::date;
    d date;
    created integer := 0;
    name text;
BEGIN
    PERFORM pg_advisory_xact_lock(8243, 1);
    FOR d IN SELECT g::date FROM generate_series(today, today + ahead, interval '1 day') g LOOP
        name := 'history_' || to_char(d, 'YYYYMMDD');
        CONTINUE WHEN to_regclass(name) IS NOT NULL;
        BEGIN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF history FOR VALUES FROM (%L) TO (%L)',
                name, d::text || ' 00:00:00+00', (d + 1)::text || ' 00:00:00+00');
            created := created + 1;
        EXCEPTION WHEN check_violation THEN
            RAISE WARNING 'history partition % not created: the default partition holds rows of that day', name;
        END;
    END LOOP;
    RETURN created;
END $$;

-- Retention: drops every day partition that ends at or before `cutoff` (whole tables, no row
-- by row delete, no bloat), then deletes what is older than `cutoff` from the partition the
-- cutoff falls in and from the default partition. Returns the rows removed.
CREATE FUNCTION portwatch_history_drop_before(cutoff timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    part record;
    n bigint;
    removed bigint := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(8243, 1);
    FOR part IN
        SELECT c.relname AS name
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'history'::regclass AND c.relname ~ '^history_[0-9]{8}$'
    LOOP
        IF (to_date(substr(part.name, 9), 'YYYYMMDD') + 1)::timestamp AT TIME ZONE 'UTC' <= cutoff THEN
            EXECUTE format('SELECT count(*) FROM %I', part.name) INTO n;
            EXECUTE format('DROP TABLE %I', part.name);
            removed := removed + n;
        END IF;
    END LOOP;
    DELETE FROM history WHERE checked_at < cutoff;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN removed + n;
END $$;

-- Incidents. At most one open incident per monitor (`open_incident`), enforced by the partial
-- unique index rather than by the writer's care.
CREATE TABLE incidents (
    id          text COLLATE "C" PRIMARY KEY,
    monitor_id  text COLLATE "C" NOT NULL,
    open        boolean NOT NULL,
    record      bytea NOT NULL
);
CREATE UNIQUE INDEX incidents_one_open ON incidents (monitor_id) WHERE open;
CREATE INDEX incidents_monitor ON incidents (monitor_id);

-- Notification channels of each tenant.
CREATE TABLE channels (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text COLLATE "C" NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX channels_tenant ON channels (tenant_id);

-- The notification outbox: one row per delivery (the store's `OutboxRecord`, prost-encoded).
-- `subject_id` and `kind` answer `delivery_channels` (which channels an incident or outage was
-- already sent to); `pending`/`due_at` are the pending index (`pending_deliveries`): a row is
-- pending exactly while its delivery's state is PENDING. `claimed_by`/`claim_until` let any
-- coordinator's worker claim a due delivery (`FOR UPDATE SKIP LOCKED`), one attempt at a time;
-- a claim that outlives its deadline is free again. `created_at` (the delivery's) drives
-- `prune_deliveries`: settled deliveries older than the retention go.
CREATE TABLE deliveries (
    id          text COLLATE "C" PRIMARY KEY,
    tenant_id   text COLLATE "C" NOT NULL,
    subject_id  text COLLATE "C" NOT NULL,
    kind        integer NOT NULL,
    pending     boolean NOT NULL,
    due_at      timestamptz,
    claimed_by  text,
    claim_until timestamptz,
    created_at  timestamptz NOT NULL,
    record      bytea NOT NULL
);
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE pending;
CREATE INDEX deliveries_subject ON deliveries (subject_id, kind);
CREATE INDEX deliveries_settled ON deliveries (created_at) WHERE NOT pending;

-- The current outage of each probe region (`region_outages`, `put_outage_with_deliveries`):
-- a row while the region is out or its recovery is not yet announced.
CREATE TABLE region_outages (
    region  text COLLATE "C" PRIMARY KEY,
    record  bytea NOT NULL
);

-- Ownership of monitors for a cluster of coordinators: each shard of monitors is decided by
-- the owner of its lease until `expires_at`, judged by the database's clock (`now()`), never a
-- coordinator's. `epoch` grows by one at every change of owner; incident and delivery writes
-- check it in their own transaction, so a paused former owner's writes are refused.
CREATE TABLE leases (
    shard       integer PRIMARY KEY CHECK (shard >= 0),
    owner       text COLLATE "C" NOT NULL,
    epoch       bigint NOT NULL CHECK (epoch > 0),
    expires_at  timestamptz NOT NULL
);
