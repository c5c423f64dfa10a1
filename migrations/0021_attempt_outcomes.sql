-- Each attempt records the outcome it gave its delivery (succeeded; failed, to be retried;
-- dead), when its claim still held the delivery; an attempt whose claim had ended (its outcome
-- came late, after the delivery was taken over) has none. This is the first step to a history
-- whose delivery rows are never updated (docs/benchmarks.md, "What the queue row costs, and
-- the history row"): a delivery's outcome is its latest attempt's. The history row's status is
-- still written as well, and is what every reader reads for now.
--
-- An enum, not text with a CHECK: adding a CHECK constraint scans every attempt ever kept under
-- a lock that stops outcomes from being recorded; a new nullable column is a catalog change.
CREATE TYPE attempt_outcome AS ENUM ('succeeded', 'failed', 'dead');
ALTER TABLE attempts ADD COLUMN outcome attempt_outcome;
