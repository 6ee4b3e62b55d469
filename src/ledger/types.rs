//! What the ledger port speaks: rows, the request a claim stores, what a claim decides, how an
//! attempt ends, and the attempt history.

use chrono::{DateTime, NaiveDate, Utc};

use crate::posting::PostingKey;

/// State of a ledger row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LedgerState {
    Pending,
    Placed,
    Skipped,
    Rejected,
}

impl LedgerState {
    /// The text stored in the `state` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Placed => "placed",
            Self::Skipped => "skipped",
            Self::Rejected => "rejected",
        }
    }

    /// Parses the `state` column.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "placed" => Self::Placed,
            "skipped" => Self::Skipped,
            "rejected" => Self::Rejected,
            _ => return None,
        })
    }

    /// Whether this state is final (never overwritten).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending)
    }
}

/// The exact bid request an attempt sent: stored when it passed the fence, re-sent byte for
/// byte by every later attempt (under the same idempotency key, where the API has them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRequest {
    /// The API the body is written for (`contract`, `freelancer`).
    pub api: String,
    /// The JSON body, exactly as sent.
    pub body: String,
    /// SHA-256 of `body`, lower-case hex.
    pub sha256: String,
    /// The amount as sent (`"450.00"`) and its currency, for reports and spend caps.
    pub amount: String,
    pub currency: String,
}

/// A ledger row as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub key: PostingKey,
    pub state: LedgerState,
    pub epoch: i64,
    /// How many attempts passed the fence towards the marketplace.
    pub sends: u32,
    /// Marketplace bid id, for `placed`.
    pub bid_id: Option<String>,
    /// Skip reasons (comma-separated) or the rejection's status and body excerpt.
    pub detail: Option<String>,
    /// The request sent, once one was.
    pub request: Option<StoredRequest>,
    /// The event of the latest claim.
    pub event_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the latest send passed the fence.
    pub sent_at: Option<DateTime<Utc>>,
    /// When the oldest send whose fate is unknown started (sent, no answer classified, no
    /// lookup since): `None` when every send was answered, provably not made, or looked up.
    pub unknown_since: Option<DateTime<Utc>>,
    /// The W3C `traceparent` of the posting's first attempt: every marketplace call for the
    /// posting runs in that trace.
    pub trace_parent: Option<String>,
}

/// What the attempt wants to do with the posting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Intent {
    /// Send this request (the policy said bid). A request already sent wins over it.
    Bid(StoredRequest),
    /// Record `skipped` with these reasons (the policy said no). A request already sent wins.
    Skip(Vec<String>),
    /// Only re-send a request already sent (`bidorch reconcile`); nothing otherwise.
    Resend,
}

/// One claim to make: the posting, the attempt's intent and identity, and the daily cap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequest {
    pub key: PostingKey,
    pub event_id: String,
    pub intent: Intent,
    /// Who claims (the worker's instance id), for the attempt history.
    pub instance: String,
    /// The trace this attempt runs in, if known.
    pub trace_id: Option<String>,
    /// This attempt's W3C `traceparent`, kept as the posting's if the claim creates its row.
    pub trace_parent: Option<String>,
    /// Bids allowed per UTC day on this marketplace, fleet-wide; `None`: no cap.
    pub daily_cap: Option<u64>,
    /// The UTC day the cap counts in.
    pub day: NaiveDate,
    /// The marketplace's API has no idempotency keys: a posting with a send of unknown fate is
    /// looked up ([`Claim::Verify`]) instead of sent again.
    pub verify: bool,
    /// The credit budget a bid must fit in (`None`: no budget).
    pub budget: Option<BudgetClaim>,
}

/// What a bid takes from its marketplace's credit budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BudgetClaim {
    /// The first day of the period (UTC) the credits count in.
    pub period_start: NaiveDate,
    /// Credits the period allows.
    pub credits: rust_decimal::Decimal,
    /// What this bid costs.
    pub cost: rust_decimal::Decimal,
}

/// What a claim decided, atomically, under the posting's row lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This attempt owns epoch `epoch` and may call the marketplace with `request` (its own,
    /// or — `resend` — the one an earlier attempt sent). `sends` was incremented: the fence.
    Send {
        epoch: i64,
        request: StoredRequest,
        resend: bool,
        /// The posting's trace (its first attempt's `traceparent`): the call runs in it.
        trace_parent: Option<String>,
    },
    /// Recorded `skipped`: the policy's reasons, or `daily_cap` when no slot was left.
    Skipped { reasons: Vec<String>, capped: bool },
    /// The posting already has a final outcome; nothing was changed.
    Final(LedgerEntry),
    /// [`Intent::Resend`] and nothing was ever sent: nothing to do.
    Nothing,
    /// A send of unknown fate on an API without idempotency keys: this attempt owns `epoch`
    /// and must look the bid up before anything else happens to the posting — found, it is
    /// placed; not found, the stored `request` is sent again (a new claim, after a finish
    /// with [`Pending::NoBidFound`]). Nothing was sent by this claim.
    Verify {
        epoch: i64,
        request: StoredRequest,
        /// When the latest send started: the lookup waits until `lookup_delay` after it.
        sent_at: Option<DateTime<Utc>>,
        trace_parent: Option<String>,
    },
}

/// A final outcome to record for an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FinalOutcome {
    /// A bid exists: `bid_id` from a 201/200, or `None` after a 409 (placed under another key).
    Placed {
        bid_id: Option<String>,
        detail: Option<String>,
        /// The answer's status (201, 200 for a replay, 409), for the attempt history.
        http_status: Option<u16>,
    },
    /// The marketplace refused the bid permanently (its cap slot, if any, is released).
    Rejected { status: u16, body_excerpt: String },
    /// A lookup found our bid (a send whose answer was lost had placed it).
    Found { bid_id: String },
}

impl FinalOutcome {
    /// The state this outcome writes.
    pub fn state(&self) -> LedgerState {
        match self {
            Self::Placed { .. } | Self::Found { .. } => LedgerState::Placed,
            Self::Rejected { .. } => LedgerState::Rejected,
        }
    }

    /// The answer's HTTP status, for the attempt history.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Placed { http_status, .. } => *http_status,
            Self::Rejected { status, .. } => Some(*status),
            Self::Found { .. } => None,
        }
    }

    /// The `bid_id` column value.
    pub fn bid_id(&self) -> Option<&str> {
        match self {
            Self::Placed { bid_id, .. } => bid_id.as_deref(),
            Self::Found { bid_id } => Some(bid_id),
            Self::Rejected { .. } => None,
        }
    }

    /// The `detail` column value.
    pub fn detail(&self) -> Option<String> {
        match self {
            Self::Placed { detail, .. } => detail.clone(),
            Self::Rejected {
                status,
                body_excerpt,
            } => Some(format!("{status}: {body_excerpt}")),
            Self::Found { .. } => Some("found by lookup".to_owned()),
        }
    }
}

/// Why an attempt ended with its posting still pending: the attempt history's `result`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// The marketplace was paused when the call was due; no call made.
    MarketplacePaused,
    /// The lease was no longer ours when the call was due; no call made.
    LeaseLost,
    /// Over the marketplace's fleet-wide rate when the call was due; no call made.
    OverRate,
    /// The lock store could not say whether the rate admits the call; no call made.
    LockStoreUnavailable,
    /// The call could not be made (the marketplace is not configured in this client).
    CallFailed,
    /// The marketplace refused our credentials (401/403/407).
    Unauthorized,
    /// The marketplace answered 404 while not yet known to answer (its `base_url`, not the
    /// posting).
    NotFound,
    /// The marketplace answered 429.
    RateLimited,
    /// A 5xx, a timeout, or a connection lost: the bid may or may not exist.
    Transient,
    /// The connection was never made: the request did not reach the marketplace.
    Unreached,
    /// A send of unknown fate is not yet `lookup_delay` old: a request still in flight may yet
    /// create the bid, so the lookup waits. Nothing called.
    LookupWait,
    /// The lookup could not answer (timeout, 5xx, 401/403, 429): nothing is known.
    LookupFailed,
    /// The lookup found no bid of ours: every send of unknown fate is now known absent, and
    /// the stored request may be sent again.
    NoBidFound,
}

impl Pending {
    /// The text kept in the attempt history.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MarketplacePaused => "marketplace_paused",
            Self::LeaseLost => "lease_lost",
            Self::OverRate | Self::RateLimited => "rate_limited",
            Self::LockStoreUnavailable => "lock_store_unavailable",
            Self::CallFailed => "unknown_marketplace",
            Self::Unauthorized => "unauthorized",
            Self::NotFound => "not_found",
            Self::Transient => "transient",
            Self::Unreached => "unreached",
            Self::LookupWait => "lookup_wait",
            Self::LookupFailed => "lookup_failed",
            Self::NoBidFound => "no_bid_found",
        }
    }

    /// What the attempt's send (if it made one) is known to be after it: `unknown` after a
    /// 5xx or a timeout, `answered` when a later lookup is what could not answer, `absent` for
    /// every unknown send of the posting when a lookup found none; else nothing was sent.
    pub fn send_state(self) -> &'static str {
        match self {
            Self::Transient => "unknown",
            Self::LookupFailed => "answered",
            Self::NoBidFound => "absent",
            Self::MarketplacePaused
            | Self::LeaseLost
            | Self::OverRate
            | Self::LockStoreUnavailable
            | Self::CallFailed
            | Self::Unauthorized
            | Self::NotFound
            | Self::RateLimited
            | Self::Unreached
            | Self::LookupWait => "not_sent",
        }
    }
}

/// How an attempt that claimed `epoch` ends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finish {
    /// With a final outcome.
    Final(FinalOutcome),
    /// With the row still pending: the attempt's history row is closed with `reason`.
    Pending {
        reason: Pending,
        http_status: Option<u16>,
        detail: Option<String>,
        /// When the posting's own message comes back, if the marketplace said (a
        /// `Retry-After`): reconcile leaves the posting to it until then.
        back_at: Option<DateTime<Utc>>,
    },
}

impl Finish {
    /// The attempt history's `result`.
    pub fn result(&self) -> &'static str {
        match self {
            Self::Final(FinalOutcome::Placed { .. }) => "placed",
            Self::Final(FinalOutcome::Rejected { .. }) => "rejected",
            Self::Final(FinalOutcome::Found { .. }) => "found",
            Self::Pending { reason, .. } => reason.as_str(),
        }
    }

    /// The send state this finish records (see [`Pending::send_state`]); a final outcome was
    /// an answer (or a lookup's).
    pub fn send_state(&self) -> &'static str {
        match self {
            Self::Final(_) => "answered",
            Self::Pending { reason, .. } => reason.send_state(),
        }
    }

    /// What the attempt history's `detail` keeps: the reason of a pending end, the bid a lookup
    /// found.
    pub fn attempt_detail(&self) -> Option<String> {
        match self {
            Self::Final(FinalOutcome::Found { bid_id }) => Some(format!("bid {bid_id}")),
            Self::Final(_) => None,
            Self::Pending { detail, .. } => detail.clone(),
        }
    }

    /// Ends an attempt pending for `reason`, without an answer to keep.
    pub fn pending(reason: Pending) -> Self {
        Self::Pending {
            reason,
            http_status: None,
            detail: None,
            back_at: None,
        }
    }

    /// When the posting's message comes back, for a pending end that says.
    pub fn back_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Self::Pending { back_at, .. } => *back_at,
            Self::Final(_) => None,
        }
    }
}

/// Result of an epoch-conditional write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fenced {
    /// The write happened: the epoch was still ours and the row still `pending`.
    Written,
    /// A newer claim superseded ours (row still pending under a higher epoch); nothing written.
    Superseded { current_epoch: i64 },
    /// The row is already final; nothing written.
    Final(Box<LedgerEntry>),
}

/// One attempt of a posting, as the history has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRecord {
    pub epoch: i64,
    pub instance: String,
    pub event_id: String,
    pub trace_id: Option<String>,
    /// What the claim decided: `send`, `resend`, `lookup`, `skipped` or `capped`.
    pub claim: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<String>,
    pub http_status: Option<u16>,
    pub detail: Option<String>,
    /// For a send: `unknown`, `answered`, `not_sent` or `absent` (see migration 0005).
    pub send: Option<String>,
}

/// Lower-case hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = String::with_capacity(64);
    for b in digest.as_ref() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_hex_is_the_lower_case_digest() {
        // FIPS 180-2's example.
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
