-- An attempt is identified by its delivery and its number. The surrogate id was never read and
-- cost an index entry for every attempt written.
ALTER TABLE attempts
    DROP COLUMN id,
    DROP CONSTRAINT attempts_once,
    ADD CONSTRAINT attempts_pkey PRIMARY KEY (delivery_id, attempt_number);
