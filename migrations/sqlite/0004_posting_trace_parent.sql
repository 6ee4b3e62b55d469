-- Kept in step with migrations/postgres/0004_posting_trace_parent.sql (same version): the W3C
-- `traceparent` of the posting's first attempt, written by the claim that creates the row and
-- never changed; every marketplace call for the posting runs in that trace.
ALTER TABLE bid_ledger ADD COLUMN trace_parent text;
