//! One latency run: workers started and ready, then postings published at a steady rate with a
//! daily cap set; publish→bid from the publish to the sandbox's own creation time of the bid.

use std::collections::HashMap;
use std::time::Duration;

use super::fleet::{Space, Workers};
use super::{BenchError, BenchOptions, CAP, Latency, check, drained, events, publisher, setup};
use crate::config::Settings;
use crate::publish::{OutgoingEvent, Publisher};

/// One latency run: `workers` started and ready, then postings published at `rate` per second with
/// a daily cap set; returns publish→bid over the eligible postings.
pub(super) async fn steady(
    settings: &Settings,
    options: &BenchOptions,
    workers: usize,
    rate: u32,
) -> Result<Latency, BenchError> {
    let label = format!("l{workers}r{rate}");
    let space = Space::new(settings, &label);
    let postings = (rate * options.rate_seconds) as usize;
    let result = async {
        let (sandbox, input) = setup(&space, postings).await?;
        let mut fleet = Workers::spawn(
            &options.exe,
            &space.worker_env(sandbox.url(), Some(CAP)),
            workers,
            &options.out.join("logs"),
            &label,
        )?;
        fleet.wait_ready(Duration::from_secs(60)).await?;
        let publisher = publisher(&space).await?;
        let published_at = paced(&publisher, &events(&input)?, rate).await?;
        publisher.close().await;
        let dead = drained(&space, &label, postings).await?;
        fleet.stop().await;
        check(&label, &sandbox, &input, dead)?;
        let mut waits: Vec<u64> = input
            .eligible
            .iter()
            .filter_map(|key| {
                let sent = published_at.get(key)?;
                let (m, p) = key.split_once(':')?;
                let key = crate::posting::PostingKey::new(m, p).ok()?;
                let bid = sandbox.sandbox().bids(&key).into_iter().next()?;
                u64::try_from((bid.created_at - *sent).num_microseconds()?).ok()
            })
            .collect();
        waits.sort_unstable();
        Ok(Latency {
            workers,
            rate,
            postings,
            daily_cap: true,
            p50_ms: quantile_ms(&waits, 0.5),
            p99_ms: quantile_ms(&waits, 0.99),
            max_ms: waits.last().map_or(0.0, |m| *m as f64 / 1000.0),
        })
    }
    .await;
    space.remove().await;
    result
}

/// Publishes `events` at `rate` per second in 10 ms ticks; returns when each posting went out.
async fn paced(
    publisher: &Publisher,
    events: &[OutgoingEvent],
    rate: u32,
) -> Result<HashMap<String, chrono::DateTime<chrono::Utc>>, BenchError> {
    let mut published_at = HashMap::with_capacity(events.len());
    let per_tick = (rate as usize / 100).max(1);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for chunk in events.chunks(per_tick) {
        tick.tick().await;
        let now = chrono::Utc::now();
        for event in chunk {
            published_at.entry(event.posting_key()).or_insert(now);
        }
        for result in publisher.publish_many(chunk).await {
            result.map_err(|e| BenchError::Publish(crate::error::chain(&e)))?;
        }
    }
    Ok(published_at)
}

fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize] as f64 / 1000.0
}
