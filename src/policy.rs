//! Should-bid policy: a pure function of the posting and the settings — no I/O, no clock.

use rust_decimal::Decimal;

use crate::config::BiddingSettings;
use crate::posting::Posting;

/// Why the policy declined a posting. Codes are bounded (safe as metric labels).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The posting has no budget while `bidding.min_budget` is above 0.
    NoBudget,
    /// The budget (max, else min) is below `bidding.min_budget`.
    BelowMinBudget,
    /// Title, description or a skill contains a blocked keyword.
    BlockedKeyword(String),
}

impl SkipReason {
    /// Bounded code for metrics labels.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoBudget => "no_budget",
            Self::BelowMinBudget => "below_min_budget",
            Self::BlockedKeyword(_) => "blocked_keyword",
        }
    }

    /// Full text for the ledger (`blocked_keyword:crypto`).
    pub fn describe(&self) -> String {
        match self {
            Self::BlockedKeyword(k) => format!("blocked_keyword:{k}"),
            other => other.code().to_owned(),
        }
    }
}

/// The policy's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Bid `amount` in `currency` with this cover letter.
    Bid {
        amount: Decimal,
        currency: String,
        cover_letter: String,
    },
    /// Do not bid, for these reasons (at least one).
    Skip(Vec<SkipReason>),
}

/// The should-bid rules, built once from `[bidding]`.
#[derive(Clone, Debug)]
pub struct Policy {
    min_budget: Decimal,
    /// Lower-cased once so each decision only lower-cases the posting.
    blocked_keywords: Vec<String>,
    daily_bid_cap: u64,
    cover_letter: String,
}

impl Policy {
    /// Builds the policy from settings.
    pub fn new(settings: &BiddingSettings) -> Self {
        Self {
            min_budget: settings.min_budget,
            blocked_keywords: settings
                .blocked_keywords
                .iter()
                .map(|k| k.trim().to_lowercase())
                .filter(|k| !k.is_empty())
                .collect(),
            daily_bid_cap: settings.daily_bid_cap,
            cover_letter: settings.cover_letter.clone(),
        }
    }

    /// Bids allowed per UTC day on `marketplace`, fleet-wide (reserved by the ledger's claim,
    /// exactly); `None`: no cap.
    pub fn daily_cap(&self, _marketplace: &str) -> Option<u64> {
        (self.daily_bid_cap > 0).then_some(self.daily_bid_cap)
    }

    /// Decides on one posting, at `now`.
    pub fn decide(&self, posting: &Posting, _now: chrono::DateTime<chrono::Utc>) -> Decision {
        let mut reasons = Vec::new();
        let budget = posting.budget.as_ref();
        let amount = budget.and_then(|b| b.max.or(b.min));
        match amount {
            None if self.min_budget > Decimal::ZERO => reasons.push(SkipReason::NoBudget),
            Some(a) if a < self.min_budget => reasons.push(SkipReason::BelowMinBudget),
            _ => {}
        }
        if !self.blocked_keywords.is_empty() {
            let haystacks = [
                posting.title.to_lowercase(),
                posting.description.to_lowercase(),
            ];
            let skills: Vec<String> = posting.skills.iter().map(|s| s.to_lowercase()).collect();
            if let Some(k) = self.blocked_keywords.iter().find(|k| {
                haystacks.iter().any(|h| h.contains(k.as_str()))
                    || skills.iter().any(|s| s.contains(k.as_str()))
            }) {
                reasons.push(SkipReason::BlockedKeyword(k.clone()));
            }
        }
        if !reasons.is_empty() {
            return Decision::Skip(reasons);
        }
        // A posting without a budget (allowed when min_budget is 0) is bid at min_budget.
        Decision::Bid {
            amount: amount.unwrap_or(self.min_budget),
            currency: budget.map_or_else(|| "USD".to_owned(), |b| b.currency.clone()),
            cover_letter: self.cover_letter.replace("{title}", &posting.title),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posting::{Budget, BudgetKind, ClientInfo, PostingKey};

    fn settings(min: i64, blocked: &[&str], cap: u64) -> BiddingSettings {
        BiddingSettings {
            min_budget: Decimal::from(min),
            blocked_keywords: blocked.iter().map(|s| s.to_string()).collect(),
            daily_bid_cap: cap,
            cover_letter: "About {title}".into(),
        }
    }

    fn now() -> chrono::DateTime<chrono::Utc> {
        chrono::Utc::now()
    }

    fn posting(title: &str, budget: Option<(i64, i64)>) -> Posting {
        Posting {
            event_id: "e".into(),
            key: PostingKey::new("upwork", "p1").unwrap(),
            title: title.into(),
            description: "desc".into(),
            budget: budget.map(|(lo, hi)| Budget {
                min: Some(Decimal::from(lo)),
                max: Some(Decimal::from(hi)),
                currency: "EUR".into(),
                kind: BudgetKind::Fixed,
            }),
            skills: vec!["Rust".into()],
            client: ClientInfo::default(),
            posted_at: None,
            url: None,
        }
    }

    #[test]
    fn bids_the_budget_max_in_its_currency() {
        let p = Policy::new(&settings(100, &[], 0));
        assert_eq!(
            p.decide(&posting("Build it", Some((200, 900))), now()),
            Decision::Bid {
                amount: Decimal::from(900),
                currency: "EUR".into(),
                cover_letter: "About Build it".into()
            }
        );
    }

    #[test]
    fn below_min_budget_and_no_budget_are_skipped() {
        let p = Policy::new(&settings(1000, &[], 0));
        assert_eq!(
            p.decide(&posting("x", Some((10, 999))), now()),
            Decision::Skip(vec![SkipReason::BelowMinBudget])
        );
        assert_eq!(
            p.decide(&posting("x", None), now()),
            Decision::Skip(vec![SkipReason::NoBudget])
        );
    }

    #[test]
    fn blocked_keywords_match_case_insensitively_in_title_and_skills() {
        let p = Policy::new(&settings(0, &["CRYPTO", "rust"], 0));
        let d = p.decide(&posting("Crypto miner", Some((1, 2))), now());
        assert_eq!(
            d,
            Decision::Skip(vec![SkipReason::BlockedKeyword("crypto".into())])
        );
        let d = p.decide(&posting("Plain job", Some((1, 2))), now());
        assert_eq!(
            d,
            Decision::Skip(vec![SkipReason::BlockedKeyword("rust".into())])
        );
    }

    #[test]
    fn the_daily_cap_is_handed_to_the_ledger() {
        assert_eq!(
            Policy::new(&settings(0, &[], 3)).daily_cap("upwork"),
            Some(3)
        );
        assert_eq!(Policy::new(&settings(0, &[], 0)).daily_cap("upwork"), None);
    }

    #[test]
    fn several_reasons_are_all_reported() {
        let p = Policy::new(&settings(1000, &["desc"], 0));
        match p.decide(&posting("x", Some((1, 2))), now()) {
            Decision::Skip(r) => assert_eq!(r.len(), 2),
            other => panic!("expected skip, got {other:?}"),
        }
    }
}
