//! The claim: the one atomic ledger step that fences the attempt (a new epoch) and decides —
//! a skip recorded, a request to send (this attempt's, or the one an earlier attempt sent), or
//! nothing to do because the posting is final.

use std::ops::ControlFlow;

use super::{AttemptContext, Component, Outcome, Pipeline, Step};
use crate::ledger::{Claim, ClaimRequest, Intent, LedgerState, StoredRequest};
use crate::posting::PostingKey;

/// A claim that sends: the attempt's epoch and what to send, in which trace.
pub(super) struct Claimed {
    pub epoch: i64,
    pub request: StoredRequest,
    /// The posting's trace (its first attempt's `traceparent`), if the ledger kept one.
    pub trace_parent: Option<String>,
    /// Whether this attempt meant to call the marketplace (it did not if it meant to skip and the
    /// claim handed back a request sent before).
    pub meant_to_call: bool,
}

impl Pipeline {
    /// Claims `key` for `intent`: the request to send, or the outcome that ends the attempt.
    pub(super) async fn claim(
        &self,
        key: &PostingKey,
        intent: Intent,
        context: &AttemptContext,
    ) -> Step<Claimed> {
        let meant_to_call = !matches!(intent, Intent::Skip(_));
        let request = ClaimRequest {
            key: key.clone(),
            event_id: context.event_id.clone(),
            intent,
            instance: self.instance.clone(),
            trace_id: context.trace_id.clone(),
            trace_parent: context.trace_parent.clone(),
            daily_cap: self.policy.daily_cap(key.marketplace()),
            day: chrono::Utc::now().date_naive(),
        };
        let claimed = step!("ledger.claim", self.ledger.claim(&request), |r: &Result<
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
                meant_to_call,
            }),
        }
    }
}
