-- Six shapes of the queue, emulated on Hookline's own schema for `hack/queue-shapes`
-- (docs/benchmarks.md, "What the queue row costs"). A fan-out is stored (events, each to every
-- target, several events a statement) and drained (claims of a number of deliveries per target,
-- each followed by its outcomes, every statement its own commit), as the gateway does it:
--   L   as Hookline is: a queue row per delivery (`delivery_queue`), deleted by the claim,
--       which leases the history row;
--   BL  one queue row per storing statement and target, holding the ids of its deliveries; a
--       claim deletes the bundles it takes whole and trims the one it takes part of;
--   O   no queue at all: the ids come from an unlogged list that is not counted, the least any
--       design can cost that still stores, leases, records an attempt and an outcome;
--   C   no queue: the history is read from a cursor per target. Each delivery notes the
--       transaction that stored it (`txid`, in an index by target, made for this shape only by
--       hack/queue-shapes); a claim takes the next deliveries after the target's cursor whose
--       transactions are older than every one still running, so a storing transaction still in
--       flight (ids are made before their rows commit) is never passed, and moves the cursor;
--   I   the history row is never updated: queued as L, but a claim only notes its lease (the
--       row per claim of `queue_leases`), and the attempt carries the outcome (`outcome`,
--       migrations/0021), so a delivery's state is its latest attempt; its partitions are
--       filled whole (fillfactor 100: no room kept for new versions);
--   N   half way from L to I: claimed as I (the lease noted, the history row not leased), the
--       outcome written to the history row as L does.
-- Claims and outcomes are the gateway's statements with the parts that do not differ between
-- shapes left out (paused targets, ordering, lease tokens).

CREATE OR REPLACE FUNCTION uuid7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
  SELECT (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
          || '7' || substr(md5(random()::text), 1, 19))::uuid $$;

CREATE TABLE delivery_bundles (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace       text NOT NULL,
    target_kind     text NOT NULL,
    target          text NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    deliveries      uuid[] NOT NULL,
    event_ids       uuid[] NOT NULL
);
CREATE INDEX delivery_bundles_waiting ON delivery_bundles (namespace, target_kind, target, next_attempt_at);

ALTER TABLE deliveries ADD COLUMN txid xid8;
CREATE TABLE delivery_cursors (
    namespace   text NOT NULL,
    target_kind text NOT NULL,
    target      text NOT NULL,
    txid        xid8 NOT NULL,
    id          uuid NOT NULL,
    PRIMARY KEY (namespace, target_kind, target)
);

-- Empty daily partitions before today's, as a history kept `days` days has (C's claims read
-- every partition: it is partitioned by id, and a cursor is a transaction).
CREATE OR REPLACE PROCEDURE past_partitions(days int)
LANGUAGE plpgsql AS $$
DECLARE d int; t text; lo uuid; hi uuid;
  day0 bigint := (extract(epoch FROM date_trunc('day', now() AT TIME ZONE 'UTC')) * 1000)::bigint;
BEGIN
  FOR d IN 1..days LOOP
    lo := (lpad(to_hex(day0 - d * 86400000::bigint), 12, '0') || '00000000000000000000')::uuid;
    hi := (lpad(to_hex(day0 - (d - 1) * 86400000::bigint), 12, '0') || '00000000000000000000')::uuid;
    FOREACH t IN ARRAY ARRAY['events', 'deliveries', 'attempts'] LOOP
      EXECUTE format('CREATE TABLE IF NOT EXISTS %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                     t || '_past' || d, t, lo, hi);
    END LOOP;
  END LOOP;
END $$;

CREATE UNLOGGED TABLE oracle (target text, id uuid, event_id uuid);
CREATE INDEX oracle_by_target ON oracle (target, id);
-- Store `statements` statements, each of `per` events to `targets` targets.
CREATE OR REPLACE PROCEDURE store(shape text, statements int, per int, targets int)
LANGUAGE plpgsql AS $$
DECLARE i int;
BEGIN
  CREATE TEMP TABLE IF NOT EXISTS new_d (id uuid, event_id uuid, target text) ON COMMIT DELETE ROWS;
  FOR i IN 1..statements LOOP
    WITH ev AS (
      INSERT INTO events (id, namespace, source, provider, external_id, event_type, headers, body)
      SELECT uuid7(), 'default', '', NULL, md5(random()::text), 'fanout.x',
             '{"content-type": "application/json"}', convert_to(repeat('x', 1024), 'UTF8')
      FROM generate_series(1, per)
      RETURNING id
    ), d AS (
      INSERT INTO deliveries (id, event_id, namespace, target_kind, target, txid)
      SELECT uuid7(), ev.id, 'default', 'subscription', 't' || t,
             CASE WHEN shape = 'C' THEN pg_current_xact_id() END
      FROM ev CROSS JOIN generate_series(1, targets) t
      RETURNING id, event_id, target
    )
    INSERT INTO new_d SELECT id, event_id, target FROM d;
    IF shape IN ('L', 'I', 'N') THEN
      INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at, event_id)
      SELECT id, 'default', 'subscription', target, now(), event_id FROM new_d;
    ELSIF shape = 'BL' THEN
      INSERT INTO delivery_bundles (namespace, target_kind, target, next_attempt_at, deliveries, event_ids)
      SELECT 'default', 'subscription', target, now(), array_agg(id ORDER BY id), array_agg(event_id ORDER BY id)
      FROM new_d GROUP BY target;
    ELSIF shape = 'O' THEN
      INSERT INTO oracle SELECT target, id, event_id FROM new_d;
    END IF;
    COMMIT;
  END LOOP;
END $$;

CREATE OR REPLACE PROCEDURE drain(shape text, targets int, take int)
LANGUAGE plpgsql AS $$
DECLARE t int; ids uuid[]; got int; idle int := 0; lease bigint;
BEGIN
  LOOP
    FOR t IN 1..targets LOOP
      IF shape = 'L' THEN
        WITH due AS (
          SELECT delivery_id FROM delivery_queue q
          WHERE namespace = 'default' AND target_kind = 'subscription' AND target = 't' || t
            AND next_attempt_at <= now()
          ORDER BY next_attempt_at LIMIT take FOR UPDATE SKIP LOCKED
        ), claimed AS (
          DELETE FROM delivery_queue q WHERE q.delivery_id = ANY (ARRAY(SELECT delivery_id FROM due))
          RETURNING q.delivery_id, q.event_id, now() + interval '30 seconds' AS lease_until
        ), leased AS (
          UPDATE deliveries d SET lease_until = c.lease_until FROM claimed c
          WHERE d.id >= c.delivery_id AND d.id <= c.delivery_id
        ), noted AS (
          INSERT INTO queue_leases (lease_until, deliveries)
          SELECT lease_until, array_agg(delivery_id) FROM claimed GROUP BY lease_until
        )
        SELECT array_agg(c.delivery_id), sum(length(e.body)) INTO ids, got FROM claimed c
        CROSS JOIN LATERAL (SELECT body FROM events WHERE id = c.event_id OFFSET 0) e;
      ELSIF shape IN ('I', 'N') THEN
        WITH due AS (
          SELECT delivery_id FROM delivery_queue q
          WHERE namespace = 'default' AND target_kind = 'subscription' AND target = 't' || t
            AND next_attempt_at <= now()
          ORDER BY next_attempt_at LIMIT take FOR UPDATE SKIP LOCKED
        ), claimed AS (
          DELETE FROM delivery_queue q WHERE q.delivery_id = ANY (ARRAY(SELECT delivery_id FROM due))
          RETURNING q.delivery_id, q.event_id, now() + interval '30 seconds' AS lease_until
        ), noted AS (
          INSERT INTO queue_leases (lease_until, deliveries)
          SELECT lease_until, array_agg(delivery_id) FROM claimed GROUP BY lease_until
          RETURNING id
        )
        SELECT array_agg(c.delivery_id), sum(length(e.body)), (SELECT id FROM noted) INTO ids, got, lease
        FROM claimed c
        CROSS JOIN LATERAL (SELECT body FROM events WHERE id = c.event_id OFFSET 0) e;
      ELSIF shape = 'BL' THEN
        WITH pick AS (
          SELECT id, deliveries, event_ids, cardinality(deliveries) AS n,
                 sum(cardinality(deliveries)) OVER (ORDER BY next_attempt_at, id) AS upto
          FROM (SELECT id, deliveries, event_ids, next_attempt_at FROM delivery_bundles
                WHERE namespace = 'default' AND target_kind = 'subscription' AND target = 't' || t
                  AND next_attempt_at <= now()
                ORDER BY next_attempt_at, id LIMIT take FOR UPDATE SKIP LOCKED) x
        ), sel AS (
          SELECT id, n, LEAST(n, take - (upto - n))::int AS k, deliveries, event_ids FROM pick
          WHERE upto - n < take
        ), gone AS (
          DELETE FROM delivery_bundles b USING sel WHERE b.id = sel.id AND sel.k = sel.n
        ), trimmed AS (
          UPDATE delivery_bundles b SET deliveries = sel.deliveries[sel.k + 1:], event_ids = sel.event_ids[sel.k + 1:]
          FROM sel WHERE b.id = sel.id AND sel.k < sel.n
        ), claimed AS MATERIALIZED (
          SELECT u.delivery_id, u.event_id, now() + interval '30 seconds' AS lease_until
          FROM sel CROSS JOIN LATERAL unnest(sel.deliveries[1:sel.k], sel.event_ids[1:sel.k]) AS u (delivery_id, event_id)
        ), leased AS (
          UPDATE deliveries d SET lease_until = c.lease_until FROM claimed c
          WHERE d.id >= c.delivery_id AND d.id <= c.delivery_id
        ), noted AS (
          INSERT INTO queue_leases (lease_until, deliveries)
          SELECT lease_until, array_agg(delivery_id) FROM claimed GROUP BY lease_until
        )
        SELECT array_agg(c.delivery_id), sum(length(e.body)) INTO ids, got FROM claimed c
        CROSS JOIN LATERAL (SELECT body FROM events WHERE id = c.event_id OFFSET 0) e;
      ELSIF shape = 'C' THEN
        WITH cursor AS (
          SELECT txid, id FROM delivery_cursors
          WHERE namespace = 'default' AND target_kind = 'subscription' AND target = 't' || t
          FOR UPDATE
        ), due AS MATERIALIZED (
          SELECT d.id AS delivery_id, d.event_id, d.txid FROM deliveries d
          WHERE d.namespace = 'default' AND d.target_kind = 'subscription' AND d.target = 't' || t
            AND (d.txid, d.id) > ((SELECT txid FROM cursor), (SELECT id FROM cursor))
            AND d.txid < pg_snapshot_xmin(pg_current_snapshot())
            AND d.status = 'pending' AND d.lease_until IS NULL
          ORDER BY d.txid, d.id LIMIT take
        ), moved AS (
          UPDATE delivery_cursors c SET txid = last.txid, id = last.delivery_id
          FROM (SELECT txid, delivery_id FROM due ORDER BY txid DESC, delivery_id DESC LIMIT 1) last
          WHERE c.namespace = 'default' AND c.target_kind = 'subscription' AND c.target = 't' || t
        ), claimed AS MATERIALIZED (
          SELECT delivery_id, event_id, now() + interval '30 seconds' AS lease_until FROM due
        ), leased AS (
          UPDATE deliveries d SET lease_until = c.lease_until FROM claimed c
          WHERE d.id >= c.delivery_id AND d.id <= c.delivery_id
        ), noted AS (
          INSERT INTO queue_leases (lease_until, deliveries)
          SELECT lease_until, array_agg(delivery_id) FROM claimed GROUP BY lease_until
        )
        SELECT array_agg(c.delivery_id), sum(length(e.body)) INTO ids, got FROM claimed c
        CROSS JOIN LATERAL (SELECT body FROM events WHERE id = c.event_id OFFSET 0) e;
      ELSE -- O: the least any queue can cost, ids known (an unlogged list, not counted as a write)
        WITH due AS (
          DELETE FROM oracle o WHERE o.ctid = ANY (ARRAY(
            SELECT ctid FROM oracle WHERE target = 't' || t ORDER BY id LIMIT take))
          RETURNING o.id AS delivery_id, o.event_id
        ), claimed AS MATERIALIZED (
          SELECT delivery_id, event_id, now() + interval '30 seconds' AS lease_until FROM due
        ), leased AS (
          UPDATE deliveries d SET lease_until = c.lease_until FROM claimed c
          WHERE d.id >= c.delivery_id AND d.id <= c.delivery_id
        ), noted AS (
          INSERT INTO queue_leases (lease_until, deliveries)
          SELECT lease_until, array_agg(delivery_id) FROM claimed GROUP BY lease_until
        )
        SELECT array_agg(c.delivery_id), sum(length(e.body)) INTO ids, got FROM claimed c
        CROSS JOIN LATERAL (SELECT body FROM events WHERE id = c.event_id OFFSET 0) e;
      END IF;
      COMMIT;
      IF ids IS NULL THEN
        idle := idle + 1;
        IF idle >= targets THEN RETURN; END IF;
        CONTINUE;
      END IF;
      idle := 0;
      IF shape = 'I' THEN
        -- The outcome is recorded while the claim's lease is held (the pass that takes over
        -- ended leases deletes the row, so it waits for this and this fails after it).
        INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code, outcome)
        SELECT id, 1, now(), 1, 200, 'succeeded' FROM unnest(ids) AS r (id)
        WHERE EXISTS (SELECT 1 FROM queue_leases l WHERE l.id = lease AND l.lease_until > now() FOR SHARE);
        COMMIT;
        CONTINUE;
      ELSIF shape = 'N' THEN
        WITH attempt AS (
          INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code)
          SELECT id, 1, now(), 1, 200 FROM unnest(ids) AS r (id)
          WHERE EXISTS (SELECT 1 FROM queue_leases l WHERE l.id = lease AND l.lease_until > now() FOR SHARE)
        )
        UPDATE deliveries d SET status = 'succeeded', attempts = 1, updated_at = now()
        FROM unnest(ids) AS r (id)
        WHERE d.id >= r.id AND d.id <= r.id
          AND EXISTS (SELECT 1 FROM queue_leases l WHERE l.id = lease AND l.lease_until > now() FOR SHARE);
        COMMIT;
        CONTINUE;
      END IF;
      WITH attempt AS (
        INSERT INTO attempts (delivery_id, attempt_number, started_at, duration_ms, status_code)
        SELECT id, 1, now(), 1, 200 FROM unnest(ids) AS r (id)
      )
      UPDATE deliveries d SET status = 'succeeded', attempts = 1, lease_until = NULL, updated_at = now()
      FROM unnest(ids) AS r (id)
      WHERE d.id >= r.id AND d.id <= r.id AND d.lease_until IS NOT NULL;
      COMMIT;
    END LOOP;
  END LOOP;
END $$;
