-- The history's delivery pages keep room for every row's next version.
--
-- A delivery's outcome updates its row, and that update stays HOT (no new index entries) only
-- when the new version fits on the row's page. A backlog is drained a batch at a time, so the
-- outcomes of a page's rows are written together in one transaction, and none of their old
-- versions can be pruned to make room before it commits: with 85 % of each page filled, two in
-- three of those updates were not HOT. 45 % leaves room for every row's new version, a few
-- bytes longer ('pending' becomes 'succeeded'). New partitions are made with fillfactor 45
-- (store/partitions.rs); this sets it on the ones that exist. It takes no lock that stops
-- reads or writes, rewrites nothing, and applies to pages filled from now on.
DO $$
DECLARE
    part regclass;
BEGIN
    FOR part IN SELECT inhrelid::regclass FROM pg_inherits WHERE inhparent = 'deliveries'::regclass LOOP
        EXECUTE format('ALTER TABLE %s SET (fillfactor = 45)', part);
    END LOOP;
END
$$;
