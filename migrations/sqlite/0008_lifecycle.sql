-- Kept in step with migrations/postgres/0008_lifecycle.sql (same version), which says what the
-- indexes and the column are for.
CREATE INDEX bid_ledger_final_updated_at ON bid_ledger (updated_at) WHERE state <> 'pending';
CREATE INDEX bid_audit_at ON bid_audit (at);
ALTER TABLE bid_ledger ADD COLUMN not_before TEXT;
