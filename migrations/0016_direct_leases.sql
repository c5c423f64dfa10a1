-- A new delivery the storing gateway sends itself carries its lease on its history row, and has
-- no queue row while it is out: stored, sent and recorded, it costs three row writes (the
-- delivery, its attempt, its outcome) instead of five (the queue row's insert and delete). Only
-- a delivery whose first attempt fails, or whose sender dies, enters the queue.
--
-- `lease_until` is set only while such a delivery is out; its outcome, a takeover, a cancel or
-- a redelivery clears it. It is in no index, so the outcome's update stays HOT.
ALTER TABLE deliveries ADD COLUMN lease_until timestamptz;

-- How far the takeover of expired leases has looked (store/leases.rs): every delivery with a
-- lease has an id at or past `swept_to`. One row.
CREATE TABLE lease_sweeps (
    only_row  boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    swept_to  uuid NOT NULL
);
-- Nothing has a lease yet, and what is leased from now on has an id less than the horizon (10
-- seconds) older than the moment it is leased: the first pass starts a minute back, not at the
-- start of the history.
INSERT INTO lease_sweeps (swept_to)
SELECT (lpad(to_hex(floor(extract(epoch FROM now() - interval '1 minute') * 1000)::bigint), 12, '0')
        || repeat('0', 20))::uuid;
