-- Kept in step with migrations/postgres/0006_operator_controls.sql (same version), which says
-- what each table is for.
CREATE TABLE bid_control (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    generation INTEGER NOT NULL DEFAULT 0
);
INSERT INTO bid_control (id) VALUES (1);

CREATE TABLE bid_pauses (
    scope     TEXT PRIMARY KEY,
    reason    TEXT NOT NULL,
    paused_by TEXT NOT NULL,
    paused_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    until     TEXT
) WITHOUT ROWID;

CREATE TABLE bid_audit (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    who    TEXT NOT NULL,
    action TEXT NOT NULL,
    scope  TEXT,
    reason TEXT,
    until  TEXT,
    detail TEXT
);

CREATE TABLE bid_workers (
    instance    TEXT    PRIMARY KEY,
    host        TEXT    NOT NULL,
    version     TEXT    NOT NULL,
    started_at  TEXT    NOT NULL,
    seen_at     TEXT    NOT NULL,
    generation  INTEGER NOT NULL,
    in_flight   INTEGER NOT NULL,
    auto_paused TEXT    NOT NULL DEFAULT ''
) WITHOUT ROWID;
CREATE INDEX bid_workers_seen_at ON bid_workers (seen_at);
