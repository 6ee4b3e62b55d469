//! Per-marketplace circuit breaker: a marketplace that is down, refuses our credentials, rate
//! limits us or answers 404 for everything is *paused* — its postings wait without being called
//! and without counting attempts — and probed, one request at a time, until it answers.
//!
//! Plain synchronous logic under a mutex, the clock passed in, so every transition has a unit
//! test. The pipeline asks [`Breakers::permit`] before it claims a posting and reports every
//! answer with [`Breakers::record`]; a [`Permit::Probe`] that ends without an answer (lease lost,
//! ledger down) is handed back by dropping its [`ProbeGuard`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{PauseReason, Paused, announce_pause, announce_resume};

mod signal;

pub use self::signal::{
    BreakerSettings, DEFAULT_TRIP_AFTER, NOT_FOUND_TRIP_AFTER, Permit, Signal, Verdict,
};

#[derive(Debug)]
enum State {
    Closed,
    /// Paused since `since`; a probe may go once `until` has passed (one at a time: `probing`).
    Open {
        until: Instant,
        reason: PauseReason,
        since: Instant,
        probing: bool,
    },
}

#[derive(Debug)]
struct Marketplace {
    state: State,
    transient_streak: u32,
    not_found_streak: u32,
    /// Whether it has ever given an answer other than 404 (`base_url` reaches the API).
    verified: bool,
    /// Wait before the next probe; doubles on each failed probe up to `max_backoff`.
    backoff: Duration,
}

impl Marketplace {
    /// Why and since when it is paused, if it is.
    fn pause(&self) -> Option<(PauseReason, Instant)> {
        match self.state {
            State::Closed => None,
            State::Open { reason, since, .. } => Some((reason, since)),
        }
    }
}

/// The breakers of every marketplace. Cheap to clone (shared state).
#[derive(Clone, Debug)]
pub struct Breakers {
    settings: BreakerSettings,
    inner: Arc<Mutex<BTreeMap<String, Marketplace>>>,
}

/// The probe slot of a paused marketplace; dropped without [`Breakers::record_probe`], the slot
/// is handed back so that the next caller probes.
#[derive(Debug)]
pub struct ProbeGuard {
    breakers: Breakers,
    marketplace: String,
    answered: bool,
}

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let mut all = self.breakers.lock();
        if let Some(m) = all.get_mut(&self.marketplace)
            && let State::Open { probing, .. } = &mut m.state
        {
            // Unanswered: the pause is over, so the next posting probes.
            *probing = false;
        }
    }
}

impl Breakers {
    /// Breakers with these settings; every marketplace starts closed.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            inner: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Marketplace>> {
        // Plain state updated without panicking code paths; a poisoned lock is still consistent.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn entry<'a>(
        &self,
        all: &'a mut BTreeMap<String, Marketplace>,
        marketplace: &str,
    ) -> &'a mut Marketplace {
        all.entry(marketplace.to_owned())
            .or_insert_with(|| Marketplace {
                state: State::Closed,
                transient_streak: 0,
                not_found_streak: 0,
                verified: false,
                backoff: self.settings.min_backoff,
            })
    }

    /// A pause whose probe time came long ago (longer than the longest backoff) without any
    /// posting to probe with is over: nothing needs the marketplace, and the next call will tell
    /// whether it answers. Keeps an idle worker from reporting a stale pause for ever.
    fn expire_idle(&self, name: &str, m: &mut Marketplace, now: Instant) {
        if let State::Open {
            until,
            reason,
            since,
            probing: false,
        } = m.state
            && now >= until + self.settings.max_backoff
        {
            m.state = State::Closed;
            m.backoff = self.settings.min_backoff;
            announce_resume(&format!("marketplace:{name}"), reason, since);
        }
    }

    /// May `marketplace` be called now?
    pub fn permit(&self, marketplace: &str, now: Instant) -> Permit {
        let min = self.settings.min_backoff;
        let mut all = self.lock();
        let m = self.entry(&mut all, marketplace);
        self.expire_idle(marketplace, m, now);
        match &mut m.state {
            State::Closed => Permit::Go,
            State::Open { until, reason, .. } if now < *until => Permit::Wait {
                retry_in: (*until - now).max(min),
                reason: *reason,
            },
            // The probe's answer comes soon: ask again shortly, so that the backlog follows a
            // recovery at once rather than a whole backoff later.
            State::Open {
                reason,
                probing: true,
                ..
            } => Permit::Wait {
                retry_in: min,
                reason: *reason,
            },
            State::Open { probing, .. } => {
                *probing = true;
                Permit::Probe(ProbeGuard {
                    breakers: self.clone(),
                    marketplace: marketplace.to_owned(),
                    answered: false,
                })
            }
        }
    }

    /// Records one answer of `marketplace` to a call made under [`Permit::Go`]; returns how to
    /// treat it. A pause starting or ending is announced here, once.
    pub fn record(&self, marketplace: &str, signal: Signal, now: Instant) -> Verdict {
        self.record_answer(marketplace, signal, now, false)
    }

    /// Records the answer to the probe `guard` allowed.
    pub fn record_probe(&self, mut guard: ProbeGuard, signal: Signal, now: Instant) -> Verdict {
        guard.answered = true;
        self.record_answer(&guard.marketplace, signal, now, true)
    }

    fn record_answer(
        &self,
        marketplace: &str,
        signal: Signal,
        now: Instant,
        probe: bool,
    ) -> Verdict {
        let mut all = self.lock();
        let m = self.entry(&mut all, marketplace);
        let before = m.pause();
        let verdict = self.apply(m, signal, now, probe);
        let after = m.pause();
        if before.map(|b| b.0) != after.map(|a| a.0) {
            let dependency = format!("marketplace:{marketplace}");
            if let Some((reason, since)) = before {
                announce_resume(&dependency, reason, since);
            }
            if let Some((reason, _)) = after {
                announce_pause(&dependency, reason, signal.describe());
            }
        }
        verdict
    }

    fn apply(&self, m: &mut Marketplace, signal: Signal, now: Instant, probe: bool) -> Verdict {
        let settings = self.settings;
        let was_closed = matches!(m.state, State::Closed);
        // Pauses (or keeps paused) for `reason`, at least `at_least` from now.
        let pause = |m: &mut Marketplace, reason: PauseReason, at_least: Duration| {
            let (wait, since) = match m.state {
                State::Closed => {
                    m.backoff = settings.min_backoff;
                    (m.backoff, now)
                }
                // The probe failed: back off further.
                State::Open { since, .. } if probe => {
                    m.backoff = (m.backoff * 2).min(settings.max_backoff);
                    (m.backoff, since)
                }
                // An answer to a call made before the pause (in flight when it tripped): no
                // news; the pause stands unless this answer asks for longer.
                State::Open {
                    until,
                    since,
                    probing,
                    ..
                } => {
                    if now + at_least > until {
                        m.state = State::Open {
                            until: now + at_least,
                            reason,
                            since,
                            probing,
                        };
                    }
                    return;
                }
            };
            m.state = State::Open {
                until: now + at_least.max(wait),
                reason,
                since,
                probing: false,
            };
        };
        match signal {
            Signal::Answered => {
                m.verified = true;
                m.transient_streak = 0;
                m.not_found_streak = 0;
                m.backoff = settings.min_backoff;
                m.state = State::Closed;
                Verdict {
                    counts: false,
                    not_found_is_final: true,
                }
            }
            Signal::Transient => {
                m.transient_streak += 1;
                let trips = !was_closed || m.transient_streak >= settings.trip_after;
                if trips {
                    pause(m, PauseReason::Unavailable, Duration::ZERO);
                }
                Verdict {
                    counts: !trips,
                    not_found_is_final: false,
                }
            }
            Signal::RateLimited { retry_after } => {
                pause(
                    m,
                    PauseReason::RateLimited,
                    retry_after.unwrap_or(Duration::ZERO),
                );
                Verdict {
                    counts: false,
                    not_found_is_final: false,
                }
            }
            Signal::Unauthorized => {
                pause(m, PauseReason::Credentials, Duration::ZERO);
                Verdict {
                    counts: false,
                    not_found_is_final: false,
                }
            }
            Signal::NotFound => {
                m.not_found_streak += 1;
                m.transient_streak = 0;
                let trusted = m.verified && m.not_found_streak < NOT_FOUND_TRIP_AFTER;
                if trusted {
                    // A posting that does not exist; the marketplace itself is fine.
                    m.state = State::Closed;
                    m.backoff = settings.min_backoff;
                } else if was_closed && m.not_found_streak < NOT_FOUND_TRIP_AFTER {
                    // Not yet known to be misconfigured: the posting waits, the marketplace
                    // stays callable until the streak says otherwise.
                } else {
                    pause(m, PauseReason::NotFound, Duration::ZERO);
                }
                Verdict {
                    counts: false,
                    not_found_is_final: trusted,
                }
            }
        }
    }

    /// How long a posting of `marketplace` should wait before asking again.
    pub fn retry_in(&self, marketplace: &str, now: Instant) -> Duration {
        let min = self.settings.min_backoff;
        let mut all = self.lock();
        match self.entry(&mut all, marketplace).state {
            State::Open { until, .. } => until.saturating_duration_since(now).max(min),
            State::Closed => min,
        }
    }

    /// The marketplaces paused now, with why and since when.
    pub fn paused(&self) -> Vec<Paused> {
        let now = Instant::now();
        let mut all = self.lock();
        for (name, m) in all.iter_mut() {
            self.expire_idle(name, m, now);
        }
        all.iter()
            .filter_map(|(name, m)| {
                m.pause().map(|(reason, since)| Paused {
                    dependency: format!("marketplace:{name}"),
                    reason,
                    since,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
