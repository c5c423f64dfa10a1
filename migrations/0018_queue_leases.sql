-- A claim from the queue leases its deliveries on their history rows, as the storing gateway
-- leases the deliveries it sends itself (0016), and deletes their queue rows.
--
-- A claim used to move each queue row's due time to the end of its lease: an update that
-- could not be HOT (the due time is in `delivery_queue_waiting`), so every claimed delivery
-- wrote a new queue row version and new index entries, and the outcome then deleted that
-- version. Now the claim deletes the queue row and sets `deliveries.lease_until`, which is in
-- no index (a HOT update); the outcome clears it in the next HOT update. Deliveries of targets
-- with `ordering` are claimed as before: a key's head stays queued while it is out.
--
-- The pass that takes over expired leases (store/leases.rs) reads only the deliveries stored
-- in the last seconds, and a backlog may be days old. So each claim notes the deliveries it
-- leased here, one row per claim and lease (a claim for many targets with the same attempt
-- timeout writes one); the pass queues those whose lease ended without an outcome and
-- deletes the row once its lease has ended.
CREATE TABLE queue_leases (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lease_until  timestamptz NOT NULL,
    deliveries   uuid[] NOT NULL
);

-- The pass reads the ended ones.
CREATE INDEX queue_leases_by_end ON queue_leases (lease_until);
