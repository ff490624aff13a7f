//! The routes of the components built on the pub/sub traits: request-reply
//! (`POST /topics/{topic}?reply=1`) and poison replay (`POST /topics/{topic}/replay`).

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::envelope::Envelope;
use super::{ApiState, PubSubQuery, error};
use crate::components::{replay, reply};
use crate::message::Message;

/// The wait for a reply when the request names none.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest wait a request may ask for.
pub const MAX_REPLY_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a replay of a durable backend's poison topic waits for one more message.
const REPLAY_IDLE: Duration = Duration::from_millis(500);

/// The wait `timeout` (`"5s"`, `"250ms"`) asks for, bounded.
pub fn reply_timeout(timeout: Option<&str>) -> Result<Duration, String> {
    let Some(t) = timeout else {
        return Ok(DEFAULT_REPLY_TIMEOUT);
    };
    let d = humantime::parse_duration(t).map_err(|e| format!("timeout={t:?}: {e}"))?;
    if d.is_zero() || d > MAX_REPLY_TIMEOUT {
        return Err(format!(
            "timeout={t:?}: must be more than 0 and at most {}",
            humantime::format_duration(MAX_REPLY_TIMEOUT)
        ));
    }
    Ok(d)
}

/// Whether a `reply=` value asks for a reply.
pub fn wants_reply(value: Option<&str>) -> bool {
    matches!(value, Some("1" | "true" | "yes" | ""))
}

/// Publishes `msg` as a request and answers with its reply: `200` and the reply's envelope,
/// `502` with the reason when the handler failed, `504` when no reply came in time.
pub(super) async fn publish_and_wait(
    state: &ApiState,
    q: &PubSubQuery,
    topic: &str,
    msg: Message,
) -> Response {
    let backend = match state.backend(q) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let timeout = match reply_timeout(q.timeout.as_deref()) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match reply::request(backend, topic, msg, timeout).await {
        Ok(r) => {
            let failed = r.metadata.get_opt(reply::REPLY_ERROR).map(str::to_string);
            let envelope = Envelope::from(&r);
            match failed {
                None => (StatusCode::OK, axum::Json(envelope)).into_response(),
                Some(reason) => (
                    StatusCode::BAD_GATEWAY,
                    axum::Json(serde_json::json!({ "error": reason, "reply": envelope })),
                )
                    .into_response(),
            }
        }
        Err(e @ crate::Error::Timeout(_)) => error(StatusCode::GATEWAY_TIMEOUT, e),
        Err(e @ crate::Error::Limit(_)) => error(StatusCode::TOO_MANY_REQUESTS, e),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// The query of `POST /topics/{topic}/replay`.
#[derive(Debug, Deserialize)]
pub(super) struct ReplayQuery {
    pubsub: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
}

/// `POST /topics/{poison_topic}/replay`: sends the poisoned messages back to their topic;
/// answers `{"replayed": N, "skipped": [...]}`.
pub(super) async fn replay_route(
    State(state): State<ApiState>,
    Path(topic): Path<String>,
    Query(q): Query<ReplayQuery>,
) -> Response {
    let backend = match state.backend(&PubSubQuery {
        pubsub: q.pubsub.clone(),
        reply: None,
        timeout: None,
    }) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let to = q.to.as_deref();
    let result = match state.poison.take(&backend.name, &topic, q.limit) {
        // An in-memory poison topic the host keeps.
        Some(held) => match replay::replay_messages(held, to, backend.publisher.as_ref()).await {
            Ok((report, left)) => {
                state.poison.put_back(&backend.name, &topic, left);
                Ok(report)
            }
            Err(e) => Err(e),
        },
        // A durable backend's topic, read with the backend's consumer group.
        None => {
            async {
                let mut sub = backend.subscriber.subscribe(&topic).await?;
                replay::drain(
                    &mut sub,
                    to,
                    backend.publisher.as_ref(),
                    q.limit,
                    REPLAY_IDLE,
                )
                .await
            }
            .await
        }
    };
    match result {
        Ok(report) => (StatusCode::OK, axum::Json(report)).into_response(),
        Err(e) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("replay {topic}: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_values_and_timeouts() {
        assert!(wants_reply(Some("1")) && wants_reply(Some("true")) && wants_reply(Some("")));
        assert!(!wants_reply(None) && !wants_reply(Some("0")));
        assert_eq!(reply_timeout(None).unwrap(), DEFAULT_REPLY_TIMEOUT);
        assert_eq!(
            reply_timeout(Some("250ms")).unwrap(),
            Duration::from_millis(250)
        );
        assert!(reply_timeout(Some("0s")).unwrap_err().contains("timeout"));
        assert!(reply_timeout(Some("1h")).is_err());
        assert!(reply_timeout(Some("soon")).is_err());
    }
}
