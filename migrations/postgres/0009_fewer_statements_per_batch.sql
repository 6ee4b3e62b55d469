-- Fewer statements per batch: the claim and the finish of a batch do what 0007 and 0008 made
-- them do, with the same signatures, but the common batch (fresh postings claimed, answered bids
-- finished) now runs one SQL statement inside each function instead of three to six: each
-- statement a PL/pgSQL function runs pays its executor start and end, whatever the batch's size.
-- Changed:
-- - the claim's positions written by its first statement are gathered by that statement;
-- - the cap and budget loops run only when a claim of the batch has a cap or a budget;
-- - the steps already known are returned by a PL/pgSQL loop, not by a query;
-- - the per-posting loop runs only when some posting is left to it.
-- PostgreSQL only: migrations/sqlite/0009_fewer_statements_per_batch.sql is empty, to keep the
-- versions in step.

CREATE OR REPLACE FUNCTION bidorch_claim(
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
    step bidorch_step;
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
                    '{}'),
           coalesce(array_agg(d.i), '{}')
    INTO fast, done
    FROM decided d;

    IF array_remove(caps, NULL) <> '{}' THEN
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
    END IF;

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
    IF array_remove(b_credits, NULL) <> '{}' THEN
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
    END IF;

    FOREACH step IN ARRAY fast LOOP
        RETURN NEXT step;
    END LOOP;
    IF cardinality(done) = cardinality(ms) THEN
        RETURN;
    END IF;

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

CREATE OR REPLACE FUNCTION bidorch_finish(
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
    d int;
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

    FOREACH d IN ARRAY done LOOP
        RETURN NEXT ROW(d, NULL::text, true, NULL::bigint, NULL::text, NULL::int, NULL::text,
                        NULL::text, NULL::text, NULL::timestamptz, NULL::timestamptz,
                        NULL::timestamptz, NULL::text, NULL::text, NULL::text, NULL::text,
                        NULL::text, NULL::text, NULL::timestamptz)::bidorch_step;
    END LOOP;
    IF cardinality(done) = cardinality(ms) THEN
        RETURN;
    END IF;

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
