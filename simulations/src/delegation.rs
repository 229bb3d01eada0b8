//! Threshold delegation over the simulated network: a manager (address 0) fans each request out
//! to every share holder, verifies partials with `tkms_crypto::delegation::verify_all`, and
//! combines the first `t` verified ones; a request not served by its deadline fails fast (the
//! HTTP 503 of DESIGN §7). Share holders may be crashed (see the crash schedule), silent, or
//! byzantine (wrong partials).

use std::collections::BTreeMap;

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    delegation::{self, DelegationRequest, PartialDelegation, VerifiedPartialDelegation},
    ecies::{self, Ciphertext},
    shamir::lagrange_coefficients,
    KeyShare, NodeIndex, PublicKeySet, SecretScalar, SharedSecret, Suite,
};

use crate::cpu::CpuModel;
use crate::dkg_node::S;
use crate::sim::{Actor, Addr, Message, Outbox, Time};

/// The manager's address.
pub const MANAGER: Addr = 0;

/// How a share holder misbehaves when asked for a partial.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeFault {
    /// Answers correctly.
    Honest,
    /// Never answers.
    Silent,
    /// Answers with a well-formed partial made with a random share (its proof cannot verify
    /// against the node's public share).
    WrongPartial,
    /// Answers with a correct partial whose proof bytes were flipped (re-decoded if it still
    /// decodes; otherwise the node sends a wrong partial instead).
    FlippedProof,
}

/// How the manager treats partials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManagerMode {
    /// Verify every partial and combine only verified ones (the real manager).
    Verify,
    /// DELIBERATELY BROKEN: combine the first `t` partials received without verifying them.
    /// Exists only to show that the "only verified partials" invariant can fail.
    CombineUnverified,
    /// DELIBERATELY BROKEN: ask only the first `t` nodes, never the others (no fallback when
    /// one of them is down or lies). Exists only to show that the liveness invariant can fail.
    AskOnlyT,
    /// DELIBERATELY BROKEN: no deadline; a request waits for ever for missing partials (the
    /// hang DESIGN §7 forbids). Exists only to show that the liveness invariant can fail.
    NoDeadline,
}

/// A delegation message.
#[derive(Clone, Debug)]
pub enum DelMsg {
    /// Manager → node.
    Request {
        /// Request number.
        id: u32,
        /// What to compute.
        request: Box<DelegationRequest<S>>,
    },
    /// Node → manager.
    Partial {
        /// Request number.
        id: u32,
        /// The node's answer.
        partial: Box<PartialDelegation<S>>,
    },
}

impl Message for DelMsg {
    fn wire_size(&self) -> usize {
        match self {
            // id(4) + epoch(8) + request id (var) + K(33).
            Self::Request { request, .. } => 4 + 8 + 2 + request.request_id().len() + 33,
            Self::Partial { partial, .. } => 4 + partial.to_bytes().len(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Request { .. } => "delegate-request",
            Self::Partial { .. } => "partial",
        }
    }
}

/// One request the manager will issue: when, and the ciphertext whose `K` it asks about (so
/// the result can be checked by opening it).
#[derive(Clone, Debug)]
pub struct PlannedRequest {
    /// Issue time.
    pub at: Time,
    /// A ciphertext under the cluster key.
    pub ciphertext: Ciphertext<S>,
    /// Its plaintext (the oracle).
    pub plaintext: Vec<u8>,
}

/// What happened to one request.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Request number.
    pub id: u32,
    /// The request as sent.
    pub request: DelegationRequest<S>,
    /// Issue time.
    pub issued: Time,
    /// Completion time (served or failed).
    pub finished: Option<Time>,
    /// The shared secret returned to the client, if served.
    pub secret: Option<[u8; 32]>,
    /// The partials combined into the result, as received.
    pub used: Vec<PartialDelegation<S>>,
    /// Nodes whose partials failed verification.
    pub rejected: Vec<NodeIndex>,
    /// Partials received in total.
    pub received: usize,
}

impl RequestRecord {
    /// Served with a result.
    pub fn served(&self) -> bool {
        self.secret.is_some()
    }
}

struct Open {
    verified: Vec<VerifiedPartialDelegation<S>>,
    used: Vec<PartialDelegation<S>>,
    raw: Vec<PartialDelegation<S>>,
}

/// The manager.
pub struct Manager {
    keys: PublicKeySet<S>,
    epoch: u64,
    nodes: Vec<Addr>,
    mode: ManagerMode,
    deadline: Time,
    plan: Vec<PlannedRequest>,
    open: BTreeMap<u32, Open>,
    records: BTreeMap<u32, RequestRecord>,
    cpu: CpuModel,
}

impl Manager {
    /// A manager for `keys` (epoch `epoch`) asking `nodes`, failing a request after
    /// `deadline` µs.
    pub fn new(
        keys: PublicKeySet<S>,
        epoch: u64,
        nodes: Vec<Addr>,
        mode: ManagerMode,
        deadline: Time,
        plan: Vec<PlannedRequest>,
    ) -> Self {
        Self {
            keys,
            epoch,
            nodes,
            mode,
            deadline,
            plan,
            open: BTreeMap::new(),
            records: BTreeMap::new(),
            cpu: CpuModel::FREE,
        }
    }

    /// Charge CPU time from `cpu` for verifying and combining.
    #[must_use]
    pub fn with_cpu(mut self, cpu: CpuModel) -> Self {
        self.cpu = cpu;
        self
    }

    /// Every request's record.
    pub fn records(&self) -> &BTreeMap<u32, RequestRecord> {
        &self.records
    }

    /// The requests as planned (with their plaintexts).
    pub fn plan(&self) -> &[PlannedRequest] {
        &self.plan
    }

    /// The key set the manager verifies against.
    pub fn keys(&self) -> &PublicKeySet<S> {
        &self.keys
    }

    fn complete(&mut self, now: Time, id: u32, secret: Option<[u8; 32]>) {
        let open = self.open.remove(&id);
        if let Some(r) = self.records.get_mut(&id) {
            r.finished = Some(now);
            r.secret = secret;
            if let Some(open) = open {
                r.used = open.used;
            }
        }
    }

    /// Take in a partial; returns the CPU time spent.
    fn on_partial(
        &mut self,
        now: Time,
        id: u32,
        partial: PartialDelegation<S>,
        rng: &mut ChaCha20Rng,
    ) -> Time {
        let Some(open) = self.open.get_mut(&id) else {
            return 0;
        };
        let Some(record) = self.records.get_mut(&id) else {
            return 0;
        };
        if open.raw.iter().any(|p| p.index() == partial.index()) {
            return 0;
        }
        record.received += 1;
        let t = usize::from(self.keys.threshold());
        match self.mode {
            ManagerMode::Verify | ManagerMode::AskOnlyT | ManagerMode::NoDeadline => {
                open.raw.push(partial.clone());
                let (verified, errors) =
                    delegation::verify_all(vec![partial.clone()], &self.keys, &record.request, rng);
                for e in errors {
                    if let tkms_crypto::Error::InvalidProof { culprit } = e {
                        record.rejected.push(culprit);
                    }
                }
                if !verified.is_empty() {
                    open.used.push(partial);
                    open.verified.extend(verified);
                }
                if open.verified.len() >= t {
                    let secret = delegation::combine(&open.verified, &self.keys)
                        .ok()
                        .map(|s| *s.as_bytes());
                    let cost = self.cpu.verify() + self.cpu.combine(t);
                    self.complete(now + cost, id, secret);
                    return cost;
                }
                self.cpu.verify()
            }
            ManagerMode::CombineUnverified => {
                open.raw.push(partial.clone());
                open.used.push(partial);
                if open.used.len() >= t {
                    let secret = combine_unverified(&open.used).map(|s| *s.as_bytes());
                    let cost = self.cpu.combine(t);
                    self.complete(now + cost, id, secret);
                    return cost;
                }
                0
            }
        }
    }
}

/// The broken manager's combination: Lagrange over the claimed `D_i` of unverified partials
/// (read from their encoding), through the crate's public Lagrange and ECIES helpers.
fn combine_unverified(partials: &[PartialDelegation<S>]) -> Option<SharedSecret> {
    let indices: Vec<NodeIndex> = partials.iter().map(PartialDelegation::index).collect();
    let lambdas = lagrange_coefficients::<S>(&indices).ok()?;
    let terms = partials
        .iter()
        .zip(lambdas)
        .map(|(p, l)| Some((S::decode_point(&p.to_bytes()[2..35]).ok()?, l)))
        .collect::<Option<Vec<_>>>()?;
    ecies::shared_secret::<S>(&S::lincomb(&terms)).ok()
}

/// A share holder.
pub struct ShareNode {
    share: KeyShare<S>,
    fault: NodeFault,
    cpu: CpuModel,
}

impl ShareNode {
    /// A node holding `share`, spending `cpu.partial()` per answer.
    pub fn new(share: KeyShare<S>, fault: NodeFault, cpu: CpuModel) -> Self {
        Self { share, fault, cpu }
    }

    fn answer(
        &self,
        request: &DelegationRequest<S>,
        rng: &mut ChaCha20Rng,
    ) -> Option<PartialDelegation<S>> {
        let wrong = |rng: &mut ChaCha20Rng| {
            let fake = KeyShare::new(self.share.index(), SecretScalar::random(rng));
            PartialDelegation::create(&fake, request, rng)
        };
        match self.fault {
            NodeFault::Honest => Some(PartialDelegation::create(&self.share, request, rng)),
            NodeFault::Silent => None,
            NodeFault::WrongPartial => Some(wrong(rng)),
            NodeFault::FlippedProof => {
                let mut bytes = PartialDelegation::create(&self.share, request, rng).to_bytes();
                let at = rng.gen_range(35..bytes.len());
                bytes[at] ^= 1 << rng.gen_range(0..8);
                Some(PartialDelegation::from_bytes(&bytes).unwrap_or_else(|_| wrong(rng)))
            }
        }
    }
}

/// The actors of a delegation run.
pub enum DelegationActor {
    /// The manager at address 0.
    Manager(Box<Manager>),
    /// A share holder at its node index.
    Node(Box<ShareNode>),
}

const ISSUE: u64 = 1 << 32;
const DEADLINE: u64 = 2 << 32;

impl Actor for DelegationActor {
    type Msg = DelMsg;

    fn start(&mut self, now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<DelMsg>) {
        if let Self::Manager(m) = self {
            for (id, p) in m.plan.iter().enumerate() {
                out.timer(p.at.saturating_sub(now), ISSUE | id as u64);
            }
        }
    }

    fn on_message(
        &mut self,
        now: Time,
        from: Addr,
        msg: DelMsg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DelMsg>,
    ) {
        match (self, msg) {
            (Self::Node(node), DelMsg::Request { id, request }) => {
                if let Some(partial) = node.answer(&request, rng) {
                    out.work(node.cpu.partial());
                    out.send(
                        from,
                        DelMsg::Partial {
                            id,
                            partial: Box::new(partial),
                        },
                    );
                }
            }
            (Self::Manager(m), DelMsg::Partial { id, partial }) => {
                let cost = m.on_partial(now, id, *partial, rng);
                out.work(cost);
            }
            _ => {}
        }
    }

    fn on_timer(
        &mut self,
        now: Time,
        timer: u64,
        _rng: &mut ChaCha20Rng,
        out: &mut Outbox<DelMsg>,
    ) {
        let Self::Manager(m) = self else {
            return;
        };
        let id = (timer & 0xffff_ffff) as u32;
        if timer & ISSUE != 0 {
            let Some(plan) = m.plan.get(id as usize) else {
                return;
            };
            let request = DelegationRequest::new(
                m.epoch,
                format!("req-{id}").into_bytes(),
                *plan.ciphertext.ephemeral(),
            );
            m.records.insert(
                id,
                RequestRecord {
                    id,
                    request: request.clone(),
                    issued: now,
                    finished: None,
                    secret: None,
                    used: Vec::new(),
                    rejected: Vec::new(),
                    received: 0,
                },
            );
            m.open.insert(
                id,
                Open {
                    verified: Vec::new(),
                    used: Vec::new(),
                    raw: Vec::new(),
                },
            );
            let msg = DelMsg::Request {
                id,
                request: Box::new(request),
            };
            let ask = match m.mode {
                ManagerMode::AskOnlyT => usize::from(m.keys.threshold()).min(m.nodes.len()),
                _ => m.nodes.len(),
            };
            out.broadcast(&m.nodes[..ask], &msg);
            if m.mode != ManagerMode::NoDeadline {
                out.timer(m.deadline, DEADLINE | u64::from(id));
            }
        } else if timer & DEADLINE != 0 && m.open.contains_key(&id) {
            m.complete(now, id, None);
        }
    }
}
