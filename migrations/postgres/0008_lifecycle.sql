-- The ledger over months: what retention and reconcile read cheaply. Kept in step with
-- migrations/sqlite/0008_lifecycle.sql.
--
-- bid_ledger_final_updated_at: the final rows by when their outcome was written, so pruning and
-- the oldest row's age are index reads on a table of a billion rows.
-- bid_ledger.not_before: when a pending posting's own message comes back (a Retry-After); until
-- then `reconcile` (and the workers' automatic reconcile) leaves the posting to it.
-- The finish functions take it as one more array: dropped and made again.

CREATE INDEX bid_ledger_final_updated_at ON bid_ledger (updated_at) WHERE state <> 'pending';
CREATE INDEX bid_audit_at ON bid_audit (at);
ALTER TABLE bid_ledger ADD COLUMN not_before timestamptz;

DROP FUNCTION bidorch_finish(text[], text[], bigint[], text[], text[], text[], text[], int[],
                             text[], text[]);
DROP FUNCTION bidorch_finish_one(int, text, text, bigint, text, text, text, text, int, text,
                                 text);

-- One attempt's end, as in 0007; a pending end also records when the posting's own message
-- comes back (`back_at`: a Retry-After; NULL: soon), which reconcile leaves it to. What it
-- learnt of the send:
-- `send_state` 'answered', 'not_sent' or 'unknown' is this attempt's own send (if it made one);
-- 'absent' marks every still-unknown send of the posting absent (a lookup found no bid). A
-- pending row's `unknown_since` is then what its attempts say; a final row has none.
CREATE FUNCTION bidorch_finish_one(
    idx int, mk text, pid text, at_epoch bigint, new_state text, new_bid_id text,
    new_detail text, outcome text, status int, attempt_detail text, send_state text,
    back_at timestamptz)
RETURNS bidorch_step
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $fn$
DECLARE
    r bid_ledger%ROWTYPE;
    written boolean;
BEGIN
    SELECT * INTO r FROM bid_ledger l
    WHERE l.marketplace = mk AND l.posting_id = pid FOR UPDATE;
    written := FOUND AND r.state = 'pending' AND r.epoch = at_epoch;
    IF written THEN
        IF new_state = 'rejected' AND r.reserved_day IS NOT NULL THEN
            UPDATE bid_daily_spend d SET reserved = greatest(d.reserved - 1, 0)
            WHERE d.marketplace = mk AND d.day = r.reserved_day;
        END IF;
        IF new_state = 'rejected' AND r.budget_period IS NOT NULL THEN
            UPDATE bid_budget_spend s SET spent = greatest(s.spent - r.budget_cost, 0)
            WHERE s.marketplace = mk AND s.period_start = r.budget_period;
        END IF;
        UPDATE bid_attempts a SET finished_at = now(), result = outcome, http_status = status,
               detail = attempt_detail,
               send = CASE WHEN a.send IS NULL OR send_state IS NULL OR send_state = 'absent'
                           THEN a.send ELSE send_state END
        WHERE a.marketplace = mk AND a.posting_id = pid AND a.epoch = at_epoch;
        IF send_state = 'absent' THEN
            UPDATE bid_attempts a SET send = 'absent'
            WHERE a.marketplace = mk AND a.posting_id = pid AND a.send = 'unknown';
        END IF;
        IF new_state IS NOT NULL THEN
            UPDATE bid_ledger l SET state = new_state, bid_id = new_bid_id, detail = new_detail,
                   reserved_day = CASE WHEN new_state = 'rejected' THEN NULL
                                       ELSE l.reserved_day END,
                   budget_period = CASE WHEN new_state = 'rejected' THEN NULL
                                        ELSE l.budget_period END,
                   unknown_since = NULL, not_before = NULL, updated_at = now()
            WHERE l.marketplace = mk AND l.posting_id = pid
            RETURNING * INTO r;
        ELSE
            UPDATE bid_ledger l SET unknown_since =
                   (SELECT min(a.started_at) FROM bid_attempts a
                    WHERE a.marketplace = mk AND a.posting_id = pid AND a.send = 'unknown'),
                   not_before = back_at
            WHERE l.marketplace = mk AND l.posting_id = pid
            RETURNING * INTO r;
        END IF;
    END IF;
    IF r.marketplace IS NULL THEN
        RETURN ROW(idx, NULL::text, written, NULL::bigint, NULL::text, NULL::int, NULL::text,
                   NULL::text, NULL::text, NULL::timestamptz, NULL::timestamptz,
                   NULL::timestamptz, NULL::text, NULL::text, NULL::text, NULL::text,
                   NULL::text, NULL::text, NULL::timestamptz)::bidorch_step;
    END IF;
    RETURN ROW(idx, NULL::text, written, r.epoch, r.state, r.sends, r.bid_id, r.detail,
               r.event_id, r.created_at, r.updated_at, r.sent_at, r.request_body,
               r.request_sha256, r.request_amount, r.request_currency,
               r.trace_parent, r.request_api, r.unknown_since)::bidorch_step;
END
$fn$;

-- The finish of a batch, as in 0007, with when each pending posting's message comes back; the
-- cap rows and then the budget rows a rejection gives back to are locked first (an attempt that ends `placed` — nearly all — written by one
-- statement for the whole batch, the rest through bidorch_finish_one), with each attempt's send
-- state.
CREATE FUNCTION bidorch_finish(
    ms text[], ps text[], epochs bigint[], states text[], bid_ids text[], details text[],
    results text[], statuses int[], attempt_details text[], send_states text[],
    back_ats timestamptz[])
RETURNS SETOF bidorch_step
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $fn$
DECLARE
    c record;
    done int[];
BEGIN
    IF 'rejected' = ANY (states) THEN
        FOR c IN
            SELECT DISTINCT l.marketplace AS m, l.reserved_day AS day
            FROM unnest(ms, ps, states) AS u(m, p, state)
            JOIN bid_ledger l ON l.marketplace = u.m AND l.posting_id = u.p
            WHERE u.state = 'rejected' AND l.reserved_day IS NOT NULL
            ORDER BY 1, 2
        LOOP
            PERFORM 1 FROM bid_daily_spend d WHERE d.marketplace = c.m AND d.day = c.day FOR UPDATE;
        END LOOP;
        FOR c IN
            SELECT DISTINCT l.marketplace AS m, l.budget_period AS period
            FROM unnest(ms, ps, states) AS u(m, p, state)
            JOIN bid_ledger l ON l.marketplace = u.m AND l.posting_id = u.p
            WHERE u.state = 'rejected' AND l.budget_period IS NOT NULL
            ORDER BY 1, 2
        LOOP
            PERFORM 1 FROM bid_budget_spend s
            WHERE s.marketplace = c.m AND s.period_start = c.period FOR UPDATE;
        END LOOP;
    END IF;

    WITH input AS (
        SELECT (u.o - 1)::int AS i, u.m, u.p, u.epoch, u.state, u.bid_id, u.detail, u.result,
               u.http_status, u.attempt_detail, u.send_state,
               row_number() OVER (PARTITION BY u.m, u.p ORDER BY u.o) AS copy
        FROM unnest(ms, ps, epochs, states, bid_ids, details, results, statuses,
                    attempt_details, send_states)
             WITH ORDINALITY AS u(m, p, epoch, state, bid_id, detail, result, http_status,
                                  attempt_detail, send_state, o)
    ),
    placed AS (
        SELECT * FROM input f
        WHERE f.state = 'placed' AND f.copy = 1 AND f.send_state = 'answered'
        ORDER BY f.m, f.p
    ),
    written AS (
        UPDATE bid_ledger l SET state = f.state, bid_id = f.bid_id, detail = f.detail,
               unknown_since = NULL, not_before = NULL, updated_at = now()
        FROM placed f
        WHERE l.marketplace = f.m AND l.posting_id = f.p AND l.epoch = f.epoch
          AND l.state = 'pending'
        RETURNING f.i, f.m, f.p, f.epoch, f.result, f.http_status, f.attempt_detail
    ),
    history AS (
        UPDATE bid_attempts a SET finished_at = now(), result = w.result,
               http_status = w.http_status, detail = w.attempt_detail,
               send = CASE WHEN a.send IS NULL THEN NULL ELSE 'answered' END
        FROM written w
        WHERE a.marketplace = w.m AND a.posting_id = w.p AND a.epoch = w.epoch
    )
    SELECT coalesce(array_agg(w.i), '{}') INTO done FROM written w;

    RETURN QUERY
        SELECT d, NULL::text, true, NULL::bigint, NULL::text, NULL::int, NULL::text,
               NULL::text, NULL::text, NULL::timestamptz, NULL::timestamptz,
               NULL::timestamptz, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text,
               NULL::text, NULL::timestamptz
        FROM unnest(done) AS d;

    FOR c IN
        SELECT (u.o - 1)::int AS i, u.*
        FROM unnest(ms, ps, epochs, states, bid_ids, details, results, statuses,
                    attempt_details, send_states, back_ats)
             WITH ORDINALITY AS u(m, p, epoch, state, bid_id, detail, result, http_status,
                                  attempt_detail, send_state, back_at, o)
        WHERE NOT ((u.o - 1)::int = ANY (done))
        ORDER BY u.m, u.p, u.o
    LOOP
        RETURN NEXT bidorch_finish_one(c.i, c.m, c.p, c.epoch, c.state, c.bid_id, c.detail,
                                       c.result, c.http_status, c.attempt_detail,
                                       c.send_state, c.back_at);
    END LOOP;
END
$fn$;
