-- Kept in step with migrations/postgres/0005_send_state_and_verify.sql (same version), which
-- says what the columns mean: each send's state in the attempt history, the oldest unknown
-- send of a pending row, and the API its stored request was written for.
ALTER TABLE bid_ledger ADD COLUMN request_api TEXT;
ALTER TABLE bid_ledger ADD COLUMN unknown_since TEXT;
ALTER TABLE bid_attempts ADD COLUMN send TEXT;

UPDATE bid_ledger SET request_api = 'contract' WHERE request_body IS NOT NULL;
UPDATE bid_attempts
SET send = CASE WHEN result IS NULL OR result = 'transient' THEN 'unknown'
                WHEN result IN ('placed', 'rejected') THEN 'answered'
                ELSE 'not_sent' END
WHERE claim IN ('send', 'resend');
UPDATE bid_ledger SET unknown_since = coalesce(
        (SELECT min(a.started_at) FROM bid_attempts a
         WHERE a.marketplace = bid_ledger.marketplace AND a.posting_id = bid_ledger.posting_id
           AND a.send = 'unknown'),
        sent_at)
WHERE state = 'pending' AND sends > 0
  AND EXISTS (SELECT 1 FROM bid_attempts a
              WHERE a.marketplace = bid_ledger.marketplace
                AND a.posting_id = bid_ledger.posting_id AND a.send = 'unknown');

DROP INDEX bid_ledger_unresolved;
CREATE INDEX bid_ledger_unknown_since ON bid_ledger (unknown_since)
    WHERE unknown_since IS NOT NULL;
