//! Prometheus text exposition (format 0.0.4) of the router's and the plugins' counters,
//! encoded by `prometheus-client`: each scrape takes a snapshot of the live counters (they
//! belong to the router and the plugin manager) and hands it to the crate's encoder as a
//! [`Collector`], so names, escaping and histogram buckets follow the crate, not us.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, prometheus_text};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::plugins::manager::{HandlerInfo, PluginManager};
use crate::router::{DURATION_BUCKETS, Router, StatsSnapshot};

/// The `Content-Type` of the metrics page.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// One handler's counters at the scrape.
#[derive(Debug)]
struct HandlerSample {
    name: String,
    stats: StatsSnapshot,
    /// Count per duration bucket (not cumulative), then the total count and sum (seconds).
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: f64,
}

/// Everything one scrape shows, copied out of the live counters.
#[derive(Debug)]
struct Scrape {
    handlers: Vec<HandlerSample>,
    sse_dropped: Vec<(String, u64)>,
    plugins: Vec<HandlerInfo>,
}

type HandlerCounter = (&'static str, &'static str, fn(&StatsSnapshot) -> u64);

/// Per-handler counters: name (the encoder adds `_total`), help, value.
const HANDLER_COUNTERS: [HandlerCounter; 5] = [
    (
        "wasmill_messages_received",
        "Messages received by a handler.",
        |s| s.processed + s.failed,
    ),
    (
        "wasmill_messages_acked",
        "Messages handled successfully and acked.",
        |s| s.processed,
    ),
    (
        "wasmill_messages_nacked",
        "Messages whose handling failed (nacked).",
        |s| s.failed,
    ),
    (
        "wasmill_retries",
        "Retry attempts made by Retry middleware.",
        |s| s.retried,
    ),
    (
        "wasmill_poisoned",
        "Messages sent to a poison queue.",
        |s| s.poisoned,
    ),
];

type PluginCounter = (&'static str, &'static str, fn(&HandlerInfo) -> u64);

/// Per-WASM-handler counters.
const PLUGIN_COUNTERS: [PluginCounter; 2] = [
    (
        "wasmill_fuel_consumed",
        "Fuel consumed by a WASM handler.",
        |i| i.fuel_consumed,
    ),
    (
        "wasmill_plugin_reloads",
        "New plugin versions swapped in.",
        |i| i.reloads,
    ),
];

/// One counter family: its samples, each with its labels.
fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl Iterator<Item = (L, u64)>,
) -> std::fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        family
            .encode_family(&labels)?
            .encode_counter::<L, u64, f64>(&value, None)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        for (name, help, value) in HANDLER_COUNTERS {
            let samples = self
                .handlers
                .iter()
                .map(|h| ([("handler", h.name.as_str())], value(&h.stats)));
            counter(&mut encoder, name, help, samples)?;
        }
        counter(
            &mut encoder,
            "wasmill_sse_dropped",
            "Messages an SSE client missed because it read slower than its topic was written.",
            self.sse_dropped
                .iter()
                .map(|(topic, n)| ([("topic", topic.as_str())], *n)),
        )?;
        let mut histogram = encoder.encode_descriptor(
            "wasmill_handler_duration_seconds",
            "Time to handle one message, middleware included.",
            None,
            MetricType::Histogram,
        )?;
        for h in &self.handlers {
            let labels = [("handler", h.name.as_str())];
            histogram
                .encode_family(&labels)?
                .encode_histogram::<[(&str, &str); 1]>(h.sum, h.count, &h.buckets, None)?;
        }
        for (name, help, value) in PLUGIN_COUNTERS {
            let samples = self.plugins.iter().map(|i| {
                (
                    [("handler", i.name.as_str()), ("plugin", i.plugin.as_str())],
                    value(i),
                )
            });
            counter(&mut encoder, name, help, samples)?;
        }
        Ok(())
    }
}

/// The metrics page: per handler received/acked/nacked, duration histogram, retries,
/// poisoned; SSE messages dropped per topic; per WASM handler fuel consumed and reloads.
pub fn render_metrics(router: &Router, plugins: Option<&PluginManager>) -> String {
    let mut handles = router.handlers();
    handles.sort_by(|a, b| a.name().cmp(b.name()));
    let handlers = handles
        .iter()
        .map(|h| {
            let (cumulative, count, sum) = h.stats().duration_histogram();
            let mut below = 0;
            let buckets = DURATION_BUCKETS
                .iter()
                .zip(cumulative)
                .map(|(le, c)| {
                    let own = c - below;
                    below = c;
                    (*le, own)
                })
                .collect();
            HandlerSample {
                name: h.name().to_string(),
                stats: h.stats().snapshot(),
                buckets,
                count,
                sum,
            }
        })
        .collect();
    let scrape = Scrape {
        handlers,
        sse_dropped: super::tail::dropped_by_topic(),
        plugins: plugins.map(PluginManager::infos).unwrap_or_default(),
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would be a bug in a label.
    if let Err(e) = prometheus_text::encode(&mut out, &registry) {
        tracing::error!("metrics: encoding failed: {e}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{RouterConfig, handler_fn};

    /// One parsed sample: metric name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A small parser of the text format: every sample's family is declared with a TYPE,
    /// values parse, labels unescape; returns (metric, labels, value) per sample.
    fn parse(text: &str) -> Vec<Sample> {
        let mut declared = std::collections::HashMap::new();
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                declared.insert(name.to_string(), kind.to_string());
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value: {line}"));
            let (metric, labels) = match series.split_once('{') {
                Some((m, l)) => (m, l.strip_suffix('}').unwrap()),
                None => (series, ""),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| metric.strip_suffix(s).filter(|f| declared.contains_key(*f)))
                .unwrap_or(metric);
            assert!(declared.contains_key(family), "undeclared: {line}");
            let mut parsed = Vec::new();
            let mut rest = labels;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"").unwrap();
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next().unwrap() {
                        (_, '\\') => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                parsed.push((key.to_string(), value));
                rest = after[end + 1..].trim_start_matches(',');
            }
            samples.push((metric.to_string(), parsed, value));
        }
        samples
    }

    #[test]
    fn the_page_parses_with_the_names_and_labels_it_always_had() {
        let router = Router::new(RouterConfig::default());
        let ps = std::sync::Arc::new(crate::pubsub::memory::MemoryPubSub::default());
        let h = router
            .add_consumer_handler("h\"1", "t", ps, handler_fn(|_m| async { Ok(vec![]) }))
            .unwrap();
        h.stats()
            .record_duration(std::time::Duration::from_millis(2));
        h.stats()
            .record_duration(std::time::Duration::from_secs(20));
        let text = render_metrics(&router, None);
        assert!(
            text.contains("# TYPE wasmill_messages_acked_total counter"),
            "{text}"
        );
        let samples = parse(&text);
        let value = |metric: &str, labels: &[(&str, &str)]| {
            samples
                .iter()
                .find(|(m, l, _)| {
                    m == metric
                        && labels
                            .iter()
                            .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
                })
                .map(|s| s.2)
                .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"))
        };
        let handler = [("handler", "h\"1")];
        for counter in [
            "wasmill_messages_received_total",
            "wasmill_messages_acked_total",
            "wasmill_messages_nacked_total",
            "wasmill_retries_total",
            "wasmill_poisoned_total",
        ] {
            assert_eq!(value(counter, &handler), 0.0);
        }
        let d = "wasmill_handler_duration_seconds";
        assert_eq!(value(&format!("{d}_count"), &handler), 2.0);
        assert!((value(&format!("{d}_sum"), &handler) - 20.002).abs() < 1e-6);
        // Buckets are cumulative: 2 ms is in every bucket from 0.0025 up, 20 s only in +Inf.
        let bucket = |le: f64| {
            samples
                .iter()
                .find(|(m, l, _)| {
                    m == &format!("{d}_bucket")
                        && l.iter().any(|(k, v)| k == "handler" && v == "h\"1")
                        && l.iter().any(|(k, v)| {
                            k == "le" && v.replace("+Inf", "inf").parse::<f64>() == Ok(le)
                        })
                })
                .map(|s| s.2)
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
        };
        assert_eq!(bucket(0.001), 0.0);
        assert_eq!(bucket(0.005), 1.0);
        assert_eq!(bucket(5.0), 1.0);
        assert_eq!(bucket(f64::INFINITY), 2.0);
    }
}
