-- Events accepted, counted per source and minute by the gateways (flushed with the refused
-- requests' counts), for the `received` count in a WebhookSource's status. Counting a source's
-- events in the history read every one of them at every status refresh (232 ms for 3 million,
-- growing with the history). Kept as long as the history is (retention), so the count covers
-- what the history holds, as it did.
CREATE TABLE ingest_minutes (
    namespace text NOT NULL,
    source    text NOT NULL,
    minute    timestamptz NOT NULL,
    accepted  bigint NOT NULL,
    PRIMARY KEY (namespace, source, minute)
);

-- The history's counts so far, when it is small enough to count now (up to 10 million events:
-- seconds); a larger history is counted from here on (docs/history.md). Published events have
-- no source.
DO $$
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM events LIMIT 10000001) e) <= 10000000 THEN
        INSERT INTO ingest_minutes (namespace, source, minute, accepted)
        SELECT namespace, source, date_trunc('minute', received_at), count(*)
        FROM events WHERE source <> ''
        GROUP BY 1, 2, 3;
    END IF;
END
$$;
