-- Kept in step with migrations/postgres/0003_set_based_claim_and_finish.sql (same version). The
-- embedded ledger makes its claims and finishes in Rust (one immediate transaction per batch), so
-- only the index nothing reads any more goes: the daily cap is kept in bid_daily_spend.
DROP INDEX bid_ledger_placed_updated_at;
