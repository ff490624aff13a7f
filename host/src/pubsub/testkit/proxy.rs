//! A fault-injecting TCP proxy: a client connects to the proxy instead of the server, and the
//! test cuts every connection through it whenever it likes, as if the server had gone away.
//!
//! Each accepted connection opens its own connection to the target and copies bytes both ways
//! until either side closes or the proxy cuts it. A cut closes both sockets (the client reads
//! end-of-stream, as from a server that shut down); for a while after, the proxy can also
//! refuse new connections, so a client's first reconnection attempts fail as they would while
//! the server is down.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::pubsub::conformance::Outage;

/// A TCP proxy on `127.0.0.1` in front of one target address; stops on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// How long [`Outage::go_away_and_come_back`] refuses new connections after the cut.
    pub outage: Duration,
}

struct Shared {
    target: SocketAddr,
    /// Cancelled when the proxy is dropped; every connection's token is a child of it.
    stop: CancellationToken,
    state: Mutex<State>,
    live: AtomicUsize,
}

struct State {
    /// The token of the connections open now; [`Proxy::cut`] cancels it and starts a new one.
    generation: CancellationToken,
    refuse_until: Option<Instant>,
}

impl Proxy {
    /// Listens on a free port of `127.0.0.1` and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Result<Proxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(|e| Error::io(format!("proxy to {target}: bind 127.0.0.1:0"), e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::io(format!("proxy to {target}: local address"), e))?;
        let stop = CancellationToken::new();
        let shared = Arc::new(Shared {
            target,
            state: Mutex::new(State {
                generation: stop.child_token(),
                refuse_until: None,
            }),
            stop,
            live: AtomicUsize::new(0),
        });
        tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Proxy {
            addr,
            shared,
            outage: Duration::from_millis(500),
        })
    }

    /// A proxy in front of the server of `url` (`scheme://[user[:password]@]host:port/…`),
    /// and `url` pointing at the proxy instead.
    pub async fn for_url(url: &str) -> Result<(Proxy, String)> {
        let (authority, _) = through(url, 0);
        let target = tokio::net::lookup_host(authority)
            .await
            .map_err(|e| Error::io(format!("proxy: resolve {authority}"), e))?
            .next()
            .ok_or_else(|| Error::Other(format!("proxy: {authority} has no address")))?;
        let proxy = Proxy::start(target).await?;
        let (_, proxied) = through(url, proxy.port());
        Ok((proxy, proxied))
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The port clients connect to (on `127.0.0.1`).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many connections pass through the proxy now.
    pub fn live(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    /// Closes every connection open now, both its sides; returns how many there were.
    /// Connections accepted afterwards are served as usual (unless refused).
    pub fn cut(&self) -> usize {
        let live = self.live();
        let mut state = self.shared.lock();
        let old = std::mem::replace(&mut state.generation, self.shared.stop.child_token());
        old.cancel();
        live
    }

    /// Closes every new connection at once (with a reset) for `period` from now.
    pub fn refuse_for(&self, period: Duration) {
        self.shared.lock().refuse_until = Some(Instant::now() + period);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.cancel();
    }
}

#[async_trait]
impl Outage for Proxy {
    /// Cuts every connection and refuses new ones for [`Proxy::outage`].
    async fn go_away_and_come_back(&mut self) -> Result<()> {
        self.refuse_for(self.outage);
        let cut = self.cut();
        tracing::debug!(cut, target = %self.shared.target, "proxy: connections cut");
        tokio::time::sleep(self.outage).await;
        Ok(())
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token a new connection runs under, or `None` while new connections are refused.
    fn admit(&self) -> Option<CancellationToken> {
        let state = self.lock();
        match state.refuse_until {
            Some(until) if Instant::now() < until => None,
            _ => Some(state.generation.clone()),
        }
    }
}

/// The `host:port` of `url`, and `url` with it replaced by `127.0.0.1:port`.
fn through(url: &str, port: u16) -> (&str, String) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let start = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |i| after_scheme + i + 1);
    let end = url[start..]
        .find(['/', '?'])
        .map_or(url.len(), |i| start + i);
    let proxied = format!("{}127.0.0.1:{port}{}", &url[..start], &url[end..]);
    (&url[start..end], proxied)
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = tokio::select! {
            _ = shared.stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(e) => {
                    tracing::debug!("proxy: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        match shared.admit() {
            Some(token) => {
                tokio::spawn(forward(client, shared.clone(), token));
            }
            None => {
                // A reset, as a client sees from a port nobody listens on.
                let _ = client.set_zero_linger();
                drop(client);
            }
        }
    }
}

/// Copies bytes both ways between `client` and a new connection to the target until one side
/// closes or `token` is cancelled; then both sockets close.
async fn forward(mut client: TcpStream, shared: Arc<Shared>, token: CancellationToken) {
    let Ok(mut upstream) = TcpStream::connect(shared.target).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    shared.live.fetch_add(1, Ordering::SeqCst);
    tokio::select! {
        _ = token.cancelled() => {}
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server on a free port; it runs until the test ends.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(text).await?;
        let mut buf = vec![0; text.len()];
        s.read_exact(&mut buf).await?;
        Ok(buf)
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(Instant::now() < deadline, "condition not met in 5 s");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn a_url_is_pointed_at_the_proxy() {
        assert_eq!(
            through("amqp://guest:guest@localhost:5672/%2f", 4000),
            (
                "localhost:5672",
                "amqp://guest:guest@127.0.0.1:4000/%2f".into()
            )
        );
        assert_eq!(
            through("redis://127.0.0.1:6379", 4001),
            ("127.0.0.1:6379", "redis://127.0.0.1:4001".into())
        );
        assert_eq!(
            through("mqtt://h:1883?x=1", 4002),
            ("h:1883", "mqtt://127.0.0.1:4002?x=1".into())
        );
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_until_a_cut_closes_the_connection() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        let mut b = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"hello").await.unwrap(), b"hello");
        assert_eq!(round_trip(&mut b, b"world").await.unwrap(), b"world");
        wait_until(|| proxy.live() == 2).await;

        assert_eq!(proxy.cut(), 2);
        for s in [&mut a, &mut b] {
            let mut buf = [0; 8];
            let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("the cut connection ends");
            assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        }
        wait_until(|| proxy.live() == 0).await;

        // The proxy itself stays up: a new connection works.
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut c, b"again").await.unwrap(), b"again");
    }

    #[tokio::test]
    async fn new_connections_are_refused_for_the_outage_then_served() {
        let mut proxy = Proxy::start(echo_server().await).await.unwrap();
        proxy.outage = Duration::from_millis(400);
        let mut before = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut before, b"x").await.unwrap(), b"x");
        let addr = proxy.addr();
        let during = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut s = TcpStream::connect(addr).await?;
            round_trip(&mut s, b"refused?").await
        });
        let started = Instant::now();
        proxy.go_away_and_come_back().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(400));
        assert!(
            during.await.unwrap().is_err(),
            "a connection during the outage was served"
        );
        assert!(
            round_trip(&mut before, b"y").await.is_err(),
            "the connection from before the outage survived it"
        );
        let mut after = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut after, b"z").await.unwrap(), b"z");
    }

    #[tokio::test]
    async fn dropping_the_proxy_closes_its_port_and_connections() {
        let proxy = Proxy::start(echo_server().await).await.unwrap();
        let addr = proxy.addr();
        let mut s = TcpStream::connect(addr).await.unwrap();
        assert_eq!(round_trip(&mut s, b"x").await.unwrap(), b"x");
        drop(proxy);
        let mut buf = [0; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the connection ends with the proxy");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        wait_until(|| std::net::TcpStream::connect(addr).is_err()).await;
    }
}
