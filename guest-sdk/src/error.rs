//! [`Error`]: why a message could not be handled.

use std::fmt;

use crate::wit;

/// Why a message could not be handled: a reason for the logs and the poison queue, and whether
/// trying again may help.
///
/// The host's Retry middleware retries a [`retryable`](Error::retryable) error and gives up at
/// once on a [`permanent`](Error::permanent) one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    reason: String,
    retryable: bool,
}

impl Error {
    /// An error that may go away if the message is handled again (a busy service, a timeout).
    pub fn retryable(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: true,
        }
    }

    /// An error that will happen again whatever the number of tries (a malformed payload).
    pub fn permanent(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: false,
        }
    }

    /// The human-readable reason.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Whether trying again may help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Error {}

impl From<wit::HandlerError> for Error {
    fn from(e: wit::HandlerError) -> Self {
        Self {
            reason: e.reason,
            retryable: e.retryable,
        }
    }
}

impl From<Error> for wit::HandlerError {
    fn from(e: Error) -> Self {
        Self {
            reason: e.reason,
            retryable: e.retryable,
        }
    }
}

/// Turns any `Result` whose error can be displayed into a `Result<T, Error>`, prefixing the
/// reason, so that `?` works in a handler:
///
/// ```
/// use wasmill_guest::{Error, ResultExt};
///
/// fn parse(payload: &[u8]) -> Result<u32, Error> {
///     let text = std::str::from_utf8(payload).permanent("payload is not utf-8")?;
///     text.trim().parse().permanent("invalid number")
/// }
///
/// assert_eq!(parse(b"42"), Ok(42));
/// let err = parse(b"x").unwrap_err();
/// assert_eq!(err.reason(), "invalid number: invalid digit found in string");
/// assert!(!err.is_retryable());
/// ```
pub trait ResultExt<T> {
    /// Maps the error to [`Error::permanent`] with the reason `"{what}: {error}"`.
    fn permanent(self, what: &str) -> Result<T, Error>;
    /// Maps the error to [`Error::retryable`] with the reason `"{what}: {error}"`.
    fn retryable(self, what: &str) -> Result<T, Error>;
}

impl<T, E: fmt::Display> ResultExt<T> for Result<T, E> {
    fn permanent(self, what: &str) -> Result<T, Error> {
        self.map_err(|e| Error::permanent(format!("{what}: {e}")))
    }

    fn retryable(self, what: &str) -> Result<T, Error> {
        self.map_err(|e| Error::retryable(format!("{what}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constructors_set_the_retry_flag() {
        let r = Error::retryable("busy");
        assert!(r.is_retryable());
        assert_eq!(r.reason(), "busy");
        let p = Error::permanent("bad input");
        assert!(!p.is_retryable());
        assert_eq!(p.to_string(), "bad input");
    }

    #[test]
    fn converts_to_and_from_the_wit_record() {
        let w: wit::HandlerError = Error::permanent("nope").into();
        assert_eq!(w.reason, "nope");
        assert!(!w.retryable);
        let back: Error = wit::HandlerError {
            reason: "again".into(),
            retryable: true,
        }
        .into();
        assert_eq!(back, Error::retryable("again"));
    }

    #[test]
    fn result_ext_prefixes_the_reason() {
        let r: Result<(), &str> = Err("boom");
        assert_eq!(
            r.retryable("calling x"),
            Err(Error::retryable("calling x: boom"))
        );
        let ok: Result<u8, &str> = Ok(1);
        assert_eq!(ok.permanent("never"), Ok(1));
    }
}
