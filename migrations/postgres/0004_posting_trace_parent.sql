-- Trace continuity: every marketplace call for a posting runs in the trace of its first
-- attempt, so the row keeps that attempt's W3C `traceparent` (its `process` span), written by the
-- claim that creates the row and never changed. Kept in step with
-- migrations/sqlite/0004_posting_trace_parent.sql (same version).
--
-- Functions and the answer type are those of 0003 with the new column passed in (the claim's
-- `parents` array) and read back (`o_trace_parent`); they are dropped and made again because a
-- function's parameters and a composite type in use cannot change in place.

ALTER TABLE bid_ledger ADD COLUMN trace_parent text;

DROP FUNCTION bidorch_lookup(text[], text[]);
DROP FUNCTION bidorch_finish(text[], text[], bigint[], text[], text[], text[], text[], int[],
                             text[]);
DROP FUNCTION bidorch_finish_one(int, text, text, bigint, text, text, text, text, int, text);
DROP FUNCTION bidorch_claim(text[], text[], text[], text[], text[], text[], text[], text[],
                            text[], text[], text[], bigint[], date);
DROP FUNCTION bidorch_claim_one(int, text, text, text, text, text, text, text, text, text, text,
                                text, bigint, date);
DROP TYPE bidorch_step;

-- One answer of a claim or a finish: the posting's position in the batch, the verdict, and the
-- row after the step (left NULL where the caller needs nothing back: a finish written).
CREATE TYPE bidorch_step AS (
    o_idx int, o_result text, o_written boolean, o_epoch bigint, o_state text, o_sends int,
    o_bid_id text, o_detail text, o_event_id text, o_created_at timestamptz,
    o_updated_at timestamptz, o_sent_at timestamptz, o_request_body text,
    o_request_sha256 text, o_request_amount text, o_request_currency text,
    o_trace_parent text
);

-- One posting's claim, under its row lock. The caller holds the day's cap row of `mk` when
-- `cap` is set (taken before any existing posting's row). A fresh row starts at epoch 1; every
-- further claim bumps it. Decisions, in order: final stays final (read without a lock: a final
-- row never changes); a request already sent is sent again (sticky); `resend` does nothing else;
-- `skip` records `skipped`; `bid` takes a cap slot (none left: `skipped` / `daily_cap`) and
-- stores the request.
CREATE FUNCTION bidorch_claim_one(
    idx int, mk text, pid text, ev text, want text, req_body text, req_sha text,
    req_amount text, req_currency text, skip_reasons text, who text, trace text, parent text,
    cap bigint, today date)
RETURNS bidorch_step
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $fn$
DECLARE
    r bid_ledger%ROWTYPE;
    fresh boolean := false;
    next_epoch bigint;
    took_slot boolean;
    verdict text;
BEGIN
    SELECT * INTO r FROM bid_ledger l WHERE l.marketplace = mk AND l.posting_id = pid;
    IF FOUND AND r.state <> 'pending' THEN
        verdict := 'final';
    ELSE
        IF NOT FOUND THEN
            INSERT INTO bid_ledger (marketplace, posting_id, event_id, trace_parent)
            VALUES (mk, pid, ev, parent) ON CONFLICT DO NOTHING;
            fresh := FOUND;
        END IF;
        SELECT * INTO r FROM bid_ledger l
        WHERE l.marketplace = mk AND l.posting_id = pid FOR UPDATE;
        IF r.state <> 'pending' THEN
            verdict := 'final';
        ELSIF r.sends = 0 AND want = 'resend' THEN
            verdict := 'nothing';
        ELSE
            next_epoch := CASE WHEN fresh THEN r.epoch ELSE r.epoch + 1 END;
            IF r.sends > 0 THEN
                UPDATE bid_ledger l SET epoch = next_epoch, sends = l.sends + 1,
                       event_id = ev, sent_at = now(), updated_at = now()
                WHERE l.marketplace = mk AND l.posting_id = pid
                RETURNING * INTO r;
                verdict := 'resend';
            ELSIF want = 'skip' THEN
                UPDATE bid_ledger l SET epoch = next_epoch, state = 'skipped',
                       detail = skip_reasons, event_id = ev, updated_at = now()
                WHERE l.marketplace = mk AND l.posting_id = pid
                RETURNING * INTO r;
                verdict := 'skipped';
            ELSE
                took_slot := true;
                IF cap IS NOT NULL THEN
                    UPDATE bid_daily_spend d SET reserved = d.reserved + 1
                    WHERE d.marketplace = mk AND d.day = today AND d.reserved < cap;
                    took_slot := FOUND;
                END IF;
                IF took_slot THEN
                    UPDATE bid_ledger l SET epoch = next_epoch, sends = 1,
                           request_body = req_body, request_sha256 = req_sha,
                           request_amount = req_amount, request_currency = req_currency,
                           reserved_day = CASE WHEN cap IS NOT NULL THEN today END,
                           event_id = ev, sent_at = now(), updated_at = now()
                    WHERE l.marketplace = mk AND l.posting_id = pid
                    RETURNING * INTO r;
                    verdict := 'send';
                ELSE
                    UPDATE bid_ledger l SET epoch = next_epoch, state = 'skipped',
                           detail = 'daily_cap', event_id = ev, updated_at = now()
                    WHERE l.marketplace = mk AND l.posting_id = pid
                    RETURNING * INTO r;
                    verdict := 'capped';
                END IF;
            END IF;
            INSERT INTO bid_attempts (marketplace, posting_id, epoch, instance, event_id,
                                      trace_id, claim, finished_at, result, detail)
            VALUES (mk, pid, r.epoch, who, ev, trace, verdict,
                    CASE WHEN verdict IN ('skipped', 'capped') THEN now() END,
                    CASE WHEN verdict IN ('skipped', 'capped') THEN 'skipped' END,
                    CASE WHEN verdict IN ('skipped', 'capped') THEN r.detail END)
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    RETURN ROW(idx, verdict, NULL::boolean, r.epoch, r.state, r.sends, r.bid_id, r.detail,
               r.event_id, r.created_at, r.updated_at, r.sent_at, r.request_body,
               r.request_sha256, r.request_amount, r.request_currency,
               r.trace_parent)::bidorch_step;
END
$fn$;

-- The claim of a batch: element k of every array is posting k (0-based `o_idx` k - 1).
--
-- 1. Fresh postings are inserted already decided, in one statement and in key order: a skip as
--    `skipped`, a bid as sent (its request stored). A row that exists (or appeared meanwhile) is
--    left to step 3.
-- 2. The day's cap rows, by marketplace: each is locked, and the bids step 1 inserted get as many
--    slots as are left, in key order; those beyond become `skipped` / `daily_cap`. The cap rows
--    are taken after the inserts, so a batch holds them (until it commits) only briefly: batches
--    of a fleet with a cap set queue for those rows, and the shorter the wait the more of them
--    run at once.
-- 3. Everything else — existing rows, resends, a second copy of a posting in the batch — goes
--    through bidorch_claim_one, in key order, which takes a slot per bid as it always did.
--
-- Lock order: a batch's new rows, then cap rows, then existing postings. New rows conflict only
-- with another insert of the same posting, which waits for this batch to end; cap rows are taken
-- by marketplace. Two batches can wait on each other only through a posting both hold, which
-- takes two workers holding the same posting's lease at once (a lease lost in a pause); then
-- PostgreSQL picks one to fail and the caller retries it.
CREATE FUNCTION bidorch_claim(
    ms text[], ps text[], evs text[], intents text[], bodies text[], shas text[],
    amounts text[], currencies text[], reasons text[], instances text[], traces text[],
    parents text[], caps bigint[], today date)
RETURNS SETOF bidorch_step
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $fn$
DECLARE
    c record;
    reserved_now bigint;
    granted bigint;
    fast bidorch_step[];
    over int[];
    capped int[] := '{}';
    done int[];
BEGIN
    WITH input AS (
        SELECT (u.o - 1)::int AS i, u.m, u.p, u.ev, u.intent, u.body, u.sha, u.amount,
               u.currency, u.reasons, u.instance, u.trace, u.parent, u.cap,
               row_number() OVER (PARTITION BY u.m, u.p ORDER BY u.o) AS copy
        FROM unnest(ms, ps, evs, intents, bodies, shas, amounts, currencies, reasons,
                    instances, traces, parents, caps)
             WITH ORDINALITY AS u(m, p, ev, intent, body, sha, amount, currency, reasons,
                                  instance, trace, parent, cap, o)
    ),
    fresh AS (
        SELECT * FROM input f WHERE f.copy = 1 AND f.intent IN ('skip', 'bid')
    ),
    ins AS (
        INSERT INTO bid_ledger AS l (marketplace, posting_id, state, epoch, sends, detail,
                                     event_id, request_body, request_sha256, request_amount,
                                     request_currency, reserved_day, sent_at, trace_parent)
        SELECT f.m, f.p, CASE WHEN f.intent = 'skip' THEN 'skipped' ELSE 'pending' END, 1,
               CASE WHEN f.intent = 'bid' THEN 1 ELSE 0 END,
               CASE WHEN f.intent = 'skip' THEN f.reasons END, f.ev,
               CASE WHEN f.intent = 'bid' THEN f.body END,
               CASE WHEN f.intent = 'bid' THEN f.sha END,
               CASE WHEN f.intent = 'bid' THEN f.amount END,
               CASE WHEN f.intent = 'bid' THEN f.currency END,
               CASE WHEN f.intent = 'bid' AND f.cap IS NOT NULL THEN today END,
               CASE WHEN f.intent = 'bid' THEN now() END, f.parent
        FROM fresh f ORDER BY f.m, f.p
        ON CONFLICT DO NOTHING
        RETURNING l.*
    ),
    decided AS (
        SELECT f.i, f.instance, f.trace, ins.*,
               CASE WHEN ins.state = 'skipped' THEN 'skipped' ELSE 'send' END AS result
        FROM ins JOIN fresh f ON f.m = ins.marketplace AND f.p = ins.posting_id
    ),
    history AS (
        INSERT INTO bid_attempts (marketplace, posting_id, epoch, instance, event_id, trace_id,
                                  claim, finished_at, result, detail)
        SELECT d.marketplace, d.posting_id, d.epoch, d.instance, d.event_id, d.trace, d.result,
               CASE WHEN d.result = 'skipped' THEN now() END,
               CASE WHEN d.result = 'skipped' THEN 'skipped' END,
               CASE WHEN d.result = 'skipped' THEN d.detail END
        FROM decided d
    )
    SELECT coalesce(array_agg(ROW(d.i, d.result, NULL::boolean, d.epoch, d.state, d.sends,
                                  d.bid_id, d.detail, d.event_id, d.created_at, d.updated_at,
                                  d.sent_at, d.request_body, d.request_sha256,
                                  d.request_amount, d.request_currency,
                                  d.trace_parent)::bidorch_step),
                    '{}')
    INTO fast
    FROM decided d;

    -- Every capped marketplace of the batch, also those only step 3 bids on: claim_one expects
    -- the day's row to exist and be held.
    FOR c IN
        SELECT u.m, min(u.cap) AS cap
        FROM unnest(ms, intents, caps) AS u(m, intent, cap)
        WHERE u.intent = 'bid' AND u.cap IS NOT NULL
        GROUP BY u.m ORDER BY u.m
    LOOP
        SELECT d.reserved INTO reserved_now FROM bid_daily_spend d
        WHERE d.marketplace = c.m AND d.day = today FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO bid_daily_spend (marketplace, day) VALUES (c.m, today)
            ON CONFLICT DO NOTHING;
            SELECT d.reserved INTO reserved_now FROM bid_daily_spend d
            WHERE d.marketplace = c.m AND d.day = today FOR UPDATE;
        END IF;
        -- The bids inserted above for this marketplace, in key order.
        over := ARRAY(
            SELECT f.o_idx FROM unnest(fast) AS f
            WHERE f.o_result = 'send' AND ms[f.o_idx + 1] = c.m AND caps[f.o_idx + 1] IS NOT NULL
            ORDER BY ps[f.o_idx + 1]);
        granted := least(cardinality(over), greatest(c.cap - reserved_now, 0));
        IF granted > 0 THEN
            UPDATE bid_daily_spend d SET reserved = d.reserved + granted
            WHERE d.marketplace = c.m AND d.day = today;
        END IF;
        capped := capped || over[granted + 1:];
    END LOOP;

    IF cardinality(capped) > 0 THEN
        UPDATE bid_ledger l SET state = 'skipped', detail = 'daily_cap', sends = 0,
               request_body = NULL, request_sha256 = NULL, request_amount = NULL,
               request_currency = NULL, reserved_day = NULL, sent_at = NULL, updated_at = now()
        FROM unnest(capped) AS x(i)
        WHERE l.marketplace = ms[x.i + 1] AND l.posting_id = ps[x.i + 1];
        UPDATE bid_attempts a SET claim = 'capped', finished_at = now(), result = 'skipped',
               detail = 'daily_cap'
        FROM unnest(capped) AS x(i)
        WHERE a.marketplace = ms[x.i + 1] AND a.posting_id = ps[x.i + 1] AND a.epoch = 1;
        fast := ARRAY(
            SELECT CASE WHEN f.o_idx = ANY (capped)
                        THEN ROW(f.o_idx, 'capped', NULL::boolean, f.o_epoch, 'skipped', 0,
                                 NULL::text, 'daily_cap', f.o_event_id, f.o_created_at,
                                 now(), NULL::timestamptz, NULL::text, NULL::text, NULL::text,
                                 NULL::text, f.o_trace_parent)::bidorch_step
                        ELSE f END
            FROM unnest(fast) AS f);
    END IF;

    RETURN QUERY SELECT * FROM unnest(fast);
    done := ARRAY(SELECT f.o_idx FROM unnest(fast) AS f);

    FOR c IN
        SELECT (u.o - 1)::int AS i, u.*
        FROM unnest(ms, ps, evs, intents, bodies, shas, amounts, currencies, reasons,
                    instances, traces, parents, caps)
             WITH ORDINALITY AS u(m, p, ev, intent, body, sha, amount, currency, reasons,
                                  instance, trace, parent, cap, o)
        WHERE NOT ((u.o - 1)::int = ANY (done))
        ORDER BY u.m, u.p, u.o
    LOOP
        RETURN NEXT bidorch_claim_one(c.i, c.m, c.p, c.ev, c.intent, c.body, c.sha, c.amount,
                                      c.currency, c.reasons, c.instance, c.trace, c.parent, c.cap,
                                      today);
    END LOOP;
END
$fn$;

-- One attempt's end, under its row lock: written if its epoch is still current and the row
-- pending; the attempt's history row closed; for a rejection, the cap slot the posting held
-- given back (the caller holds that cap row: cap rows are locked before postings).
CREATE FUNCTION bidorch_finish_one(
    idx int, mk text, pid text, at_epoch bigint, new_state text, new_bid_id text,
    new_detail text, outcome text, status int, attempt_detail text)
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
        IF new_state IS NOT NULL THEN
            UPDATE bid_ledger l SET state = new_state, bid_id = new_bid_id, detail = new_detail,
                   reserved_day = CASE WHEN new_state = 'rejected' THEN NULL
                                       ELSE l.reserved_day END,
                   updated_at = now()
            WHERE l.marketplace = mk AND l.posting_id = pid
            RETURNING * INTO r;
        END IF;
        UPDATE bid_attempts a SET finished_at = now(), result = outcome, http_status = status,
               detail = attempt_detail
        WHERE a.marketplace = mk AND a.posting_id = pid AND a.epoch = at_epoch;
    END IF;
    IF r.marketplace IS NULL THEN
        RETURN ROW(idx, NULL::text, written, NULL::bigint, NULL::text, NULL::int, NULL::text,
                   NULL::text, NULL::text, NULL::timestamptz, NULL::timestamptz,
                   NULL::timestamptz, NULL::text, NULL::text, NULL::text, NULL::text,
                   NULL::text)::bidorch_step;
    END IF;
    RETURN ROW(idx, NULL::text, written, r.epoch, r.state, r.sends, r.bid_id, r.detail,
               r.event_id, r.created_at, r.updated_at, r.sent_at, r.request_body,
               r.request_sha256, r.request_amount, r.request_currency,
               r.trace_parent)::bidorch_step;
END
$fn$;

-- The finish of a batch (element k of every array is attempt k; `states` NULL: the row stays
-- pending). An attempt that ends `placed` — nearly all of them — is written by one statement for
-- the whole batch; the rest go through bidorch_finish_one in key order. When the batch holds a
-- rejection, the cap rows it may give a slot back to are locked first, as in the claim.
CREATE FUNCTION bidorch_finish(
    ms text[], ps text[], epochs bigint[], states text[], bid_ids text[], details text[],
    results text[], statuses int[], attempt_details text[])
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
    END IF;

    WITH input AS (
        SELECT (u.o - 1)::int AS i, u.m, u.p, u.epoch, u.state, u.bid_id, u.detail, u.result,
               u.http_status, u.attempt_detail,
               row_number() OVER (PARTITION BY u.m, u.p ORDER BY u.o) AS copy
        FROM unnest(ms, ps, epochs, states, bid_ids, details, results, statuses,
                    attempt_details)
             WITH ORDINALITY AS u(m, p, epoch, state, bid_id, detail, result, http_status,
                                  attempt_detail, o)
    ),
    placed AS (
        SELECT * FROM input f WHERE f.state = 'placed' AND f.copy = 1 ORDER BY f.m, f.p
    ),
    written AS (
        UPDATE bid_ledger l SET state = f.state, bid_id = f.bid_id, detail = f.detail,
               updated_at = now()
        FROM placed f
        WHERE l.marketplace = f.m AND l.posting_id = f.p AND l.epoch = f.epoch
          AND l.state = 'pending'
        RETURNING f.i, f.m, f.p, f.epoch, f.result, f.http_status, f.attempt_detail
    ),
    history AS (
        UPDATE bid_attempts a SET finished_at = now(), result = w.result,
               http_status = w.http_status, detail = w.attempt_detail
        FROM written w
        WHERE a.marketplace = w.m AND a.posting_id = w.p AND a.epoch = w.epoch
    )
    SELECT coalesce(array_agg(w.i), '{}') INTO done FROM written w;

    RETURN QUERY
        SELECT d, NULL::text, true, NULL::bigint, NULL::text, NULL::int, NULL::text,
               NULL::text, NULL::text, NULL::timestamptz, NULL::timestamptz,
               NULL::timestamptz, NULL::text, NULL::text, NULL::text, NULL::text, NULL::text
        FROM unnest(done) AS d;

    FOR c IN
        SELECT (u.o - 1)::int AS i, u.*
        FROM unnest(ms, ps, epochs, states, bid_ids, details, results, statuses,
                    attempt_details)
             WITH ORDINALITY AS u(m, p, epoch, state, bid_id, detail, result, http_status,
                                  attempt_detail, o)
        WHERE NOT ((u.o - 1)::int = ANY (done))
        ORDER BY u.m, u.p, u.o
    LOOP
        RETURN NEXT bidorch_finish_one(c.i, c.m, c.p, c.epoch, c.state, c.bid_id, c.detail,
                                       c.result, c.http_status, c.attempt_detail);
    END LOOP;
END
$fn$;

-- Rows by key, for a batch of lookups (element k of both arrays is posting k): index lookups
-- whatever the table's statistics say, like the functions above.
CREATE FUNCTION bidorch_lookup(ms text[], ps text[])
RETURNS SETOF bidorch_step
LANGUAGE sql STABLE
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $fn$
    SELECT (k.o - 1)::int, NULL::text, NULL::boolean, l.epoch, l.state, l.sends, l.bid_id,
           l.detail, l.event_id, l.created_at, l.updated_at, l.sent_at, l.request_body,
           l.request_sha256, l.request_amount, l.request_currency, l.trace_parent
    FROM unnest(ms, ps) WITH ORDINALITY AS k(m, p, o)
    JOIN bid_ledger l ON l.marketplace = k.m AND l.posting_id = k.p
$fn$;
