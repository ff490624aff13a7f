//! The in-process benchmark behind `wasmill bench`: drives a router on a pub/sub and reports
//! throughput, latency percentiles and peak memory, as `nats bench` does for NATS.
//!
//! Method: a publisher task sends `messages` payloads of `payload_size` bytes to an input
//! topic in batches; the router runs the handler under test, which publishes to an output
//! topic; a reader acks every output message and records the latency from publish to
//! arrival (the send time travels in metadata). Publishing and consuming overlap, so the
//! end-to-end rate is the router's sustained rate.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::{DynPublisher, DynSubscriber};
use crate::router::{BoxHandler, HandlerSpec, Router, RouterConfig, handler_fn};

pub mod raw;
mod report;

pub use report::{BenchReport, RawComparison};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// How many messages to push through.
    pub messages: usize,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// Messages per publish call.
    pub batch: usize,
    /// The handler's concurrency.
    pub concurrency: usize,
    /// Messages handed to the handler at once (`batch = N`; 1: one at a time).
    pub handler_batch: usize,
    /// A label for the handler (e.g. "native" or the plugin file).
    pub handler_label: String,
    /// A label for the backend.
    pub pubsub_label: String,
    /// Consume only: the handler's output is dropped instead of published, so the run
    /// measures the consume path (receive, handle, ack) alone, the same work as the raw
    /// client's consume-and-ack loop.
    pub consume_only: bool,
    /// Whether the publish loop runs before the router consumes, or beside it.
    pub backlog: Backlog,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            messages: 100_000,
            payload_size: 100,
            batch: raw::RAW_PUBLISH_WINDOW,
            concurrency: 1,
            handler_batch: 1,
            handler_label: "native".into(),
            pubsub_label: "memory".into(),
            consume_only: false,
            backlog: Backlog::None,
        }
    }
}

/// How the bench's publish loop and the router's consuming relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backlog {
    /// Publish while the router consumes: the figure is the router's sustained rate.
    None,
    /// Publish every message before the router starts, then time the router draining the
    /// backlog: the publish and consume loops each run alone, as the raw client's do (a
    /// durable backend keeps the backlog; the in-memory one drops what nobody subscribed to).
    Stored,
    /// As `Stored`, but the router starts first with its handler held while each round of
    /// `round` messages is published, then released to drain it (the figure times the
    /// draining only): for brokers that keep little for a subscriber that is away or slow
    /// (Mosquitto's `max_queued_messages`), the subscription stays connected and takes the
    /// messages in as they come, as the raw MQTT client's subscribed, not yet reading,
    /// consumer does in rounds of the same size ([`crate::pubsub::bench_round`]).
    Held {
        /// Messages published per round (at least 1).
        round: usize,
    },
}

/// A native pass-through handler: returns a copy of the input, the baseline WASM handlers are
/// compared with.
pub fn native_passthrough() -> BoxHandler {
    handler_fn(|msg: Message| async move {
        let mut out = Message::with_uuid(msg.uuid.clone(), msg.payload.clone());
        out.metadata = msg.metadata.clone();
        Ok(vec![out])
    })
}

const SENT_AT: &str = "bench_sent_ns";

/// Messages the bench's output reader may hold unacked.
const READER_IN_FLIGHT: usize = 256;

/// The latencies of the messages handled so far. The bench's main task is woken once, when
/// the last one is in, rather than once per message: the measuring costs the run little.
struct Tally {
    latencies: std::sync::Mutex<Vec<u64>>,
    /// The count the main task waits for (the end of a round, or of the run).
    target: std::sync::atomic::AtomicUsize,
    all_in: tokio::sync::Notify,
}

impl Tally {
    fn new(total: usize) -> Self {
        Tally {
            latencies: std::sync::Mutex::new(Vec::with_capacity(total)),
            target: std::sync::atomic::AtomicUsize::new(total),
            all_in: tokio::sync::Notify::new(),
        }
    }

    /// Records one message's publish-to-done latency in nanoseconds.
    fn record(&self, latency_ns: u64) {
        let mut l = self.latencies.lock().unwrap_or_else(|e| e.into_inner());
        l.push(latency_ns);
        if l.len() == self.target.load(std::sync::atomic::Ordering::Acquire) {
            self.all_in.notify_one();
        }
    }

    fn count(&self) -> usize {
        self.latencies.lock().map(|l| l.len()).unwrap_or(0)
    }

    fn take(&self) -> Vec<u64> {
        std::mem::take(&mut *self.latencies.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// Why a backend may have stopped short of the messages published, when it is known.
fn stall_hint(backend: &str, delivered: usize) -> String {
    if backend == "mqtt" && delivered >= 65_535 {
        return "; Mosquitto keeps at most receive_maximum + max_queued_messages \
                (65,535 + 1,000 by default) unread messages for a session and drops the rest: \
                bench with fewer --messages, or set max_queued_messages 0 in mosquitto.conf"
            .into();
    }
    String::new()
}

/// Runs the benchmark with `handler` between `publisher`/`subscriber` topics.
pub async fn run(
    publisher: DynPublisher,
    subscriber: DynSubscriber,
    handler: BoxHandler,
    options: &BenchOptions,
) -> Result<BenchReport> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let input = format!("bench_in_{run_id}");
    let output = format!("bench_out_{run_id}");
    let epoch = Instant::now();
    // Every handled message reports its publish-to-done latency here.
    let tally = Arc::new(Tally::new(options.messages));
    let sent_at = |m: &Message| m.metadata.get(SENT_AT).parse::<u128>().unwrap_or(0);
    let since = move |sent: u128| epoch.elapsed().as_nanos().saturating_sub(sent) as u64;
    subscriber.subscribe_initialize(&input).await?;
    // With a held backlog the handler takes a permit per message: a round's worth is added
    // once the round is published.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = match options.backlog {
        Backlog::Held { .. } => held(handler, gate.clone()),
        _ => handler,
    };
    let (spec, reader) = if options.consume_only {
        let tally = tally.clone();
        let counted = handler_fn(move |msg: Message| {
            let handler = handler.clone();
            let tally = tally.clone();
            let sent = sent_at(&msg);
            async move {
                handler.handle(msg).await?;
                tally.record(since(sent));
                Ok(Vec::new())
            }
        });
        let spec = HandlerSpec::new("bench", input.clone(), subscriber.clone(), counted);
        (spec, None)
    } else {
        subscriber.subscribe_initialize(&output).await?;
        // The bench's reader acks at once and only counts: it takes as many in flight as the
        // backend allows, like the raw client's consume loop, so it is not what limits the run.
        let mut out_sub = subscriber
            .subscribe_with(
                &output,
                crate::pubsub::SubscribeOptions {
                    max_in_flight: READER_IN_FLIGHT,
                },
            )
            .await?;
        let tally = tally.clone();
        let reader = tokio::spawn(async move {
            while let Some(m) = out_sub.recv().await {
                m.ack();
                tally.record(since(sent_at(&m)));
            }
        });
        let spec = HandlerSpec::new("bench", input.clone(), subscriber.clone(), handler)
            .publish_to(output.clone(), publisher.clone());
        (spec, Some(reader))
    };

    let payload = bytes::Bytes::from(vec![b'x'; options.payload_size]);
    let total = options.messages;
    let batch = options.batch.max(1);
    let publish = |count: usize| {
        let publisher = publisher.clone();
        let input = input.clone();
        let payload = payload.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            let mut sent = 0;
            while sent < count {
                let n = batch.min(count - sent);
                let now = epoch.elapsed().as_nanos().to_string();
                let msgs = (0..n)
                    .map(|_| Message::new(payload.clone()).with_metadata(SENT_AT, now.clone()))
                    .collect();
                publisher.publish(&input, msgs).await?;
                sent += n;
            }
            Ok::<Duration, Error>(start.elapsed())
        })
    };
    let joined = |r: std::result::Result<Result<Duration>, tokio::task::JoinError>| {
        r.map_err(|e| Error::Other(format!("bench publisher: {e}")))?
    };
    // With a backlog, the publish loop runs alone first, as the raw client's does.
    let published_first = if options.backlog == Backlog::Stored {
        Some(joined(publish(total).await)?)
    } else {
        None
    };

    let router = Router::new(RouterConfig::default());
    let h = router.add(
        spec.concurrency(options.concurrency)
            .batch(options.handler_batch),
    )?;
    let r = router.clone();
    let running = tokio::spawn(async move { r.run().await });
    router.running().await;
    h.started().await;

    let progress = Progress {
        tally: &tally,
        handler: &h,
        backend: subscriber.name(),
        reader: reader.as_ref(),
        total,
    };
    let (elapsed, publish_time) = match (options.backlog, published_first) {
        (Backlog::Held { round }, _) => {
            let (mut draining, mut publishing) = (Duration::ZERO, Duration::ZERO);
            let mut released = 0;
            while released < total {
                let n = round.max(1).min(total - released);
                publishing += joined(publish(n).await)?;
                released += n;
                let start = Instant::now();
                let _profiled = Profiled::start();
                gate.add_permits(n);
                progress.wait_for(released).await?;
                draining += start.elapsed();
            }
            (draining, publishing)
        }
        (_, Some(took)) => {
            let start = Instant::now();
            let _profiled = Profiled::start();
            progress.wait_for(total).await?;
            (start.elapsed(), took)
        }
        (_, None) => {
            let start = Instant::now();
            let publishing = publish(total);
            progress.wait_for(total).await?;
            let elapsed = start.elapsed();
            (elapsed, joined(publishing.await)?)
        }
    };
    let mut latencies = tally.take();
    if let Some(reader) = reader {
        reader.abort();
    }
    router.close().await?;
    let _ = running.await;
    // What the run stored on the broker goes (a bench against a real server would otherwise
    // leave its topics behind, every message in them).
    for topic in std::iter::once(&input).chain((!options.consume_only).then_some(&output)) {
        if let Err(e) = subscriber.remove_topic(topic).await {
            tracing::warn!(topic, "bench: could not remove the topic: {}", e.report());
        }
    }

    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies.get(i).copied().unwrap_or(0) as f64 / 1_000.0
    };
    Ok(BenchReport {
        pubsub: options.pubsub_label.clone(),
        handler: options.handler_label.clone(),
        messages: total,
        payload_size: options.payload_size,
        concurrency: options.concurrency,
        mode: if options.consume_only {
            "consume-only"
        } else {
            "relay"
        },
        publish_per_sec: total as f64 / publish_time.as_secs_f64(),
        end_to_end_per_sec: total as f64 / elapsed.as_secs_f64(),
        latency_p50_us: pct(0.50),
        latency_p99_us: pct(0.99),
        elapsed_secs: elapsed.as_secs_f64(),
        peak_rss_mib: peak_rss_mib(),
        raw: None,
        rounds: 1,
        load_secs: None,
        fuel_per_message: None,
    })
}

/// `handler`, taking one of `gate`'s permits (for good) before each message.
fn held(handler: BoxHandler, gate: Arc<tokio::sync::Semaphore>) -> BoxHandler {
    handler_fn(move |msg: Message| {
        let handler = handler.clone();
        let gate = gate.clone();
        async move {
            if let Ok(permit) = gate.acquire().await {
                permit.forget();
            }
            handler.handle(msg).await
        }
    })
}

/// What the main task watches while the router drains the messages.
struct Progress<'a> {
    tally: &'a Tally,
    handler: &'a crate::router::HandlerHandle,
    backend: &'a str,
    reader: Option<&'a tokio::task::JoinHandle<()>>,
    total: usize,
}

impl Progress<'_> {
    /// Waits until `target` messages were handled; an error once nothing was handled for
    /// [`IDLE_LIMIT`] or the output reader ended.
    async fn wait_for(&self, target: usize) -> Result<()> {
        self.tally
            .target
            .store(target, std::sync::atomic::Ordering::Release);
        let (mut seen, mut progressed) = (0, Instant::now());
        loop {
            let count = self.tally.count();
            if count >= target {
                return Ok(());
            }
            if count > seen {
                (seen, progressed) = (count, Instant::now());
            } else if progressed.elapsed() > IDLE_LIMIT {
                return Err(Error::Other(format!(
                    "bench: no output for {IDLE_LIMIT:?} after {count} of {} messages (handler last error: {}){}",
                    self.total,
                    self.handler.stats().last_error().unwrap_or_default(),
                    stall_hint(self.backend, count)
                )));
            }
            if self.reader.is_some_and(|r| r.is_finished()) {
                return Err(Error::Other("bench: output subscription ended".into()));
            }
            tokio::select! {
                _ = self.tally.all_in.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }
}

/// A timed section for a profiler: with `WASMILL_PERF_CTL` naming `perf record --control`'s
/// control fifo (and `perf record -D -1`, which starts disabled), `perf` samples only while
/// the bench drains, not while it publishes or compiles.
struct Profiled(Option<std::fs::File>);

impl Profiled {
    /// Tells the profiler to start sampling, if one listens.
    fn start() -> Profiled {
        let ctl = std::env::var_os("WASMILL_PERF_CTL")
            .and_then(|path| std::fs::OpenOptions::new().write(true).open(path).ok());
        Profiled(ctl.and_then(|mut f| {
            use std::io::Write;
            f.write_all(b"enable\n").ok().map(|()| f)
        }))
    }
}

impl Drop for Profiled {
    fn drop(&mut self) {
        if let Some(f) = self.0.as_mut() {
            use std::io::Write;
            let _ = f.write_all(b"disable\n");
        }
    }
}

/// How long the bench waits without progress before it gives up.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// The process's peak resident set size in MiB, read from `/proc/self/status` (Linux).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_stall_past_mosquittos_queue_names_it() {
        let hint = super::stall_hint("mqtt", 66_535);
        assert!(hint.contains("max_queued_messages"), "{hint}");
        assert!(super::stall_hint("mqtt", 10).is_empty());
        assert!(super::stall_hint("redis", 66_535).is_empty());
    }

    use super::*;
    use crate::pubsub::memory::MemoryPubSub;

    fn round(end_to_end: f64, raw_consume: f64) -> BenchReport {
        let mut r = BenchReport {
            pubsub: "redis".into(),
            handler: "native".into(),
            messages: 10,
            payload_size: 100,
            concurrency: 1,
            mode: "consume-only",
            publish_per_sec: 100.0,
            end_to_end_per_sec: end_to_end,
            latency_p50_us: 1.0,
            latency_p99_us: 2.0,
            elapsed_secs: 1.0,
            peak_rss_mib: Some(10.0),
            raw: None,
            rounds: 1,
            load_secs: None,
            fuel_per_message: None,
        };
        r.compare_raw(raw::RawBenchFigures {
            publish_per_sec: 100.0,
            consume_per_sec: raw_consume,
        });
        r
    }

    #[test]
    fn rounds_report_medians_and_ratios_taken_per_round() {
        // A slow moment of the machine hits both loops of round 2: its own ratio is fine.
        let m = BenchReport::median(vec![
            round(90.0, 100.0),
            round(40.0, 50.0),
            round(85.0, 100.0),
        ])
        .unwrap();
        assert_eq!(m.rounds, 3);
        assert_eq!(m.end_to_end_per_sec, 85.0);
        let raw = m.raw.clone().unwrap();
        assert_eq!(raw.consume_per_sec, 100.0);
        assert_eq!(raw.end_to_end_ratio, 0.85);
        assert_eq!(m.elapsed_secs, 3.0);
        assert!(m.to_string().contains("medians of 3 rounds"));
        assert!(BenchReport::median(Vec::new()).is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bench_pushes_every_message_through() {
        let ps = MemoryPubSub::default();
        let opts = BenchOptions {
            messages: 2_000,
            payload_size: 64,
            ..BenchOptions::default()
        };
        let report = run(
            Arc::new(ps.clone()),
            Arc::new(ps),
            native_passthrough(),
            &opts,
        )
        .await
        .unwrap();
        assert_eq!(report.messages, 2_000);
        assert!(report.end_to_end_per_sec > 0.0);
        assert!(report.latency_p99_us >= report.latency_p50_us);
        assert!(report.peak_rss_mib.unwrap_or(1.0) > 0.0);
        assert!(report.to_string().contains("msgs/s"));
        assert_eq!(report.mode, "relay");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn consume_only_runs_the_handler_on_every_message_and_publishes_nothing() {
        let ps = MemoryPubSub::default();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = calls.clone();
        let handler = handler_fn(move |msg: Message| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move { Ok(vec![msg]) }
        });
        let opts = BenchOptions {
            messages: 1_000,
            consume_only: true,
            ..BenchOptions::default()
        };
        let report = run(Arc::new(ps.clone()), Arc::new(ps), handler, &opts)
            .await
            .unwrap();
        assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1_000);
        assert_eq!(report.mode, "consume-only");
        assert!(report.to_string().contains("consume-only"));
    }

    /// Forwards to an in-memory pub/sub and counts what was published.
    struct Counting(MemoryPubSub, Arc<std::sync::atomic::AtomicUsize>);

    #[async_trait::async_trait]
    impl crate::pubsub::Publisher for Counting {
        async fn publish(&self, topic: &str, messages: Vec<Message>) -> Result<()> {
            let n = messages.len();
            self.0.publish(topic, messages).await?;
            self.1.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        }
        async fn close(&self) -> Result<()> {
            crate::pubsub::Publisher::close(&self.0).await
        }
        fn name(&self) -> &'static str {
            "counting"
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_backlog_is_handled_only_once_its_round_is_published() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let ps = MemoryPubSub::default();
        let published = Arc::new(AtomicUsize::new(0));
        // Per handler call, in order: how many messages had been published.
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, calls) = (published.clone(), seen.clone());
        let handler = handler_fn(move |msg: Message| {
            calls.lock().unwrap().push(count.load(Ordering::SeqCst));
            async move { Ok(vec![msg]) }
        });
        let opts = BenchOptions {
            messages: 50,
            batch: 10,
            consume_only: true,
            backlog: Backlog::Held { round: 20 },
            ..BenchOptions::default()
        };
        let publisher = Arc::new(Counting(ps.clone(), published));
        let report = run(publisher, Arc::new(ps), handler, &opts).await.unwrap();
        assert_eq!(report.messages, 50);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.len(), 50);
        for (i, published) in seen.into_iter().enumerate() {
            // Rounds of 20, 20 and 10: message i runs once its whole round is published, and
            // before the next round is (the handler drains each round alone).
            let round_end = (i / 20 + 1) * 20;
            assert_eq!(published, round_end.min(50), "message {i}");
        }
    }
}
