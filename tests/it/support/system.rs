//! [`spawn_system`]: one test's bidorch, on either backend — the embedded one (in-process queue,
//! memory leases, a SQLite file: runs anywhere) or the real one (RabbitMQ, Redis, PostgreSQL
//! under names of the test's own) — with the sandbox marketplace over real HTTP, built as
//! `bidorch worker` builds it, and cleaned up when dropped (also after a failed assertion).
//!
//! Tests written against [`TestSystem`] run on both backends with [`on_both_backends!`], so the
//! promise is checked where no service runs as well as against the real ones.

use std::path::PathBuf;
use std::sync::Arc;

use bidorch::app::{LedgerPorts, System};
use bidorch::config::Settings;
use bidorch::ledger::LedgerEntry;
use bidorch::lock::LockStore;
use bidorch::marketplace::HttpMarketplace;
use bidorch::marketplace::sandbox::{Sandbox, SandboxOptions};
use bidorch::posting::PostingKey;

use crate::support;

/// The token the sandbox requires and the test systems present.
pub const TOKEN: &str = "system-token";

/// Where a test system keeps its queue, leases and ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// In-process queue, memory leases, a SQLite file: no service needed.
    Embedded,
    /// RabbitMQ, Redis and PostgreSQL, under names unique to the test.
    Real,
}

/// One test's bidorch and its sandbox marketplace; see the module docs.
pub struct TestSystem {
    pub backend: Backend,
    /// The test's names: queue, exchange (`{names}.ex`), Redis prefix (`{names}:`), schema.
    pub names: String,
    pub sandbox: Sandbox,
    pub sandbox_url: String,
    /// The embedded ledger's file.
    sqlite: Option<PathBuf>,
}

/// A test system on `backend` with a sandbox behaving as `sandbox` says. `None` (after the skip
/// rule has said why) when the real backend's services are missing.
pub async fn spawn_system(backend: Backend, sandbox: SandboxOptions) -> Option<TestSystem> {
    if backend == Backend::Real
        && !(support::postgres_available().await && support::redis_available().await)
    {
        return None;
    }
    let (sandbox, sandbox_url) = support::serve_sandbox(sandbox).await;
    let names = support::unique(match backend {
        Backend::Embedded => "emb",
        Backend::Real => "real",
    });
    let sqlite = (backend == Backend::Embedded)
        .then(|| std::env::temp_dir().join(format!("bidorch_{names}.db")));
    Some(TestSystem {
        backend,
        names,
        sandbox,
        sandbox_url,
        sqlite,
    })
}

impl TestSystem {
    /// The environment a worker of this test runs with: the shared services (or the embedded
    /// backends), this test's names, short retry delays, both marketplaces on the sandbox, and
    /// `overrides` last.
    pub fn env(&self, overrides: &[(&str, String)]) -> Vec<(String, String)> {
        let mut embedded = Vec::new();
        if let Some(path) = &self.sqlite {
            embedded = vec![
                ("BIDORCH__SOURCE__KIND", "memory".to_owned()),
                ("BIDORCH__LOCK__KIND", "memory".to_owned()),
                ("BIDORCH__DATABASE__KIND", "sqlite".to_owned()),
                ("DATABASE_URL", format!("sqlite://{}", path.display())),
            ];
        }
        embedded.extend(overrides.iter().cloned());
        let mut env: Vec<(String, String)> =
            support::run_env(&self.names, &self.sandbox_url, &embedded)
                .into_iter()
                .collect();
        env.push(("BIDORCH_UPWORK_TOKEN".to_owned(), TOKEN.to_owned()));
        env.push(("BIDORCH_FREELANCER_TOKEN".to_owned(), TOKEN.to_owned()));
        env
    }

    /// The settings a worker of this test loads, with `overrides` on top.
    pub fn settings(&self, overrides: &[(&str, String)]) -> Settings {
        let env = self.env(overrides).into_iter().collect();
        bidorch::app::load_settings_from(None, &env).expect("test settings are valid")
    }

    /// A system as `bidorch worker` builds it from `settings`, with these ports swapped in.
    pub async fn system(
        &self,
        settings: &Settings,
        ledger: Option<LedgerPorts>,
        locks: Option<Arc<dyn LockStore>>,
    ) -> System {
        let client = HttpMarketplace::new(&settings.marketplaces, settings.lock.ttl, |_| {
            Some(TOKEN.to_owned())
        })
        .expect("test marketplaces are valid");
        let mut builder = System::builder(settings).marketplace(Arc::new(client));
        if let Some(ledger) = ledger {
            builder = builder.ledger(ledger);
        }
        if let Some(locks) = locks {
            builder = builder.locks(locks);
        }
        builder.build().await.expect("the test system starts")
    }

    /// The ledger and lock store `settings` name, as a worker builds them (to wrap, or to look
    /// at what the system did).
    pub async fn ports(&self, settings: &Settings) -> (LedgerPorts, Arc<dyn LockStore>) {
        let ledger = bidorch::app::ledger(&settings.database)
            .await
            .expect("the test ledger opens");
        let locks = bidorch::app::locks(settings.lock.kind, &settings.redis, "test")
            .expect("the test lock store opens")
            .locks;
        (ledger, locks)
    }

    /// `key`'s ledger row (it must have one).
    pub async fn row(&self, ledger: &LedgerPorts, key: &PostingKey) -> LedgerEntry {
        ledger
            .ledger
            .lookup(key)
            .await
            .expect("the ledger answers")
            .expect("the posting has a row")
    }

    /// Requests the sandbox received for `key`, whatever their answer.
    pub fn requests(&self, key: &PostingKey) -> u64 {
        self.sandbox
            .stats()
            .postings
            .get(&key.to_string())
            .map_or(0, |p| p.requests)
    }

    /// Bids the sandbox holds for `key`.
    pub fn bids(&self, key: &PostingKey) -> Vec<String> {
        self.sandbox
            .bids(key)
            .into_iter()
            .map(|b| b.bid_id)
            .collect()
    }
}

impl Drop for TestSystem {
    fn drop(&mut self) {
        if let Some(path) = &self.sqlite {
            for suffix in ["", "-wal", "-shm"] {
                let mut file = path.as_os_str().to_owned();
                file.push(suffix);
                let _ = std::fs::remove_file(file);
            }
            return;
        }
        let (schema, prefix) = (self.names.clone(), format!("{}:", self.names));
        // On a runtime of its own: Drop is synchronous, and may run during a panic.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async {
                support::drop_schema(&schema).await;
                support::delete_redis_prefix(&prefix).await;
            });
        })
        .join();
    }
}

/// Runs `test` on a fresh [`TestSystem`] (skipped without the real backend's services), on a
/// task of its own, so the system is cleaned up even when `test` panics.
pub async fn with_system<F, Fut>(backend: Backend, sandbox: SandboxOptions, test: F)
where
    F: FnOnce(Arc<TestSystem>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let Some(system) = spawn_system(backend, sandbox).await else {
        return; // skipped, said by the check
    };
    let system = Arc::new(system);
    let outcome = tokio::spawn(test(system.clone())).await;
    drop(system);
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Turns each `async fn name(backend: Backend)` listed into two tests, `name::embedded` and
/// `name::real`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$name($crate::support::system::Backend::Embedded).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn real() {
                    super::$name($crate::support::system::Backend::Real).await;
                }
            }
        )*
    };
}
