//! The components `wasmill run` runs beside the router: `[[requeue]]` (the requeuer),
//! `[[forwarders]]` (the outbox forwarder) and `[[fan_in]]`, each on its own subscription, and
//! `[[fan_out]]` (one subscription handed to every handler of its topic), until the host stops.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::components::fan::{FanOut, FannedSubscriber, fan_in};
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

/// Wraps the subscriber of every backend with a `[[fan_out]]` topic, so that the handlers
/// subscribing to that topic become local subscribers of one fan-out. Call before the handlers
/// subscribe; their subscription to the backend starts in [`start`].
pub fn fan_outs(
    cfg: &Config,
    backends: &mut HashMap<String, Backend>,
) -> Result<Vec<(String, Arc<FannedSubscriber>)>> {
    let default = &cfg.host.default_pubsub;
    let mut by_backend: HashMap<String, HashMap<String, Arc<FanOut>>> = HashMap::new();
    for f in &cfg.fan_out {
        let (pubsub, topic) = f.topic.resolve(default);
        let fan = Arc::new(FanOut::new(&topic));
        by_backend.entry(pubsub).or_default().insert(topic, fan);
    }
    let mut wrapped = Vec::new();
    for (pubsub, fan_outs) in by_backend {
        let b = backends
            .get_mut(&pubsub)
            .ok_or_else(|| Error::Config(format!("unknown pubsub {pubsub:?}")))?;
        let fanned = Arc::new(FannedSubscriber::new(b.subscriber.clone(), fan_outs));
        b.subscriber = fanned.clone();
        wrapped.push((pubsub, fanned));
    }
    Ok(wrapped)
}

/// Subscribes every configured requeuer, forwarder, fan-in and fan-out (before it returns, so
/// nothing published afterwards is missed) and runs them until `stop` is cancelled.
pub async fn start(
    cfg: &Config,
    backends: &HashMap<String, Backend>,
    fanned: &[(String, Arc<FannedSubscriber>)],
    stop: &CancellationToken,
) -> Result<JoinSet<()>> {
    let default = &cfg.host.default_pubsub;
    let mut tasks = JoinSet::new();
    for f in &cfg.fan_in {
        let (to_pubsub, to) = f.to.resolve(default);
        let target = backend(backends, &to_pubsub)?;
        target.subscriber.subscribe_initialize(&to).await?;
        for from in &f.from {
            let (pubsub, topic) = from.resolve(default);
            let b = backend(backends, &pubsub)?;
            b.subscriber.subscribe_initialize(&topic).await?;
            let moving = fan_in(
                b.subscriber.as_ref(),
                target.publisher.clone(),
                std::slice::from_ref(&topic),
                &to,
                stop.clone(),
            )
            .await?;
            tracing::info!(pubsub, topic, to, "fan-in started");
            tasks.spawn(async move {
                moving.join_all().await;
            });
        }
    }
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
    // Last, so the components above that read a fanned-out topic get its first message too.
    for (pubsub, f) in fanned {
        f.begin().await?;
        for topic in f.topics() {
            tracing::info!(pubsub, topic, "fan-out started");
        }
    }
    Ok(tasks)
}
