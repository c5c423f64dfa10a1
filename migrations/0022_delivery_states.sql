-- A delivery's state as every reader shows it, derived from its history row, its queue row and
-- its attempts, so that the row need not be written by each attempt (docs/benchmarks.md, "What
-- the queue row costs, and the history row").
--
-- The history row is a checkpoint: its status, attempts and last error hold as of its last
-- write. An attempt numbered past the row's `attempts` that carries an outcome (0021)
-- supersedes it; the latest such attempt gives the status, and its failure in the few words of
-- `last_error` (`HTTP 503`, `timeout`, `unknown`). Whatever writes the row (a cancel, a
-- redelivery, a transform's failure) folds in the attempts so far, so older outcomes no
-- longer count.
--
-- `state` is the status as shown, with `in_flight` for a delivery out for sending: one with no
-- queue row that is still to be sent (leased on its row, or claimed from the queue), or a key's
-- head claimed in the queue. `settled_at` is when its status was reached.
--
-- A view, so the planner sees through it: a reader's condition on `id`, `event_id`, the target
-- or `replay_id` is applied to `deliveries` through its indexes, and each delivery costs a probe
-- of the queue and two of its attempts (the primary keys).
CREATE VIEW delivery_states AS
SELECT d.id, d.event_id, d.namespace, d.target_kind, d.target, d.ordering_key, d.position, d.replay_id,
       d.created_at,
       CASE WHEN (q.delivery_id IS NULL AND s.status IN ('pending', 'failed'))
                 OR (q.claimed AND q.next_attempt_at > now())
            THEN 'in_flight' ELSE s.status END AS state,
       s.status, s.attempts, s.last_error, s.settled_at,
       -- When it is sent next: none while it is out or once it is finished.
       CASE WHEN NOT (q.claimed AND q.next_attempt_at > now()) AND q.next_attempt_at < 'infinity'
            THEN q.next_attempt_at END AS next_attempt_at,
       -- Dead, and holding its ordering key until it is redelivered or skipped.
       coalesce(q.next_attempt_at = 'infinity', false) AS blocks_key
FROM deliveries d
LEFT JOIN delivery_queue q ON q.delivery_id = d.id
LEFT JOIN LATERAL (
    SELECT a.outcome, a.status_code, a.error_class, a.started_at, a.duration_ms
    FROM attempts a
    WHERE a.delivery_id = d.id AND a.attempt_number > d.attempts AND a.outcome IS NOT NULL
    ORDER BY a.attempt_number DESC
    LIMIT 1
) o ON true
CROSS JOIN LATERAL (
    SELECT coalesce(o.outcome::text, d.status) AS status,
           -- Every attempt started, also one whose outcome came after its claim had ended.
           greatest(d.attempts, (SELECT max(m.attempt_number) FROM attempts m WHERE m.delivery_id = d.id))
               AS attempts,
           CASE WHEN o.outcome IS NULL THEN d.last_error
                WHEN o.outcome = 'succeeded' THEN NULL
                ELSE coalesce('HTTP ' || o.status_code, o.error_class, 'unknown') END AS last_error,
           CASE WHEN o.outcome IS NULL THEN d.updated_at
                ELSE o.started_at + interval '1 millisecond' * o.duration_ms END AS settled_at
) s;
