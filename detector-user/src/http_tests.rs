//! The endpoint's limits, in process over loopback: idle and slowloris clients are
//! closed by the server within the timeouts, connections over the cap are closed at once,
//! and `/healthz` keeps answering while clients hold more connections than the cap.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time::{sleep, timeout, Instant},
};

use super::{router_with_health, serve, Health, Limits};
use crate::{control::SharedTop, metrics::Metrics};

async fn start(health: Health) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = router_with_health(std::sync::Arc::new(Metrics::new()), SharedTop::default(), health);
    tokio::spawn(serve(listener, router, Limits::default()));
    addr
}

/// `GET /healthz` on a new connection: status line and body, or a panic after 2 s.
async fn healthz(addr: SocketAddr) -> String {
    let ask = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    timeout(Duration::from_secs(2), ask).await.expect("/healthz did not answer within 2 s")
}

/// How long after `opened` the server closed `s` (EOF or reset), reading what it sends;
/// `None` if still open after `limit`.
async fn closed_after(mut s: TcpStream, opened: Instant, limit: Duration) -> Option<Duration> {
    let mut buf = [0u8; 1024];
    let until_closed = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return opened.elapsed(),
                Ok(_) => {}
            }
        }
    };
    timeout(limit, until_closed).await.ok()
}

/// Sends a request head one byte per second, never finishing it.
async fn slowloris(addr: SocketAddr, limit: Duration) -> Option<Duration> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let head = b"GET /metrics HTTP/1.1\r\nHost: agent\r\nX-Slow: ".iter().chain([b'a'; 64].iter());
    let mut buf = [0u8; 1024];
    for byte in head {
        if s.write_all(&[*byte]).await.is_err() {
            return Some(opened.elapsed());
        }
        // Reading for a second doubles as the pause between bytes.
        if let Ok(Ok(0) | Err(_)) = timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            return Some(opened.elapsed());
        }
        if opened.elapsed() > limit {
            return None;
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_clients_are_closed_and_healthz_answers_over_the_cap() {
    let limits = Limits::default();
    let addr = start(Health::default()).await;

    let slow: Vec<_> = (0..5).map(|_| tokio::spawn(slowloris(addr, Duration::from_secs(20)))).collect();
    sleep(Duration::from_millis(200)).await;
    let idle_count = 3 * limits.max_connections;
    let mut idle = Vec::new();
    for _ in 0..idle_count {
        let s = TcpStream::connect(addr).await.unwrap();
        let opened = Instant::now();
        idle.push(tokio::spawn(closed_after(s, opened, Duration::from_secs(20))));
    }

    // More connections than the cap are open on the client side; the quiet ones make room.
    sleep(Duration::from_millis(1500)).await;
    let started = Instant::now();
    let answer = healthz(addr).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok\n"), "{answer}");
    assert!(started.elapsed() < Duration::from_millis(500), "/healthz took {:?}", started.elapsed());

    for (i, s) in slow.into_iter().enumerate() {
        let closed = s.await.unwrap();
        let bound = limits.header_read_timeout + Duration::from_millis(1500);
        assert!(
            closed.is_some_and(|t| t <= bound),
            "slowloris {i}: closed after {closed:?}, bound {bound:?}"
        );
    }
    let mut at_once = 0;
    for (i, s) in idle.into_iter().enumerate() {
        let closed = s.await.unwrap();
        let bound = limits.idle_timeout + Duration::from_millis(1500);
        assert!(closed.is_some_and(|t| t <= bound), "idle {i}: closed after {closed:?}, bound {bound:?}");
        at_once += usize::from(closed.is_some_and(|t| t < Duration::from_millis(500)));
    }
    assert!(
        at_once >= idle_count - limits.max_connections,
        "only {at_once} of the {idle_count} idle connections over the cap were closed at once"
    );
    assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn healthz_names_the_problems() {
    let health = Health::default();
    let addr = start(health.clone()).await;
    health.set_problem("eth9", "eth9: interface gone; XDP not attached".into());
    let answer = healthz(addr).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("eth9: interface gone"), "{answer}");
    health.clear_problem("eth9");
    assert!(healthz(addr).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_keep_alive_connection_is_closed_when_idle() {
    let limits = Limits::default();
    let addr = start(Health::default()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: agent\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&buf[..n]));
    let answered = Instant::now();
    let closed = closed_after(s, answered, Duration::from_secs(30)).await;
    let bound = limits.idle_timeout + Duration::from_millis(1500);
    assert!(closed.is_some_and(|t| t <= bound), "closed after {closed:?}, bound {bound:?}");
}
