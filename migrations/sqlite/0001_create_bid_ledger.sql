-- The bid ledger for the embedded mode; kept in step with
-- migrations/postgres/0001_create_bid_ledger.sql (same version, same columns and constraints).
-- Timestamps are UTC text of fixed width ('2026-11-26T10:00:00.123Z'), so they order as text.
CREATE TABLE bid_ledger (
    marketplace TEXT    NOT NULL,
    posting_id  TEXT    NOT NULL,
    state       TEXT    NOT NULL DEFAULT 'pending'
                        CHECK (state IN ('pending', 'placed', 'skipped', 'rejected')),
    epoch       INTEGER NOT NULL DEFAULT 1 CHECK (epoch >= 1),
    bid_id      TEXT,
    detail      TEXT,
    event_id    TEXT    NOT NULL,
    sends       INTEGER NOT NULL DEFAULT 0 CHECK (sends >= 0),
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    sent_at     TEXT,
    PRIMARY KEY (marketplace, posting_id)
) WITHOUT ROWID;

CREATE INDEX bid_ledger_placed_updated_at ON bid_ledger (updated_at) WHERE state = 'placed';
