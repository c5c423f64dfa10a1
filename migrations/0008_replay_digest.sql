-- For schemes that do not sign the event id (GitHub; generic HMAC with an id header): the
-- SHA-256 of what the signature covers. A captured request sent again with a new id header is
-- a duplicate of the stored event for as long as that event is kept (see --retention).
ALTER TABLE events ADD COLUMN replay_digest bytea;
CREATE UNIQUE INDEX events_dedupe_replay ON events (namespace, source, replay_digest)
    WHERE replay_digest IS NOT NULL;
