//! The sandbox's book of bids: idempotency keys, one bid per posting, and the counters behind
//! `GET /v1/stats`. Plain synchronous logic under one lock, so a placement is atomic.

use std::collections::HashMap;

use super::{Bid, PostingStats, SandboxStats};

/// What a valid bid request amounts to.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Placement {
    /// A new bid (`201`).
    Created(Bid),
    /// The idempotency key was seen for this posting: the same bid again (`200`).
    Replayed(Bid),
    /// The posting already has a bid under another key (`409`).
    Conflict { bid_id: String },
    /// The idempotency key was used for another posting (`422`).
    KeyReused,
    /// The idempotency key was used with another request body (`422`, as Stripe answers).
    BodyChanged,
}

/// All bids and counters of one sandbox.
#[derive(Debug, Default)]
pub(super) struct Book {
    /// `(marketplace, idempotency key)` → `"{marketplace}:{posting_id}"` and the bid's index.
    keys: HashMap<(String, String), (String, usize)>,
    /// `"{marketplace}:{posting_id}"` → its bids (more than one only if idempotency is off).
    bids: HashMap<String, Vec<Bid>>,
    stats: SandboxStats,
}

impl Book {
    /// Counts a request for a posting (whatever its answer) and the trace context it carried.
    pub(super) fn count_request(&mut self, posting: &str, traceparent: Option<&str>) {
        self.stats.requests += 1;
        self.posting(posting).requests += 1;
        self.note_trace(posting, traceparent);
    }

    /// Keeps the trace a call for `posting` came in.
    fn note_trace(&mut self, posting: &str, traceparent: Option<&str>) {
        let entry = self.posting(posting);
        if let Some(tp) = traceparent {
            entry.last_traceparent = Some(tp.to_owned());
            if let Some(trace_id) = tp.split('-').nth(1) {
                entry.trace_ids.insert(trace_id.to_owned());
            }
        }
    }

    /// Counts a request refused before placement (auth, missing key, bad body).
    pub(super) fn count_rejected(&mut self) {
        self.stats.rejected += 1;
    }

    /// Counts an injected fault.
    pub(super) fn count_fault(&mut self) {
        self.stats.faults += 1;
    }

    /// Places `bid` (its `bid_id` is used only if a new bid is created). With `honour_keys`
    /// false the book behaves like a naive marketplace: every request is a new bid, so
    /// `duplicates` exposes any lapse of the layers in front of the idempotency key.
    pub(super) fn place(&mut self, bid: Bid, honour_keys: bool) -> Placement {
        let posting = format!("{}:{}", bid.marketplace, bid.posting_id);
        if honour_keys {
            let key = (bid.marketplace.clone(), bid.idempotency_key.clone());
            if let Some((owner, index)) = self.keys.get(&key) {
                if *owner != posting {
                    return Placement::KeyReused;
                }
                let existing = self.bids[owner][*index].clone();
                if existing.request_sha256 != bid.request_sha256 {
                    return Placement::BodyChanged;
                }
                self.stats.replays += 1;
                self.posting(&posting).replays += 1;
                return Placement::Replayed(existing);
            }
            if let Some(existing) = self.bids.get(&posting).and_then(|b| b.first()) {
                let bid_id = existing.bid_id.clone();
                self.stats.conflicts += 1;
                self.posting(&posting).conflicts += 1;
                return Placement::Conflict { bid_id };
            }
            self.keys.insert(key, (posting.clone(), 0));
        }
        let bids = self.bids.entry(posting.clone()).or_default();
        bids.push(bid.clone());
        self.stats.bids_created += 1;
        self.posting(&posting).bids += 1;
        Placement::Created(bid)
    }

    /// Records a bid the Freelancer dialect created (no idempotency key to consult).
    pub(super) fn record(&mut self, bid: Bid) {
        let posting = format!("{}:{}", bid.marketplace, bid.posting_id);
        self.bids.entry(posting.clone()).or_default().push(bid);
        self.stats.bids_created += 1;
        self.posting(&posting).bids += 1;
    }

    /// Counts a second bid refused (Freelancer dialect).
    pub(super) fn count_conflict(&mut self, posting: &str) {
        self.stats.conflicts += 1;
        self.posting(posting).conflicts += 1;
    }

    /// Counts a lookup of a posting's bids (Freelancer dialect) and the trace it came in.
    pub(super) fn count_lookup(&mut self, posting: &str, traceparent: Option<&str>) {
        self.stats.lookups += 1;
        self.posting(posting).lookups += 1;
        self.note_trace(posting, traceparent);
    }

    /// The bids of one posting.
    pub(super) fn bids(&self, posting: &str) -> Vec<Bid> {
        self.bids.get(posting).cloned().unwrap_or_default()
    }

    /// A snapshot of the counters, with `duplicates` filled in.
    pub(super) fn count_lost(&mut self) {
        self.stats.lost_responses += 1;
    }

    pub(super) fn stats(&self) -> SandboxStats {
        let mut stats = self.stats.clone();
        stats.duplicates = stats
            .postings
            .iter()
            .filter(|(_, p)| p.bids > 1)
            .map(|(k, _)| k.clone())
            .collect();
        stats
    }

    fn posting(&mut self, posting: &str) -> &mut PostingStats {
        if !self.stats.postings.contains_key(posting) {
            self.stats
                .postings
                .insert(posting.to_owned(), PostingStats::default());
        }
        self.stats
            .postings
            .get_mut(posting)
            .expect("the entry was inserted just above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bid(posting: &str, key: &str, id: &str) -> Bid {
        Bid {
            bid_id: id.into(),
            marketplace: "m".into(),
            posting_id: posting.into(),
            idempotency_key: key.into(),
            amount: "1.00".into(),
            currency: "USD".into(),
            cover_letter: String::new(),
            traceparent: None,
            tracestate: None,
            request_sha256: format!("sha-of-{id}-body"),
            created_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn same_key_replays_other_key_conflicts() {
        let mut book = Book::default();
        assert!(
            matches!(book.place(bid("p", "m:p", "b1"), true), Placement::Created(b) if b.bid_id == "b1")
        );
        let mut replay = bid("p", "m:p", "b2");
        replay.request_sha256 = "sha-of-b1-body".into();
        assert!(matches!(book.place(replay, true), Placement::Replayed(b) if b.bid_id == "b1"));
        assert_eq!(
            book.place(bid("p", "m:p", "b9"), true),
            Placement::BodyChanged
        );
        assert_eq!(
            book.place(bid("p", "other", "b3"), true),
            Placement::Conflict {
                bid_id: "b1".into()
            }
        );
        assert_eq!(
            book.place(bid("q", "m:p", "b4"), true),
            Placement::KeyReused
        );
        let stats = book.stats();
        assert_eq!(
            (stats.bids_created, stats.replays, stats.conflicts),
            (1, 1, 1)
        );
        assert_eq!(stats.postings["m:p"].bids, 1);
        assert!(stats.duplicates.is_empty());
    }

    #[test]
    fn without_idempotency_every_request_is_a_bid_and_duplicates_show() {
        let mut book = Book::default();
        book.place(bid("p", "m:p", "b1"), false);
        book.place(bid("p", "m:p", "b2"), false);
        let stats = book.stats();
        assert_eq!(stats.postings["m:p"].bids, 2);
        assert_eq!(stats.duplicates, vec!["m:p".to_owned()]);
        assert_eq!(book.bids("m:p").len(), 2);
    }
}
