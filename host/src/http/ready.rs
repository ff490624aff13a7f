//! `GET /readyz` (SPEC.md): `200` once every plugin is compiled and serving, else `503`
//! naming what is still compiling (`pending`) or failed. A configured handler whose file was
//! deleted (`stopped`) has no plugin to wait for and does not hold readiness back.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::ApiState;
use crate::plugins::manager::HandlerInfo;
use crate::router::HandlerState;

/// What `/readyz` answers: whether the host is ready and, if not, why.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Readiness {
    /// Every plugin is compiled and serving.
    pub ready: bool,
    /// Handlers whose plugin is still compiling or starting, as `name (plugin)`.
    pub compiling: Vec<String>,
    /// Handlers that failed, as `name (plugin): reason`.
    pub failed: Vec<String>,
}

/// The readiness of the handlers `infos` (as `GET /handlers` lists them).
pub fn readiness(infos: &[HandlerInfo]) -> Readiness {
    let mut r = Readiness::default();
    for i in infos {
        let who = format!("{} ({})", i.name, i.plugin);
        match i.state {
            HandlerState::Pending => r.compiling.push(who),
            HandlerState::Failed => r.failed.push(match &i.last_error {
                Some(e) => format!("{who}: {e}"),
                None => who,
            }),
            HandlerState::Running | HandlerState::Stopped => {}
        }
    }
    r.ready = r.compiling.is_empty() && r.failed.is_empty();
    r
}

/// The `GET /readyz` handler: JSON [`Readiness`], `200` when ready, else `503`.
pub(super) async fn readyz(State(state): State<ApiState>) -> Response {
    let infos = state
        .plugins
        .as_ref()
        .map(|p| p.infos())
        .unwrap_or_default();
    let r = readiness(&infos);
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(r)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::manager::{Counts, TopicRef};

    fn info(name: &str, state: HandlerState, err: Option<&str>) -> HandlerInfo {
        HandlerInfo {
            name: name.into(),
            plugin: format!("{name}.wasm"),
            sha256: String::new(),
            loaded_at: None,
            subscribe: TopicRef {
                pubsub: "memory".into(),
                topic: "in".into(),
            },
            publish: None,
            state,
            counts: Counts::default(),
            last_error: err.map(str::to_string),
            reloads: 0,
            fuel_consumed: 0,
            middleware: Vec::new(),
            wasm_middleware: Vec::new(),
            sidecar: true,
        }
    }

    #[test]
    fn ready_when_every_handler_runs_or_has_no_file() {
        let r = readiness(&[
            info("a", HandlerState::Running, None),
            info("b", HandlerState::Stopped, None),
        ]);
        assert!(r.ready);
        assert!(readiness(&[]).ready);
    }

    #[test]
    fn names_what_is_compiling_and_what_failed() {
        let r = readiness(&[
            info("a", HandlerState::Running, None),
            info("big", HandlerState::Pending, None),
            info("bad", HandlerState::Failed, Some("missing export")),
        ]);
        assert!(!r.ready);
        assert_eq!(r.compiling, vec!["big (big.wasm)"]);
        assert_eq!(r.failed, vec!["bad (bad.wasm): missing export"]);
    }
}
