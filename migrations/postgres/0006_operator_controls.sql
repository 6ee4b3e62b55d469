-- Operator controls: the fleet-wide manual pause with its audit history, and the workers'
-- reports of themselves. Kept in step with migrations/sqlite/0006_operator_controls.sql.
--
-- bid_control.generation counts pause changes: every pause and resume bumps it, and each worker
-- reports (bid_workers.generation) the generation it applied, so `bidorch pause` knows when the
-- whole fleet has. Expiry of a `--for` pause bumps nothing: every reader compares `until` with
-- its clock. Nothing here needs a session (no advisory lock, no LISTEN): workers poll.

CREATE TABLE bid_control (
    id         int    PRIMARY KEY CHECK (id = 1),
    generation bigint NOT NULL DEFAULT 0
);
INSERT INTO bid_control (id) VALUES (1);

-- The pauses in force: `*` for every marketplace, else a marketplace's name.
CREATE TABLE bid_pauses (
    scope     text        PRIMARY KEY,
    reason    text        NOT NULL,
    paused_by text        NOT NULL,
    paused_at timestamptz NOT NULL DEFAULT now(),
    until     timestamptz
);

-- Every operator action: who, what, when, why.
CREATE TABLE bid_audit (
    id     bigserial   PRIMARY KEY,
    at     timestamptz NOT NULL DEFAULT now(),
    who    text        NOT NULL,
    action text        NOT NULL,
    scope  text,
    reason text,
    until  timestamptz,
    detail text
);

-- Each worker's latest report of itself (about once a second).
CREATE TABLE bid_workers (
    instance    text        PRIMARY KEY,
    host        text        NOT NULL,
    version     text        NOT NULL,
    started_at  timestamptz NOT NULL,
    seen_at     timestamptz NOT NULL,
    generation  bigint      NOT NULL,
    in_flight   int         NOT NULL,
    auto_paused text        NOT NULL DEFAULT ''
);
CREATE INDEX bid_workers_seen_at ON bid_workers (seen_at);
