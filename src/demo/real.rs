//! `bidorch demo --backend real`: the same demo on the configured RabbitMQ, Redis and
//! PostgreSQL, under names unique to this run (exchange, queues, Redis key prefix, PostgreSQL
//! schema), all removed afterwards so a demo never touches production data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use sqlx::Connection as _;

use super::{
    DemoError, DemoOptions, DemoReport, Drain, Fleet, demo_settings, generate, report,
    sandbox_options, wait_until_drained,
};
use crate::app::System;
use crate::config::{LedgerKind, Settings};
use crate::publish::{OutgoingEvent, Publisher};
use crate::source::REASON_HEADER;
use crate::tally::Tally;

fn amqp_error(e: lapin::Error) -> DemoError {
    DemoError::Source(crate::source::SourceError::Unavailable(Box::new(e)))
}

/// The settings of this run: the configured servers, names of its own.
fn run_settings(settings: &Settings, run_id: &str) -> Settings {
    let mut s = demo_settings(settings);
    s.amqp.exchange = format!("bidorch.demo.{run_id}");
    s.amqp.queue = format!("bidorch.demo.{run_id}.postings");
    s.amqp.retry_tiers = vec![Duration::from_millis(100), Duration::from_secs(1)];
    s.redis.key_prefix = format!("bidorch-demo:{run_id}:");
    s.database.schema = format!("bidorch_demo_{run_id}");
    s.lock.kind = crate::config::LockKind::Redis;
    s.source.kind = crate::config::SourceKind::Amqp;
    s
}

async fn depth(channel: &Channel, queue: &str) -> Result<u32, DemoError> {
    crate::amqp::topology::message_count(channel, queue)
        .await
        .map_err(|e| DemoError::Source(e.into()))
}

pub(super) async fn run(
    settings: &Settings,
    options: &DemoOptions,
) -> Result<DemoReport, DemoError> {
    if settings.database.kind != LedgerKind::Postgres {
        return Err(DemoError::Publish(
            "--backend real needs database.kind = \"postgres\"".to_owned(),
        ));
    }
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let s = run_settings(settings, &run_id);
    let input = generate(
        options.postings,
        options.duplication,
        options.poison,
        options.seed,
    );
    let result = run_on(&s, options, &input).await;
    remove_run(&s).await;
    result
}

async fn run_on(
    s: &Settings,
    options: &DemoOptions,
    input: &super::DemoInput,
) -> Result<DemoReport, DemoError> {
    let tally = Arc::new(Tally::default());
    let system = System::builder(s)
        .sandbox(sandbox_options(options))
        .tally(tally.clone())
        .build()
        .await?;
    let ledger = system.ports().reports.clone();
    // Each worker on a connection of its own, as separate processes would have.
    let fleet = Fleet::start(&system, options.workers).await?;

    let started = Instant::now();
    let bar = super::progress_bar(input.messages.len() as u64, options.progress);
    bar.set_message("publishing");
    // Valid events through our publisher; poison raw, as a foreign publisher could send it.
    let publisher = Publisher::connect(&s.amqp)
        .await
        .map_err(|e| DemoError::Publish(e.to_string()))?;
    let (events, poison): (Vec<_>, Vec<_>) = input
        .messages
        .iter()
        .map(|body| OutgoingEvent::parse(body.clone()).map_err(|_| body))
        .partition(Result::is_ok);
    let events: Vec<OutgoingEvent> = events.into_iter().filter_map(Result::ok).collect();
    for result in publisher.publish_many(&events).await {
        result.map_err(|e| DemoError::Publish(e.to_string()))?;
    }
    publisher.close().await;
    let conn = Connection::connect(s.amqp.url.expose(), ConnectionProperties::default())
        .await
        .map_err(amqp_error)?;
    let channel = conn.create_channel().await.map_err(amqp_error)?;
    for body in poison.into_iter().filter_map(Result::err) {
        channel
            .basic_publish(
                s.amqp.exchange.as_str().into(),
                "posting.upwork".into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .map_err(amqp_error)?;
    }
    bar.set_message("");

    let queues: Vec<String> = std::iter::once(s.amqp.queue.clone())
        .chain(s.amqp.retry_tiers.iter().map(|t| s.amqp.retry_queue(*t)))
        .collect();
    let total = input.messages.len() as u64;
    wait_until_drained(&bar, Duration::from_millis(100), || async {
        let finals: u64 = ledger
            .counts_by_state()
            .await?
            .iter()
            .filter(|(state, _)| state.is_final())
            .map(|(_, n)| n)
            .sum();
        let mut waiting = 0;
        for q in &queues {
            waiting += depth(&channel, q).await?;
        }
        let dead = depth(&channel, &s.amqp.dead_letter_queue()).await?;
        if finals == options.postings as u64 && waiting == 0 && dead as usize >= input.poison {
            return Ok(Drain::Done);
        }
        Ok(Drain::Pending {
            position: tally.snapshot().processed().min(total),
            state: format!("{finals} final ledger rows, {waiting} messages waiting, {dead} dead"),
        })
    })
    .await?;
    let elapsed = started.elapsed();
    fleet.stop().await;
    let dead_letters = dead_letter_reasons(&channel, &s.amqp.dead_letter_queue()).await?;
    let _ = conn.close(200, "demo done".into()).await;
    let Some(sandbox) = system.sandbox() else {
        return Err(DemoError::Publish(
            "the demo runs with marketplace.kind = \"sandbox\"".to_owned(),
        ));
    };
    let report = report(
        "real",
        options,
        input,
        elapsed,
        &sandbox.stats(),
        dead_letters,
        ledger.as_ref(),
        tally.snapshot(),
    )
    .await?;
    Ok(report)
}

/// Reads the reasons of parked messages without consuming them (they are requeued; the queue is
/// deleted afterwards anyway).
async fn dead_letter_reasons(
    channel: &Channel,
    queue: &str,
) -> Result<BTreeMap<String, u64>, DemoError> {
    let mut reasons = BTreeMap::new();
    let mut held = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .map_err(amqp_error)?
    {
        let reason = message
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(REASON_HEADER).cloned())
            .map_or_else(
                || "unknown".to_owned(),
                |v| match v {
                    AMQPValue::LongString(s) => s.to_string(),
                    other => format!("{other:?}"),
                },
            );
        *reasons.entry(reason).or_default() += 1;
        held.push(message.delivery.delivery_tag);
    }
    for tag in held {
        let _ = channel
            .basic_nack(
                tag,
                BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                },
            )
            .await;
    }
    Ok(reasons)
}

/// Removes everything a run under `s`'s names created — its queues and exchange, its ledger
/// schema, its Redis keys (best effort; failures are logged). The bench's runs use it too.
pub(crate) async fn remove_run(s: &Settings) {
    if let Ok(conn) =
        Connection::connect(s.amqp.url.expose(), ConnectionProperties::default()).await
        && let Ok(channel) = conn.create_channel().await
    {
        let queues = std::iter::once(s.amqp.queue.clone())
            .chain(s.amqp.retry_tiers.iter().map(|t| s.amqp.retry_queue(*t)))
            .chain(std::iter::once(s.amqp.dead_letter_queue()));
        for q in queues {
            let _ = channel
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel
            .exchange_delete(
                s.amqp.exchange.as_str().into(),
                ExchangeDeleteOptions::default(),
            )
            .await;
        let _ = conn.close(200, "demo cleanup".into()).await;
    }
    match sqlx::PgConnection::connect(s.database.url.expose()).await {
        Ok(mut conn) => {
            let sql = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", s.database.schema);
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
            {
                tracing::warn!(schema = %s.database.schema, error = %crate::error::Chain(&e), "Could not drop the demo schema");
            }
            let _ = conn.close().await;
        }
        Err(e) => {
            tracing::warn!(error = %crate::error::Chain(&e), "Could not connect to drop the demo schema")
        }
    }
    if let Ok(client) = redis::Client::open(s.redis.url.expose())
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let mut cursor: u64 = 0;
        loop {
            let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", s.redis.key_prefix))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
            else {
                break;
            };
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
}
