//! The HTTP listener over real sockets: a flood of idle and slow-loris connections from one
//! address is bounded and timed out while another address is served; body deadlines and
//! bounds answer 408 / 413 with the JSON error; idle keep-alive connections are closed.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    extract::ConnectInfo,
    routing::{get, post},
    Router,
};
use tkms_daemon::{
    conn::{Closed, ConnectionLimits, ConnectionStats},
    http::{serve, HttpLimits},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

async fn start(limits: HttpLimits) -> (SocketAddr, Arc<ConnectionStats>) {
    let router = Router::new()
        .route(
            "/ok",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.ip().to_string() }),
        )
        .route(
            "/echo",
            post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stats = Arc::new(ConnectionStats::default());
    tokio::spawn(serve(
        listener,
        router,
        limits,
        Arc::clone(&stats),
        std::future::pending(),
    ));
    (addr, stats)
}

fn limits() -> HttpLimits {
    HttpLimits {
        connections: ConnectionLimits {
            max_connections: 2000,
            max_per_address: 32,
        },
        header_timeout: Duration::from_millis(400),
        idle_timeout: Duration::from_millis(800),
        body_timeout: Duration::from_millis(400),
        max_body_bytes: 1024,
    }
}

/// A connection from `127.0.0.2`, another client address than the test client's.
async fn from_other_address(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind("127.0.0.2:0".parse().unwrap())?;
    socket.connect(addr).await
}

/// Whether the server closed `stream` (EOF or reset) within `wait`.
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_neither_holds_slots_nor_stops_others() {
    let (addr, stats) = start(limits()).await;
    // 16 slow-loris connections and 1,500 idle ones, all from 127.0.0.2 (32 admitted).
    let mut loris = Vec::new();
    for _ in 0..16 {
        let mut s = from_other_address(addr).await.unwrap();
        let _ = s.write_all(b"GET /ok HTTP/1.1\r\n").await;
        loris.push(s);
    }
    let mut idle = Vec::new();
    for _ in 0..1500 {
        if let Ok(s) = from_other_address(addr).await {
            idle.push(s);
        }
    }
    let loris_count = loris.len();
    let dripping = tokio::spawn(async move {
        for _ in 0..30 {
            for s in &mut loris {
                let _ = s.write_all(b"X").await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        loris
    });
    // The other address is served throughout.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut served = 0;
    let mut most_open = 0;
    while started.elapsed() < Duration::from_millis(1200) {
        most_open = most_open.max(stats.open());
        let response = client
            .get(format!("http://{addr}/ok"))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "127.0.0.1");
        served += 1;
    }
    assert!(served > 10, "{served}");
    // Never more than the flood's 32 per-address slots open at once (plus the test client's).
    assert!(
        most_open <= 32 + 4,
        "{most_open} open: {}",
        stats.render("t")
    );
    // At most 32 of the flood are admitted at once; the rest are closed on accept. On a
    // loaded machine the flood takes longer than the header deadline to open, so a slot freed
    // by a timed-out connection admits a later one: every flood connection is either refused,
    // closed by a deadline, or one of the 32 open.
    let flood = (loris_count + idle.len()) as u64;
    let deadline = Instant::now() + Duration::from_secs(10);
    let settled = |stats: &ConnectionStats| {
        let timed_out =
            stats.closed_count(Closed::HeaderTimeout) + stats.closed_count(Closed::IdleTimeout);
        stats.refused() + timed_out + 32 >= flood
    };
    while !settled(&stats) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled(&stats), "{flood} opened: {}", stats.render("t"));
    assert!(
        stats.refused() >= flood / 2,
        "{flood} opened: {}",
        stats.render("t")
    );
    // Every idle and slow-loris connection is closed once its header deadline passes.
    let mut loris = dripping.await.unwrap();
    for s in idle.iter_mut().chain(loris.iter_mut()) {
        assert!(closed_within(s, Duration::from_secs(2)).await);
    }
    assert!(
        stats.closed_count(Closed::HeaderTimeout) >= 32,
        "{}",
        stats.render("t")
    );
    // Only the test client's (idle keep-alive) connections may remain.
    let deadline = Instant::now() + Duration::from_secs(1);
    while stats.open() > 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stats.open() <= 2, "{}", stats.render("t"));
}

async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn bodies_have_a_deadline_and_a_bound() {
    let (addr, stats) = start(limits()).await;
    // Declared 100 bytes, 10 sent: 408 once the body deadline passes.
    let answer = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n0123456789",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"body_timeout""#), "{answer}");
    assert_eq!(stats.closed_count(Closed::BodyTimeout), 1);
    // Declared too large: 413 at once.
    let answer = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 5000\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"payload_too_large""#), "{answer}");
    // Chunked, growing past the bound: 413.
    let mut chunked =
        b"POST /echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"200\r\n");
        chunked.extend_from_slice(&[b'a'; 512]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(addr, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A whole body within the bound is served.
    let answer = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nhost: x\r\nconnection: close\r\ncontent-length: 5\r\n\r\nhello",
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with('5'),
        "{answer}"
    );
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed() {
    let (addr, stats) = start(limits()).await;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /ok HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive for a while, then closed after the idle deadline.
    assert!(!closed_within(&mut s, Duration::from_millis(400)).await);
    assert!(closed_within(&mut s, Duration::from_millis(1500)).await);
    assert_eq!(stats.closed_count(Closed::IdleTimeout), 1);
}
