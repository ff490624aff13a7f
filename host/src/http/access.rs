//! Who may use the API, checked before any route (see docs/SECURITY.md, "The HTTP API").
//!
//! 1. `Host` must name this host: an IP literal, `localhost`, or a name in `[host]
//!    allowed_hosts`; anything else is refused with 403. This defeats DNS rebinding: a page on
//!    `evil.example` whose name is made to resolve to 127.0.0.1 still sends
//!    `Host: evil.example`. (An IP literal cannot be rebound: a page whose origin is an IP
//!    literal is served by that address itself.)
//! 2. A request with an `Origin` (a browser's, from a page) must come from the host's own
//!    origin (`http://` + its `Host`) or one in `[host] allowed_origins`; else 403. A page
//!    a developer visits cannot publish into their local host, even with a "simple" request
//!    that needs no preflight. Requests without `Origin` (curl, the CLI, other programs) pass.
//!    An allowed cross-origin request gets CORS headers, and its preflight an answer.
//! 3. With a token configured (`[host] token` or `WASMILL_TOKEN`), every route but
//!    `/healthz` needs `Authorization: Bearer TOKEN`; else 401.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error;

/// Routes open without the token.
const OPEN_PATHS: [&str; 1] = ["/healthz"];

/// The access rules of the API.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// The bearer token every route but `/healthz` requires, if any.
    pub token: Option<String>,
    /// Origins (`scheme://host[:port]`) allowed besides the host's own.
    pub allowed_origins: Vec<String>,
    /// Names allowed in `Host` besides IP literals and `localhost` (`name` or `name:port`).
    pub allowed_hosts: Vec<String>,
}

/// The name part of a `Host` value: `[::1]:8080` → `[::1]`, `a.example:80` → `a.example`.
fn host_name(value: &str) -> &str {
    if value.starts_with('[') {
        return value.find(']').map_or(value, |end| &value[..=end]);
    }
    match value.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => value,
    }
}

/// Compares without returning early, so the time taken says nothing about where a guess
/// went wrong.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Access {
    /// Whether `value` (a `Host` header) names this host.
    pub fn host_allowed(&self, value: &str) -> bool {
        let name = host_name(value.trim());
        let is_ip = name
            .strip_prefix('[')
            .and_then(|n| n.strip_suffix(']'))
            .map_or_else(
                || name.parse::<Ipv4Addr>().is_ok(),
                |n| n.parse::<Ipv6Addr>().is_ok(),
            );
        is_ip
            || name.eq_ignore_ascii_case("localhost")
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(name) || h.eq_ignore_ascii_case(value.trim()))
    }

    /// Whether `origin` is listed in `allowed_origins` (a trailing `/` ignored).
    fn origin_listed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/');
        self.allowed_origins
            .iter()
            .any(|o| o.trim_end_matches('/').eq_ignore_ascii_case(origin))
    }

    /// Whether `headers` carry the bearer token (always when none is configured).
    pub fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().split_once(' '))
            .is_some_and(|(scheme, credential)| {
                scheme.eq_ignore_ascii_case("bearer")
                    && constant_time_eq(credential.trim().as_bytes(), token.as_bytes())
            })
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The middleware applying [`Access`] to every request.
pub async fn guard(State(access): State<Arc<Access>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    let host = header_str(headers, header::HOST)
        .map(str::to_string)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    if let Some(host) = &host
        && !access.host_allowed(host)
    {
        return error(
            StatusCode::FORBIDDEN,
            format!(
                "Host {host:?} is not this host; add its name to [host] allowed_hosts to serve it"
            ),
        );
    }
    let mut cors = None;
    if let Some(origin) = headers.get(header::ORIGIN) {
        let text = origin.to_str().unwrap_or_default();
        let same_origin = host.as_deref().is_some_and(|h| {
            ["http://", "https://"]
                .iter()
                .any(|scheme| text.eq_ignore_ascii_case(&format!("{scheme}{h}")))
        });
        if !same_origin {
            if !access.origin_listed(text) {
                return error(
                    StatusCode::FORBIDDEN,
                    format!(
                        "Origin {text:?} is not allowed; add it to [host] allowed_origins to let \
                         its pages use this API"
                    ),
                );
            }
            cors = Some(origin.clone());
        }
    }
    if let Some(origin) = &cors
        && req.method() == Method::OPTIONS
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
    {
        let mut r = StatusCode::NO_CONTENT.into_response();
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST"),
        );
        h.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        h.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        h.insert(header::VARY, HeaderValue::from_static("origin"));
        return r;
    }
    let mut r = if OPEN_PATHS.contains(&req.uri().path()) || access.authorized(req.headers()) {
        next.run(req).await
    } else {
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: send Authorization: Bearer TOKEN ([host] token or \
             WASMILL_TOKEN)",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"wasmill\""),
        );
        r
    };
    if let Some(origin) = cors {
        r.headers_mut()
            .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        r.headers_mut()
            .append(header::VARY, HeaderValue::from_static("origin"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_that_name_this_host() {
        let a = Access {
            allowed_hosts: vec!["wasmill.internal".into()],
            ..Access::default()
        };
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "[::1]:8080",
            "10.0.0.7:80",
            "localhost:8080",
            "LOCALHOST",
            "wasmill.internal:8080",
            "Wasmill.Internal",
        ] {
            assert!(a.host_allowed(ok), "{ok} refused");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[::1",
            "",
        ] {
            assert!(!a.host_allowed(bad), "{bad} allowed");
        }
    }

    #[test]
    fn the_token_is_compared_whole() {
        let a = Access {
            token: Some("s3cret-token-0123456789".into()),
            ..Access::default()
        };
        let with = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::AUTHORIZATION, v.parse().unwrap());
            a.authorized(&h)
        };
        assert!(with("Bearer s3cret-token-0123456789"));
        assert!(with("bearer s3cret-token-0123456789"));
        assert!(!with("Bearer s3cret-token-012345678"));
        assert!(!with("Bearer s3cret-token-01234567890"));
        assert!(!with("Basic s3cret-token-0123456789"));
        assert!(!a.authorized(&HeaderMap::new()));
        assert!(Access::default().authorized(&HeaderMap::new()));
    }
}
