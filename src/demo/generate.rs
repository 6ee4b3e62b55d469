//! Realistic demo postings: several marketplaces, budgets, skills and clients; a share
//! ineligible; each event published several times, interleaved; a few poison messages.
//! Deterministic for a seed.

use serde_json::json;

/// Marketplaces the demo configures and generates postings for.
pub const MARKETPLACES: &[&str] = &["upwork", "freelancer", "toptal"];

/// The API each demo marketplace speaks: `freelancer` the Freelancer.com API (integer project
/// ids, no idempotency keys), the others the contract.
pub fn api_of(marketplace: &str) -> crate::config::MarketplaceApi {
    if marketplace == "freelancer" {
        crate::config::MarketplaceApi::Freelancer
    } else {
        crate::config::MarketplaceApi::Contract
    }
}
/// The demo's minimum budget; postings generated as ineligible fall below it or hit a keyword.
pub const MIN_BUDGET: i64 = 100;
/// Keywords the demo's policy blocks.
pub const BLOCKED: &[&str] = &["crypto", "unpaid"];

const SKILLS: &[&str] = &[
    "rust",
    "go",
    "python",
    "postgres",
    "redis",
    "rabbitmq",
    "kubernetes",
    "react",
    "terraform",
    "aws",
    "grpc",
    "kafka",
];
const TITLES: &[&str] = &[
    "Build a {} worker",
    "Speed up our {} service",
    "Migrate a legacy app to {}",
    "Review {} code for a startup",
    "Fix a production {} outage",
];
const COUNTRIES: &[&str] = &["US", "DE", "GB", "IN", "BR", "FR", "CA", "AU"];

/// The demo's input, and what a correct run must produce from it.
#[derive(Clone, Debug)]
pub struct DemoInput {
    /// Message bodies in publish order (duplicates interleaved, poison mixed in).
    pub messages: Vec<Vec<u8>>,
    /// `marketplace:posting_id` of every posting that should get exactly one bid.
    pub eligible: Vec<String>,
    /// `marketplace:posting_id` of postings the policy must skip.
    pub ineligible: Vec<String>,
    /// How many poison messages were mixed in.
    pub poison: usize,
}

/// Generates `postings` postings, each published `duplication` times, ~20% ineligible, plus
/// `poison` poison messages.
pub fn generate(postings: usize, duplication: usize, poison: usize, seed: u64) -> DemoInput {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut events = Vec::with_capacity(postings);
    let (mut eligible, mut ineligible) = (Vec::new(), Vec::new());
    for n in 0..postings {
        let marketplace = MARKETPLACES[n % MARKETPLACES.len()];
        let posting_id = match api_of(marketplace) {
            // A project id: a positive integer, unique per seed and posting.
            crate::config::MarketplaceApi::Freelancer => format!("{}{n:08}", seed % 900 + 100),
            crate::config::MarketplaceApi::Contract => format!("job_{seed:x}_{n:06}"),
        };
        let skill = SKILLS[rng.usize(..SKILLS.len())];
        let mut title = TITLES[rng.usize(..TITLES.len())].replace("{}", skill);
        let ineligible_kind = if rng.f64() < 0.2 { rng.u8(0..2) + 1 } else { 0 };
        let min = match ineligible_kind {
            1 => rng.i64(5..MIN_BUDGET / 2),
            _ => rng.i64(MIN_BUDGET..5_000),
        };
        let max = match ineligible_kind {
            1 => min + rng.i64(0..MIN_BUDGET / 2 - 1),
            _ => min + rng.i64(0..10_000),
        };
        if ineligible_kind == 2 {
            title = format!("{title} ({} project)", BLOCKED[rng.usize(..BLOCKED.len())]);
        }
        let key = format!("{marketplace}:{posting_id}");
        if ineligible_kind == 0 {
            eligible.push(key);
        } else {
            ineligible.push(key);
        }
        let cents = rng.u8(0..100);
        let event = json!({
            "event_id": uuid::Builder::from_random_bytes(rng.u128(..).to_le_bytes()).into_uuid().to_string(),
            "marketplace": marketplace,
            "posting_id": posting_id,
            "title": title,
            "description": format!("We need help with {skill}. Long-term work possible."),
            "budget": {
                "min": min,
                "max": format!("{max}.{cents:02}"),
                "currency": "USD",
                "kind": if rng.bool() { "fixed" } else { "hourly" },
            },
            "skills": [skill, SKILLS[rng.usize(..SKILLS.len())]],
            "client": {
                "rating": (rng.u8(30..=50) as f64) / 10.0,
                "payment_verified": rng.f64() < 0.8,
                "country": COUNTRIES[rng.usize(..COUNTRIES.len())],
            },
            "posted_at": "2026-11-26T10:00:00Z",
            "url": format!("https://example.invalid/{marketplace}/{posting_id}"),
        });
        events.push(serde_json::to_vec(&event).expect("a json! value serialises"));
    }
    let mut messages = Vec::with_capacity(postings * duplication + poison);
    for _ in 0..duplication.max(1) {
        messages.extend(events.iter().cloned());
    }
    // Interleave: duplicates of one posting arrive at different times and workers.
    rng.shuffle(&mut messages);
    for i in 0..poison {
        let body = poison_body(i);
        let at = rng.usize(..=messages.len());
        messages.insert(at, body);
    }
    DemoInput {
        messages,
        eligible,
        ineligible,
        poison,
    }
}

/// The poison cases, round-robin: each breaks a different rule of the event contract.
fn poison_body(i: usize) -> Vec<u8> {
    match i % 5 {
        0 => b"{not json".to_vec(),
        1 => br#"{"event_id":"p1","marketplace":"upwork","title":"no posting id"}"#.to_vec(),
        2 => br#"{"event_id":"p2","marketplace":"ebay","posting_id":"x","title":"unknown marketplace"}"#.to_vec(),
        3 => br#"{"event_id":"p3","marketplace":"upwork","posting_id":"has space","title":"bad id"}"#.to_vec(),
        _ => {
            let mut big = br#"{"event_id":"p4","marketplace":"upwork","posting_id":"big","title":""#.to_vec();
            big.extend(std::iter::repeat_n(b'x', crate::posting::MAX_EVENT_BYTES));
            big.extend(br#""}"#);
            big
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posting::Posting;

    #[test]
    fn generated_events_parse_and_poison_does_not() {
        let input = generate(200, 3, 5, 7);
        assert_eq!(input.messages.len(), 200 * 3 + 5);
        assert_eq!(input.eligible.len() + input.ineligible.len(), 200);
        let known = |m: &str| MARKETPLACES.contains(&m);
        let bad = input
            .messages
            .iter()
            .filter(|b| Posting::parse(b, known).is_err())
            .count();
        assert_eq!(bad, 5);
        // Roughly a fifth ineligible.
        assert!(
            (20..=70).contains(&input.ineligible.len()),
            "{}",
            input.ineligible.len()
        );
    }

    #[test]
    fn same_seed_same_input() {
        assert_eq!(
            generate(50, 2, 2, 1).messages,
            generate(50, 2, 2, 1).messages
        );
    }
}
