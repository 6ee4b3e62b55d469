-- Kept in step with migrations/postgres/0007_credit_budgets.sql (same version), which says what
-- the budget table and the row's period and cost are for. Amounts are decimal text, added and
-- compared in the claim (Rust), never as floats.
CREATE TABLE bid_budget_spend (
    marketplace  TEXT NOT NULL,
    period_start TEXT NOT NULL,
    spent        TEXT NOT NULL DEFAULT '0',
    PRIMARY KEY (marketplace, period_start)
) WITHOUT ROWID;

ALTER TABLE bid_ledger ADD COLUMN budget_period TEXT;
ALTER TABLE bid_ledger ADD COLUMN budget_cost TEXT;
