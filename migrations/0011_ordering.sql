-- Ordered delivery per key: a delivery to a target with `ordering` carries the key its event
-- gave and a position from one sequence (the order deliveries were stored, across replicas). A
-- queued delivery is claimed only when no earlier one of its target and key is still queued
-- and none is being sent: the key's head. A dead head of a target with `onDead: block` stays in
-- the queue, parked at 'infinity', and blocks its key until it is redelivered or skipped.
CREATE SEQUENCE delivery_position;

ALTER TABLE deliveries
    ADD COLUMN ordering_key text,
    ADD COLUMN position bigint;

ALTER TABLE delivery_queue
    ADD COLUMN ordering_key text,
    ADD COLUMN position bigint;

-- Keys and their heads, key by key (a loose index scan: a claim costs a probe per key, however
-- deep each key's backlog).
CREATE INDEX delivery_queue_ordered ON delivery_queue (namespace, target_kind, target, ordering_key, position)
    WHERE ordering_key IS NOT NULL;
-- Deliveries of a key being sent: few at any time.
CREATE INDEX delivery_queue_claimed_keys ON delivery_queue (namespace, target_kind, target, ordering_key)
    WHERE claimed AND ordering_key IS NOT NULL;
