-- Refused inbound requests, counted per source, reason and minute (flushed by the gateways
-- every few seconds), for the `rejected` count in a WebhookSource's status.
CREATE TABLE ingest_rejections (
    namespace text NOT NULL,
    source    text NOT NULL,
    reason    text NOT NULL,
    minute    timestamptz NOT NULL,
    count     bigint NOT NULL,
    PRIMARY KEY (namespace, source, reason, minute)
);
