-- A delivery the storing gateway sends itself is no longer written again by its outcome: the
-- recorder locks its history row while the lease holds it and inserts the attempt, which is
-- the delivery's state (0022); the lease stays on the row, ended by that outcome
-- (store/leases.rs). Whatever ends a lease otherwise (the pass over leases, a cancel, a
-- redelivery, a release) clears it.
--
-- The pass over leases no longer waits at the first delivery still out: it moves `swept_to`
-- on to its horizon and keeps the ids of those still out in `still_out` (a few, those being
-- sent slowly), which it looks at again each pass. So every delivery out on a lease of its row
-- has an id at or past `swept_to` or in `still_out` (0016 said only the first). Were the pass
-- to wait there, a delivery finished behind a slow one would keep an ended lease in the range
-- an older version's pass reads, which would queue it again during a rolling upgrade.
ALTER TABLE lease_sweeps ADD COLUMN still_out uuid[] NOT NULL DEFAULT '{}';

-- No path writes a history row twice in the normal course (a claim from the queue stopped in
-- 0023), so the deliveries' pages no longer keep room for a second version (0017): a row
-- written again (a cancel, a redelivery, a release) takes an update that is not HOT, which is
-- rare. New partitions are made with the default fillfactor (100); this sets it on the ones
-- that exist. It takes no lock that stops reads or writes, rewrites nothing, and applies to
-- pages filled from now on.
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'deliveries'::regclass LOOP
        EXECUTE format('ALTER TABLE %s RESET (fillfactor)', part);
    END LOOP;
END
$$;
