-- The bid ledger: one row per (marketplace, posting_id), the durable record of each posting's
-- decision and bid. `epoch` is the fence: every claim bumps it and every later write of that
-- attempt is conditional on it. Kept in step with migrations/sqlite/0001_create_bid_ledger.sql.
CREATE TABLE bid_ledger (
    marketplace text        NOT NULL,
    posting_id  text        NOT NULL,
    state       text        NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'placed', 'skipped', 'rejected')),
    epoch       bigint      NOT NULL DEFAULT 1 CHECK (epoch >= 1),
    -- Marketplace bid id of a `placed` row (NULL after a 409: placed under another key).
    bid_id      text,
    -- Skip reasons, or the rejection's status and body excerpt, or a note on a placed row.
    detail      text,
    -- The event of the latest claim (several events may carry the same posting).
    event_id    text        NOT NULL,
    -- How many attempts passed the fence towards the marketplace (mark_sending).
    sends       integer     NOT NULL DEFAULT 0 CHECK (sends >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    PRIMARY KEY (marketplace, posting_id)
);

-- placed_since (the daily bid cap) counts recent placed rows without scanning the table.
CREATE INDEX bid_ledger_placed_updated_at ON bid_ledger (updated_at) WHERE state = 'placed';
