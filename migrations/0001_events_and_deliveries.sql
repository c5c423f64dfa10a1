-- Every accepted event, every delivery of it to a target, and every HTTP attempt of a delivery.
-- History is the audit trail: rows are removed only by retention.

CREATE TABLE events (
    id          uuid PRIMARY KEY,                 -- UUIDv7, so ids sort by arrival
    namespace   text NOT NULL,
    -- The WebhookSource the event came in through; '' for events published with the API
    -- (no source name can be empty).
    source      text NOT NULL,
    provider    text,                             -- verification scheme; NULL when published
    external_id text NOT NULL,                    -- the sender's event id: dedupe key
    event_type  text NOT NULL,
    headers     jsonb NOT NULL DEFAULT '{}',      -- request headers as received
    body        bytea NOT NULL,                   -- raw body, byte for byte
    received_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_dedupe UNIQUE (namespace, source, external_id)
);

CREATE INDEX events_by_type ON events (namespace, event_type, received_at DESC);
CREATE INDEX events_by_source ON events (namespace, source, received_at DESC);
CREATE INDEX events_by_time ON events (received_at);

CREATE TABLE deliveries (
    id              uuid PRIMARY KEY,             -- also the stable webhook-id of its requests
    event_id        uuid NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    namespace       text NOT NULL,
    target_kind     text NOT NULL CHECK (target_kind IN ('handler', 'subscription')),
    -- 'source/handler' for handlers, the WebhookSubscription name for subscriptions.
    target          text NOT NULL,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'in_flight', 'succeeded', 'failed', 'dead', 'cancelled')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    -- While in_flight: when the claim expires, so a crashed worker's deliveries are taken over.
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT deliveries_once_per_target UNIQUE (event_id, target_kind, target)
);

-- The queue: due work is found through this partial index only.
CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'failed');
CREATE INDEX deliveries_leased ON deliveries (lease_until) WHERE status = 'in_flight';
CREATE INDEX deliveries_by_target ON deliveries (namespace, target_kind, target, created_at DESC);

CREATE TABLE attempts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id      uuid NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
    attempt_number   integer NOT NULL,
    started_at       timestamptz NOT NULL,
    duration_ms      integer NOT NULL,
    status_code      smallint,                    -- NULL when no response arrived
    error_class      text CHECK (error_class IN ('timeout', 'connect', 'tls', 'http')),
    error            text,
    response_headers jsonb,
    response_body    text,                        -- first 1 KiB
    CONSTRAINT attempts_once UNIQUE (delivery_id, attempt_number)
);

CREATE INDEX attempts_by_time ON attempts (started_at);

-- Idempotency-Key of the publish API: the first answer, replayed for the same key and body.
CREATE TABLE idempotency_keys (
    namespace       text NOT NULL,
    key             text NOT NULL,
    request_hash    bytea NOT NULL,               -- SHA-256 of the request body
    response_status smallint NOT NULL,
    response_body   jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (namespace, key)
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
