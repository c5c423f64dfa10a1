-- A delivery whose target's CEL expression failed for its event (a filter that errs, a transform
-- that cannot build a body) ends as 'filtered_error': kept with the reason in last_error, never
-- attempted. Not validated against the rows already there, as in 0006: none can violate it.
ALTER TABLE deliveries
    DROP CONSTRAINT deliveries_status_check,
    ADD CONSTRAINT deliveries_status_check
        CHECK (status IN ('pending', 'failed', 'succeeded', 'dead', 'cancelled', 'filtered_error')) NOT VALID;
