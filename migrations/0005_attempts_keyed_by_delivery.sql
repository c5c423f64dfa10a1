-- An attempt is identified by its delivery and its number. The surrogate id was never read and
-- cost an index entry for every attempt written.
ALTER TABLE attempts DROP CONSTRAINT attempts_pkey;
ALTER TABLE attempts DROP COLUMN id;
ALTER TABLE attempts ADD CONSTRAINT attempts_pkey PRIMARY KEY USING INDEX attempts_once;
