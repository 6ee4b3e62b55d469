//! Which acks one round writes: the run of consecutive delivery tags that extends what a
//! channel has settled goes as one `multiple` ack; the others go alone or wait (see
//! [`super::acks`] for why, and for how long). Plain bookkeeping, no I/O.

use std::collections::BTreeSet;

use tokio::time::Instant;

/// Settled tags kept above a gap before batching is given up on the channel: a tag that is never
/// settled (a delivery lapin dropped at a consumer's cancel) must not make the set grow forever.
const MAX_SETTLED_ABOVE: usize = 16 * 1024;

/// Which of a channel's delivery tags are settled, as far as consecutive acks need to know.
#[derive(Debug)]
pub(super) struct TagLedger {
    /// Every tag from 1 up to this one is settled.
    settled_upto: u64,
    /// When `settled_upto` last moved (or the channel opened).
    pub(super) advanced_at: Instant,
    /// Settled tags above `settled_upto` (a lower one is not yet).
    settled_above: BTreeSet<u64>,
    /// Set when `settled_above` outgrew [`MAX_SETTLED_ABOVE`]: a tag below stayed unsettled for
    /// good, and every ack goes alone from then on.
    given_up: bool,
}

/// The frames that ack one round: `(tag, multiple)`, at most the first one `multiple`; and
/// the tags held for a later round.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    pub(super) frames: Vec<(u64, bool)>,
    pub(super) held: Vec<u64>,
}

impl Plan {
    /// The frame that acks `tag`: the run (frame 0) if it reaches that far, else its own.
    pub(super) fn frame_of(&self, tag: u64) -> usize {
        match self.frames.first() {
            Some(&(upto, true)) if tag <= upto => 0,
            _ => self.frames.iter().position(|&(t, _)| t == tag).unwrap_or(0),
        }
    }
}

impl TagLedger {
    pub(super) fn new(now: Instant) -> Self {
        Self {
            settled_upto: 0,
            advanced_at: now,
            settled_above: BTreeSet::new(),
            given_up: false,
        }
    }

    /// Plans the acks of `tags` (distinct, unsettled) and counts the acked ones as settled:
    /// those that extend the run of settled tags go as one ack; of the others, those that
    /// `may_wait` are held for a later round, the rest go alone.
    pub(super) fn plan(
        &mut self,
        now: Instant,
        tags: impl Iterator<Item = u64>,
        may_wait: impl Fn(u64) -> bool,
    ) -> Plan {
        let mut tags: Vec<u64> = tags.collect();
        tags.sort_unstable();
        if self.given_up {
            return Plan {
                frames: tags.into_iter().map(|t| (t, false)).collect(),
                held: Vec::new(),
            };
        }
        // The run: the tags right after `settled_upto`, passing over those settled before.
        let mut upto = self.settled_upto;
        let mut in_run = 0;
        for &tag in &tags {
            while self.settled_above.first() == Some(&(upto + 1)) {
                self.settled_above.pop_first();
                upto += 1;
            }
            if tag != upto + 1 {
                break;
            }
            upto = tag;
            in_run += 1;
        }
        while self.settled_above.first() == Some(&(upto + 1)) {
            self.settled_above.pop_first();
            upto += 1;
        }
        let mut frames = Vec::with_capacity(tags.len() - in_run + 1);
        if in_run > 0 {
            // A run of one is a plain ack: the tags it passes over are settled already.
            let last = tags[in_run - 1];
            frames.push((last, in_run > 1));
        }
        if upto > self.settled_upto {
            self.settled_upto = upto;
            self.advanced_at = now;
        }
        let mut held = Vec::new();
        for &tag in &tags[in_run..] {
            if may_wait(tag) {
                held.push(tag);
            } else {
                frames.push((tag, false));
                self.settled(now, tag);
            }
        }
        Plan { frames, held }
    }

    /// Counts `tag` as settled.
    pub(super) fn settled(&mut self, now: Instant, tag: u64) {
        if self.given_up || tag <= self.settled_upto {
            return;
        }
        if tag == self.settled_upto + 1 {
            self.settled_upto = tag;
            self.advanced_at = now;
            while self.settled_above.first() == Some(&(self.settled_upto + 1)) {
                self.settled_above.pop_first();
                self.settled_upto += 1;
            }
        } else {
            self.settled_above.insert(tag);
            if self.settled_above.len() > MAX_SETTLED_ABOVE {
                tracing::debug!(
                    below = self.settled_upto + 1,
                    "A delivery tag stayed unsettled; acks on this channel go one by one"
                );
                self.given_up = true;
                self.settled_above.clear();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ledger() -> TagLedger {
        TagLedger::new(Instant::now())
    }

    fn plan(ledger: &mut TagLedger, tags: &[u64]) -> Vec<(u64, bool)> {
        ledger
            .plan(Instant::now(), tags.iter().copied(), |_| false)
            .frames
    }

    #[test]
    fn consecutive_tags_from_the_first_go_as_one_multiple_ack() {
        let mut ledger = ledger();
        assert_eq!(plan(&mut ledger, &[3, 1, 2]), [(3, true)]);
        assert_eq!(plan(&mut ledger, &[4]), [(4, false)]);
        assert_eq!(plan(&mut ledger, &[5, 6]), [(6, true)]);
    }

    #[test]
    fn an_unsettled_tag_stops_the_run_and_the_acks_above_it_go_alone() {
        let mut ledger = ledger();
        // 3 is still being worked on: 1 and 2 go together, 4 and 5 alone.
        assert_eq!(
            plan(&mut ledger, &[1, 2, 4, 5]),
            [(2, true), (4, false), (5, false)]
        );
        // 3 settles: the run passes over 4 and 5, which are settled already.
        assert_eq!(plan(&mut ledger, &[3, 6]), [(6, true)]);
    }

    #[test]
    fn a_tag_handed_back_is_passed_over_only_once_it_is_settled() {
        let mut ledger = ledger();
        assert_eq!(plan(&mut ledger, &[1]), [(1, false)]);
        // 2 is being handed back: the run cannot cover it.
        assert_eq!(plan(&mut ledger, &[3, 4]), [(3, false), (4, false)]);
        ledger.settled(Instant::now(), 2);
        assert_eq!(plan(&mut ledger, &[5, 6]), [(6, true)]);
    }

    #[test]
    fn a_tag_never_settled_is_never_covered() {
        let mut ledger = ledger();
        for tag in 2..200 {
            let frames = plan(&mut ledger, &[tag]);
            assert_eq!(frames, [(tag, false)], "tag {tag}");
        }
        let frames = plan(&mut ledger, &[200, 201, 202]);
        assert!(frames.iter().all(|&(_, multiple)| !multiple), "{frames:?}");
    }

    #[test]
    fn batching_is_given_up_when_a_gap_stays_open_too_long() {
        let mut ledger = ledger();
        for tag in 2..(MAX_SETTLED_ABOVE as u64 + 3) {
            ledger.plan(Instant::now(), std::iter::once(tag), |_| false);
        }
        assert!(ledger.given_up && ledger.settled_above.is_empty());
        // Even the missing tag's ack, once it comes, goes alone.
        assert_eq!(plan(&mut ledger, &[1]), [(1, false)]);
    }

    #[test]
    fn a_held_ack_joins_the_run_once_the_tag_below_it_settles() {
        let mut ledger = ledger();
        let round = ledger.plan(Instant::now(), [2, 3].into_iter(), |_| true);
        assert_eq!(round.frames, []);
        assert_eq!(round.held, [2, 3]);
        let round = ledger.plan(Instant::now(), [1, 2, 3].into_iter(), |_| true);
        assert_eq!(round.frames, [(3, true)]);
        assert!(round.held.is_empty());
        // Held too long, an ack goes alone.
        let round = ledger.plan(Instant::now(), [5].into_iter(), |_| false);
        assert_eq!(round.frames, [(5, false)]);
    }

    #[test]
    fn each_tag_is_answered_by_the_frame_that_acks_it() {
        let plan = Plan {
            frames: vec![(3, true), (5, false), (7, false)],
            held: Vec::new(),
        };
        assert_eq!(plan.frame_of(1), 0);
        assert_eq!(plan.frame_of(3), 0);
        assert_eq!(plan.frame_of(5), 1);
        assert_eq!(plan.frame_of(7), 2);
        let alone = Plan {
            frames: vec![(4, false), (6, false)],
            held: Vec::new(),
        };
        assert_eq!(alone.frame_of(4), 0);
        assert_eq!(alone.frame_of(6), 1);
    }
}
