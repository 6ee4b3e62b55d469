//! The claim: the one atomic ledger step that fences the attempt (a new epoch) and decides —
//! a skip recorded, a request to send (this attempt's, or the one an earlier attempt sent), a
//! lookup due first (a send of unknown fate on an API without idempotency keys), or nothing to
//! do because the posting is final.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};

use super::{AttemptContext, Component, Outcome, Pipeline, Step};
use crate::config::BidCost;
use crate::ledger::{BudgetClaim, Claim, ClaimRequest, Intent, LedgerState, StoredRequest};
use crate::posting::PostingKey;

/// A claim that goes to the marketplace: the attempt's epoch and the stored request, in which
/// trace — to be sent, or first verified.
pub(super) struct Claimed {
    pub epoch: i64,
    pub request: StoredRequest,
    /// The posting's trace (its first attempt's `traceparent`), if the ledger kept one.
    pub trace_parent: Option<String>,
    /// Whether the marketplace's permit was taken before the lease (the attempt meant to call);
    /// if not, `ready.rs` takes it right before the call.
    pub permitted: bool,
    /// `Some`: a send of unknown fate must be looked up before anything is sent; the latest
    /// send started then (`None` if the ledger does not say).
    pub verify: Option<Option<DateTime<Utc>>>,
}

impl Pipeline {
    /// Claims `key` for `intent`: the request to send, or the outcome that ends the attempt.
    pub(super) async fn claim(
        &self,
        key: &PostingKey,
        intent: Intent,
        bid_cost: Option<rust_decimal::Decimal>,
        context: &AttemptContext,
    ) -> Step<Claimed> {
        let today = chrono::Utc::now().date_naive();
        // A bid takes its cost from the marketplace's credit budget, if it has one.
        let budget = match (&intent, self.policy.budget(key.marketplace())) {
            (Intent::Bid(_), Some(b)) => Some(BudgetClaim {
                period_start: b.period.start_of(today),
                credits: b.credits,
                cost: match b.cost {
                    BidCost::Fixed(cost) => cost,
                    BidCost::Event => bid_cost.unwrap_or(b.default_cost),
                },
            }),
            _ => None,
        };
        let permitted = !matches!(intent, Intent::Skip(_));
        let verify = self.verifies(key);
        let request = ClaimRequest {
            key: key.clone(),
            event_id: context.event_id.clone(),
            intent,
            instance: self.instance.clone(),
            trace_id: context.trace_id.clone(),
            trace_parent: context.trace_parent.clone(),
            daily_cap: self.policy.daily_cap(key.marketplace()),
            day: today,
            verify,
            budget,
        };
        let claimed = step!("ledger.claim", self.ledger.claim(request), |r: &Result<
            Claim,
            _,
        >| match r {
            Err(_) => "error",
            Ok(Claim::Final(_)) => "final",
            Ok(Claim::Send { resend: false, .. }) => "send",
            Ok(Claim::Send { resend: true, .. }) => "resend",
            Ok(Claim::Skipped { capped: false, .. }) => "skipped",
            Ok(Claim::Skipped { capped: true, .. }) => "capped",
            Ok(Claim::Nothing) => "nothing",
            Ok(Claim::Verify { .. }) => "lookup",
        });
        match claimed {
            Err(e) => ControlFlow::Break(Outcome::unavailable(Component::Ledger, &e)),
            Ok(Claim::Final(entry)) => ControlFlow::Break(Outcome::Duplicate(entry.state)),
            Ok(Claim::Nothing) => ControlFlow::Break(Outcome::Duplicate(LedgerState::Pending)),
            Ok(Claim::Skipped { reasons, .. }) => ControlFlow::Break(Outcome::Skipped { reasons }),
            Ok(Claim::Send {
                epoch,
                request,
                trace_parent,
                ..
            }) => ControlFlow::Continue(Claimed {
                epoch,
                request,
                trace_parent,
                permitted,
                verify: None,
            }),
            Ok(Claim::Verify {
                epoch,
                request,
                sent_at,
                trace_parent,
            }) => ControlFlow::Continue(Claimed {
                epoch,
                request,
                trace_parent,
                permitted,
                verify: Some(sent_at),
            }),
        }
    }
}
