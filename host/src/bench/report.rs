//! What one `wasmill bench` run reports: throughput, latency percentiles, memory, the ratio
//! to the raw client; the median of several rounds; the text the CLI prints.

use serde::Serialize;

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The backend.
    pub pubsub: String,
    /// The handler.
    pub handler: String,
    /// Messages pushed through.
    pub messages: usize,
    /// Payload size in bytes.
    pub payload_size: usize,
    /// Handler concurrency.
    pub concurrency: usize,
    /// `relay` (the handler's output is published to an output topic and read back) or
    /// `consume-only` (the output is dropped).
    pub mode: &'static str,
    /// Messages published per second (publish loop alone).
    pub publish_per_sec: f64,
    /// Messages handled per second, first publish to the last output read back (relay) or
    /// the last message handled and acked (consume-only).
    pub end_to_end_per_sec: f64,
    /// Median publish-to-output latency in microseconds.
    pub latency_p50_us: f64,
    /// 99th percentile publish-to-output latency in microseconds.
    pub latency_p99_us: f64,
    /// Total wall time in seconds.
    pub elapsed_secs: f64,
    /// Peak resident memory of the process in MiB (Linux `VmHWM`), if known.
    pub peak_rss_mib: Option<f64>,
    /// The broker's own client on the same server, when compared ([`BenchReport::compare_raw`]).
    pub raw: Option<RawComparison>,
    /// How many rounds the figures are the median of ([`BenchReport::median`]); 1 for one run.
    pub rounds: usize,
    /// A `.wasm` handler: seconds to load it before the first message (a compile, or a read
    /// of the compile cache when it holds the file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load_secs: Option<f64>,
    /// A `.wasm` handler: fuel it burnt per message, on average over every round.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fuel_per_message: Option<f64>,
}

/// Wasmill's figures as a ratio of the raw client's, measured in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct RawComparison {
    /// The raw client's publish loop, messages/s.
    pub publish_per_sec: f64,
    /// The raw client's consume-and-ack loop, messages/s.
    pub consume_per_sec: f64,
    /// Wasmill publish / raw publish.
    pub publish_ratio: f64,
    /// Wasmill end-to-end / raw consume. Like for like in consume-only mode (consume, handle,
    /// ack against consume, ack); in relay mode Wasmill also publishes every output and reads
    /// it back, twice the broker work of the raw loop.
    pub end_to_end_ratio: f64,
}

impl BenchReport {
    /// One report of several rounds (each a Wasmill run with the raw client's beside it): every
    /// figure and every ratio is the median of the rounds', so one slow moment of a shared
    /// machine does not decide the result. Ratios are taken per round (the pair measured side
    /// by side) before the median. `None` for no rounds.
    pub fn median(rounds: Vec<BenchReport>) -> Option<BenchReport> {
        fn med(mut v: Vec<f64>) -> f64 {
            v.sort_by(f64::total_cmp);
            let n = v.len();
            if n % 2 == 1 {
                v[n / 2]
            } else {
                (v[n / 2 - 1] + v[n / 2]) / 2.0
            }
        }
        let of = |f: &dyn Fn(&BenchReport) -> f64| med(rounds.iter().map(f).collect());
        let first = rounds.first()?;
        let raws: Vec<&RawComparison> = rounds.iter().filter_map(|r| r.raw.as_ref()).collect();
        let raw = (raws.len() == rounds.len()).then(|| {
            let of_raw =
                |f: &dyn Fn(&RawComparison) -> f64| med(raws.iter().map(|r| f(r)).collect());
            RawComparison {
                publish_per_sec: of_raw(&|r| r.publish_per_sec),
                consume_per_sec: of_raw(&|r| r.consume_per_sec),
                publish_ratio: of_raw(&|r| r.publish_ratio),
                end_to_end_ratio: of_raw(&|r| r.end_to_end_ratio),
            }
        });
        Some(BenchReport {
            publish_per_sec: of(&|r| r.publish_per_sec),
            end_to_end_per_sec: of(&|r| r.end_to_end_per_sec),
            latency_p50_us: of(&|r| r.latency_p50_us),
            latency_p99_us: of(&|r| r.latency_p99_us),
            elapsed_secs: rounds.iter().map(|r| r.elapsed_secs).sum(),
            peak_rss_mib: rounds
                .iter()
                .filter_map(|r| r.peak_rss_mib)
                .reduce(f64::max),
            raw,
            rounds: rounds.iter().map(|r| r.rounds).sum(),
            ..first.clone()
        })
    }

    /// Adds the raw client's figures and the ratios of Wasmill's to them.
    pub fn compare_raw(&mut self, raw: crate::bench::raw::RawBenchFigures) {
        self.raw = Some(RawComparison {
            publish_per_sec: raw.publish_per_sec,
            consume_per_sec: raw.consume_per_sec,
            publish_ratio: self.publish_per_sec / raw.publish_per_sec,
            end_to_end_ratio: self.end_to_end_per_sec / raw.consume_per_sec,
        });
    }
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "wasmill bench: {} messages x {} B, handler {}, pub/sub {}, concurrency {}, {}",
            self.messages,
            self.payload_size,
            self.handler,
            self.pubsub,
            self.concurrency,
            self.mode
        )?;
        if self.rounds > 1 {
            writeln!(
                f,
                "  medians of {} rounds (ratios taken per round)",
                self.rounds
            )?;
        }
        writeln!(f, "  publish      {:>12.0} msgs/s", self.publish_per_sec)?;
        writeln!(f, "  end-to-end   {:>12.0} msgs/s", self.end_to_end_per_sec)?;
        writeln!(
            f,
            "  latency      p50 {:.1} us, p99 {:.1} us",
            self.latency_p50_us, self.latency_p99_us
        )?;
        match self.peak_rss_mib {
            Some(m) => writeln!(f, "  peak memory  {m:.1} MiB")?,
            None => writeln!(f, "  peak memory  unknown")?,
        }
        if let Some(s) = self.load_secs {
            writeln!(f, "  plugin load  {s:.2} s (compile, or the compile cache)")?;
        }
        if let Some(fuel) = self.fuel_per_message {
            writeln!(f, "  fuel         {fuel:.0} per message")?;
        }
        if let Some(raw) = &self.raw {
            writeln!(
                f,
                "  raw client   publish {:.0} msgs/s, consume+ack {:.0} msgs/s",
                raw.publish_per_sec, raw.consume_per_sec
            )?;
            writeln!(
                f,
                "  ratio        publish {:.2}x, end-to-end {:.2}x of the raw client",
                raw.publish_ratio, raw.end_to_end_ratio
            )?;
        }
        write!(f, "  elapsed      {:.2} s", self.elapsed_secs)
    }
}
