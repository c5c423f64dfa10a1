-- A claim from the queue no longer leases its deliveries on their history rows (0018): it
-- notes them here, one row per claim and lease, with the attempts each had started before it.
-- A delivery's outcome is its attempt's (0021, 0022), counted only while its claim is noted
-- (the recorder locks the note FOR SHARE), so a delivery sent through the queue costs four row
-- writes (its history row, its queue row's insert and delete, its attempt) instead of six
-- (docs/benchmarks.md, "What the queue row costs, and the history row").
--
-- The pass over ended claims (store/leases.rs) deletes each ended note and queues again what it
-- names that got no outcome, under the number of the attempt that never reported. Whatever
-- takes a delivery from its claim (a release, a cancel, a redelivery, a transform's failure)
-- takes it out of the note, so the pass leaves it alone.
--
-- A table of its own, not `queue_leases`: a replica of the version before this one, during a
-- rolling upgrade, takes over the claims in `queue_leases` by their leases on history rows,
-- which these do not set; this version takes over both.
CREATE TABLE claims (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lease_until  timestamptz NOT NULL,
    -- Delivery id (text) → attempts started before this claim.
    deliveries   jsonb NOT NULL
);

-- The recorder finds a claim by its lease's end; the pass reads the ended ones.
CREATE INDEX claims_by_end ON claims (lease_until);
