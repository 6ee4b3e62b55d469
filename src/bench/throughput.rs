//! One throughput run: a run's postings published first, then its workers started; the steady
//! rate over the middle of the run and where the CPU went.

use std::time::Instant;

use super::cpu::{CpuSplit, Snapshot};
use super::fleet::{Space, Workers};
use super::{BenchError, BenchOptions, check, drained, events, publisher, setup};
use crate::config::Settings;

/// One throughput run: `postings` published, then `workers` started; returns the steady rate,
/// the seconds from the workers' start to drained, and the CPU split.
pub(super) async fn throughput(
    settings: &Settings,
    options: &BenchOptions,
    label: &str,
    workers: usize,
    postings: usize,
    daily_cap: Option<u64>,
) -> Result<(f64, f64, CpuSplit), BenchError> {
    let space = Space::new(settings, label);
    let result = async {
        let (sandbox, input) = setup(&space, postings).await?;
        let publisher = publisher(&space).await?;
        for result in publisher.publish_many(&events(&input)?).await {
            result.map_err(|e| BenchError::Publish(crate::error::chain(&e)))?;
        }
        publisher.close().await;
        let started = Instant::now();
        let fleet = Workers::spawn(
            &options.exe,
            &space.worker_env(sandbox.url(), daily_cap),
            workers,
            &options.out.join("logs"),
            label,
        )?;
        let before = Snapshot::take(&fleet.pids());
        let dead = drained(&space, label, postings).await?;
        let after = Snapshot::take(&fleet.pids());
        let seconds = started.elapsed().as_secs_f64();
        fleet.stop().await;
        check(label, &sandbox, &input, dead)?;
        let mut ledger = space.ledger().await?;
        let (n, window) = space.finished(&mut ledger).await?;
        let rate = match window {
            Some((p10, p90)) if p90 > p10 => 0.8 * n as f64 / (p90 - p10),
            _ => n as f64 / seconds.max(f64::EPSILON),
        };
        Ok((rate, seconds, before.split(&after, postings)))
    }
    .await;
    space.remove().await;
    result
}
