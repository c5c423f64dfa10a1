-- A target's status (its deliveries over the last hour) is read from its minutes, not from the
-- history: counting a busy target's deliveries and attempts of the hour read every delivery it
-- ever had (2.5 s for a target with 3 million, every status refresh). What the minutes did not
-- hold yet: deliveries that went dead, and the last success and failure with the failure's
-- reason, each the latest of its minute. Minutes written before this have none of them: for
-- the first hour after the upgrade, a status counts no dead deliveries from before it.
ALTER TABLE target_minutes
    ADD COLUMN dead integer NOT NULL DEFAULT 0,
    ADD COLUMN last_success_at timestamptz,
    ADD COLUMN last_failure_at timestamptz,
    ADD COLUMN last_failure_reason text;
