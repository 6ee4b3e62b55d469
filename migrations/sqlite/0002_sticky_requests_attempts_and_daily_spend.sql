-- Sticky requests, the attempt history and the exact daily cap; kept in step with
-- migrations/postgres/0002_sticky_requests_attempts_and_daily_spend.sql.
ALTER TABLE bid_ledger ADD COLUMN request_body TEXT;
ALTER TABLE bid_ledger ADD COLUMN request_sha256 TEXT;
ALTER TABLE bid_ledger ADD COLUMN request_amount TEXT;
ALTER TABLE bid_ledger ADD COLUMN request_currency TEXT;
ALTER TABLE bid_ledger ADD COLUMN reserved_day TEXT;

CREATE INDEX bid_ledger_unresolved ON bid_ledger (sent_at) WHERE state = 'pending' AND sends > 0;

CREATE TABLE bid_attempts (
    marketplace TEXT    NOT NULL,
    posting_id  TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    instance    TEXT    NOT NULL,
    event_id    TEXT    NOT NULL,
    trace_id    TEXT,
    claim       TEXT    NOT NULL,
    started_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at TEXT,
    result      TEXT,
    http_status INTEGER,
    detail      TEXT,
    PRIMARY KEY (marketplace, posting_id, epoch)
) WITHOUT ROWID;

CREATE TABLE bid_daily_spend (
    marketplace TEXT    NOT NULL,
    day         TEXT    NOT NULL,
    reserved    INTEGER NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (marketplace, day)
) WITHOUT ROWID;
