-- Replays: a time window of stored events sent to one target again (WebhookReplay resources,
-- standalone's replay files, the admin API). A gateway works through a running replay a batch
-- per second under a lease, so one replica at a time does; `cursor_*` is where it got to.
CREATE TABLE replays (
    id            uuid PRIMARY KEY,
    namespace     text NOT NULL,
    name          text NOT NULL,
    -- Tells apart replays of the same name: the resource's uid, or a hash of a file's spec.
    uid           text NOT NULL,
    target_kind   text NOT NULL CHECK (target_kind IN ('handler', 'subscription')),
    target        text NOT NULL,
    window_from   timestamptz NOT NULL,
    window_to     timestamptz NOT NULL,
    event_types   text[] NOT NULL,                -- globs; empty: every type
    filter        text,
    statuses      text[] NOT NULL,
    dry_run       boolean NOT NULL,
    rate          integer NOT NULL CHECK (rate > 0),
    state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'complete', 'failed')),
    message       text,
    cursor_at     timestamptz,
    cursor_id     uuid,
    matched       bigint NOT NULL DEFAULT 0,
    enqueued      bigint NOT NULL DEFAULT 0,
    lease_until   timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    CONSTRAINT replays_once UNIQUE (namespace, name, uid)
);

-- The replay that last enqueued a delivery, for the replay's delivered and failed counts. The
-- index names replay_id alone: the outcome's update changes status, and stays HOT only while no
-- indexed column changes.
ALTER TABLE deliveries ADD COLUMN replay_id uuid;
CREATE INDEX deliveries_by_replay ON deliveries (replay_id) WHERE replay_id IS NOT NULL;
