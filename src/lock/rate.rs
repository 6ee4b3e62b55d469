//! The fleet-wide request rate of a marketplace, as a GCRA (generic cell rate algorithm) kept
//! next to the leases: one theoretical arrival time per marketplace, advanced by one emission
//! interval per admitted request. In Redis it is one Lua script on one key, on the server's
//! clock, so every worker of the fleet shares the bucket; the memory store keeps it in process.
//!
//! A request over the rate is not slept on in a worker slot: the caller gets the wait and the
//! posting goes back to wait (a not-before), counting no attempt.

use std::time::Duration;

/// A request rate with a burst: at most `burst` requests at once, `per_second` sustained, so
/// any one-second window sees at most `per_second + burst`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    pub per_second: f64,
    pub burst: u32,
}

impl Rate {
    /// The fleet-wide request rate `marketplace` sets (`rate_limit`, `rate_burst`), if any.
    pub fn of(marketplace: &crate::config::MarketplaceSettings) -> Option<Self> {
        marketplace.rate_limit.map(|per_second| Self {
            per_second,
            burst: marketplace.rate_burst.unwrap_or(1).max(1),
        })
    }

    /// Milliseconds between requests at the sustained rate (at least 1).
    pub fn interval_ms(&self) -> u64 {
        let ms = (1000.0 / self.per_second.max(f64::MIN_POSITIVE)).ceil();
        if ms.is_finite() && ms >= 1.0 {
            ms.min(u64::MAX as f64) as u64
        } else {
            1
        }
    }

    /// How far ahead of now the arrival time may run: `burst - 1` intervals.
    pub fn tolerance_ms(&self) -> u64 {
        self.interval_ms()
            .saturating_mul(u64::from(self.burst.max(1) - 1))
    }
}

/// Whether a request may go now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Go,
    /// Over the rate: come back after this long.
    Wait(Duration),
}

/// The GCRA step on `tat` (theoretical arrival time, ms) at `now` (ms): the new `tat` if
/// admitted, else the wait in ms. The Redis script does the same on the server.
pub fn gcra(tat: u64, now: u64, rate: &Rate) -> Result<u64, u64> {
    let tat = tat.max(now);
    let ahead = tat - now;
    let tolerance = rate.tolerance_ms();
    if ahead > tolerance {
        return Err(ahead - tolerance);
    }
    Ok(tat + rate.interval_ms())
}

/// The script: `KEYS[1]` the bucket, `ARGV` interval and tolerance in ms; returns 0 when
/// admitted, else the wait in ms.
pub(super) const ADMIT_LUA: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local ahead = tat - now
if ahead > tolerance then return ahead - tolerance end
redis.call('SET', KEYS[1], tat + interval, 'PX', ahead + interval + 1000)
return 0";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_goes_at_once_then_one_per_interval() {
        let rate = Rate {
            per_second: 10.0,
            burst: 3,
        };
        let mut tat = 0;
        for _ in 0..3 {
            tat = gcra(tat, 1_000, &rate).expect("within the burst");
        }
        assert_eq!(
            gcra(tat, 1_000, &rate),
            Err(100),
            "the fourth waits one interval"
        );
        assert!(gcra(tat, 1_100, &rate).is_ok());
    }

    #[test]
    fn no_one_second_window_exceeds_rate_plus_burst() {
        let rate = Rate {
            per_second: 20.0,
            burst: 5,
        };
        let (mut tat, mut admitted) = (0, Vec::new());
        for now in 0..5_000u64 {
            while let Ok(next) = gcra(tat, now, &rate) {
                tat = next;
                admitted.push(now);
            }
        }
        for start in 0..4_000u64 {
            let n = admitted
                .iter()
                .filter(|t| (start..start + 1000).contains(*t))
                .count();
            assert!(n <= 25, "{n} requests in [{start}, {start}+1s)");
        }
    }
}
