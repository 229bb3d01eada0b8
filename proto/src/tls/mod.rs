//! The manager–node gRPC channel: TLS 1.3 with both sides authenticated by their secp256k1
//! keys (docs/ARCHITECTURE.md §4.2, "mutual authentication with the manager").
//!
//! Each side presents a self-signed certificate carrying the libp2p TLS extension
//! ([`cert`]): the certificate's TLS key is signed by the side's secp256k1 identity key
//! (the manager's node-request key; the node's key registered on the registry), and the TLS
//! handshake proves possession of the TLS key. So a finished handshake authenticates the
//! peer's secp256k1 key, which each side then checks against the keys it pins. The channel is
//! also encrypted: a partial delegation `D_i` crosses it, and `t` of them give the shared
//! secret, so it must never travel in the clear between machines.
//!
//! Once per connection instead of once per request, this replaces the manager's Schnorr
//! signature on every partial request (two scalar multiplications per node per request).

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tkms_crypto::{suite::Encoded, Secp256k1, SecretScalar};

pub mod cert;
use tkms_daemon::conn::{Admitted, Closed, ConnectionGate, ConnectionLimits, ConnectionStats};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{server::Connected, Channel, Endpoint, Uri};

/// Longest TLS handshake a node waits for before dropping the connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on a node's open connections (its clients are a few managers).
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;
/// Default bound on a node's open connections from one address.
pub const DEFAULT_MAX_PER_ADDRESS: usize = 32;
/// How long a connection whose key is not a trusted manager's may sit with nothing read
/// before the node closes it.
pub const UNTRUSTED_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The bounds of a node's gRPC listener (docs/ARCHITECTURE.md §4.6).
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// Bounds on open connections, total and per client address.
    pub connections: ConnectionLimits,
    /// Longest TLS handshake.
    pub handshake_timeout: Duration,
    /// Idle deadline of connections whose key is not in `trusted`.
    pub untrusted_idle_timeout: Duration,
    /// Keys (compressed secp256k1) whose connections have no idle deadline: the managers
    /// this node serves, whose channels stay open between requests.
    pub trusted: Vec<[u8; 33]>,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            connections: ConnectionLimits {
                max_connections: DEFAULT_MAX_CONNECTIONS,
                max_per_address: DEFAULT_MAX_PER_ADDRESS,
            },
            handshake_timeout: HANDSHAKE_TIMEOUT,
            untrusted_idle_timeout: UNTRUSTED_IDLE_TIMEOUT,
            trusted: Vec::new(),
        }
    }
}

/// Why a TLS configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A key is not a valid secp256k1 key.
    #[error("invalid key: {0}")]
    Key(String),
    /// The certificate could not be generated.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The URL is not a node URL.
    #[error("node url {0:?}: {1}")]
    Url(String, String),
}

/// How often the manager pings an idle or busy node connection (HTTP/2 PING).
pub const KEEP_ALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How long a ping may go unanswered before the connection is dropped and redialed.
pub const KEEP_ALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The manager's side: connects to nodes as `manager_key`.
#[derive(Clone)]
pub struct ManagerTls {
    config: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for ManagerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ManagerTls")
    }
}

impl ManagerTls {
    /// Authenticate as `manager_key` to any node with a valid certificate (a node's answers
    /// are checked by their proofs; what the node accepts is what matters here).
    pub fn new(manager_key: &SecretScalar<Secp256k1>) -> Result<Self, TlsError> {
        Self::build(manager_key, None)
    }

    /// Authenticate as `manager_key`, and accept only the node whose key is `node_key`.
    pub fn pinned(
        manager_key: &SecretScalar<Secp256k1>,
        node_key: &Encoded<Secp256k1>,
    ) -> Result<Self, TlsError> {
        Self::build(manager_key, Some(*node_key.bytes()))
    }

    fn build(key: &SecretScalar<Secp256k1>, expected: Option<[u8; 33]>) -> Result<Self, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(cert::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Certificate(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(cert::PeerVerifier { expected }))
            .with_client_cert_resolver(Arc::new(cert::Presents(cert::certified_key(key)?)));
        // gRPC is HTTP/2; session keys are never written anywhere.
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.key_log = Arc::new(rustls::NoKeyLog);
        Ok(Self {
            config: Arc::new(config),
        })
    }

    /// A lazily connecting channel to the node at `url` (`http://host:port`: the scheme only
    /// names the address; the connection is always TLS).
    ///
    /// HTTP/2 keep-alive pings find a connection that died silently (a partition, a host
    /// gone) within [`KEEP_ALIVE_INTERVAL`] + [`KEEP_ALIVE_TIMEOUT`], and the next call dials
    /// anew. Without them a cached channel kept its dead TCP connection through a partition,
    /// and after the heal the node stayed unreachable until TCP's backed-off retransmission
    /// got through (seen: 4-5 s at 50 ms RTT, `tkms testnet up --netns`).
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, TlsError> {
        Ok(Endpoint::from_shared(url.to_string())
            .map_err(|e| TlsError::Url(url.into(), e.to_string()))?
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true))
    }

    /// Connect lazily through `endpoint` (with its timeouts) over TLS.
    pub fn channel(&self, endpoint: &Endpoint) -> Channel {
        let tls = self.clone();
        endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
            let tls = tls.clone();
            async move {
                let host = uri.host().unwrap_or("127.0.0.1").to_string();
                let port = uri.port_u16().unwrap_or(80);
                Ok::<_, io::Error>(TokioIo::new(tls.connect(&host, port).await?))
            }
        }))
    }

    /// One authenticated TLS connection to `host:port`.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        // The certificate names no host; the peer is authenticated by its key.
        let name = ServerName::try_from("tkms-node")
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        TlsConnector::from(Arc::clone(&self.config))
            .connect(name, tcp)
            .await
    }
}

/// Who is at the other end of a node's connection: its authenticated key (compressed SEC1)
/// and address. Found in every request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// The peer's secp256k1 key, proven in the handshake.
    pub key: [u8; 33],
    /// The peer's address.
    pub remote_addr: Option<SocketAddr>,
}

/// Closes a connection on which nothing was read for a while.
struct IdleDeadline {
    timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    stats: Arc<ConnectionStats>,
}

/// An accepted, authenticated connection.
pub struct PeerStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: TlsPeer,
    idle: Option<IdleDeadline>,
    slot: Option<Admitted>,
}

impl Connected for PeerStream {
    type ConnectInfo = TlsPeer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if let Some(idle) = &mut this.idle {
                    if buf.filled().len() > before {
                        let next = tokio::time::Instant::now() + idle.timeout;
                        idle.sleep.as_mut().reset(next);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                if let Some(idle) = &mut this.idle {
                    if std::future::Future::poll(idle.sleep.as_mut(), cx).is_ready() {
                        idle.stats.closed(Closed::IdleTimeout);
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "idle connection of an untrusted peer",
                        )));
                    }
                }
                Poll::Pending
            }
            other @ Poll::Ready(Err(_)) => other,
        }
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
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
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A node's side: accepts TLS connections as `node_key`, from peers with any valid
/// certificate; which peer keys may call what is the service's decision ([`TlsPeer`]).
pub fn node_server_config(
    node_key: &SecretScalar<Secp256k1>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(cert::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Certificate(e.to_string()))?
        .with_client_cert_verifier(Arc::new(cert::PeerVerifier { expected: None }))
        .with_cert_resolver(Arc::new(cert::Presents(cert::certified_key(node_key)?)));
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.key_log = Arc::new(rustls::NoKeyLog);
    Ok(Arc::new(config))
}

/// The authenticated connections arriving at `listener`, within the default
/// [`ListenerLimits`] (see [`incoming_with`]).
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<PeerStream, io::Error>> + Send + 'static {
    incoming_with(
        listener,
        config,
        ListenerLimits::default(),
        Arc::new(ConnectionStats::default()),
    )
}

/// The authenticated connections arriving at `listener`. Each accepted socket must pass the
/// connection bounds of `limits` (else it is closed at once); each handshake runs in its own
/// task (a slow or silent client delays nobody) within `limits.handshake_timeout`; failed
/// handshakes are logged (at most once a second) and dropped. A connection whose key is not
/// `trusted` is closed after `untrusted_idle_timeout` with nothing read.
pub fn incoming_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ListenerLimits,
    stats: Arc<ConnectionStats>,
) -> impl Stream<Item = Result<PeerStream, io::Error>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<PeerStream>(64);
    let acceptor = TlsAcceptor::from(config);
    let gate = ConnectionGate::new(limits.connections, stats);
    let limits = Arc::new(limits);
    let last_log = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let log_due = move || {
        let mut last = last_log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    };
    tokio::spawn(async move {
        loop {
            // The listener closes as soon as the server stops taking connections.
            let accepted = tokio::select! {
                () = tx.closed() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if log_due() {
                        tracing::warn!(error = %e, "accept failed");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let slot = match gate.admit(addr) {
                Ok(slot) => slot,
                Err(why) => {
                    if log_due() {
                        tracing::warn!(peer = %addr, ?why, "connection refused at its bound");
                    }
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, limits) = (acceptor.clone(), tx.clone(), Arc::clone(&limits));
            let stats = Arc::clone(gate.stats());
            let log_due = log_due.clone();
            tokio::spawn(async move {
                match handshake(&acceptor, tcp, addr, limits.handshake_timeout).await {
                    Ok(mut stream) => {
                        if !limits.trusted.contains(&stream.peer.key) {
                            stream.idle = Some(IdleDeadline {
                                timeout: limits.untrusted_idle_timeout,
                                sleep: Box::pin(tokio::time::sleep(limits.untrusted_idle_timeout)),
                                stats: Arc::clone(&stats),
                            });
                        }
                        stream.slot = Some(slot);
                        let _ = tx.send(stream).await;
                    }
                    Err(e) => {
                        stats.closed(Closed::Handshake);
                        if log_due() {
                            tracing::warn!(peer = %addr, error = %e, "TLS handshake refused");
                        }
                    }
                }
            });
        }
    });
    ReceiverStream::new(rx).map(Ok)
}

async fn handshake(
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    addr: SocketAddr,
    timeout: Duration,
) -> Result<PeerStream, String> {
    let tls = tokio::time::timeout(timeout, acceptor.accept(tcp))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let certificate = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no client certificate")?;
    // Verified in the handshake; read again for its key.
    let key = cert::verify_certificate(certificate).map_err(|e| e.to_string())?;
    Ok(PeerStream {
        inner: tls,
        peer: TlsPeer {
            key,
            remote_addr: Some(addr),
        },
        idle: None,
        slot: None,
    })
}
