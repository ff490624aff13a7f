//! Components built on the [`Publisher`](crate::Publisher) / [`Subscriber`](crate::Subscriber)
//! traits only, so they work on every backend: Watermill's components around the router
//! (`../shared/reference/watermill.md` section 6).
//!
//! - [`cqrs`]: command and event buses and processors, handlers chosen by message name.
//! - [`delay`]: delayed messages (`_watermill_delayed_until`) and a delaying publisher.
//! - [`fan`]: fan-in (several topics moved into one) and fan-out (one subscription shared by
//!   any number of local subscribers).
//! - [`forwarder`]: the transactional outbox: messages stored on one backend (in the business
//!   write's transaction) and forwarded to their topic on another.
//! - [`requeue`]: failed messages sent back to their topic after a delay, counted, at most
//!   `max_requeues` times.
//! - [`replay`]: sends poisoned messages back to the topic they failed on.
//! - [`poison_keeper`]: holds what is poisoned on the in-memory backend, whose topics keep
//!   nothing without a subscriber, so that it can be replayed.
//! - [`reply`]: request-reply: a request carries the topic its reply goes to; the [`reply::Reply`]
//!   middleware publishes the handler's result there; [`reply::request`] waits for it.

pub mod cqrs;
pub mod delay;
pub mod fan;
pub mod forwarder;
pub mod poison_keeper;
pub mod replay;
pub mod reply;
pub mod requeue;
#[cfg(test)]
mod test_util;

/// The next message of `sub`, or `None` once it ends or `stop` is cancelled: the loop head of
/// every component that drains a subscription.
async fn recv_until(
    sub: &mut crate::pubsub::Subscription,
    stop: &tokio_util::sync::CancellationToken,
) -> Option<crate::message::Message> {
    tokio::select! {
        m = sub.recv() => m,
        _ = stop.cancelled() => None,
    }
}
