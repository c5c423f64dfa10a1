-- History is partitioned by time, so retention drops a day at a time instead of deleting rows.
--
-- `events`, `deliveries` and `attempts` are partitioned by ranges of their UUIDv7 ids (an id's
-- first 48 bits are the millisecond it was made), the same ranges in all three: a delivery's id
-- carries its event's time, and an attempt is keyed by its delivery. A day of history is then
-- three partitions, created ahead and dropped together by the gateways (store/partitions.rs),
-- and every lookup by id reads one partition.
--
-- Keys that do not contain the partition key cannot be unique across partitions. The dedupe keys
-- (namespace, source, external_id / replay digest) and a delivery's (event, target) are unique
-- in each partition (indexes of the partitions, which INSERT … ON CONFLICT DO NOTHING obeys); a
-- delivery is always in its event's partition, and an event's key is looked up in the partitions
-- of the dedupe window before it is inserted (store/events.rs).
--
-- The tables as they are become the first partition of each, `*_legacy`, holding everything up
-- to the end of the day of their newest row: nothing is copied or moved, and nothing queued
-- changes. Attaching reads each table once to check its range.

LOCK TABLE events, deliveries, attempts, delivery_queue IN ACCESS EXCLUSIVE MODE;

-- Retention drops partitions; foreign keys between them would make each drop a check of the
-- others. Rows of a delivery and its event go in and out together (one statement stores them,
-- one drop removes them), and the queue holds a day back from retention while any of its
-- deliveries waits.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_event_id_fkey;
ALTER TABLE attempts DROP CONSTRAINT attempts_delivery_id_fkey;
ALTER TABLE delivery_queue DROP CONSTRAINT delivery_queue_delivery_id_fkey;

ALTER TABLE events RENAME TO events_legacy;
ALTER TABLE events_legacy RENAME CONSTRAINT events_pkey TO events_legacy_pkey;
ALTER TABLE events_legacy RENAME CONSTRAINT events_dedupe TO events_legacy_dedupe;
ALTER INDEX events_dedupe_replay RENAME TO events_legacy_dedupe_replay;
ALTER INDEX events_by_type RENAME TO events_legacy_by_type;
ALTER INDEX events_by_source RENAME TO events_legacy_by_source;
ALTER INDEX events_by_time RENAME TO events_legacy_by_time;

-- A partition's check constraints must be valid where the parent's are (0006 and 0010 added
-- this one unchecked; no row can break it).
ALTER TABLE deliveries VALIDATE CONSTRAINT deliveries_status_check;
ALTER TABLE deliveries RENAME TO deliveries_legacy;
ALTER TABLE deliveries_legacy RENAME CONSTRAINT deliveries_pkey TO deliveries_legacy_pkey;
ALTER TABLE deliveries_legacy RENAME CONSTRAINT deliveries_once_per_target TO deliveries_legacy_once_per_target;
ALTER INDEX deliveries_by_target RENAME TO deliveries_legacy_by_target;
ALTER INDEX deliveries_by_replay RENAME TO deliveries_legacy_by_replay;

ALTER TABLE attempts RENAME TO attempts_legacy;
ALTER TABLE attempts_legacy RENAME CONSTRAINT attempts_pkey TO attempts_legacy_pkey;
ALTER INDEX attempts_by_time RENAME TO attempts_legacy_by_time;

CREATE TABLE events (LIKE events_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (id);
ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id);
CREATE INDEX events_by_type ON events (namespace, event_type, received_at DESC);
CREATE INDEX events_by_source ON events (namespace, source, received_at DESC);
CREATE INDEX events_by_time ON events (received_at);

CREATE TABLE deliveries (LIKE deliveries_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (id);
ALTER TABLE deliveries ADD CONSTRAINT deliveries_pkey PRIMARY KEY (id);
CREATE INDEX deliveries_by_target ON deliveries (namespace, target_kind, target, created_at DESC);
CREATE INDEX deliveries_by_replay ON deliveries (replay_id) WHERE replay_id IS NOT NULL;

CREATE TABLE attempts (LIKE attempts_legacy INCLUDING DEFAULTS INCLUDING CONSTRAINTS) PARTITION BY RANGE (delivery_id);
ALTER TABLE attempts ADD CONSTRAINT attempts_pkey PRIMARY KEY (delivery_id, attempt_number);
CREATE INDEX attempts_by_time ON attempts (started_at);

DO $$
DECLARE
    -- The newest millisecond any id of the history was made in.
    newest bigint;
    upper_bound uuid;
BEGIN
    SELECT max(ms) INTO newest FROM (
        SELECT ('x' || lpad(substr(replace(id::text, '-', ''), 1, 12), 16, '0'))::bit(64)::bigint AS ms
        FROM (SELECT (SELECT id FROM events_legacy ORDER BY id DESC LIMIT 1) AS id
              UNION ALL SELECT (SELECT id FROM deliveries_legacy ORDER BY id DESC LIMIT 1)
              UNION ALL SELECT (SELECT delivery_id FROM attempts_legacy ORDER BY delivery_id DESC LIMIT 1)
             ) newest_ids
        WHERE id IS NOT NULL) times;
    IF newest IS NULL THEN
        -- Nothing to keep: the gateways create the first partitions.
        DROP TABLE events_legacy, deliveries_legacy, attempts_legacy;
        RETURN;
    END IF;
    -- The end of that day (UTC), as the smallest id of the next millisecond there.
    SELECT (substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-0000-0000-000000000000')::uuid INTO upper_bound
    FROM (SELECT lpad(to_hex(((newest / 86400000) + 1) * 86400000), 12, '0') AS h) hex;
    EXECUTE format('ALTER TABLE events ATTACH PARTITION events_legacy FOR VALUES FROM (MINVALUE) TO (%L)', upper_bound);
    EXECUTE format('ALTER TABLE deliveries ATTACH PARTITION deliveries_legacy FOR VALUES FROM (MINVALUE) TO (%L)', upper_bound);
    EXECUTE format('ALTER TABLE attempts ATTACH PARTITION attempts_legacy FOR VALUES FROM (MINVALUE) TO (%L)', upper_bound);
END
$$;

-- Periods being dropped: a drop is several statements (a detach cannot be in a transaction), so
-- one interrupted is finished by the next retention pass from here, and only what is listed
-- here is ever dropped.
CREATE TABLE history_drops (
    suffix      text PRIMARY KEY,
    lower_id    uuid NOT NULL,
    upper_id    uuid NOT NULL,
    listed_at   timestamptz NOT NULL DEFAULT now()
);
