//! The parts backends share, so each backend folder holds only what is its own: the reconnect
//! policy ([`backoff`]), URLs in logs without passwords ([`url`]), TLS to brokers ([`tls`]).
//! The read-ahead source ([`super::read_ahead`]) and the ack batcher ([`super::ack_batcher`])
//! are shared the same way.

pub mod backoff;
#[cfg(feature = "tls")]
pub mod tls;
pub mod url;

pub use backoff::Reconnect;
pub use url::redacted;
