-- A waiting delivery's event, beside it in the queue: a claim reads the event straight away,
-- without first finding the delivery in the partitioned history (a quarter of a claim's time).
-- Nullable: during a rollout, replicas of the version before insert queue rows without it, and
-- a claim looks the event of such a row up through `deliveries`, as before.
ALTER TABLE delivery_queue ADD COLUMN event_id uuid;
UPDATE delivery_queue q SET event_id = d.event_id FROM deliveries d WHERE d.id = q.delivery_id;
