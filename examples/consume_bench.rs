//! Consume+ack throughput: bidorch's `AmqpPostingSource` with a no-op handler versus a bare lapin
//! consumer, on the same quorum queue, in the same run (the bare rate is the physical limit).
//!
//! ```text
//! cargo run --release --example consume_bench -- --messages 20000 --prefetch 100 --rounds 3
//! ```
//! Each round publishes `--messages` postings (confirmed), drains them with the bare consumer,
//! publishes again and drains them with ours; rounds alternate which goes first. It prints each
//! rate and the median ratio ours/bare. Uses `AMQP_URL` (default guest@127.0.0.1) and unique
//! queue names, deleted at the end.

use std::pin::Pin;
use std::time::{Duration, Instant};

use bidorch::amqp::topology;
use bidorch::config::{AmqpSettings, SecretUrl};
use bidorch::publish::{OutgoingEvent, Publisher};
use bidorch::source::{AmqpPostingSource, PostingSource};
use clap::Parser;
use futures_core::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, ExchangeDeleteOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

#[derive(Parser)]
struct Args {
    /// Messages per measurement.
    #[arg(long, default_value_t = 20_000)]
    messages: usize,
    /// Prefetch for both consumers.
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Measurements per consumer.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Ack inline in the consume loop instead of in a task per delivery (as the worker does).
    #[arg(long)]
    inline: bool,
}

fn settings(prefetch: u16) -> AmqpSettings {
    let id = &uuid::Uuid::new_v4().simple().to_string()[..12];
    AmqpSettings {
        url: SecretUrl::new(
            std::env::var("AMQP_URL")
                .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into()),
        ),
        exchange: format!("bench_{id}.ex"),
        queue: format!("bench_{id}"),
        prefetch,
        retry_tiers: vec![Duration::from_secs(1)],
        max_attempts: 10,
        delivery_limit: 20,
        publish_window: 512,
        reconnect_timeout: Duration::from_secs(10),
        retry_budget: Duration::from_secs(24 * 3600),
        confirm_timeout: Duration::from_secs(30),
    }
}

async fn fill(publisher: &Publisher, n: usize) -> anyhow::Result<()> {
    let events: Vec<OutgoingEvent> = (0..n)
        .map(|i| {
            let body = format!(
                r#"{{"event_id":"ev-{i}","marketplace":"upwork","posting_id":"p-{i}","title":"Bench posting","budget":{{"min":500,"max":1500,"currency":"USD","kind":"fixed"}}}}"#
            );
            OutgoingEvent::parse(body.into_bytes())
        })
        .collect::<Result<_, _>>()?;
    for r in publisher.publish_many(&events).await {
        r?;
    }
    Ok(())
}

/// lapin alone: consume, ack each delivery (inline, or in a task per delivery).
async fn bare(s: &AmqpSettings, n: usize, inline: bool) -> anyhow::Result<f64> {
    let connection = Connection::connect(s.url.expose(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(s.prefetch, BasicQosOptions { global: false })
        .await?;
    let mut consumer = channel
        .basic_consume(
            s.queue.as_str().into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let Some(delivery) = std::future::poll_fn(|cx| Pin::new(&mut consumer).poll_next(cx)).await
        else {
            anyhow::bail!("bare consumer ended early");
        };
        let delivery = delivery?;
        let ack = async move {
            anyhow::ensure!(
                delivery.ack(BasicAckOptions::default()).await?,
                "ack not sent"
            );
            anyhow::Ok(())
        };
        if inline {
            ack.await?;
        } else {
            tasks.spawn(ack);
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    connection.close(200, "OK".into()).await?;
    Ok(rate)
}

/// bidorch's source: a Delivery per message (headers, attempt, settler), ack through it.
async fn ours(s: &AmqpSettings, n: usize, inline: bool) -> anyhow::Result<f64> {
    let mut source = AmqpPostingSource::connect(s, "ours").await?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let Some(delivery) = source.next().await else {
            anyhow::bail!("our source ended early");
        };
        let ack = delivery?.ack();
        if inline {
            ack.await?;
        } else {
            tasks.spawn(ack);
        }
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    source.close().await?;
    Ok(rate)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let s = settings(args.prefetch);
    let inspect = Connection::connect(s.url.expose(), ConnectionProperties::default()).await?;
    let channel = inspect.create_channel().await?;
    topology::declare(&channel, &s).await?;
    let publisher = Publisher::connect(&s).await?;

    let (mut bare_rates, mut our_rates) = (Vec::new(), Vec::new());
    let run = async {
        for round in 0..args.rounds {
            for first_bare in [round % 2 == 0, round % 2 != 0] {
                fill(&publisher, args.messages).await?;
                if first_bare {
                    let r = bare(&s, args.messages, args.inline).await?;
                    println!("round {round}: bare lapin {r:>9.0} msg/s");
                    bare_rates.push(r);
                } else {
                    let r = ours(&s, args.messages, args.inline).await?;
                    println!("round {round}: bidorch    {r:>9.0} msg/s");
                    our_rates.push(r);
                }
            }
        }
        anyhow::Ok(())
    };
    let outcome = run.await;

    let names = topology::queues(&s);
    for q in names {
        let _ = channel
            .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = channel
        .exchange_delete(s.exchange.as_str().into(), ExchangeDeleteOptions::default())
        .await;
    publisher.close().await;
    outcome?;

    let (b, o) = (median(bare_rates), median(our_rates));
    println!(
        "messages {} prefetch {} rounds {} acks {}: median bare {b:.0} msg/s, bidorch {o:.0} msg/s, ratio {:.1}%",
        args.messages,
        args.prefetch,
        args.rounds,
        if args.inline { "inline" } else { "per-task" },
        100.0 * o / b
    );
    Ok(())
}
