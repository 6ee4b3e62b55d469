//! What the ledger keeps for operators (migration 0006): the fleet-wide manual pauses in force
//! and the generation that counts their changes, the audit history of every operator action,
//! and each worker's latest report of itself. [`ControlStore`] is the port; the PostgreSQL and
//! SQLite ledgers implement it, held to one contract suite.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::LedgerError;

/// What a pause covers.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Every marketplace (`--all`; stored as `*`).
    All,
    Marketplace(String),
}

impl Scope {
    /// The `scope` column's value.
    pub fn as_str(&self) -> &str {
        match self {
            Self::All => "*",
            Self::Marketplace(name) => name,
        }
    }

    /// Reads the `scope` column.
    pub fn parse(text: &str) -> Self {
        match text {
            "*" => Self::All,
            name => Self::Marketplace(name.to_owned()),
        }
    }

    /// Whether it covers `marketplace`.
    pub fn covers(&self, marketplace: &str) -> bool {
        match self {
            Self::All => true,
            Self::Marketplace(name) => name == marketplace,
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::All => f.write_str("all marketplaces"),
            Self::Marketplace(name) => f.write_str(name),
        }
    }
}

/// A manual pause in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pause {
    pub scope: Scope,
    pub reason: String,
    /// Who paused (the console token's name, `loopback`, or `user@host` from the CLI).
    pub by: String,
    pub since: DateTime<Utc>,
    /// When it ends by itself (`--for`); `None`: until resumed.
    pub until: Option<DateTime<Utc>>,
}

impl Pause {
    /// Whether it is still in force at `now`.
    pub fn in_force(&self, now: DateTime<Utc>) -> bool {
        self.until.is_none_or(|until| until > now)
    }
}

/// The pauses in force and the generation of that state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PauseState {
    /// Bumped by every pause and resume.
    pub generation: i64,
    pub pauses: Vec<Pause>,
}

impl PauseState {
    /// The pause that holds `marketplace` back at `now`, if any (the fleet-wide one first).
    pub fn pause_of(&self, marketplace: &str, now: DateTime<Utc>) -> Option<&Pause> {
        let holds = |p: &&Pause| p.scope.covers(marketplace) && p.in_force(now);
        self.pauses
            .iter()
            .filter(|p| p.scope == Scope::All)
            .find(holds)
            .or_else(|| self.pauses.iter().find(holds))
    }
}

/// A worker's report of itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerBeat {
    pub instance: String,
    pub host: String,
    pub version: String,
    pub started_at: DateTime<Utc>,
    /// The pause generation it runs under.
    pub generation: i64,
    /// Postings it is working on.
    pub in_flight: u32,
    /// Its automatic pauses, as `marketplace:reason`.
    pub auto_paused: Vec<String>,
}

/// A worker as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerSeen {
    pub beat: WorkerBeat,
    pub seen_at: DateTime<Utc>,
}

/// One operator action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub who: String,
    /// `pause`, `resume`, `replay`, …
    pub action: String,
    pub scope: Option<String>,
    pub reason: Option<String>,
    pub until: Option<DateTime<Utc>>,
    /// What else the action did (`3 messages`).
    pub detail: Option<String>,
}

/// The operators' side of the ledger.
#[async_trait]
pub trait ControlStore: Send + Sync + 'static {
    /// The pauses in force (expired `--for` pauses left out) and the generation.
    async fn pause_state(&self) -> Result<PauseState, LedgerError>;

    /// Pauses `scopes` for `reason` (until `until`, if given), recorded as `by`'s action;
    /// replaces a pause of the same scope. Returns the new generation.
    async fn pause(
        &self,
        scopes: &[Scope],
        reason: &str,
        by: &str,
        until: Option<DateTime<Utc>>,
    ) -> Result<i64, LedgerError>;

    /// Ends the pauses of `scopes` (every pause, given [`Scope::All`]), recorded as `by`'s
    /// action. Returns the new generation and the scopes that were paused.
    async fn resume(&self, scopes: &[Scope], by: &str) -> Result<(i64, Vec<Scope>), LedgerError>;

    /// Records a worker's report of itself (replacing its previous one).
    async fn report(&self, beat: &WorkerBeat) -> Result<(), LedgerError>;

    /// The workers that reported since `since`, by instance.
    async fn workers(&self, since: DateTime<Utc>) -> Result<Vec<WorkerSeen>, LedgerError>;

    /// Records an operator action other than a pause or resume (those record themselves).
    async fn audit(&self, entry: &AuditEntry) -> Result<(), LedgerError>;

    /// The latest `limit` operator actions, newest first.
    async fn history(&self, limit: u32) -> Result<Vec<AuditEntry>, LedgerError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pause(scope: Scope, until: Option<DateTime<Utc>>) -> Pause {
        Pause {
            scope,
            reason: "r".into(),
            by: "me".into(),
            since: Utc::now(),
            until,
        }
    }

    #[test]
    fn a_pause_holds_its_scope_until_it_ends() {
        let now = Utc::now();
        let later = now + chrono::Duration::minutes(5);
        let state = PauseState {
            generation: 3,
            pauses: vec![
                pause(Scope::Marketplace("upwork".into()), Some(later)),
                pause(Scope::Marketplace("toptal".into()), Some(now)),
            ],
        };
        assert!(state.pause_of("upwork", now).is_some());
        assert!(state.pause_of("upwork", later).is_none(), "ended");
        assert!(state.pause_of("toptal", now).is_none(), "ends at its until");
        assert!(state.pause_of("freelancer", now).is_none());
        let all = PauseState {
            generation: 4,
            pauses: vec![
                pause(Scope::Marketplace("upwork".into()), None),
                pause(Scope::All, None),
            ],
        };
        assert_eq!(
            all.pause_of("upwork", now).map(|p| &p.scope),
            Some(&Scope::All)
        );
        assert_eq!(Scope::parse("*"), Scope::All);
        assert_eq!(Scope::parse("upwork").as_str(), "upwork");
    }
}
