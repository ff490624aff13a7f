//! The API's connections, bounded so that no client can use up the host's descriptors or keep
//! `/healthz` from answering.
//!
//! - At most `max_connections` at once. At the bound, a new connection closes the one that has
//!   been idle (no request in flight, response streams included) the longest; when every one is
//!   busy, the new connection is closed at once. Either way the listener keeps accepting, so a
//!   flood of idle sockets cannot queue a real request behind it.
//! - A connection must send a complete request head within `header_timeout`, counted from when
//!   it connected or its previous response ended: idle keep-alive connections and slow
//!   senders of headers are closed.
//! - A request body must arrive completely within `body_timeout` (its request then fails).
//! - `max_connections` is kept below the process's descriptor limit (the soft limit is raised
//!   toward the hard one when needed; [`fit_descriptor_limit`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

/// The bounds on the API's connections (`[host]` `max_connections`, `header_timeout`,
/// `body_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnLimits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Time to send a complete request head, from connecting or the end of the previous
    /// response (the keep-alive idle timeout too).
    pub header_timeout: Duration,
    /// Time to send a complete request body, from the end of its head.
    pub body_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
        }
    }
}

/// Descriptors kept for everything but API connections: backends, plugins, the plugins
/// folder's watcher, files, the log.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// `max_connections` as the process can hold it: when its descriptor limit is below
/// `max_connections` + [`RESERVED_DESCRIPTORS`], the soft limit is raised toward the hard
/// one; if that is still too low, the bound is lowered to fit (and a warning logged).
#[allow(unsafe_code)] // getrlimit/setrlimit: libc calls on plain structs
pub fn fit_descriptor_limit(max_connections: usize) -> usize {
    let want = max_connections as u64 + RESERVED_DESCRIPTORS;
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct it is given and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return max_connections;
    }
    if lim.rlim_cur < want && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: want.min(lim.rlim_max),
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct it is given; raising the soft limit up to the
        // hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = raised.rlim_cur;
        }
    }
    let room = lim.rlim_cur.saturating_sub(RESERVED_DESCRIPTORS);
    if (max_connections as u64) <= room {
        return max_connections;
    }
    let fitted = room.max(1) as usize;
    tracing::warn!(
        "host.max_connections = {max_connections} does not fit the descriptor limit ({}) with \
         {RESERVED_DESCRIPTORS} kept for the rest: serving at most {fitted} connections (raise \
         `ulimit -n`)",
        lim.rlim_cur
    );
    fitted
}

/// One connection as the bound sees it.
struct ConnState {
    /// Requests in flight, their response bodies included.
    busy: AtomicUsize,
    /// When the connection last became idle, in ms since the tracker started.
    idle_since: AtomicU64,
    /// Cancelled to close the connection (after the request in flight, if any).
    close: CancellationToken,
    start: Instant,
}

impl ConnState {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Marks its connection busy while it lives (a request and its response body).
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(conn: Arc<ConnState>) -> Self {
        conn.busy.fetch_add(1, Ordering::SeqCst);
        Busy(conn)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle_since.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The open connections.
struct Tracker {
    max: usize,
    start: Instant,
    next: AtomicU64,
    conns: Mutex<HashMap<u64, Arc<ConnState>>>,
    /// Connections closed at once because every slot was busy.
    refused: AtomicU64,
    /// Idle connections closed to make room.
    evicted: AtomicU64,
}

impl Tracker {
    fn new(max: usize) -> Self {
        Tracker {
            max: max.max(1),
            start: Instant::now(),
            next: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            evicted: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnState>>> {
        // Each critical section is one insert, remove or scan: safe to reuse after a panic.
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a new connection closed with `stop`. At the bound, the connection idle the
    /// longest is told to close to make room; `None` when every connection is busy.
    fn admit(&self, stop: &CancellationToken) -> Option<(u64, Arc<ConnState>)> {
        let mut conns = self.lock();
        if conns.len() >= self.max {
            let idlest = conns
                .iter()
                .filter(|(_, c)| c.busy.load(Ordering::SeqCst) == 0)
                .min_by_key(|(id, c)| (c.idle_since.load(Ordering::SeqCst), **id))
                .map(|(id, _)| *id);
            let Some(id) = idlest else {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            if let Some(c) = conns.remove(&id) {
                c.close.cancel();
            }
            self.evicted.fetch_add(1, Ordering::Relaxed);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ConnState {
            busy: AtomicUsize::new(0),
            idle_since: AtomicU64::new(self.start.elapsed().as_millis() as u64),
            close: stop.child_token(),
            start: self.start,
        });
        conns.insert(id, conn.clone());
        Some((id, conn))
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// Logs a repeated warning at most every 10 s, with how many were not logged.
struct Throttled {
    last: Mutex<Option<Instant>>,
    skipped: AtomicU64,
}

impl Throttled {
    const fn new() -> Self {
        Throttled {
            last: Mutex::new(None),
            skipped: AtomicU64::new(0),
        }
    }

    fn warn(&self, message: impl FnOnce() -> String) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|t| t.elapsed() < Duration::from_secs(10)) {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(Instant::now());
        let skipped = self.skipped.swap(0, Ordering::Relaxed);
        if skipped > 0 {
            tracing::warn!("{} (and {skipped} more like it)", message());
        } else {
            tracing::warn!("{}", message());
        }
    }
}

/// A request body that fails when it has not arrived completely by its deadline.
struct TimedBody {
    inner: Incoming,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timeout: Duration,
}

impl TimedBody {
    fn new(inner: Incoming, timeout: Duration) -> Self {
        let deadline = (!inner.is_end_stream()).then(|| Box::pin(tokio::time::sleep(timeout)));
        TimedBody {
            inner,
            deadline,
            timeout,
        }
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Some(Err(format!(
                "request body not complete within {:?} (host.body_timeout)",
                this.timeout
            )
            .into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that keeps its connection busy until it is sent (or dropped).
struct TrackedBody {
    inner: Body,
    _busy: Busy,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves; then stops
/// accepting, lets every connection finish its request in flight and waits for them.
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tracker = Arc::new(Tracker::new(limits.max_connections));
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    static ACCEPT: Throttled = Throttled::new();
    static REFUSED: Throttled = Throttled::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                ACCEPT.warn(|| format!("HTTP API: accept error: {e}"));
                // Out of descriptors or memory: give the process a moment; anything else
                // concerns that one connection only.
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                ) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let Some((id, conn)) = tracker.admit(&stop) else {
            REFUSED.warn(|| {
                format!(
                    "HTTP API: all {} connections are busy (host.max_connections): a new one \
                     was closed",
                    tracker.max
                )
            });
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(serve_connection(
            stream,
            app.clone(),
            limits,
            tracker.clone(),
            id,
            conn,
        ));
    }
    drop(listener);
    stop.cancel();
    tasks.close();
    tasks.wait().await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: axum::Router,
    limits: ConnLimits,
    tracker: Arc<Tracker>,
    id: u64,
    conn: Arc<ConnState>,
) {
    let service = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            let busy = Busy::new(conn.clone());
            let mut app = app.clone();
            let req = req.map(|b| TimedBody::new(b, limits.body_timeout));
            async move {
                let Ok(response) = app.call(req).await;
                Ok::<_, Infallible>(response.map(|inner| TrackedBody { inner, _busy: busy }))
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        tokio::select! {
            r = connection.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("HTTP API connection: {e}");
                }
                break;
            }
            _ = conn.close.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    tracker.remove(id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_bound_the_idlest_connection_makes_room_and_busy_ones_stay() {
        let t = Tracker::new(3);
        let stop = CancellationToken::new();
        let conns: Vec<_> = (0..3).map(|_| t.admit(&stop).unwrap()).collect();
        let _busy0 = Busy::new(conns[0].1.clone());
        // conns[2] was idle, became busy and idle again: it is now the most recently idle.
        std::thread::sleep(Duration::from_millis(5));
        drop(Busy::new(conns[2].1.clone()));
        let (_, fourth) = t.admit(&stop).unwrap();
        assert_eq!(t.len(), 3);
        assert!(
            conns[1].1.close.is_cancelled(),
            "the idlest one was not closed"
        );
        assert!(!conns[0].1.close.is_cancelled() && !conns[2].1.close.is_cancelled());
        let _busy2 = Busy::new(conns[2].1.clone());
        let _busy4 = Busy::new(fourth);
        assert!(
            t.admit(&stop).is_none(),
            "admitted past the bound, all busy"
        );
        assert_eq!(t.refused.load(Ordering::Relaxed), 1);
        stop.cancel();
        assert!(
            conns[0].1.close.is_cancelled(),
            "shutdown closes every connection"
        );
    }

    #[test]
    #[allow(unsafe_code)]
    fn the_bound_fits_the_descriptor_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(fit_descriptor_limit(16), 16);
        if lim.rlim_max == libc::RLIM_INFINITY {
            return;
        }
        let huge = lim.rlim_max + 10;
        let fitted = fit_descriptor_limit(huge as usize) as u64;
        assert!(fitted + RESERVED_DESCRIPTORS <= lim.rlim_max, "{fitted}");
    }
}
