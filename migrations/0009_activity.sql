-- Delivery activity per target and minute, for the console's pictures: written with the
-- attempts (one row per target and minute, added to), so a chart over the last hour reads at
-- most 60 rows per target through the primary key, however busy the target is.
CREATE TABLE target_minutes (
    namespace       text NOT NULL,
    target_kind     text NOT NULL CHECK (target_kind IN ('handler', 'subscription')),
    target          text NOT NULL,
    minute          timestamptz NOT NULL,
    succeeded       integer NOT NULL DEFAULT 0,
    failed          integer NOT NULL DEFAULT 0,
    -- Attempts per latency bucket; the bounds are in store/activity.rs.
    latency_buckets integer[] NOT NULL,
    PRIMARY KEY (namespace, target_kind, target, minute)
);

-- Each change of a target's circuit (written when target_states.circuit changes).
CREATE TABLE circuit_changes (
    namespace   text NOT NULL,
    target_kind text NOT NULL CHECK (target_kind IN ('handler', 'subscription')),
    target      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now(),
    circuit     text NOT NULL CHECK (circuit IN ('closed', 'open', 'half-open')),
    PRIMARY KEY (namespace, target_kind, target, at)
);
