//! Lock store benchmark: acquire+release pairs per second and latency percentiles at 1 and 50
//! concurrent tasks, next to a raw Redis client loop of the same commands in the same run.
//!
//! Run: `cargo run --release --example lock_bench`
//! Environment: `REDIS_URL` (default `redis://127.0.0.1:6379/0`), `BENCH_SECS` (seconds per
//! slice, default 1), `BENCH_ROUNDS` (rounds per concurrency, default 8), `BENCH_WORKERS`
//! (0 = a current-thread runtime, the default; N = a multi-thread runtime with N workers). Each round runs one
//! raw and one store slice, in alternating order, so both see the same machine load; figures
//! aggregate all rounds.
//!
//! "raw" is the floor any lease store pays: `SET key value NX PX 30000` then an `EVALSHA` of
//! the compare-and-delete script, on a `ConnectionManager`. "store" is
//! `MeteredLockStore<RedisLockStore>::try_acquire` + `release`: token generation, metrics and the
//! same two round trips. Each task works on its own key (no contention), so this measures the
//! store's overhead, not waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bidorch::config::{RedisSettings, SecretUrl};
use bidorch::lock::{LockStore, MeteredLockStore, RedisLockStore, Release};
use bidorch::posting::PostingKey;

const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";
const TTL: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Raw,
    Store,
}

/// Latencies (ns) of every acquire and every acquire+release pair, and the wall time.
#[derive(Default)]
struct Sample {
    acquire: Vec<u64>,
    pair: Vec<u64>,
    elapsed: Duration,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

async fn run_raw(conn: redis::aio::ConnectionManager, key: String, until: Instant) -> Sample {
    let script = redis::Script::new(RELEASE_LUA);
    let mut conn = conn;
    let mut sample = Sample::default();
    let mut n: u64 = 0;
    while Instant::now() < until {
        n += 1;
        let value = format!("raw:{n}");
        let start = Instant::now();
        let set: redis::Value = redis::cmd("SET")
            .arg(&key)
            .arg(&value)
            .arg("NX")
            .arg("PX")
            .arg(TTL.as_millis() as u64)
            .query_async(&mut conn)
            .await
            .expect("raw SET");
        let acquired = start.elapsed();
        assert!(
            !matches!(set, redis::Value::Nil),
            "raw key unexpectedly held"
        );
        let deleted: i64 = script
            .key(&key)
            .arg(&value)
            .invoke_async(&mut conn)
            .await
            .expect("raw release");
        assert_eq!(deleted, 1);
        sample.acquire.push(nanos(acquired));
        sample.pair.push(nanos(start.elapsed()));
    }
    sample
}

async fn run_store(store: Arc<MeteredLockStore>, key: PostingKey, until: Instant) -> Sample {
    let mut sample = Sample::default();
    while Instant::now() < until {
        let start = Instant::now();
        let lease = store
            .try_acquire(&key, TTL)
            .await
            .expect("store acquire")
            .expect("store key unexpectedly held");
        let acquired = start.elapsed();
        let released = store.release(&lease).await.expect("store release");
        assert_eq!(released, Release::Released);
        sample.acquire.push(nanos(acquired));
        sample.pair.push(nanos(start.elapsed()));
    }
    sample
}

async fn measure(
    mode: Mode,
    tasks: usize,
    secs: u64,
    raw: &redis::aio::ConnectionManager,
    store: &Arc<MeteredLockStore>,
    prefix: &str,
) -> Sample {
    let started = Instant::now();
    let until = started + Duration::from_secs(secs);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let posting = format!("bench_{t}");
            match mode {
                Mode::Raw => {
                    let key = format!("{prefix}raw:bid_lock:{{bench:{posting}}}");
                    tokio::spawn(run_raw(raw.clone(), key, until))
                }
                Mode::Store => {
                    let key = PostingKey::new("bench", &posting).expect("valid key");
                    tokio::spawn(run_store(store.clone(), key, until))
                }
            }
        })
        .collect();
    let mut total = Sample::default();
    for h in handles {
        let s = h.await.expect("bench task");
        total.acquire.extend(s.acquire);
        total.pair.extend(s.pair);
    }
    total.elapsed = started.elapsed();
    total
}

fn percentile(sorted: &[u64], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64) * q).ceil() as usize;
    Duration::from_nanos(sorted[rank.clamp(1, sorted.len()) - 1])
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn main() {
    // One thread by default: raw and store then run under identical scheduling (on a
    // multi-thread runtime each connection's I/O task lands on some worker, and cross-thread
    // wake-ups make whichever side drew the worse placement look slower). BENCH_WORKERS=N
    // runs the same on a multi-thread runtime with N workers.
    let workers = env_u64("BENCH_WORKERS", 0);
    let runtime = if workers == 0 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers as usize)
            .enable_all()
            .build()
    }
    .expect("Tokio runtime");
    runtime.block_on(bench(workers));
}

async fn bench(workers: u64) {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
    let secs = env_u64("BENCH_SECS", 1);
    let rounds = env_u64("BENCH_ROUNDS", 8);
    let prefix = format!("bidorch_bench_{}:", uuid::Uuid::new_v4().simple());
    let settings = RedisSettings {
        url: SecretUrl::new(url.clone()),
        key_prefix: format!("{prefix}store:"),
    };
    let store = RedisLockStore::connect(&settings)
        .await
        .expect("Redis reachable (set REDIS_URL)")
        .with_instance("bench");
    let store = Arc::new(MeteredLockStore::new(Arc::new(store), "redis"));
    let raw = redis::Client::open(url.as_str())
        .expect("REDIS_URL parses")
        .get_connection_manager()
        .await
        .expect("raw connection");

    println!(
        "Redis {} · {rounds} rounds of {secs}s raw + {secs}s store per concurrency · {}",
        SecretUrl::new(url).redacted(),
        if workers == 0 {
            "current-thread runtime".to_owned()
        } else {
            format!("{workers} worker threads")
        }
    );
    // Warm-up: connections, script cache, allocator.
    for mode in [Mode::Raw, Mode::Store] {
        measure(mode, 50, 1, &raw, &store, &prefix).await;
    }

    println!(
        "\n{:<6} {:>5} {:>10} {:>12} {:>12} {:>10} {:>10} {:>8}",
        "mode", "tasks", "pairs/s", "acquire p50", "acquire p99", "pair p50", "pair p99", "vs raw"
    );
    for tasks in [1, 50] {
        let mut results = [Sample::default(), Sample::default()];
        for round in 0..rounds {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for i in order {
                let mode = [Mode::Raw, Mode::Store][i];
                let s = measure(mode, tasks, secs, &raw, &store, &prefix).await;
                results[i].acquire.extend(s.acquire);
                results[i].pair.extend(s.pair);
                results[i].elapsed += s.elapsed;
            }
        }
        let mut raw_rate = 0.0;
        for (i, name) in ["raw", "store"].into_iter().enumerate() {
            let s = &mut results[i];
            s.acquire.sort_unstable();
            s.pair.sort_unstable();
            let rate = s.pair.len() as f64 / s.elapsed.as_secs_f64();
            if i == 0 {
                raw_rate = rate;
            }
            println!(
                "{:<6} {:>5} {:>10.0} {:>12} {:>12} {:>10} {:>10} {:>7.1}%",
                name,
                tasks,
                rate,
                us(percentile(&s.acquire, 0.50)),
                us(percentile(&s.acquire, 0.99)),
                us(percentile(&s.pair, 0.50)),
                us(percentile(&s.pair, 0.99)),
                100.0 * rate / raw_rate,
            );
        }
    }
    let m = store.metrics();
    println!(
        "\nstore metrics: attempts {} successes {} conflicts {} timeouts {} redis_errors {} \
         (acquire p50 {} p99 {} by the built-in histogram)",
        m.lock_attempts,
        m.lock_successes,
        m.lock_conflicts,
        m.lock_timeouts,
        m.redis_errors,
        us(m.acquire_latency.p50),
        us(m.acquire_latency.p99),
    );
}
