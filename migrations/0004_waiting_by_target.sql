-- Waiting work is found per target. One global index in due order made a dispatcher whose busy
-- targets were at their in-flight cap read past every row of theirs to find another target's
-- work; per target, a claim reads only the rows it takes, and the earliest due time of each
-- target is the first entry of its range.
CREATE INDEX deliveries_waiting ON deliveries (namespace, target_kind, target, next_attempt_at)
    WHERE status IN ('pending', 'failed');
DROP INDEX deliveries_due;

-- Paused targets' deliveries are no longer parked at 'infinity' (claims skip paused targets
-- without reading their rows): give parked rows back their place in the queue.
UPDATE deliveries SET next_attempt_at = now()
WHERE status IN ('pending', 'failed') AND next_attempt_at = 'infinity';
