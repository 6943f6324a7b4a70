//! The HTTP endpoint: `/metrics` (Prometheus text), `/healthz`, and `/top` (the top SYN
//! sources as JSON, for `syndetector top`). Bound to loopback unless configured.
//!
//! Served by our own accept loop rather than `axum::serve`, which has no connection
//! limit and no timeouts: idle or slow clients could hold every descriptor the agent has.
//! Here at most [`Limits::max_connections`] connections are served at once (when all are
//! taken, the one quiet the longest is closed if quiet for a second, else the new one is
//! closed at once), request headers must arrive within
//! [`Limits::header_read_timeout`] (hyper's own timer) and a connection with no bytes
//! in either direction for [`Limits::idle_timeout`] is closed.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    extract::State,
    http::{header, StatusCode},
    response::IntoResponse,
    routing::get,
    Json, Router,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tracing::{debug, warn};

use crate::{control::SharedTop, metrics::Metrics};

/// How many connections the endpoint serves at once, and how long it waits for them.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Scrapers and `syndetector top` need a handful; 64 leaves the agent's own
    /// descriptors (maps, netlink, the program's links) far from `ulimit -n` 1024.
    pub max_connections: usize,
    /// The whole request head (request line and headers) must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection with no bytes read or written for this long is closed (keep-alive
    /// between scrapes, or a client that connects and says nothing).
    pub idle_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 64,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// What `/healthz` reports: ok, or the reasons it is not (keyed, e.g. by interface).
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<BTreeMap<String, String>>>);

impl Health {
    /// Records a problem under `key`, replacing an earlier one under the same key.
    pub fn set_problem(&self, key: &str, reason: String) {
        self.lock().insert(key.to_owned(), reason);
    }

    pub fn clear_problem(&self, key: &str) {
        self.lock().remove(key);
    }

    /// The current problems, one per line; empty when healthy.
    pub fn problems(&self) -> Vec<String> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // Values are replaced whole, never left half-written by a panic.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    top: SharedTop,
    health: Health,
}

/// The routes, with a health that is always ok (for `bench-poll`).
pub fn router(metrics: Arc<Metrics>, top: SharedTop) -> Router {
    router_with_health(metrics, top, Health::default())
}

pub fn router_with_health(metrics: Arc<Metrics>, top: SharedTop, health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(health_handler))
        .route("/top", get(top_handler))
        .with_state(Shared { metrics, top, health })
}

async fn metrics_handler(State(s): State<Shared>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], s.metrics.render())
}

async fn health_handler(State(s): State<Shared>) -> impl IntoResponse {
    let problems = s.health.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ok\n{}\n", problems.join("\n")))
    }
}

async fn top_handler(State(s): State<Shared>) -> impl IntoResponse {
    let top = s.top.lock().expect("top list lock").clone();
    Json(top)
}

/// A connection quiet for this long may be closed to make room for a new one when all
/// slots are taken: a scraper is never locked out by clients that only hold sockets.
const EVICT_QUIET: Duration = Duration::from_secs(1);

/// One served connection, as the accept loop sees it.
struct Slot {
    /// When it last moved a byte, in ms since the server started.
    last_ms: AtomicU64,
    evict: Notify,
}

/// Serves `router` on `listener` within `limits`; runs until the task is aborted.
pub async fn serve(listener: TcpListener, router: Router, limits: Limits) {
    let epoch = Instant::now();
    let slots: Arc<Mutex<HashMap<u64, Arc<Slot>>>> = Arc::default();
    let mut next_id = 0u64;
    let mut last_refusal_log: Option<Instant> = None;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE/ENFILE and aborted handshakes: the listener itself is fine; pause
                // so a full descriptor table does not become a busy loop.
                warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let now = millis_since(epoch);
        let slot = Arc::new(Slot { last_ms: AtomicU64::new(now), evict: Notify::new() });
        let admitted = {
            let mut table = lock(&slots);
            if table.len() >= limits.max_connections { make_room(&mut table, now) } else { true }
                .then(|| table.insert(next_id, slot.clone()))
                .is_some()
        };
        if !admitted {
            // Closed at once: the descriptor is back before the next accept.
            drop(stream);
            if last_refusal_log.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                warn!(limit = limits.max_connections, "too many busy HTTP connections; closing new ones");
                last_refusal_log = Some(Instant::now());
            }
            continue;
        }
        let (id, router, slots) = (next_id, router.clone(), slots.clone());
        next_id += 1;
        tokio::spawn(async move {
            serve_connection(stream, router, limits, epoch, &slot).await;
            lock(&slots).remove(&id);
        });
    }
}

/// Evicts the connection quiet the longest if it has been quiet for `EVICT_QUIET`.
fn make_room(table: &mut HashMap<u64, Arc<Slot>>, now_ms: u64) -> bool {
    let quietest =
        table.iter().min_by_key(|(_, s)| s.last_ms.load(Ordering::Relaxed)).map(|(id, s)| (*id, s.clone()));
    let Some((id, slot)) = quietest else { return false };
    #[allow(clippy::cast_possible_truncation, reason = "a constant of one second")]
    let quiet_enough =
        now_ms.saturating_sub(slot.last_ms.load(Ordering::Relaxed)) >= EVICT_QUIET.as_millis() as u64;
    if quiet_enough {
        table.remove(&id);
        slot.evict.notify_one();
    }
    quiet_enough
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The table is only ever inserted into or removed from, never left half-changed.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: Limits,
    epoch: Instant,
    slot: &Arc<Slot>,
) {
    let io = TokioIo::new(Activity { inner: stream, epoch, slot: slot.clone() });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    let conn = builder.serve_connection(io, TowerToHyperService::new(router));
    let idle = async {
        loop {
            let last = slot.last_ms.load(Ordering::Relaxed);
            let since = Duration::from_millis(millis_since(epoch).saturating_sub(last));
            if since >= limits.idle_timeout {
                return;
            }
            tokio::time::sleep(limits.idle_timeout.saturating_sub(since)).await;
        }
    };
    tokio::select! {
        result = conn => if let Err(e) = result { debug!(error = %e, "HTTP connection ended"); },
        () = idle => debug!("HTTP connection idle; closed"),
        () = slot.evict.notified() => debug!("HTTP connection quiet while all slots were taken; closed"),
    }
}

/// A stream that notes in its slot when it last moved bytes.
struct Activity {
    inner: TcpStream,
    epoch: Instant,
    slot: Arc<Slot>,
}

impl Activity {
    fn touch(&self) {
        self.slot.last_ms.store(millis_since(self.epoch), Ordering::Relaxed);
    }
}

impl AsyncRead for Activity {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(poll, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.touch();
        }
        poll
    }
}

impl AsyncWrite for Activity {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(poll, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
