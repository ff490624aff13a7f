//! Prometheus text exposition of the router's and the plugins' counters.

use std::fmt::Write;

use crate::plugins::manager::PluginManager;
use crate::router::{DURATION_BUCKETS, Router};

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics page: per handler received/acked/nacked, duration histogram, retries,
/// poisoned; per WASM handler fuel consumed and reloads.
pub fn render_metrics(router: &Router, plugins: Option<&PluginManager>) -> String {
    let mut out = String::new();
    let mut handles = router.handlers();
    handles.sort_by(|a, b| a.name().cmp(b.name()));
    type Counter = (
        &'static str,
        &'static str,
        fn(&crate::router::StatsSnapshot) -> u64,
    );
    let counters: [Counter; 5] = [
        (
            "wasmill_messages_received_total",
            "Messages received by a handler.",
            |s| s.processed + s.failed,
        ),
        (
            "wasmill_messages_acked_total",
            "Messages handled successfully and acked.",
            |s| s.processed,
        ),
        (
            "wasmill_messages_nacked_total",
            "Messages whose handling failed (nacked).",
            |s| s.failed,
        ),
        (
            "wasmill_retries_total",
            "Retry attempts made by Retry middleware.",
            |s| s.retried,
        ),
        (
            "wasmill_poisoned_total",
            "Messages sent to a poison queue.",
            |s| s.poisoned,
        ),
    ];
    for (name, help, f) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for h in &handles {
            let _ = writeln!(
                out,
                "{name}{{handler=\"{}\"}} {}",
                escape(h.name()),
                f(&h.stats().snapshot())
            );
        }
    }
    let name = "wasmill_sse_dropped_total";
    let _ = writeln!(
        out,
        "# HELP {name} Messages an SSE client missed because it read slower than its topic was written.\n# TYPE {name} counter"
    );
    for (topic, n) in super::tail::dropped_by_topic() {
        let _ = writeln!(out, "{name}{{topic=\"{}\"}} {n}", escape(&topic));
    }
    let name = "wasmill_handler_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time to handle one message, middleware included.\n# TYPE {name} histogram"
    );
    for h in &handles {
        let label = escape(h.name());
        let (buckets, count, sum) = h.stats().duration_histogram();
        for (le, c) in DURATION_BUCKETS.iter().zip(buckets) {
            let _ = writeln!(out, "{name}_bucket{{handler=\"{label}\",le=\"{le}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{handler=\"{label}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(out, "{name}_sum{{handler=\"{label}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{handler=\"{label}\"}} {count}");
    }
    if let Some(p) = plugins {
        let infos = p.infos();
        for (name, help, f) in [
            (
                "wasmill_fuel_consumed_total",
                "Fuel consumed by a WASM handler.",
                (|i: &crate::plugins::manager::HandlerInfo| i.fuel_consumed) as fn(&_) -> u64,
            ),
            (
                "wasmill_plugin_reloads_total",
                "New plugin versions swapped in.",
                |i| i.reloads,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for i in &infos {
                let _ = writeln!(
                    out,
                    "{name}{{handler=\"{}\",plugin=\"{}\"}} {}",
                    escape(&i.name),
                    escape(&i.plugin),
                    f(i)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::router::{RouterConfig, handler_fn};

    #[test]
    fn every_sample_line_has_a_declared_family() {
        let router = Router::new(RouterConfig::default());
        let ps = std::sync::Arc::new(crate::pubsub::memory::MemoryPubSub::default());
        let h = router
            .add_consumer_handler("h\"1", "t", ps, handler_fn(|_m| async { Ok(vec![]) }))
            .unwrap();
        h.stats()
            .record_duration(std::time::Duration::from_millis(2));
        let text = render_metrics(&router, None);
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let metric = line.split(['{', ' ']).next().unwrap();
                let family = metric
                    .trim_end_matches("_bucket")
                    .trim_end_matches("_sum")
                    .trim_end_matches("_count");
                assert!(
                    declared.contains(family) || declared.contains(metric),
                    "undeclared: {line}"
                );
                assert!(
                    line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
                    "bad value: {line}"
                );
            }
        }
        assert!(text.contains("handler=\"h\\\"1\""), "labels are escaped");
        assert!(text.contains("wasmill_handler_duration_seconds_count{handler=\"h\\\"1\"} 1"));
    }
}
