//! Request-reply over any backend.
//!
//! A request is an ordinary message with one more metadata key, [`REPLY_TO`]: the topic its
//! reply goes to, on the backend the request was published to. Any handler answers requests
//! unchanged: the [`Reply`] middleware, which the host puts around every handler, publishes the
//! handler's result there — its output messages (marked [`REPLY_FOR`] with the request's
//! uuid), an empty message when it produced none, or, when it failed for good, a message whose
//! [`REPLY_ERROR`] holds the reason. It sits inside the failure policy's poison queue and
//! outside its retry, so a retried request answers once, with the last attempt's result.
//! [`request`] publishes a request and waits for its reply on a tail subscription of its own
//! (its consumer group removed afterwards, as an SSE client's is).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::{Error, Result};
use crate::message::Message;
use crate::pubsub::DynPublisher;
use crate::pubsub::registry::Backend;
use crate::router::{BoxHandler, Handler, HandlerResult, Middleware};

/// Metadata of a request: the topic its reply goes to.
pub const REPLY_TO: &str = "_wasmill_reply_to";
/// Metadata of a reply: the uuid of the request it answers.
pub const REPLY_FOR: &str = "_wasmill_reply_for";
/// Metadata of a reply to a request whose handler failed: the reason.
pub const REPLY_ERROR: &str = "_wasmill_reply_error";
/// Metadata of an output meant for the reply only: a middleware inside [`Reply`] that answers
/// for the handler (the CQRS middleware: the events a command emitted, or why a command was
/// ignored) returns such messages; [`Reply`] sends them in the reply, first, and takes them out
/// of the result, so they are not published to the handler's topic.
pub const REPLY_ONLY: &str = "_wasmill_reply_only";

/// Publishes a handler's result to the topic a request names in [`REPLY_TO`], on `publisher`
/// (the backend the handler subscribes to). Messages without the key pass untouched.
#[derive(Clone)]
pub struct Reply {
    publisher: DynPublisher,
}

impl Reply {
    /// Replies go to `publisher`.
    pub fn new(publisher: DynPublisher) -> Reply {
        Reply { publisher }
    }
}

struct Replying {
    publisher: DynPublisher,
    next: BoxHandler,
}

/// The reply messages for the result of the request `uuid`.
fn replies(uuid: &str, result: &HandlerResult) -> Vec<Message> {
    match result {
        Ok(out) if !out.is_empty() => out
            .iter()
            .map(|m| m.copy().with_metadata(REPLY_FOR, uuid))
            .collect(),
        Ok(_) => vec![Message::new(bytes::Bytes::new()).with_metadata(REPLY_FOR, uuid)],
        Err(e) => vec![
            Message::new(e.reason().to_string())
                .with_metadata(REPLY_FOR, uuid)
                .with_metadata(REPLY_ERROR, e.reason()),
        ],
    }
}

#[async_trait]
impl Handler for Replying {
    async fn handle(&self, msg: Message) -> HandlerResult {
        let Some(to) = msg.metadata.get_opt(REPLY_TO).map(str::to_string) else {
            return self.next.handle(msg).await;
        };
        let uuid = msg.uuid.clone();
        let mut result = self.next.handle(msg).await;
        let mut reply_only = Vec::new();
        if let Ok(out) = &mut result {
            // Messages meant for the reply only leave the result.
            let (only, rest): (Vec<_>, Vec<_>) = std::mem::take(out)
                .into_iter()
                .partition(|m| m.metadata.contains(REPLY_ONLY));
            *out = rest;
            reply_only = only;
            // The handler's outputs go on to its publish topic as well, but they are not
            // requests: without the key, a handler downstream does not answer them again.
            for m in out.iter_mut() {
                m.metadata.remove(REPLY_TO);
            }
        }
        let mut answer = Vec::new();
        for mut m in reply_only {
            m.metadata.remove(REPLY_ONLY);
            m.metadata.remove(REPLY_TO);
            answer.push(m.with_metadata(REPLY_FOR, &uuid));
        }
        // The reply-only messages stand for an empty result; anything else is answered too.
        let only = !answer.is_empty() && matches!(&result, Ok(out) if out.is_empty());
        if !only {
            answer.extend(replies(&uuid, &result));
        }
        if let Err(e) = self.publisher.publish(&to, answer).await {
            tracing::warn!(request = %uuid, reply_to = %to, "could not publish the reply: {e}");
        }
        result
    }

    /// A batch without requests passes through whole; with one, message by message.
    async fn handle_batch(&self, msgs: Vec<Message>) -> Vec<HandlerResult> {
        if msgs.iter().all(|m| m.metadata.get_opt(REPLY_TO).is_none()) {
            return self.next.handle_batch(msgs).await;
        }
        let mut out = Vec::with_capacity(msgs.len());
        for msg in msgs {
            out.push(self.handle(msg).await);
        }
        out
    }
}

impl Middleware for Reply {
    fn wrap(&self, next: BoxHandler) -> BoxHandler {
        Arc::new(Replying {
            publisher: self.publisher.clone(),
            next,
        })
    }

    fn name(&self) -> &str {
        "reply"
    }
}

/// Publishes `msg` to `topic` on `backend` as a request and returns the first reply, or an
/// [`Error::Timeout`] after `timeout`. The reply topic is `<topic>.reply.<id>`, read
/// by a tail subscription of the request's own that is ended afterwards.
pub async fn request(
    backend: &Backend,
    topic: &str,
    mut msg: Message,
    timeout: Duration,
) -> Result<Message> {
    let reply_topic = format!("{topic}.reply.{}", uuid::Uuid::new_v4().simple());
    let tail = backend.tail_subscriber().await?;
    tail.subscribe_initialize(&reply_topic).await?;
    let mut sub = tail.subscribe(&reply_topic).await?;
    msg.metadata.set(REPLY_TO, reply_topic.clone());
    let uuid = msg.uuid.clone();
    let outcome = async {
        backend.publisher.publish(topic, vec![msg]).await?;
        loop {
            match tokio::time::timeout(timeout, sub.recv()).await {
                Err(_) => {
                    return Err(Error::Timeout(format!(
                        "no reply to {uuid} on {topic} within {}",
                        humantime::format_duration(timeout)
                    )));
                }
                Ok(None) => {
                    return Err(Error::Other(format!(
                        "the reply subscription to {reply_topic} ended"
                    )));
                }
                Ok(Some(reply)) => {
                    reply.ack();
                    if reply.metadata.get(REPLY_FOR) == uuid {
                        return Ok(reply);
                    }
                }
            }
        }
    }
    .await;
    drop(sub);
    if let Err(e) = tail.end_tail(&reply_topic).await {
        tracing::warn!(topic = %reply_topic, "could not remove a reply subscription: {e}");
    }
    let _ = tail.remove_topic(&reply_topic).await;
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::HandlerError;
    use crate::pubsub::registry;
    use crate::router::handler_fn;

    async fn memory() -> Backend {
        registry::connect("memory", "memory", &toml::Table::new())
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn outputs_are_the_reply_and_lose_the_request_key() {
        let b = memory().await;
        let mut replies = b.subscriber.subscribe("r").await.unwrap();
        let h = Reply::new(b.publisher.clone()).wrap(handler_fn(|m: Message| async move {
            Ok(vec![
                Message::new(m.payload.to_ascii_uppercase()).with_metadata(REPLY_TO, "leaked"),
            ])
        }));
        let out = h
            .handle(Message::with_uuid("q1", "hi").with_metadata(REPLY_TO, "r"))
            .await
            .unwrap();
        assert!(
            !out[0].metadata.contains(REPLY_TO),
            "a downstream handler would answer again"
        );
        let r = replies.recv().await.unwrap();
        assert_eq!(&r.payload[..], b"HI");
        assert_eq!(r.metadata.get(REPLY_FOR), "q1");
        assert!(!r.metadata.contains(REPLY_TO));
    }

    #[tokio::test]
    async fn a_failure_and_an_empty_result_are_answered_too() {
        let b = memory().await;
        let mut replies = b.subscriber.subscribe("r").await.unwrap();
        let failing = Reply::new(b.publisher.clone()).wrap(handler_fn(|_m| async {
            Err(HandlerError::new("no stock"))
        }));
        let req = Message::with_uuid("q2", "x").with_metadata(REPLY_TO, "r");
        assert!(failing.handle(req).await.is_err());
        let r = replies.recv().await.unwrap();
        r.ack();
        assert_eq!(r.metadata.get(REPLY_ERROR), "no stock");
        let empty = Reply::new(b.publisher.clone()).wrap(handler_fn(|_m| async { Ok(vec![]) }));
        let req = Message::with_uuid("q3", "x").with_metadata(REPLY_TO, "r");
        empty.handle(req).await.unwrap();
        let r = replies.recv().await.unwrap();
        assert_eq!(r.metadata.get(REPLY_FOR), "q3");
        assert!(r.payload.is_empty() && !r.metadata.contains(REPLY_ERROR));
    }

    #[tokio::test]
    async fn reply_only_outputs_answer_first_and_leave_the_result() {
        let b = memory().await;
        let mut replies = b.subscriber.subscribe("r").await.unwrap();
        let h = Reply::new(b.publisher.clone()).wrap(handler_fn(|_m| async {
            Ok(vec![
                Message::new("result"),
                Message::new("event").with_metadata(REPLY_ONLY, "1"),
            ])
        }));
        let req = Message::with_uuid("q4", "x").with_metadata(REPLY_TO, "r");
        let out = h.handle(req).await.unwrap();
        assert_eq!(out.len(), 1, "the reply-only message is not published on");
        assert_eq!(&out[0].payload[..], b"result");
        let first = replies.recv().await.unwrap();
        first.ack();
        assert_eq!(&first.payload[..], b"event");
        assert!(!first.metadata.contains(REPLY_ONLY));
        assert_eq!(first.metadata.get(REPLY_FOR), "q4");
        let second = replies.recv().await.unwrap();
        second.ack();
        assert_eq!(&second.payload[..], b"result");
        // Reply-only messages alone stand for the whole answer: no empty reply after them.
        let only = Reply::new(b.publisher.clone()).wrap(handler_fn(|_m| async {
            Ok(vec![Message::new("why").with_metadata(REPLY_ONLY, "1")])
        }));
        let req = Message::with_uuid("q5", "x").with_metadata(REPLY_TO, "r");
        assert!(only.handle(req).await.unwrap().is_empty());
        let r = replies.recv().await.unwrap();
        r.ack();
        assert_eq!(&r.payload[..], b"why");
        let none = tokio::time::timeout(Duration::from_millis(100), replies.recv()).await;
        assert!(none.is_err(), "an empty reply followed");
    }

    #[tokio::test]
    async fn a_message_that_is_no_request_gets_no_reply() {
        let b = memory().await;
        let mut all = b.subscriber.subscribe("r").await.unwrap();
        let h = Reply::new(b.publisher.clone()).wrap(handler_fn(|m| async { Ok(vec![m]) }));
        h.handle(Message::new("x")).await.unwrap();
        let got = tokio::time::timeout(Duration::from_millis(100), all.recv()).await;
        assert!(got.is_err(), "replied to a message that asked for nothing");
    }

    #[tokio::test]
    async fn request_waits_for_the_reply_and_times_out_without_one() {
        let b = memory().await;
        let mut incoming = b.subscriber.subscribe("svc").await.unwrap();
        let publisher = b.publisher.clone();
        tokio::spawn(async move {
            while let Some(m) = incoming.recv().await {
                let to = m.metadata.get(REPLY_TO).to_string();
                let r = Message::new(format!("re:{}", String::from_utf8_lossy(&m.payload)))
                    .with_metadata(REPLY_FOR, m.uuid.clone());
                m.ack();
                publisher.publish(&to, vec![r]).await.unwrap();
            }
        });
        let r = request(&b, "svc", Message::new("ping"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(&r.payload[..], b"re:ping");
        let e = request(&b, "nobody", Message::new("x"), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{e}");
        assert!(e.to_string().contains("nobody"), "{e}");
    }
}
