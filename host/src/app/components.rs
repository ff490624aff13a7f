//! The components `wasmill run` runs beside the router: `[[requeue]]` (the requeuer) and
//! `[[forwarders]]` (the outbox forwarder), each on its own subscription, until the host stops.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::components::forwarder::Forwarder;
use crate::components::requeue::Requeuer;
use crate::config::Config;
use crate::error::{Error, Result};
use crate::pubsub::registry::Backend;

fn backend<'a>(backends: &'a HashMap<String, Backend>, name: &str) -> Result<&'a Backend> {
    backends
        .get(name)
        .ok_or_else(|| Error::Config(format!("unknown pubsub {name:?}")))
}

/// Subscribes every configured requeuer and forwarder (before it returns, so nothing
/// published afterwards is missed) and runs them until `stop` is cancelled.
pub async fn start(
    cfg: &Config,
    backends: &HashMap<String, Backend>,
    stop: &CancellationToken,
) -> Result<JoinSet<()>> {
    let default = &cfg.host.default_pubsub;
    let mut tasks = JoinSet::new();
    for r in &cfg.requeue {
        let (pubsub, topic) = r.from.resolve(default);
        let b = backend(backends, &pubsub)?;
        b.subscriber.subscribe_initialize(&topic).await?;
        let source = b.subscriber.subscribe(&topic).await?;
        let requeuer = Requeuer {
            source_topic: topic.clone(),
            publisher: b.publisher.clone(),
            delay: r.delay,
            max_requeues: r.max_requeues,
        };
        tracing::info!(pubsub, topic, "requeuer started");
        let stop = stop.clone();
        tasks.spawn(async move { requeuer.run(source, stop).await });
    }
    for f in &cfg.forwarders {
        let (pubsub, topic) = f.from.resolve(default);
        let b = backend(backends, &pubsub)?;
        let to = backend(backends, f.to.as_deref().unwrap_or(default))?;
        b.subscriber.subscribe_initialize(&topic).await?;
        let source = b.subscriber.subscribe(&topic).await?;
        let forwarder = Arc::new(Forwarder::new(
            topic.clone(),
            b.publisher.clone(),
            to.publisher.clone(),
        ));
        tracing::info!(pubsub, topic, "forwarder started");
        let stop = stop.clone();
        tasks.spawn(async move { forwarder.run(source, stop).await });
    }
    Ok(tasks)
}
