//! The library's error types.
//!
//! [`Error`] is what the library's fallible operations return (pub/sub, router, config, wasm
//! loading). [`HandlerError`] is what a handler returns for one message: it travels through the
//! middleware chain, decides between retry and poison queue, and ends as a nack.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error usable as a `#[source]`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors returned by the Wasmill library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A pub/sub backend failed: connecting, publishing, subscribing or acknowledging.
    #[error("{backend} pub/sub: {message}")]
    PubSub {
        /// The backend's kind, for example `redis`.
        backend: &'static str,
        /// What failed, naming the topic or URL involved.
        message: String,
        /// The client library's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// The publisher or subscriber was closed before or during the call.
    #[error("{0} pub/sub is closed")]
    Closed(&'static str),
    /// A handler with this name is already registered with the router.
    #[error("handler {0:?} is already registered")]
    DuplicateHandler(String),
    /// `Router::run` was called on a router that is running or has run.
    #[error("router is already running")]
    AlreadyRunning,
    /// The router did not finish its in-flight messages within `close_timeout`.
    #[error("router close timed out after {0:?} with messages still in flight")]
    CloseTimeout(Duration),
    /// A router plugin failed at start, so the router did not run.
    #[error("router plugin {name:?} failed: {message}")]
    Plugin {
        /// The plugin's name.
        name: String,
        /// Why it failed.
        message: String,
    },
    /// A configuration file or value is invalid.
    #[error("{0}")]
    Config(String),
    /// A WebAssembly component could not be loaded, validated or run.
    #[error("plugin {plugin}: {message}")]
    Wasm {
        /// The plugin file or name.
        plugin: String,
        /// What went wrong.
        message: String,
    },
    /// An I/O error with the path or operation it concerns.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, naming the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A configured bound was reached (too many topics, connections, ...); the message names
    /// the setting. Callers may retry later; the HTTP API answers it with 429.
    #[error("{0}")]
    Limit(String),
    /// Something awaited did not happen in time (a request's reply); the message says what.
    #[error("{0}")]
    Timeout(String),
    /// Anything else, with a message that names what failed.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The error with its sources, `: `-separated, for logs: `Display` shows only the
    /// outermost message.
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            out.push_str(": ");
            out.push_str(&s.to_string());
            source = s.source();
        }
        out
    }

    /// A backend error with the client library's error as its source.
    pub fn pubsub(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::PubSub {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A backend error without an underlying source.
    pub fn pubsub_msg(backend: &'static str, message: impl Into<String>) -> Self {
        Error::PubSub {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O error that says what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// The result type of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure a [`HandlerError`] is; middleware and metrics branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The handler itself reported a failure.
    Handler,
    /// The handler panicked (native) and a recoverer turned it into an error.
    Panic,
    /// The handler ran past its deadline.
    Timeout,
    /// A WebAssembly handler used up its fuel budget.
    FuelExhausted,
    /// A WebAssembly handler hit its memory cap.
    MemoryLimit,
    /// A WebAssembly handler trapped.
    Trap,
    /// The handler produced more output than allowed.
    OutputLimit,
    /// The handler's output could not be published.
    Publish,
    /// The circuit breaker is open and failed fast.
    CircuitOpen,
    /// Failure injected on purpose (RandomFail).
    Injected,
}

impl ErrorKind {
    /// A short stable name, used in metrics labels and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Handler => "handler",
            ErrorKind::Panic => "panic",
            ErrorKind::Timeout => "timeout",
            ErrorKind::FuelExhausted => "fuel_exhausted",
            ErrorKind::MemoryLimit => "memory_limit",
            ErrorKind::Trap => "trap",
            ErrorKind::OutputLimit => "output_limit",
            ErrorKind::Publish => "publish",
            ErrorKind::CircuitOpen => "circuit_open",
            ErrorKind::Injected => "injected",
        }
    }
}

/// The error a handler returns for one message.
///
/// It is cheap to clone (middleware such as Duplicator and CircuitBreaker keep copies), carries
/// a human-readable `reason` (what lands in `reason_poisoned`), a [`ErrorKind`], and whether
/// retrying may help (a WASM guest says so through its WIT error; Retry honours it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerError {
    kind: ErrorKind,
    reason: Arc<str>,
    retryable: bool,
}

impl HandlerError {
    /// A retryable handler failure with this reason.
    pub fn new(reason: impl fmt::Display) -> Self {
        Self::with_kind(ErrorKind::Handler, reason)
    }

    /// A failure of the given kind; retryable unless changed with [`HandlerError::permanent`].
    pub fn with_kind(kind: ErrorKind, reason: impl fmt::Display) -> Self {
        HandlerError {
            kind,
            reason: reason.to_string().into(),
            retryable: true,
        }
    }

    /// A handler failure that retrying cannot fix (for example a malformed payload).
    pub fn permanent(reason: impl fmt::Display) -> Self {
        Self::new(reason).with_retryable(false)
    }

    /// The same error with `retryable` set.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether retrying may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for HandlerError {}

impl From<Error> for HandlerError {
    fn from(e: Error) -> Self {
        HandlerError::new(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handler_error_keeps_reason_kind_and_retryable() {
        let e = HandlerError::with_kind(ErrorKind::FuelExhausted, "fuel exhausted");
        assert_eq!(e.to_string(), "fuel exhausted");
        assert_eq!(e.kind(), ErrorKind::FuelExhausted);
        assert!(e.is_retryable());
        let p = HandlerError::permanent("bad json");
        assert!(!p.is_retryable());
        assert_eq!(p.kind(), ErrorKind::Handler);
    }

    #[test]
    fn pubsub_error_names_backend_and_source() {
        let e = Error::pubsub(
            "redis",
            "connect redis://x",
            std::io::Error::other("refused"),
        );
        assert_eq!(e.to_string(), "redis pub/sub: connect redis://x");
        assert!(std::error::Error::source(&e).is_some());
        assert_eq!(e.report(), "redis pub/sub: connect redis://x: refused");
        assert_eq!(
            Error::pubsub_msg("nats", "no stream").report(),
            "nats pub/sub: no stream"
        );
    }
}
