-- Runtime state of delivery targets that outlives one process.

-- Pause and circuit state per target: written on transitions, read for status and by every
-- gateway replica (a 410 seen by one replica pauses the target for all).
CREATE TABLE target_states (
    namespace     text NOT NULL,
    target_kind   text NOT NULL CHECK (target_kind IN ('handler', 'subscription')),
    target        text NOT NULL,
    paused_reason text,                           -- set when paused at runtime (410 Gone)
    paused_at     timestamptz,
    circuit       text NOT NULL DEFAULT 'closed' CHECK (circuit IN ('closed', 'open', 'half-open')),
    circuit_since timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, target_kind, target)
);

-- Signing secrets generated for targets configured without a secretRef when no controller
-- generates them (hookline standalone).
CREATE TABLE generated_secrets (
    namespace   text NOT NULL,
    target_kind text NOT NULL,
    target      text NOT NULL,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace, target_kind, target)
);
