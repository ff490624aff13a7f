//! Servers a test owns, for tests that make a server go away: no test may stop or restart a
//! server that other tests share.
//!
//! - [`proxy::Proxy`]: a TCP proxy in front of any server that cuts every connection through
//!   it on demand, so its clients see the server go away while the server itself stays up.
//! - [`private::PrivateServer`]: a broker or database started by the test on a free port with
//!   its own data directory, which it can stop and start again; stopped on drop.
//!
//! Both implement [`Outage`](crate::pubsub::conformance::Outage), what the conformance suite's
//! `reconnect` test uses to make a backend's server go away and come back.

use std::time::Duration;

use crate::error::{Error, Result};

pub mod certs;
pub mod private;
pub mod process;
pub mod proxy;

pub use private::{Kind, PrivateServer};
pub use proxy::Proxy;

/// Whether `127.0.0.1:port` accepts a TCP connection.
pub async fn port_open(port: u16) -> bool {
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_ok()
}

/// Polls `done` every 50 ms until it holds; an error naming `what` after `limit`.
pub async fn wait_for<F, Fut>(what: &str, limit: Duration, mut done: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if done().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Other(format!(
                "timed out after {limit:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The Kafka-API broker the tests use: `WASMILL_TEST_KAFKA_URL`, or the Tansu broker that
/// `scripts/ensure-services.sh` starts on 127.0.0.1:9092.
#[cfg(feature = "kafka")]
pub fn kafka_url() -> String {
    std::env::var("WASMILL_TEST_KAFKA_URL").unwrap_or_else(|_| "kafka://127.0.0.1:9092".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_a_closed_port_times_out_with_its_number() {
        let port = process::free_port().unwrap();
        let err = wait_for(&format!("port {port}"), Duration::from_millis(250), || {
            port_open(port)
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains(&format!("port {port}")), "{err}");
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        wait_for("the port", Duration::from_secs(5), || port_open(port))
            .await
            .unwrap();
        drop(l);
    }
}
