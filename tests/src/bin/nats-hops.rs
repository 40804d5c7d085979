//! `nats-hops`: what one message hop costs on this machine, the floor under the pipeline's
//! latency at concurrency 1 (a request crosses four hops: HTTP in, gateway to tokenizer, the
//! work queue to a GPU worker, the reply back).
//!
//! Starts its own `nats-server` (JetStream on) and times, one message at a time with an idle
//! pause between them as a lone client leaves the processes: a core NATS publish until the
//! subscriber holds it, and a JetStream work-queue publish until a waiting pull request (as
//! the GPU workers pull) holds it, with file and with memory storage. Prints one JSON line.
//!
//! ```text
//! nats-hops [--samples 400] [--pause-ms 2]
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, stream};
use clap::Parser;
use e2e_tests::NatsServer;
use futures::StreamExt;

/// Times single-message hops through a local nats-server.
#[derive(Parser)]
struct Args {
    /// Messages timed per kind of hop.
    #[arg(long, default_value_t = 400)]
    samples: usize,
    /// Idle time before each message, milliseconds (how a concurrency-1 client paces them).
    #[arg(long, default_value_t = 2)]
    pause_ms: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let server = NatsServer::start();
    let pause = Duration::from_millis(args.pause_ms);
    let core = core_hop(&server.url(), args.samples, pause).await?;
    let file = work_queue_hop(
        &server.url(),
        stream::StorageType::File,
        args.samples,
        pause,
    )
    .await?;
    let memory = work_queue_hop(
        &server.url(),
        stream::StorageType::Memory,
        args.samples,
        pause,
    )
    .await?;
    println!(
        "{}",
        serde_json::json!({
            "samples": args.samples,
            "pause_ms": args.pause_ms,
            "core_us": percentiles(core),
            "work_queue_file_us": percentiles(file),
            "work_queue_memory_us": percentiles(memory),
        })
    );
    Ok(())
}

/// Microseconds from a core publish on one connection until a subscriber on another has it.
async fn core_hop(url: &str, samples: usize, pause: Duration) -> Result<Vec<u64>> {
    let (publisher, receiver) = (connect(url).await?, connect(url).await?);
    let mut subscription = receiver.subscribe("hops.core").await?;
    receiver.flush().await?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        tokio::time::sleep(pause).await;
        let start = Instant::now();
        publisher.publish("hops.core", "x".into()).await?;
        subscription.next().await.context("subscription ended")?;
        times.push(start.elapsed().as_micros() as u64);
    }
    Ok(times)
}

/// Microseconds from a JetStream publish on one connection until a pull request waiting on
/// another (a fetch of up to 16, as the GPU workers pull) has the message.
async fn work_queue_hop(
    url: &str,
    storage: stream::StorageType,
    samples: usize,
    pause: Duration,
) -> Result<Vec<u64>> {
    let name = format!("HOPS_{storage:?}").to_uppercase();
    let subject = format!("hops.{}", name.to_lowercase());
    let (publisher, puller) = (
        jetstream::new(connect(url).await?),
        jetstream::new(connect(url).await?),
    );
    let stream = puller
        .get_or_create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![subject.clone()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage,
            ..Default::default()
        })
        .await?;
    let consumer = stream
        .get_or_create_consumer(
            "hops",
            consumer::pull::Config {
                durable_name: Some("hops".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ..Default::default()
            },
        )
        .await?;
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut batch = consumer
            .fetch()
            .max_messages(16)
            .expires(Duration::from_secs(1))
            .messages()
            .await?;
        tokio::time::sleep(pause).await;
        let start = Instant::now();
        let ack = publisher.publish(subject.clone(), "x".into()).await?;
        let message = batch.next().await.context("no message")?;
        times.push(start.elapsed().as_micros() as u64);
        message
            .map_err(|e| anyhow::anyhow!(e))?
            .ack()
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        ack.await?;
        while batch.next().await.is_some() {}
    }
    Ok(times)
}

async fn connect(url: &str) -> Result<async_nats::Client> {
    Ok(async_nats::connect(url).await?)
}

/// p50, p90 and p99 of `times`.
fn percentiles(mut times: Vec<u64>) -> serde_json::Value {
    times.sort_unstable();
    let at = |p: usize| times[(times.len() - 1) * p / 100];
    serde_json::json!({"p50": at(50), "p90": at(90), "p99": at(99)})
}
