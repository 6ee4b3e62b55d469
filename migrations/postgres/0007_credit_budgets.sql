-- Credit budgets: credits per period (day, week from Monday, month; UTC) that a marketplace's
-- bids may spend, reserved in the claim exactly like the daily cap — under the period's row lock,
-- so no number of workers overshoots it — and given back when the marketplace rejects the bid.
-- Kept in step with migrations/sqlite/0007_credit_budgets.sql.
--
-- bid_budget_spend: credits spent per marketplace and period (its first day). bid_ledger keeps
-- the period and the cost its bid took, so a give-back returns exactly that.
--
-- The claim functions take the budget as three more arrays (their signatures change: dropped
-- and made again); the finish functions keep theirs and are replaced.

CREATE TABLE bid_budget_spend (
    marketplace  text    NOT NULL,
    period_start date    NOT NULL,
    spent        numeric NOT NULL DEFAULT 0 CHECK (spent >= 0),
    PRIMARY KEY (marketplace, period_start)
);

ALTER TABLE bid_ledger
    ADD COLUMN budget_period date,
    ADD COLUMN budget_cost   numeric;

DROP FUNCTION bidorch_claim(text[], text[], text[], text[], text[], text[], text[], text[],
                            text[], text[], text[], text[], text[], boolean[], bigint[], date);
DROP FUNCTION bidorch_claim_one(int, text, text, text, text, text, text, text, text, text, text,
                                text, text, text, boolean, bigint, date);

-- One posting's claim, under its row lock (as in 0005). New: a bid also needs its credits
-- (`b_cost`) left in the period's budget (`b_credits`, NULL: no budget); it takes its cap slot
-- and its credits together or neither, and a skip names every limit that bound.
CREATE FUNCTION bidorch_claim_one(
    idx int, mk text, pid text, ev text, want text, req_body text, req_sha text,
    req_amount text, req_currency text, req_api text, skip_reasons text, who text, trace text,
    parent text, verify boolean, cap bigint, today date, b_period date, b_credits numeric,
    b_cost numeric)
RETURNS bidorch_step
LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off
AS $fn$
DECLARE
    r bid_ledger%ROWTYPE;
    fresh boolean := false;
    next_epoch bigint;
    cap_ok boolean := true;
    budget_ok boolean := true;
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
            IF r.sends > 0 AND verify AND r.unknown_since IS NOT NULL THEN
                UPDATE bid_ledger l SET epoch = next_epoch, event_id = ev, updated_at = now()
                WHERE l.marketplace = mk AND l.posting_id = pid
                RETURNING * INTO r;
                verdict := 'lookup';
            ELSIF r.sends > 0 THEN
                UPDATE bid_ledger l SET epoch = next_epoch, sends = l.sends + 1,
                       event_id = ev, sent_at = now(),
                       unknown_since = coalesce(l.unknown_since, now()), updated_at = now()
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
                -- The caller holds the day's cap row and the period's budget row.
                IF cap IS NOT NULL THEN
                    SELECT d.reserved < cap INTO cap_ok FROM bid_daily_spend d
                    WHERE d.marketplace = mk AND d.day = today;
                    cap_ok := coalesce(cap_ok, false);
                END IF;
                IF b_credits IS NOT NULL THEN
                    SELECT s.spent + b_cost <= b_credits INTO budget_ok FROM bid_budget_spend s
                    WHERE s.marketplace = mk AND s.period_start = b_period;
                    budget_ok := coalesce(budget_ok, false);
                END IF;
                IF cap_ok AND budget_ok THEN
                    IF cap IS NOT NULL THEN
                        UPDATE bid_daily_spend d SET reserved = d.reserved + 1
                        WHERE d.marketplace = mk AND d.day = today;
                    END IF;
                    IF b_credits IS NOT NULL THEN
                        UPDATE bid_budget_spend s SET spent = s.spent + b_cost
                        WHERE s.marketplace = mk AND s.period_start = b_period;
                    END IF;
                    UPDATE bid_ledger l SET epoch = next_epoch, sends = 1,
                           request_body = req_body, request_sha256 = req_sha,
                           request_amount = req_amount, request_currency = req_currency,
                           request_api = req_api,
                           reserved_day = CASE WHEN cap IS NOT NULL THEN today END,
                           budget_period = CASE WHEN b_credits IS NOT NULL THEN b_period END,
                           budget_cost = CASE WHEN b_credits IS NOT NULL THEN b_cost END,
                           event_id = ev, sent_at = now(), unknown_since = now(),
                           updated_at = now()
                    WHERE l.marketplace = mk AND l.posting_id = pid
                    RETURNING * INTO r;
                    verdict := 'send';
                ELSE
                    -- Every limit that binds is a reason.
                    UPDATE bid_ledger l SET epoch = next_epoch, state = 'skipped',
                           detail = array_to_string(ARRAY[
                               CASE WHEN NOT budget_ok THEN 'budget_exhausted' END,
                               CASE WHEN NOT cap_ok THEN 'daily_cap' END], ','),
                           event_id = ev, updated_at = now()
                    WHERE l.marketplace = mk AND l.posting_id = pid
                    RETURNING * INTO r;
                    verdict := 'capped';
                END IF;
            END IF;
            INSERT INTO bid_attempts (marketplace, posting_id, epoch, instance, event_id,
                                      trace_id, claim, finished_at, result, detail, send)
            VALUES (mk, pid, r.epoch, who, ev, trace, verdict,
                    CASE WHEN verdict IN ('skipped', 'capped') THEN now() END,
                    CASE WHEN verdict IN ('skipped', 'capped') THEN 'skipped' END,
                    CASE WHEN verdict IN ('skipped', 'capped') THEN r.detail END,
                    CASE WHEN verdict IN ('send', 'resend') THEN 'unknown' END)
            ON CONFLICT DO NOTHING;
        END IF;
    END IF;
    RETURN ROW(idx, verdict, NULL::boolean, r.epoch, r.state, r.sends, r.bid_id, r.detail,
               r.event_id, r.created_at, r.updated_at, r.sent_at, r.request_body,
               r.request_sha256, r.request_amount, r.request_currency,
               r.trace_parent, r.request_api, r.unknown_since)::bidorch_step;
END
$fn$;

-- The claim of a batch, as in 0005, with each bid's credit budget: the period's start, the
-- credits it allows and what the bid costs (NULL: no budget). Lock order: the batch's new rows,
-- the cap rows, the budget rows, then existing postings.
CREATE FUNCTION bidorch_claim(
    ms text[], ps text[], evs text[], intents text[], bodies text[], shas text[],
    amounts text[], currencies text[], apis text[], reasons text[], instances text[],
    traces text[], parents text[], verifies boolean[], caps bigint[], today date,
    b_periods date[], b_credits numeric[], b_costs numeric[])
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
               u.currency, u.api, u.reasons, u.instance, u.trace, u.parent, u.cap, u.credits,
               row_number() OVER (PARTITION BY u.m, u.p ORDER BY u.o) AS copy
        FROM unnest(ms, ps, evs, intents, bodies, shas, amounts, currencies, apis, reasons,
                    instances, traces, parents, caps, b_credits)
             WITH ORDINALITY AS u(m, p, ev, intent, body, sha, amount, currency, api, reasons,
                                  instance, trace, parent, cap, credits, o)
    ),
    -- A bid against a credit budget goes through bidorch_claim_one, which checks its cost.
    fresh AS (
        SELECT * FROM input f
        WHERE f.copy = 1 AND (f.intent = 'skip' OR (f.intent = 'bid' AND f.credits IS NULL))
    ),
    ins AS (
        INSERT INTO bid_ledger AS l (marketplace, posting_id, state, epoch, sends, detail,
                                     event_id, request_body, request_sha256, request_amount,
                                     request_currency, request_api, reserved_day, sent_at,
                                     unknown_since, trace_parent)
        SELECT f.m, f.p, CASE WHEN f.intent = 'skip' THEN 'skipped' ELSE 'pending' END, 1,
               CASE WHEN f.intent = 'bid' THEN 1 ELSE 0 END,
               CASE WHEN f.intent = 'skip' THEN f.reasons END, f.ev,
               CASE WHEN f.intent = 'bid' THEN f.body END,
               CASE WHEN f.intent = 'bid' THEN f.sha END,
               CASE WHEN f.intent = 'bid' THEN f.amount END,
               CASE WHEN f.intent = 'bid' THEN f.currency END,
               CASE WHEN f.intent = 'bid' THEN f.api END,
               CASE WHEN f.intent = 'bid' AND f.cap IS NOT NULL THEN today END,
               CASE WHEN f.intent = 'bid' THEN now() END,
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
                                  claim, finished_at, result, detail, send)
        SELECT d.marketplace, d.posting_id, d.epoch, d.instance, d.event_id, d.trace, d.result,
               CASE WHEN d.result = 'skipped' THEN now() END,
               CASE WHEN d.result = 'skipped' THEN 'skipped' END,
               CASE WHEN d.result = 'skipped' THEN d.detail END,
               CASE WHEN d.result = 'send' THEN 'unknown' END
        FROM decided d
    )
    SELECT coalesce(array_agg(ROW(d.i, d.result, NULL::boolean, d.epoch, d.state, d.sends,
                                  d.bid_id, d.detail, d.event_id, d.created_at, d.updated_at,
                                  d.sent_at, d.request_body, d.request_sha256,
                                  d.request_amount, d.request_currency,
                                  d.trace_parent, d.request_api,
                                  d.unknown_since)::bidorch_step),
                    '{}')
    INTO fast
    FROM decided d;

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
               request_currency = NULL, request_api = NULL, reserved_day = NULL,
               sent_at = NULL, unknown_since = NULL, updated_at = now()
        FROM unnest(capped) AS x(i)
        WHERE l.marketplace = ms[x.i + 1] AND l.posting_id = ps[x.i + 1];
        UPDATE bid_attempts a SET claim = 'capped', finished_at = now(), result = 'skipped',
               detail = 'daily_cap', send = NULL
        FROM unnest(capped) AS x(i)
        WHERE a.marketplace = ms[x.i + 1] AND a.posting_id = ps[x.i + 1] AND a.epoch = 1;
        fast := ARRAY(
            SELECT CASE WHEN f.o_idx = ANY (capped)
                        THEN ROW(f.o_idx, 'capped', NULL::boolean, f.o_epoch, 'skipped', 0,
                                 NULL::text, 'daily_cap', f.o_event_id, f.o_created_at,
                                 now(), NULL::timestamptz, NULL::text, NULL::text, NULL::text,
                                 NULL::text, f.o_trace_parent, NULL::text,
                                 NULL::timestamptz)::bidorch_step
                        ELSE f END
            FROM unnest(fast) AS f);
    END IF;

    -- The periods' budget rows, by marketplace, after the cap rows and before any posting.
    FOR c IN
        SELECT DISTINCT u.m, u.period
        FROM unnest(ms, intents, b_periods, b_credits) AS u(m, intent, period, credits)
        WHERE u.intent = 'bid' AND u.credits IS NOT NULL
        ORDER BY 1, 2
    LOOP
        INSERT INTO bid_budget_spend (marketplace, period_start) VALUES (c.m, c.period)
        ON CONFLICT DO NOTHING;
        PERFORM 1 FROM bid_budget_spend s
        WHERE s.marketplace = c.m AND s.period_start = c.period FOR UPDATE;
    END LOOP;

    RETURN QUERY SELECT * FROM unnest(fast);
    done := ARRAY(SELECT f.o_idx FROM unnest(fast) AS f);

    FOR c IN
        SELECT (u.o - 1)::int AS i, u.*
        FROM unnest(ms, ps, evs, intents, bodies, shas, amounts, currencies, apis, reasons,
                    instances, traces, parents, verifies, caps, b_periods, b_credits, b_costs)
             WITH ORDINALITY AS u(m, p, ev, intent, body, sha, amount, currency, api, reasons,
                                  instance, trace, parent, verify, cap, period, credits, cost, o)
        WHERE NOT ((u.o - 1)::int = ANY (done))
        ORDER BY u.m, u.p, u.o
    LOOP
        RETURN NEXT bidorch_claim_one(c.i, c.m, c.p, c.ev, c.intent, c.body, c.sha, c.amount,
                                      c.currency, c.api, c.reasons, c.instance, c.trace,
                                      c.parent, coalesce(c.verify, false), c.cap, today,
                                      c.period, c.credits, c.cost);
    END LOOP;
END
$fn$;

-- One attempt's end, as in 0005; a rejection also gives back the credits the bid took. What it
-- learnt of the send:
-- `send_state` 'answered', 'not_sent' or 'unknown' is this attempt's own send (if it made one);
-- 'absent' marks every still-unknown send of the posting absent (a lookup found no bid). A
-- pending row's `unknown_since` is then what its attempts say; a final row has none.
CREATE OR REPLACE FUNCTION bidorch_finish_one(
    idx int, mk text, pid text, at_epoch bigint, new_state text, new_bid_id text,
    new_detail text, outcome text, status int, attempt_detail text, send_state text)
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
                   unknown_since = NULL, updated_at = now()
            WHERE l.marketplace = mk AND l.posting_id = pid
            RETURNING * INTO r;
        ELSE
            UPDATE bid_ledger l SET unknown_since =
                   (SELECT min(a.started_at) FROM bid_attempts a
                    WHERE a.marketplace = mk AND a.posting_id = pid AND a.send = 'unknown')
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

-- The finish of a batch, as in 0005: the cap rows and then the budget rows a rejection gives
-- back to are locked first (an attempt that ends `placed` — nearly all — written by one
-- statement for the whole batch, the rest through bidorch_finish_one), with each attempt's send
-- state.
CREATE OR REPLACE FUNCTION bidorch_finish(
    ms text[], ps text[], epochs bigint[], states text[], bid_ids text[], details text[],
    results text[], statuses int[], attempt_details text[], send_states text[])
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
               unknown_since = NULL, updated_at = now()
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
                    attempt_details, send_states)
             WITH ORDINALITY AS u(m, p, epoch, state, bid_id, detail, result, http_status,
                                  attempt_detail, send_state, o)
        WHERE NOT ((u.o - 1)::int = ANY (done))
        ORDER BY u.m, u.p, u.o
    LOOP
        RETURN NEXT bidorch_finish_one(c.i, c.m, c.p, c.epoch, c.state, c.bid_id, c.detail,
                                       c.result, c.http_status, c.attempt_detail,
                                       c.send_state);
    END LOOP;
END
$fn$;
