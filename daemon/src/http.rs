//! The HTTP listener of the manager and of `tkms engine serve` (docs/ARCHITECTURE.md §4.6: "every
//! listener bounds connections (total and per client address) and header/body/idle time").
//!
//! `axum::serve` has no read deadlines: a client that connects and sends nothing, or sends
//! its request head a byte at a time (slow loris), holds its connection and file descriptor
//! for as long as it likes. [`serve`] runs an axum [`Router`] over hyper's HTTP/1.1
//! connection with its own accept loop:
//!
//! - every accepted socket passes a [`ConnectionGate`] (total and per-address bounds); a
//!   refused one is closed at once;
//! - a request head must arrive within `header_timeout` of its first byte, and the first one
//!   within `header_timeout` of the connection;
//! - a request body must arrive within `body_timeout` of its head, and be at most
//!   `max_body_bytes` (else `408` / `413` with a JSON error in both services' shapes);
//! - between requests, a connection on which nothing moves for `idle_timeout` is closed;
//! - the handler sees the client address as axum's [`ConnectInfo<SocketAddr>`].
//!
//! The body is read whole before the router runs (every handler here reads it whole anyway),
//! so a handler never waits on a slow client. HTTP/2 is not offered: the clients (the Nox
//! gateway, the SDK, CyborgDB clients) speak HTTP/1.1 to these services.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{header, HeaderValue, Request, Response, StatusCode},
    Router,
};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tower::ServiceExt as _;

use crate::conn::{
    Closed, ConnectionGate, ConnectionLimits, ConnectionStats, Refused, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PER_ADDRESS,
};

/// The limits of an HTTP listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Bounds on open connections.
    pub connections: ConnectionLimits,
    /// Longest wait for a request head, from its first byte (for the first request of a
    /// connection, from the connection).
    pub header_timeout: Duration,
    /// Longest time a connection may sit between requests with nothing moving.
    pub idle_timeout: Duration,
    /// Longest wait for a request body, from the end of its head.
    pub body_timeout: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
}

/// Default request-head deadline.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default idle deadline between requests.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default request-body deadline.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping server waits for connections with requests in flight.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

impl HttpLimits {
    /// The defaults, with this body bound.
    pub fn with_max_body(max_body_bytes: usize) -> Self {
        Self {
            connections: ConnectionLimits::default(),
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_body_bytes,
        }
    }
}

/// The listener settings, as command-line flags (`tkms manager run`, `tkms engine serve`).
#[derive(Debug, Clone, clap::Args)]
pub struct HttpLimitArgs {
    /// Most HTTP connections open at once; more are closed as soon as they are accepted
    /// (0: no bound).
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Most HTTP connections open at once from one client address (IPv4 address, IPv6 /64;
    /// 0: no bound).
    #[arg(long, default_value_t = DEFAULT_MAX_PER_ADDRESS)]
    pub max_connections_per_address: usize,
    /// Longest wait for a request head, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_HEADER_TIMEOUT.as_millis() as u64)]
    pub header_timeout_ms: u64,
    /// Longest time a connection may sit idle between requests, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_IDLE_TIMEOUT.as_millis() as u64)]
    pub idle_timeout_ms: u64,
    /// Longest wait for a request body after its head, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_BODY_TIMEOUT.as_millis() as u64)]
    pub body_timeout_ms: u64,
}

impl Default for HttpLimitArgs {
    /// The flags' defaults.
    fn default() -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_PER_ADDRESS,
            header_timeout_ms: ms(DEFAULT_HEADER_TIMEOUT),
            idle_timeout_ms: ms(DEFAULT_IDLE_TIMEOUT),
            body_timeout_ms: ms(DEFAULT_BODY_TIMEOUT),
        }
    }
}

impl HttpLimitArgs {
    /// The limits, checked, with this body bound.
    pub fn limits(&self, max_body_bytes: usize) -> Result<HttpLimits, String> {
        for (name, ms) in [
            ("--header-timeout-ms", self.header_timeout_ms),
            ("--idle-timeout-ms", self.idle_timeout_ms),
            ("--body-timeout-ms", self.body_timeout_ms),
        ] {
            if ms == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(HttpLimits {
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                max_per_address: self.max_connections_per_address,
            },
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            body_timeout: Duration::from_millis(self.body_timeout_ms),
            max_body_bytes,
        })
    }
}

/// Serve `router` on `listener` within `limits` until `shutdown` resolves; then stop
/// accepting, let requests in flight finish (for up to [`SHUTDOWN_GRACE`]) and return.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    stats: Arc<ConnectionStats>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let gate = ConnectionGate::new(limits.connections, stats);
    let (stop, stopping) = watch::channel(false);
    let mut refusals = Throttle::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors or a transient error: back off a little.
                    if refusals.due() {
                        tracing::warn!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let admitted = match gate.admit(peer) {
            Ok(admitted) => admitted,
            Err(why) => {
                if refusals.due() {
                    let bound = match why {
                        Refused::Total => "--max-connections",
                        Refused::Address => "--max-connections-per-address",
                    };
                    tracing::warn!(%peer, bound, "connection refused: at its bound (further refusals are counted in /metrics)");
                }
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let connection = Connection {
            router: router.clone(),
            peer,
            limits,
            stats: Arc::clone(gate.stats()),
        };
        let stopping = stopping.clone();
        tokio::spawn(async move {
            connection.run(tcp, stopping).await;
            drop(admitted);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    if !gate.drained(SHUTDOWN_GRACE).await {
        tracing::warn!(
            open = gate.stats().open(),
            "stopped with requests still in flight"
        );
    }
    Ok(())
}

/// At most one log line per second for repeated events.
#[derive(Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    fn due(&mut self) -> bool {
        let now = Instant::now();
        if self
            .0
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// What a connection is doing, for its deadlines. Times are milliseconds since `start`,
/// plus one (0: never).
struct Clock {
    start: Instant,
    in_flight: AtomicU32,
    served: AtomicU64,
    head_at: AtomicU64,
    idle_since: AtomicU64,
    last_write: AtomicU64,
    /// Woken when a deadline moves earlier (a request head starts between requests).
    sooner: tokio::sync::Notify,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            served: AtomicU64::new(0),
            head_at: AtomicU64::new(0),
            idle_since: AtomicU64::new(1),
            last_write: AtomicU64::new(0),
            sooner: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1
    }

    /// Bytes arrived: between requests, that starts a request head.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_at.load(Ordering::Relaxed) == 0
        {
            self.head_at.store(self.now(), Ordering::Relaxed);
            self.sooner.notify_one();
        }
    }

    fn wrote(&self) {
        self.last_write.store(self.now(), Ordering::Relaxed);
    }

    fn request_started(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_at.store(0, Ordering::Relaxed);
    }

    fn request_finished(&self) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.idle_since.store(self.now(), Ordering::Relaxed);
        self.head_at.store(0, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// When the connection is due to be closed, and why (`None` while a request is in
    /// flight: its body deadline and the handler bound it).
    fn deadline(&self, limits: &HttpLimits) -> Option<(u64, Closed)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
        let head_at = self.head_at.load(Ordering::Relaxed);
        if head_at != 0 {
            return Some((head_at + ms(limits.header_timeout), Closed::HeaderTimeout));
        }
        let since = self
            .idle_since
            .load(Ordering::Relaxed)
            .max(self.last_write.load(Ordering::Relaxed));
        if self.served.load(Ordering::Relaxed) == 0 {
            Some((since + ms(limits.header_timeout), Closed::HeaderTimeout))
        } else {
            Some((since + ms(limits.idle_timeout), Closed::IdleTimeout))
        }
    }
}

/// Marks the request finished when dropped (also when the connection drops it midway).
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_finished();
    }
}

/// A socket that tells its [`Clock`] when bytes move.
struct Watched {
    inner: TcpStream,
    clock: Arc<Clock>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.clock.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.clock.wrote();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

struct Connection {
    router: Router,
    peer: SocketAddr,
    limits: HttpLimits,
    stats: Arc<ConnectionStats>,
}

impl Connection {
    async fn run(self, tcp: TcpStream, mut stopping: watch::Receiver<bool>) {
        let clock = Arc::new(Clock::new());
        let io = TokioIo::new(Watched {
            inner: tcp,
            clock: Arc::clone(&clock),
        });
        let Self {
            router,
            peer,
            limits,
            stats,
        } = self;
        let service = {
            let (clock, stats) = (Arc::clone(&clock), Arc::clone(&stats));
            hyper::service::service_fn(move |request: Request<Incoming>| {
                clock.request_started();
                let in_flight = InFlight(Arc::clone(&clock));
                let (router, stats) = (router.clone(), Arc::clone(&stats));
                async move {
                    let response = handle(request, router, peer, &limits, &stats).await;
                    drop(in_flight);
                    Ok::<_, Infallible>(response)
                }
            })
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder.keep_alive(true).max_buf_size(64 * 1024);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let mut stopped = *stopping.borrow();
        if stopped {
            conn.as_mut().graceful_shutdown();
        }
        loop {
            let deadline = clock.deadline(&limits);
            let wake = match deadline {
                Some((ms, _)) => clock.start + Duration::from_millis(ms.saturating_sub(1)),
                None => Instant::now() + limits.idle_timeout,
            };
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                    return;
                }
                () = clock.sooner.notified() => {}
                () = tokio::time::sleep_until(wake.into()) => {
                    if let Some((ms, why)) = clock.deadline(&limits) {
                        if clock.now() + 1 >= ms {
                            stats.closed(why);
                            tracing::debug!(%peer, ?why, "closing a connection at its deadline");
                            return;
                        }
                    }
                }
                changed = stopping.changed(), if !stopped => {
                    stopped = true;
                    if changed.is_ok() {
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// The JSON error with `status`, closing the connection. The body carries both error shapes
/// the services answer with: the manager's `{"error", "code"}` and the engine's CyborgDB
/// `{"status_code", "detail"}` (plus `code`), so each service's clients read it as their own.
fn refusal(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "error": message,
        "code": code,
        "status_code": status.as_u16(),
        "detail": message,
    })
    .to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// Read the body within its deadline and bound, then run the router.
async fn handle(
    request: Request<Incoming>,
    router: Router,
    peer: SocketAddr,
    limits: &HttpLimits,
    stats: &ConnectionStats,
) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        refusal(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            &format!("the request body exceeds {} bytes", limits.max_body_bytes),
        )
    };
    if declared.is_some_and(|len| len > limits.max_body_bytes as u64) {
        return too_large();
    }
    let read = Limited::new(body, limits.max_body_bytes).collect();
    let bytes = match tokio::time::timeout(limits.body_timeout, read).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
        Ok(Err(e)) => {
            return refusal(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                &format!("the request body could not be read: {e}"),
            )
        }
        Err(_) => {
            stats.closed(Closed::BodyTimeout);
            return refusal(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                &format!(
                    "the request body did not arrive within {} ms",
                    limits.body_timeout.as_millis()
                ),
            );
        }
    };
    parts.extensions.insert(ConnectInfo(peer));
    match router
        .oneshot(Request::from_parts(parts, Body::from(bytes)))
        .await
    {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
