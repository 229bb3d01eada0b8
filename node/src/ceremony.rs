//! Runs DKG and reshare ceremonies for the node (docs/PROTOCOL.md §7 "DKG", §8 "Resharing"): the
//! manager relays an operator's signed start request; the node checks it, builds the `tkms-crypto`
//! ceremony configuration, and drives [`Participant`] — the same state machine the simulator runs —
//! over the [`P2p`] channel with wall-clock round timers. When the participant finishes, the new
//! share goes into the vault before it is served.
//!
//! Incoming ceremony messages are attributed to a node index through the committee's peer ids
//! (Noise authenticates the peer id); messages from outside the committee are dropped, and
//! messages that arrive before this node has started the ceremony are held (bounded) until it
//! does.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use libp2p::{Multiaddr, PeerId};
use rand_core::OsRng;
use tkms_crypto::{
    ceremony::{Action, Message, Participant, Timeouts, Timer},
    dkg::{CeremonyConfig, CeremonyOutput},
    shamir::Commitment,
    suite::Encoded,
    KeyShare, NodeIndex, PublicKeySet, SecretScalar, Suite,
};
use tkms_proto::ClusterSuite as S;
use tokio::{sync::mpsc, time::Instant};

use crate::{
    epochs::{ActiveShare, Epochs},
    p2p::{split_peer, Envelope, Incoming, P2p},
};

/// Messages held for ceremonies this node has not started yet.
const MAX_EARLY: usize = 8192;
/// Largest committee a ceremony may have.
pub const MAX_COMMITTEE: usize = 1024;

/// A ceremony member as the start request names it.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its index.
    pub index: NodeIndex,
    /// Its node key.
    pub node_key: Encoded<S>,
    /// Its peer id.
    pub peer: PeerId,
    /// Where to reach it.
    pub addr: Multiaddr,
}

/// What the start request asks for, validated.
#[derive(Debug, Clone)]
pub struct Spec {
    /// A reshare of `previous` (epoch and key set) or a fresh DKG.
    pub previous: Option<(u64, PublicKeySet<S>)>,
    /// The epoch to produce.
    pub epoch: u64,
    /// The new threshold.
    pub threshold: u16,
    /// Who deals.
    pub dealers: Vec<Member>,
    /// Who receives shares.
    pub recipients: Vec<Member>,
    /// Longest wait for one round.
    pub round_timeout: Duration,
}

/// Why a ceremony was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CeremonyError {
    /// The request is malformed or inconsistent.
    #[error("invalid ceremony request: {0}")]
    Invalid(String),
    /// The request does not fit this node's state (not a member, stale epoch, busy).
    #[error("{0}")]
    Precondition(String),
    /// The protocol failed at this node.
    #[error("ceremony failed: {0}")]
    Failed(String),
    /// The vault could not store the result.
    #[error("cannot store the new share: {0}")]
    Vault(String),
}

/// What a finished ceremony produced at this node.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The epoch.
    pub epoch: u64,
    /// The new public key set.
    pub keys: PublicKeySet<S>,
    /// The agreed transcript hash.
    pub transcript_hash: [u8; 32],
    /// The dealers whose dealings count.
    pub qualified: Vec<NodeIndex>,
    /// Whether this node holds a share of the new epoch.
    pub holds_share: bool,
}

/// A checked ceremony, ready to run.
struct Plan {
    me: NodeIndex,
    share: Option<KeyShare<S>>,
    config: CeremonyConfig<S>,
    peers: HashMap<PeerId, NodeIndex>,
    addrs: HashMap<NodeIndex, (PeerId, Multiaddr)>,
}

/// Send what the participant asked to send; return the timers it armed, as deadlines.
fn carry_out(
    p2p: &P2p,
    addrs: &HashMap<NodeIndex, (PeerId, Multiaddr)>,
    epoch: u64,
    actions: &mut Vec<Action<S>>,
) -> Vec<(Instant, Timer)> {
    let mut timers = Vec::new();
    for action in actions.drain(..) {
        match action {
            Action::Send { to, msg } => {
                if let Some((peer, addr)) = addrs.get(&to) {
                    let envelope = Envelope {
                        ceremony: epoch,
                        msg: msg.to_bytes(),
                    };
                    p2p.send(*peer, addr.clone(), envelope);
                }
            }
            Action::SetTimer { after, timer } => timers.push((Instant::now() + after, timer)),
        }
    }
    timers
}

struct Route {
    peers: HashMap<PeerId, NodeIndex>,
    tx: mpsc::Sender<(NodeIndex, Message<S>)>,
}

#[derive(Default)]
struct Routes {
    live: HashMap<u64, Route>,
    early: VecDeque<Incoming>,
}

/// The node's ceremony runner.
pub struct Ceremonies {
    p2p: P2p,
    node_key: SecretScalar<S>,
    epochs: Arc<Epochs>,
    routes: Mutex<Routes>,
    running: tokio::sync::Mutex<()>,
    current: Mutex<Option<&'static str>>,
    /// The ceremony in progress once its epoch has begun here.
    in_flight: Mutex<Option<InFlight>>,
}

/// A ceremony in progress: its epoch, and the flag a start of a newer one raises to end it
/// at its next check.
struct InFlight {
    epoch: u64,
    abandon: Arc<AtomicBool>,
}

/// Clears what [`Ceremonies::run`] records of its ceremony however it ends (a panic too).
struct Running<'a>(&'a Ceremonies);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        *lock(&self.0.current) = None;
        *lock(&self.0.in_flight) = None;
    }
}

/// How often a running ceremony checks whether its epoch was committed without it.
const SUPERSEDED_CHECK: Duration = Duration::from_millis(500);

/// How long the start of a newer ceremony waits for an abandoned older one to end (it
/// checks every [`SUPERSEDED_CHECK`]).
const SUPERSEDED_WAIT: Duration = Duration::from_secs(3);

impl std::fmt::Debug for Ceremonies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ceremonies")
            .field("peer", &self.p2p.peer_id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Ceremonies {
    /// A runner over `p2p`, signing with `node_key`, holding the results in `epochs` (which
    /// stores them in the vault). Call [`Self::dispatch`] with the p2p inbox.
    pub fn new(p2p: P2p, node_key: SecretScalar<S>, epochs: Arc<Epochs>) -> Self {
        Self {
            p2p,
            node_key,
            epochs,
            routes: Mutex::new(Routes::default()),
            running: tokio::sync::Mutex::new(()),
            current: Mutex::new(None),
            in_flight: Mutex::new(None),
        }
    }

    /// The kind of ceremony in progress ("dkg", "reshare"), if any.
    pub fn in_progress(&self) -> Option<&'static str> {
        *lock(&self.current)
    }

    /// This node's libp2p address (with peer id).
    pub fn p2p_address(&self) -> Multiaddr {
        self.p2p.address()
    }

    /// Route messages from the p2p inbox to running ceremonies until the inbox closes.
    pub async fn dispatch(self: Arc<Self>, mut inbox: mpsc::Receiver<Incoming>) {
        while let Some(incoming) = inbox.recv().await {
            self.route(incoming);
        }
    }

    fn route(&self, incoming: Incoming) {
        let mut routes = lock(&self.routes);
        let Some(route) = routes.live.get(&incoming.envelope.ceremony) else {
            if routes.early.len() >= MAX_EARLY {
                routes.early.pop_front();
            }
            routes.early.push_back(incoming);
            return;
        };
        let Some(from) = route.peers.get(&incoming.from).copied() else {
            tracing::warn!(peer = %incoming.from, "ceremony message from outside the committee dropped");
            return;
        };
        match Message::<S>::from_bytes(&incoming.envelope.msg) {
            Ok(msg) => {
                if route.tx.try_send((from, msg)).is_err() {
                    tracing::warn!(%from, "ceremony queue full; message dropped");
                }
            }
            Err(e) => tracing::warn!(%from, error = %e, "undecodable ceremony message dropped"),
        }
    }

    /// Run the ceremony `spec` to its end at this node and store the new share.
    ///
    /// If a ceremony of an older epoch still runs here, and this node would take part in
    /// `spec`, the older one is abandoned and this one waits for it to end (at most
    /// [`SUPERSEDED_WAIT`]): the manager runs one ceremony at a time and signs every start,
    /// so a start of a newer epoch means it is done with the older one, which this node may
    /// not know yet (it was cut off from its end, and the manager's word that the epoch was
    /// committed may not have reached it first). This assumes one active manager: of two
    /// run at once, the later one's ceremonies would end the earlier one's here.
    pub async fn run(self: &Arc<Self>, spec: Spec) -> Result<Outcome, CeremonyError> {
        let _busy = if let Ok(guard) = self.running.try_lock() {
            guard
        } else {
            let older = lock(&self.in_flight)
                .as_ref()
                .filter(|f| f.epoch < spec.epoch)
                .map(|f| (f.epoch, Arc::clone(&f.abandon)));
            let Some((running, abandon)) = older else {
                return Err(CeremonyError::Precondition(
                    "another ceremony is in progress on this node".into(),
                ));
            };
            // A start this node would refuse anyway leaves the running one alone.
            self.plan(&spec)?;
            tracing::info!(
                running,
                epoch = spec.epoch,
                "a newer ceremony is asked for: abandoning the one in progress"
            );
            abandon.store(true, Ordering::Release);
            tokio::time::timeout(SUPERSEDED_WAIT, self.running.lock())
                .await
                .map_err(|_| {
                    CeremonyError::Precondition(format!(
                        "the ceremony of epoch {running} in progress on this node did not end within {SUPERSEDED_WAIT:?}"
                    ))
                })?
        };
        let _running = Running(self);
        let kind = if spec.previous.is_some() {
            "reshare"
        } else {
            "dkg"
        };
        *lock(&self.current) = Some(kind);
        self.run_locked(spec).await
    }

    /// Check the request against this node's state and build the ceremony's configuration.
    fn plan(&self, spec: &Spec) -> Result<Plan, CeremonyError> {
        let me_key = S::encode_point(&self.node_key.public_point());
        let find = |members: &[Member]| {
            members
                .iter()
                .find(|m| m.node_key.bytes() == &me_key)
                .map(|m| m.index)
        };
        let (as_dealer, as_recipient) = (find(&spec.dealers), find(&spec.recipients));
        let me = match (as_dealer, as_recipient) {
            (Some(a), Some(b)) if a != b => {
                return Err(CeremonyError::Invalid(format!(
                    "this node is dealer {a} but recipient {b}: one node has one index"
                )))
            }
            (Some(i), _) | (None, Some(i)) => i,
            (None, None) => {
                return Err(CeremonyError::Precondition(
                    "this node's key is not in the ceremony's committee".into(),
                ))
            }
        };

        // A reshare dealer deals from the share it holds of the previous epoch.
        let mut share: Option<KeyShare<S>> = None;
        if let (Some((prev_epoch, prev_keys)), Some(_)) = (&spec.previous, as_dealer) {
            let Ok(held) = self.epochs.get(*prev_epoch) else {
                return Err(CeremonyError::Precondition(format!(
                    "this node is asked to deal from epoch {prev_epoch} but holds no share of it"
                )));
            };
            if held.keys.commitment() != prev_keys.commitment() {
                return Err(CeremonyError::Invalid(format!(
                    "the previous key set in the request is not the one of epoch {prev_epoch} this node holds"
                )));
            }
            if held.share.index() != me {
                return Err(CeremonyError::Invalid(format!(
                    "this node held index {} in epoch {prev_epoch}, not {me}",
                    held.share.index()
                )));
            }
            share = Some(held.share.clone());
        }

        let to_map = |members: &[Member]| -> BTreeMap<NodeIndex, <S as Suite>::Point> {
            members
                .iter()
                .map(|m| (m.index, *m.node_key.point()))
                .collect()
        };
        let config = match &spec.previous {
            None => CeremonyConfig::dkg(spec.epoch, spec.threshold, to_map(&spec.recipients)),
            Some((_, prev)) => CeremonyConfig::reshare(
                spec.epoch,
                spec.threshold,
                prev.clone(),
                to_map(&spec.dealers),
                to_map(&spec.recipients),
            ),
        }
        .map_err(|e| CeremonyError::Invalid(e.to_string()))?;

        let mut peers: HashMap<PeerId, NodeIndex> = HashMap::new();
        let mut addrs: HashMap<NodeIndex, (PeerId, Multiaddr)> = HashMap::new();
        for m in spec.dealers.iter().chain(&spec.recipients) {
            if let Some(other) = peers.insert(m.peer, m.index) {
                if other != m.index {
                    return Err(CeremonyError::Invalid(format!(
                        "peer {} is named for nodes {other} and {}",
                        m.peer, m.index
                    )));
                }
            }
            addrs.insert(m.index, (m.peer, m.addr.clone()));
        }

        Ok(Plan {
            me,
            share,
            config,
            peers,
            addrs,
        })
    }

    /// Begin `epoch` at this node (epochs only move forward, and a number is never used
    /// twice: recorded durably) and record it as the ceremony in progress: the flag returned
    /// is raised when a newer one is asked for.
    fn begin(&self, epoch: u64) -> Result<Arc<AtomicBool>, CeremonyError> {
        self.epochs.begin_ceremony(epoch).map_err(|e| match e {
            crate::epochs::EpochError::Vault(v) => CeremonyError::Vault(v.to_string()),
            other => CeremonyError::Precondition(other.to_string()),
        })?;
        let abandon = Arc::new(AtomicBool::new(false));
        *lock(&self.in_flight) = Some(InFlight {
            epoch,
            abandon: Arc::clone(&abandon),
        });
        Ok(abandon)
    }

    async fn run_locked(self: &Arc<Self>, spec: Spec) -> Result<Outcome, CeremonyError> {
        let Plan {
            me,
            share,
            config,
            peers,
            addrs,
        } = self.plan(&spec)?;
        let abandon = self.begin(spec.epoch)?;
        let timeouts = Timeouts {
            round: spec.round_timeout,
            ..Timeouts::default()
        };
        let mut participant = Participant::new(me, self.node_key.clone(), share, timeouts, config);
        let (tx, mut rx) = mpsc::channel(4 * MAX_COMMITTEE);
        let epoch = spec.epoch;
        {
            let mut routes = lock(&self.routes);
            let early: Vec<Incoming> = std::mem::take(&mut routes.early).into();
            routes.live.insert(epoch, Route { peers, tx });
            let (mine, other): (Vec<_>, Vec<_>) = early
                .into_iter()
                .partition(|i| i.envelope.ceremony == epoch);
            routes.early = other.into();
            drop(routes);
            for incoming in mine {
                self.route(incoming);
            }
        }
        tracing::info!(epoch, %me, kind = ?self.in_progress(), "ceremony started");

        let started = Instant::now();
        // A ceremony that makes no progress for this long is abandoned.
        let deadline =
            started + timeouts.round * 4 * timeouts.max_attempts + Duration::from_secs(5);
        let mut timers: Vec<(Instant, Timer)> = Vec::new();
        let mut actions = Vec::new();
        participant.start(Duration::ZERO, &mut OsRng, &mut actions);
        let result = loop {
            timers.extend(carry_out(&self.p2p, &addrs, epoch, &mut actions));
            if let Some(result) = participant.take_result() {
                break result.map_err(|e| CeremonyError::Failed(e.to_string()));
            }
            let next = timers
                .iter()
                .map(|(at, _)| *at)
                .min()
                .unwrap_or(deadline)
                .min(deadline)
                .min(Instant::now() + SUPERSEDED_CHECK);
            tokio::select! {
                received = rx.recv() => {
                    let Some((from, msg)) = received else {
                        break Err(CeremonyError::Failed("ceremony channel closed".into()));
                    };
                    // Checked here too: a stream of messages must not put it off.
                    if let Some(end) = self.given_up(epoch, &abandon, Instant::now(), started, deadline) {
                        break Err(end);
                    }
                    participant.on_message(started.elapsed(), from, msg, &mut OsRng, &mut actions);
                }
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    if let Some(end) = self.given_up(epoch, &abandon, now, started, deadline) {
                        break Err(end);
                    }
                    let (due, later): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(at, _)| *at <= now);
                    timers = later;
                    for (_, timer) in due {
                        participant.on_timer(started.elapsed(), timer, &mut OsRng, &mut actions);
                    }
                }
            }
        };
        // Keep answering relay and sync requests for one more round: peers that are behind
        // may still need this node's messages.
        let p2p = self.p2p.clone();
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let until = Instant::now() + timeouts.round;
            loop {
                // Timers no longer matter: the participant has finished.
                let _ = carry_out(&p2p, &addrs, epoch, &mut actions);
                tokio::select! {
                    received = rx.recv() => match received {
                        Some((from, msg)) => participant.on_message(
                            started.elapsed(), from, msg, &mut OsRng, &mut actions,
                        ),
                        None => break,
                    },
                    () = tokio::time::sleep_until(until) => break,
                }
            }
            lock(&this.routes).live.remove(&epoch);
        });
        let output = result?;
        tracing::info!(epoch, elapsed = ?started.elapsed(), "ceremony finished");
        self.adopt(output, me)
    }

    /// Why the ceremony of `epoch` (started at `started`) ends unfinished at `now`, if it does:
    /// its deadline passed; or the manager asked for a newer one (`abandon`, see
    /// [`Ceremonies::run`]) or the committee finished without this node (it was cut off), so
    /// nothing it makes can be committed and it would only hold the node busy, and out of the
    /// next ceremony, until its deadline.
    fn given_up(
        &self,
        epoch: u64,
        abandon: &AtomicBool,
        now: Instant,
        started: Instant,
        deadline: Instant,
    ) -> Option<CeremonyError> {
        if now >= deadline {
            return Some(CeremonyError::Failed(format!(
                "no result after {:?}",
                now - started
            )));
        }
        if abandon.load(Ordering::Acquire) {
            return Some(CeremonyError::Failed(
                "the manager asked for a newer ceremony; this one abandoned".into(),
            ));
        }
        let committed = self.epochs.committed();
        (committed >= epoch).then(|| {
            CeremonyError::Failed(format!(
                "epoch {committed} was committed without this node; ceremony abandoned"
            ))
        })
    }

    /// Store the new share (if any) and hold it beside the committed epoch until the manager
    /// commits it.
    fn adopt(&self, output: CeremonyOutput<S>, me: NodeIndex) -> Result<Outcome, CeremonyError> {
        let epoch = output.epoch();
        let keys = output.public().clone();
        let transcript_hash = *output.transcript_hash();
        let qualified = output.qualified().to_vec();
        let share = output.into_share();
        let holds_share = share.is_some();
        if let Some(share) = share {
            debug_assert_eq!(share.index(), me);
            self.epochs
                .adopt(ActiveShare {
                    epoch,
                    share,
                    keys: keys.clone(),
                    transcript_hash,
                })
                .map_err(|e| CeremonyError::Vault(e.to_string()))?;
        }
        Ok(Outcome {
            epoch,
            keys,
            transcript_hash,
            qualified,
            holds_share,
        })
    }
}

/// Validate a start request's committee list.
pub fn members(
    list: &[tkms_proto::node::v1::CommitteeMember],
    what: &str,
) -> Result<Vec<Member>, CeremonyError> {
    if list.is_empty() || list.len() > MAX_COMMITTEE {
        return Err(CeremonyError::Invalid(format!(
            "{what}: 1..={MAX_COMMITTEE} members required, got {}",
            list.len()
        )));
    }
    let mut out: Vec<Member> = Vec::with_capacity(list.len());
    for m in list {
        let index = u16::try_from(m.index)
            .ok()
            .and_then(NodeIndex::new)
            .ok_or_else(|| CeremonyError::Invalid(format!("{what}: bad node index {}", m.index)))?;
        if out.iter().any(|o| o.index == index) {
            return Err(CeremonyError::Invalid(format!(
                "{what}: node {index} listed twice"
            )));
        }
        let node_key = Encoded::from_bytes(&m.node_key)
            .map_err(|e| CeremonyError::Invalid(format!("{what}: node {index} key: {e}")))?;
        let addr: Multiaddr = m.p2p_addr.parse().map_err(|e| {
            CeremonyError::Invalid(format!("{what}: node {index} p2p address: {e}"))
        })?;
        let (peer, addr) = split_peer(&addr).ok_or_else(|| {
            CeremonyError::Invalid(format!(
                "{what}: node {index} p2p address must end with /p2p/<peer id>"
            ))
        })?;
        out.push(Member {
            index,
            node_key,
            peer,
            addr,
        });
    }
    Ok(out)
}

/// Decode a previous epoch's key set from its commitment and committee.
pub fn key_set(commitment: &[u8], committee: &[Member]) -> Result<PublicKeySet<S>, CeremonyError> {
    let commitment = Commitment::<S>::from_bytes(commitment)
        .map_err(|e| CeremonyError::Invalid(format!("previous commitment: {e}")))?;
    Ok(PublicKeySet::new(
        commitment,
        committee.iter().map(|m| m.index),
    ))
}
