-- Sticky requests, the attempt history and the exact daily cap. Kept in step with
-- migrations/sqlite/0002_sticky_requests_attempts_and_daily_spend.sql.

-- The request an attempt sent, stored when it passed the fence: every later attempt re-sends it
-- byte for byte under the same idempotency key and never re-runs the policy.
ALTER TABLE bid_ledger
    ADD COLUMN request_body     text,
    ADD COLUMN request_sha256   text,
    ADD COLUMN request_amount   text,
    ADD COLUMN request_currency text,
    -- The day whose cap slot this posting holds (NULL: no cap, or none taken).
    ADD COLUMN reserved_day     date;

-- reconcile and the unresolved-sends gauge look for sent-but-unrecorded postings.
CREATE INDEX bid_ledger_unresolved ON bid_ledger (sent_at) WHERE state = 'pending' AND sends > 0;

-- One row per attempt that claimed the posting (epoch), to tell its story.
CREATE TABLE bid_attempts (
    marketplace text        NOT NULL,
    posting_id  text        NOT NULL,
    epoch       bigint      NOT NULL,
    instance    text        NOT NULL,
    event_id    text        NOT NULL,
    trace_id    text,
    -- send | resend | skipped | capped: what the claim decided.
    claim       text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    -- placed | replay | conflict | rejected | skipped | transient | unauthorized | ...
    result      text,
    http_status integer,
    detail      text,
    PRIMARY KEY (marketplace, posting_id, epoch)
);

-- Bids reserved per marketplace and UTC day, for the exact fleet-wide daily cap.
CREATE TABLE bid_daily_spend (
    marketplace text   NOT NULL,
    day         date   NOT NULL,
    reserved    bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    PRIMARY KEY (marketplace, day)
);

-- The claim: one call for a whole batch (`claims` is a JSON array), each posting decided under
-- its row lock. Locks are taken in one global order — the cap rows of the day first (by
-- marketplace), then the postings (by key) — so concurrent batches never deadlock. A fresh
-- row starts at epoch 1; every further claim bumps it. Decisions, in order: final stays final;
-- a request already sent is sent again (sticky); `resend` does nothing else; `skip` records
-- `skipped`; `bid` takes a cap slot (none left: `skipped` / `daily_cap`) and stores the request.
CREATE FUNCTION bidorch_claim(claims jsonb, today date)
RETURNS TABLE (
    o_idx int, o_result text, o_epoch bigint, o_state text, o_sends int, o_bid_id text,
    o_detail text, o_event_id text, o_created_at timestamptz, o_updated_at timestamptz,
    o_sent_at timestamptz, o_request_body text, o_request_sha256 text, o_request_amount text,
    o_request_currency text
)
LANGUAGE plpgsql AS $fn$
DECLARE
    c record;
    r bid_ledger%ROWTYPE;
    fresh boolean;
    next_epoch bigint;
    took_slot boolean;
BEGIN
    FOR c IN
        SELECT DISTINCT x->>'marketplace' AS m
        FROM jsonb_array_elements(claims) AS x
        WHERE x->>'intent' = 'bid' AND jsonb_typeof(x->'cap') = 'number'
        ORDER BY 1
    LOOP
        INSERT INTO bid_daily_spend (marketplace, day) VALUES (c.m, today) ON CONFLICT DO NOTHING;
        PERFORM 1 FROM bid_daily_spend d WHERE d.marketplace = c.m AND d.day = today FOR UPDATE;
    END LOOP;

    FOR c IN
        SELECT (t.o - 1)::int AS i, t.x->>'marketplace' AS m, t.x->>'posting_id' AS p,
               t.x->>'event_id' AS ev, t.x->>'intent' AS intent, t.x->>'body' AS body,
               t.x->>'sha256' AS sha, t.x->>'amount' AS amount, t.x->>'currency' AS currency,
               t.x->>'reasons' AS reasons, t.x->>'instance' AS instance,
               t.x->>'trace_id' AS trace, (t.x->>'cap')::bigint AS cap
        FROM jsonb_array_elements(claims) WITH ORDINALITY AS t(x, o)
        ORDER BY 2, 3
    LOOP
        INSERT INTO bid_ledger (marketplace, posting_id, event_id)
        VALUES (c.m, c.p, c.ev) ON CONFLICT DO NOTHING;
        fresh := FOUND;
        SELECT * INTO r FROM bid_ledger l
        WHERE l.marketplace = c.m AND l.posting_id = c.p FOR UPDATE;
        o_idx := c.i;
        o_result := NULL;
        IF r.state <> 'pending' THEN
            o_result := 'final';
        ELSIF r.sends = 0 AND c.intent = 'resend' THEN
            o_result := 'nothing';
        ELSE
            next_epoch := CASE WHEN fresh THEN r.epoch ELSE r.epoch + 1 END;
            IF r.sends > 0 THEN
                UPDATE bid_ledger l SET epoch = next_epoch, sends = l.sends + 1,
                       event_id = c.ev, sent_at = now(), updated_at = now()
                WHERE l.marketplace = c.m AND l.posting_id = c.p
                RETURNING * INTO r;
                o_result := 'resend';
            ELSIF c.intent = 'skip' THEN
                UPDATE bid_ledger l SET epoch = next_epoch, state = 'skipped', detail = c.reasons,
                       event_id = c.ev, updated_at = now()
                WHERE l.marketplace = c.m AND l.posting_id = c.p
                RETURNING * INTO r;
                o_result := 'skipped';
            ELSE
                took_slot := true;
                IF c.cap IS NOT NULL THEN
                    UPDATE bid_daily_spend d SET reserved = d.reserved + 1
                    WHERE d.marketplace = c.m AND d.day = today AND d.reserved < c.cap;
                    took_slot := FOUND;
                END IF;
                IF took_slot THEN
                    UPDATE bid_ledger l SET epoch = next_epoch, sends = 1,
                           request_body = c.body, request_sha256 = c.sha,
                           request_amount = c.amount, request_currency = c.currency,
                           reserved_day = CASE WHEN c.cap IS NOT NULL THEN today END,
                           event_id = c.ev, sent_at = now(), updated_at = now()
                    WHERE l.marketplace = c.m AND l.posting_id = c.p
                    RETURNING * INTO r;
                    o_result := 'send';
                ELSE
                    UPDATE bid_ledger l SET epoch = next_epoch, state = 'skipped',
                           detail = 'daily_cap', event_id = c.ev, updated_at = now()
                    WHERE l.marketplace = c.m AND l.posting_id = c.p
                    RETURNING * INTO r;
                    o_result := 'capped';
                END IF;
            END IF;
            INSERT INTO bid_attempts (marketplace, posting_id, epoch, instance, event_id,
                                      trace_id, claim, finished_at, result, detail)
            VALUES (c.m, c.p, r.epoch, c.instance, c.ev, c.trace, o_result,
                    CASE WHEN o_result IN ('skipped', 'capped') THEN now() END,
                    CASE WHEN o_result IN ('skipped', 'capped') THEN 'skipped' END,
                    CASE WHEN o_result IN ('skipped', 'capped') THEN r.detail END)
            ON CONFLICT DO NOTHING;
        END IF;
        o_epoch := r.epoch; o_state := r.state; o_sends := r.sends; o_bid_id := r.bid_id;
        o_detail := r.detail; o_event_id := r.event_id; o_created_at := r.created_at;
        o_updated_at := r.updated_at; o_sent_at := r.sent_at; o_request_body := r.request_body;
        o_request_sha256 := r.request_sha256; o_request_amount := r.request_amount;
        o_request_currency := r.request_currency;
        RETURN NEXT;
    END LOOP;
END
$fn$;

-- The finish: one call for a batch (`finishes` is a JSON array). Writes each attempt's end if
-- its epoch is still current and the row pending, closes its history row, and, for a rejection,
-- gives back the cap slot the posting held. Cap rows are locked before postings, as in the
-- claim, so the two never deadlock.
CREATE FUNCTION bidorch_finish(finishes jsonb)
RETURNS TABLE (
    o_idx int, o_written boolean, o_epoch bigint, o_state text, o_sends int, o_bid_id text,
    o_detail text, o_event_id text, o_created_at timestamptz, o_updated_at timestamptz,
    o_sent_at timestamptz, o_request_body text, o_request_sha256 text, o_request_amount text,
    o_request_currency text
)
LANGUAGE plpgsql AS $fn$
DECLARE
    c record;
    r bid_ledger%ROWTYPE;
BEGIN
    FOR c IN
        SELECT DISTINCT l.marketplace AS m, l.reserved_day AS day
        FROM jsonb_array_elements(finishes) AS x
        JOIN bid_ledger l ON l.marketplace = x->>'marketplace' AND l.posting_id = x->>'posting_id'
        WHERE x->>'state' = 'rejected' AND l.reserved_day IS NOT NULL
        ORDER BY 1, 2
    LOOP
        PERFORM 1 FROM bid_daily_spend d WHERE d.marketplace = c.m AND d.day = c.day FOR UPDATE;
    END LOOP;

    FOR c IN
        SELECT (t.o - 1)::int AS i, t.x->>'marketplace' AS m, t.x->>'posting_id' AS p,
               (t.x->>'epoch')::bigint AS epoch, t.x->>'state' AS state, t.x->>'bid_id' AS bid_id,
               t.x->>'detail' AS detail, t.x->>'result' AS result,
               (t.x->>'http_status')::int AS http_status, t.x->>'attempt_detail' AS attempt_detail
        FROM jsonb_array_elements(finishes) WITH ORDINALITY AS t(x, o)
        ORDER BY 2, 3
    LOOP
        SELECT * INTO r FROM bid_ledger l
        WHERE l.marketplace = c.m AND l.posting_id = c.p FOR UPDATE;
        o_idx := c.i;
        o_written := FOUND AND r.state = 'pending' AND r.epoch = c.epoch;
        IF o_written THEN
            IF c.state = 'rejected' AND r.reserved_day IS NOT NULL THEN
                UPDATE bid_daily_spend d SET reserved = greatest(d.reserved - 1, 0)
                WHERE d.marketplace = c.m AND d.day = r.reserved_day;
            END IF;
            IF c.state IS NOT NULL THEN
                UPDATE bid_ledger l SET state = c.state, bid_id = c.bid_id, detail = c.detail,
                       reserved_day = CASE WHEN c.state = 'rejected' THEN NULL ELSE l.reserved_day END,
                       updated_at = now()
                WHERE l.marketplace = c.m AND l.posting_id = c.p
                RETURNING * INTO r;
            END IF;
            UPDATE bid_attempts a SET finished_at = now(), result = c.result,
                   http_status = c.http_status, detail = c.attempt_detail
            WHERE a.marketplace = c.m AND a.posting_id = c.p AND a.epoch = c.epoch;
        END IF;
        IF r.marketplace IS NOT NULL THEN
            o_epoch := r.epoch; o_state := r.state; o_sends := r.sends; o_bid_id := r.bid_id;
            o_detail := r.detail; o_event_id := r.event_id; o_created_at := r.created_at;
            o_updated_at := r.updated_at; o_sent_at := r.sent_at;
            o_request_body := r.request_body; o_request_sha256 := r.request_sha256;
            o_request_amount := r.request_amount; o_request_currency := r.request_currency;
        ELSE
            o_epoch := NULL; o_state := NULL;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$fn$;
