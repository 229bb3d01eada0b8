//! The node-to-node channel for DKG and reshare ceremonies (docs/ARCHITECTURE.md §4.2): libp2p over
//! TCP, authenticated and encrypted with Noise (XX, ed25519 identities), multiplexed with yamux.
//!
//! Every ceremony message goes point to point as a `request-response` exchange on
//! `/tkms/ceremony/1` (CBOR envelope `{ceremony, msg}`), acknowledged by the receiver. A
//! broadcast is one such request to every committee member: a committee is a closed, known set
//! of at most a few hundred nodes, so direct delivery with acknowledgement and retry is both
//! simpler and more reliable than gossip (no mesh to form before the first round). A request
//! that fails (peer not up yet, connection lost) is retried with backoff for a bounded time;
//! one that times out on a connection that brought nothing else meanwhile also closes that
//! connection, so that a link that was cut and came back is dialed anew instead of waiting out
//! TCP's retransmission backoff.
//!
//! The transport authenticates the sender's peer id; the ceremony driver maps peer ids to node
//! indices from the committee and drops anything else.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures::StreamExt;
use libp2p::{
    identity::Keypair,
    noise,
    request_response::{self, cbor, OutboundRequestId, ProtocolSupport},
    swarm::{ConnectionId, SwarmEvent},
    tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

/// The ceremony protocol name.
pub const PROTOCOL: &str = "/tkms/ceremony/1";
/// Largest ceremony message accepted (a dealing for n = 256 is about 60 KB).
pub const MAX_MESSAGE: u64 = 4 * 1024 * 1024;
/// Delivery attempts of one message before it is given up.
const MAX_ATTEMPTS: u32 = 20;
/// How long a message waits for its acknowledgement.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What travels: the ceremony (its epoch) and the encoded `tkms_crypto::ceremony::Message`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The epoch the ceremony produces.
    pub ceremony: u64,
    /// `Message::to_bytes()`.
    #[serde(with = "serde_bytes")]
    pub msg: Vec<u8>,
}

/// The receiver's acknowledgement.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Ack;

/// A message received from an authenticated peer.
#[derive(Debug)]
pub struct Incoming {
    /// The sender, as authenticated by Noise.
    pub from: PeerId,
    /// What it sent.
    pub envelope: Envelope,
}

enum Command {
    Send {
        peer: PeerId,
        addr: Multiaddr,
        envelope: Envelope,
        attempt: u32,
    },
}

/// A handle to the running libp2p swarm.
#[derive(Clone, Debug)]
pub struct P2p {
    commands: mpsc::UnboundedSender<Command>,
    peer_id: PeerId,
    /// What peers dial: the advertised address, else the bound one.
    dialed: Multiaddr,
}

/// Why the channel could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum P2pError {
    /// Building the transport failed.
    #[error("libp2p transport: {0}")]
    Transport(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

type Behaviour = cbor::Behaviour<Envelope, Ack>;

impl P2p {
    /// Start the swarm with identity `keypair`, listening on `listen` (port 0 picks one), and
    /// deliver what peers send to `incoming`. Peers are told to dial `advertise` (the address
    /// they reach this node at, across NAT or a bind to every interface), else the bound
    /// address. Runs until `shutdown` fires.
    pub async fn start(
        keypair: Keypair,
        listen: Multiaddr,
        advertise: Option<Multiaddr>,
        incoming: mpsc::Sender<Incoming>,
        shutdown: oneshot::Receiver<()>,
    ) -> Result<Self, P2pError> {
        let codec = cbor::codec::Codec::<Envelope, Ack>::default()
            .set_request_size_maximum(MAX_MESSAGE)
            .set_response_size_maximum(64);
        let behaviour = Behaviour::with_codec(
            codec,
            [(StreamProtocol::new(PROTOCOL), ProtocolSupport::Full)],
            request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT),
        );
        let mut swarm = SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| P2pError::Transport(e.to_string()))?
            .with_behaviour(|_| behaviour)
            .map_err(|e| P2pError::Transport(e.to_string()))?
            .with_swarm_config(|c| {
                // Every ceremony message opens a stream; with multistream-select's V1 the
                // message waited for the peer to confirm the protocol, one round trip more
                // per message (three per DKG, on the WAN). Both ends speak the one protocol,
                // so the message goes with the proposal (a peer without it answers `na`: an
                // outbound failure, retried as any other).
                c.with_idle_connection_timeout(Duration::from_secs(120))
                    .with_substream_upgrade_protocol_override(
                        libp2p::core::upgrade::Version::V1Lazy,
                    )
            })
            .build();
        swarm
            .listen_on(listen.clone())
            .map_err(|e| P2pError::Listen {
                addr: listen.clone(),
                reason: e.to_string(),
            })?;
        // Wait for the bound address (port 0 resolves here).
        let bound = loop {
            match swarm.select_next_some().await {
                SwarmEvent::NewListenAddr { address, .. } => break address,
                SwarmEvent::ListenerError { error, .. } => {
                    return Err(P2pError::Listen {
                        addr: listen,
                        reason: error.to_string(),
                    })
                }
                SwarmEvent::ListenerClosed { reason, .. } => {
                    return Err(P2pError::Listen {
                        addr: listen,
                        reason: format!("{reason:?}"),
                    })
                }
                _ => {}
            }
        };
        let peer_id = *swarm.local_peer_id();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(swarm, rx, tx.clone(), incoming, shutdown));
        Ok(Self {
            commands: tx,
            peer_id,
            dialed: advertise.unwrap_or(bound),
        })
    }

    /// This node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The address peers dial (advertised, else bound), with `/p2p/<peer id>`.
    pub fn address(&self) -> Multiaddr {
        self.dialed
            .clone()
            .with(libp2p::multiaddr::Protocol::P2p(self.peer_id))
    }

    /// Send `envelope` to `peer` at `addr`, retrying with backoff until acknowledged or given up.
    pub fn send(&self, peer: PeerId, addr: Multiaddr, envelope: Envelope) {
        let _ = self.commands.send(Command::Send {
            peer,
            addr,
            envelope,
            attempt: 0,
        });
    }
}

/// Split `/ip4/../tcp/../p2p/<id>` into the peer id and the address.
pub fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut base = addr.clone();
    match base.pop()? {
        libp2p::multiaddr::Protocol::P2p(peer) => Some((peer, base)),
        _ => None,
    }
}

async fn run(
    mut swarm: Swarm<Behaviour>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    retry: mpsc::UnboundedSender<Command>,
    incoming: mpsc::Sender<Incoming>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let mut pending: HashMap<OutboundRequestId, (PeerId, Multiaddr, Envelope, u32)> =
        HashMap::new();
    // When each connection last brought something (a message or an acknowledgement).
    let mut heard: HashMap<ConnectionId, Instant> = HashMap::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            command = commands.recv() => {
                let Some(Command::Send { peer, addr, envelope, attempt }) = command else { break };
                if !swarm.is_connected(&peer) {
                    // Dial from a new port: from the listening port (libp2p's default), two
                    // nodes dialing each other at once over a link slower than their dials
                    // make one TCP connection by simultaneous open, on which both run the
                    // Noise initiator and fail; every DKG across a 50 ms link did.
                    let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                        .addresses(vec![addr.clone()])
                        .allocate_new_port()
                        .build();
                    if let Err(e) = swarm.dial(opts) {
                        tracing::debug!(%peer, error = %e, "dial not started");
                    }
                }
                let id = swarm.behaviour_mut().send_request_with_addresses(
                    &peer,
                    envelope.clone(),
                    vec![addr.clone()],
                );
                pending.insert(id, (peer, addr, envelope, attempt));
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::Behaviour(request_response::Event::Message { peer, message, connection_id }) => {
                    heard.insert(connection_id, Instant::now());
                    match message {
                        request_response::Message::Request { request, channel, .. } => {
                            let _ = swarm.behaviour_mut().send_response(channel, Ack);
                            // A full inbox drops the message; the sender's retry or the
                            // ceremony's relay and sync requests recover it.
                            if incoming.try_send(Incoming { from: peer, envelope: request }).is_err() {
                                tracing::warn!(%peer, "ceremony inbox full; message dropped");
                            }
                        }
                        request_response::Message::Response { request_id, .. } => {
                            pending.remove(&request_id);
                        }
                    }
                }
                SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, error, peer, connection_id }) => {
                    // No acknowledgement within the request timeout, and nothing else from
                    // that connection either: the link went away under it (a partition), and
                    // TCP may keep it in retransmission backoff for minutes after the link is
                    // back, holding every later message. Close it, so the retry dials anew. (A
                    // connection that still brings messages is slow, not dead: kept.)
                    let silent = heard
                        .get(&connection_id)
                        .is_none_or(|at| at.elapsed() >= REQUEST_TIMEOUT);
                    if matches!(error, request_response::OutboundFailure::Timeout) && silent {
                        tracing::info!(%peer, "ceremony message unacknowledged on a silent connection; reconnecting");
                        let _ = swarm.close_connection(connection_id);
                    }
                    if let Some((peer_id, addr, envelope, attempt)) = pending.remove(&request_id) {
                        if attempt + 1 < MAX_ATTEMPTS {
                            let retry = retry.clone();
                            let delay = Duration::from_millis(200 * u64::from(attempt + 1).min(10));
                            tracing::debug!(%peer, %error, attempt, "ceremony message not delivered; retrying");
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = retry.send(Command::Send { peer: peer_id, addr, envelope, attempt: attempt + 1 });
                            });
                        } else {
                            tracing::warn!(%peer, %error, "ceremony message given up after {MAX_ATTEMPTS} attempts");
                        }
                    }
                }
                SwarmEvent::ConnectionEstablished { connection_id, .. } => {
                    heard.insert(connection_id, Instant::now());
                }
                SwarmEvent::ConnectionClosed { connection_id, .. } => {
                    heard.remove(&connection_id);
                }
                SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                    tracing::debug!(peer = ?peer_id, %error, "dial failed");
                }
                SwarmEvent::Behaviour(request_response::Event::InboundFailure { peer, error, .. }) => {
                    tracing::debug!(%peer, %error, "inbound ceremony message failed");
                }
                _ => {}
            },
        }
    }
}
