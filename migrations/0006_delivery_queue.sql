-- The queue moves out of the history row into a narrow table of its own.
--
-- A delivery used to be claimed and finished by updating its history row, and neither update
-- could be HOT: `status`, `next_attempt_at` and `lease_until` were in indexes or partial-index
-- predicates, so each wrote a new entry in every index of `deliveries`. Now a waiting delivery
-- has a row in `delivery_queue` (two indexes): claiming it moves that row's due time to the end
-- of the claim (a visibility timeout, so an expired claim is simply due again and no sweep is
-- needed), and finishing it deletes the row. The history row is written once more, when an
-- attempt's outcome is known, and none of its indexed columns change: that update is HOT.

-- Replicas of the version before may still be running. Until this commits they wait; after it,
-- their writes fail (the columns they write are gone), so a webhook they are sent is refused
-- and retried by its sender rather than stored without a place in the queue.
LOCK TABLE deliveries IN EXCLUSIVE MODE;

CREATE TABLE delivery_queue (
    delivery_id     uuid PRIMARY KEY REFERENCES deliveries (id) ON DELETE CASCADE,
    namespace       text NOT NULL,
    target_kind     text NOT NULL,
    target          text NOT NULL,
    -- While waiting: when the delivery falls due. While claimed: when the claim expires; the
    -- claimer's outcome is applied only if this is still the time its claim set.
    next_attempt_at timestamptz NOT NULL,
    claimed         boolean NOT NULL DEFAULT false,
    -- Attempts started, counted at the claim, so every attempt gets a number of its own even
    -- when a claim expires before its outcome is recorded.
    attempts        integer NOT NULL DEFAULT 0
);

-- Waiting work is found per target, earliest due first (as deliveries_waiting did).
CREATE INDEX delivery_queue_waiting ON delivery_queue (namespace, target_kind, target, next_attempt_at);

-- Everything waiting moves over. A delivery claimed by a replica of the version before keeps
-- its claim until that claim's lease ends and is then sent again (at-least-once): that
-- replica cannot record its outcome any more. Rows parked at 'infinity' by versions before
-- 0004 are due now.
INSERT INTO delivery_queue (delivery_id, namespace, target_kind, target, next_attempt_at, claimed, attempts)
SELECT id, namespace, target_kind, target,
       CASE WHEN status = 'in_flight' THEN COALESCE(lease_until, now())
            WHEN next_attempt_at = 'infinity' THEN now()
            ELSE next_attempt_at END,
       status = 'in_flight',
       -- Also past any attempt recorded without moving the count (a late outcome of an
       -- expired claim, before this version), so no number is used twice.
       GREATEST(CASE WHEN status = 'in_flight' THEN attempts + 1 ELSE attempts END,
                (SELECT max(attempt_number) FROM attempts a WHERE a.delivery_id = deliveries.id))
FROM deliveries
WHERE status IN ('pending', 'failed', 'in_flight');

UPDATE deliveries SET status = CASE WHEN attempts = 0 THEN 'pending' ELSE 'failed' END
WHERE status = 'in_flight';

DROP INDEX deliveries_waiting;
DROP INDEX deliveries_leased;
-- The schedule lives in the queue only (and old replicas cannot store deliveries without it).
ALTER TABLE deliveries
    DROP COLUMN lease_until,
    DROP COLUMN next_attempt_at,
    DROP CONSTRAINT deliveries_status_check,
    -- Not validated against the rows already there (none is in_flight any more): a check of the
    -- whole history would hold the table locked for as long as it takes.
    ADD CONSTRAINT deliveries_status_check
        CHECK (status IN ('pending', 'failed', 'succeeded', 'dead', 'cancelled')) NOT VALID,
    -- Room on each page for the outcome's new row version, so that update stays HOT.
    SET (fillfactor = 85);
