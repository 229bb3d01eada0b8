//! A DKG/reshare participant as a sans-IO state machine over the real round functions of
//! `tkms_crypto::dkg`: it reacts to messages and timers and emits [`Command`]s, so it runs in
//! the simulator and in unit tests alike.
//!
//! A round ends when every expected message is in, or when its timeout fires; the node then
//! proceeds with what it has (the round functions treat absent dealers as silent). On
//! `MissingDealing` it asks its peers to relay that dealing (dealings are signed, so anyone
//! may relay them); on `TranscriptMismatch` it restarts with `CeremonyConfig::restart`.
//!
//! [`Command`]: crate::sim::Command

use std::collections::{BTreeMap, BTreeSet};

use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    dkg::{
        self, byzantine, CeremonyConfig, CeremonyOutput, Confirmation, Dealing, Fault,
        ReceivedShares, Response,
    },
    Error, KeyShare, NodeIndex, Secp256k1, SecretScalar,
};

use crate::sim::{Actor, Addr, Message, Outbox, Time, MS, SECOND};

/// The suite the simulator runs on.
pub type S = Secp256k1;

/// How a participant misbehaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DkgBehaviour {
    /// Follows the protocol.
    Honest,
    /// Sends nothing at all.
    Silent,
    /// Deals shares that do not match its commitments to two recipients.
    BadShares,
    /// Deals undecodable share plaintext to one recipient.
    GarbageShares,
    /// Deals with an invalid proof of possession.
    BadProofOfPossession,
    /// Sends one dealing to even recipients and another to odd ones.
    Equivocate,
    /// Deals honestly but falsely accuses the lowest other dealer.
    FalseAccuser,
}

impl DkgBehaviour {
    /// Every behaviour, for the CLI.
    pub const ALL: [Self; 7] = [
        Self::Honest,
        Self::Silent,
        Self::BadShares,
        Self::GarbageShares,
        Self::BadProofOfPossession,
        Self::Equivocate,
        Self::FalseAccuser,
    ];

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Honest => "honest",
            Self::Silent => "silent",
            Self::BadShares => "bad-shares",
            Self::GarbageShares => "garbage-shares",
            Self::BadProofOfPossession => "bad-pop",
            Self::Equivocate => "equivocate",
            Self::FalseAccuser => "false-accuser",
        }
    }
}

/// Timeouts and retry limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DkgTimeouts {
    /// How long each round waits for missing messages.
    pub round: Time,
    /// How long to wait for a relayed dealing before retrying.
    pub relay: Time,
    /// Relay requests per attempt before giving up.
    pub max_relays: u32,
    /// Ceremony attempts (restarts after a transcript mismatch) before giving up.
    pub max_attempts: u32,
}

impl Default for DkgTimeouts {
    fn default() -> Self {
        Self {
            round: 2 * SECOND,
            relay: 500 * MS,
            max_relays: 4,
            max_attempts: 3,
        }
    }
}

/// The payload of a DKG message.
#[derive(Clone, Debug)]
pub enum DkgBody {
    /// Round 1.
    Dealing(Dealing<S>),
    /// Round 2.
    Response(Response<S>),
    /// Round 3 output, checked in round 4.
    Confirmation(Confirmation<S>),
    /// "Send me dealer i's dealing."
    RelayRequest(NodeIndex),
    /// A relayed dealing.
    Relay(Dealing<S>),
    /// "I restarted: resend what you sent in this attempt."
    SyncRequest,
}

/// A DKG message: the attempt it belongs to, its payload, and its wire size.
#[derive(Clone, Debug)]
pub struct DkgMsg {
    /// `CeremonyConfig::attempt` of the sender.
    pub attempt: u32,
    /// The payload.
    pub body: DkgBody,
    size: usize,
}

impl DkgMsg {
    /// Wrap a payload, measuring its real encoding.
    pub fn new(attempt: u32, body: DkgBody) -> Self {
        // attempt(4) + tag(1) + the protocol value's own encoding.
        let size = 5 + match &body {
            DkgBody::Dealing(d) | DkgBody::Relay(d) => d.to_bytes().len(),
            DkgBody::Response(r) => r.to_bytes().len(),
            DkgBody::Confirmation(c) => c.to_bytes().len(),
            DkgBody::RelayRequest(_) => 2,
            DkgBody::SyncRequest => 0,
        };
        Self {
            attempt,
            body,
            size,
        }
    }
}

impl Message for DkgMsg {
    fn wire_size(&self) -> usize {
        self.size
    }

    fn kind(&self) -> &'static str {
        match self.body {
            DkgBody::Dealing(_) => "dealing",
            DkgBody::Response(_) => "response",
            DkgBody::Confirmation(_) => "confirmation",
            DkgBody::RelayRequest(_) => "relay-request",
            DkgBody::Relay(_) => "relay",
            DkgBody::SyncRequest => "sync-request",
        }
    }
}

enum Phase {
    /// Waiting for dealings.
    Dealing,
    /// Response sent; waiting for responses (the decrypted shares are in `DkgNode::shares`).
    Responding,
    /// Finalize needs a dealing we lack; a relay was requested.
    AwaitingRelay(NodeIndex),
    /// Confirmation sent; waiting for confirmations.
    Confirming(Box<CeremonyOutput<S>>),
    /// Finished (see [`DkgNode::result`]).
    Done,
}

const ROUND1: u64 = 1;
const ROUND2: u64 = 2;
const RELAY: u64 = 3;
const ROUND3: u64 = 4;

/// One participant of a DKG or reshare ceremony.
pub struct DkgNode {
    me: NodeIndex,
    key: SecretScalar<S>,
    share: Option<KeyShare<S>>,
    behaviour: DkgBehaviour,
    timeouts: DkgTimeouts,
    config: CeremonyConfig<S>,
    peers: Vec<Addr>,
    phase: Phase,
    /// Round 2's decrypted shares (secret; never sent). Late dealings relayed by peers are
    /// absorbed into it.
    shares: Option<ReceivedShares<S>>,
    dealings: BTreeMap<NodeIndex, Vec<Dealing<S>>>,
    responses: BTreeMap<NodeIndex, Response<S>>,
    confirmations: BTreeMap<NodeIndex, Confirmation<S>>,
    /// What this node broadcast in the current attempt (resent on a peer's sync request).
    sent: Vec<DkgBody>,
    /// Messages of later attempts, replayed when this node gets there.
    future: Vec<(Addr, DkgMsg)>,
    relays: u32,
    result: Option<Result<CeremonyOutput<S>, Error>>,
    done_at: Option<Time>,
}

impl DkgNode {
    /// A participant `me` with node key `key` in `config`; `share` is its current share for a
    /// reshare dealer.
    pub fn new(
        me: NodeIndex,
        key: SecretScalar<S>,
        share: Option<KeyShare<S>>,
        behaviour: DkgBehaviour,
        timeouts: DkgTimeouts,
        config: CeremonyConfig<S>,
    ) -> Self {
        let members: BTreeSet<NodeIndex> = config
            .dealers()
            .keys()
            .chain(config.recipients().keys())
            .copied()
            .collect();
        let peers = members
            .into_iter()
            .filter(|i| *i != me)
            .map(NodeIndex::get)
            .collect();
        Self {
            me,
            key,
            share,
            behaviour,
            timeouts,
            config,
            peers,
            phase: Phase::Dealing,
            shares: None,
            dealings: BTreeMap::new(),
            responses: BTreeMap::new(),
            confirmations: BTreeMap::new(),
            sent: Vec::new(),
            future: Vec::new(),
            relays: 0,
            result: None,
            done_at: None,
        }
    }

    /// The outcome, once finished.
    pub fn result(&self) -> Option<&Result<CeremonyOutput<S>, Error>> {
        self.result.as_ref()
    }

    /// Take the outcome out.
    pub fn take_result(&mut self) -> Option<Result<CeremonyOutput<S>, Error>> {
        self.result.take()
    }

    /// When it finished (virtual time).
    pub fn done_at(&self) -> Option<Time> {
        self.done_at
    }

    /// The attempt in progress or finished.
    pub fn attempt(&self) -> u32 {
        self.config.attempt()
    }

    /// Its behaviour.
    pub fn behaviour(&self) -> DkgBehaviour {
        self.behaviour
    }

    /// The node index.
    pub fn index(&self) -> NodeIndex {
        self.me
    }

    fn is_dealer(&self) -> bool {
        self.config.dealers().contains_key(&self.me)
    }

    fn is_recipient(&self) -> bool {
        self.config.recipients().contains_key(&self.me)
    }

    fn timer_id(&self, round: u64) -> u64 {
        (u64::from(self.config.attempt()) << 8) | round
    }

    fn finish(&mut self, now: Time, result: Result<CeremonyOutput<S>, Error>) {
        self.result = Some(result);
        self.done_at = Some(now);
        self.phase = Phase::Done;
    }

    fn broadcast(&mut self, body: DkgBody, out: &mut Outbox<DkgMsg>) {
        let msg = DkgMsg::new(self.config.attempt(), body.clone());
        out.broadcast(&self.peers, &msg);
        self.sent.push(body);
    }

    fn begin_attempt(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        self.phase = Phase::Dealing;
        self.dealings.clear();
        self.responses.clear();
        self.confirmations.clear();
        self.sent.clear();
        self.relays = 0;
        self.shares = None;
        if self.is_dealer() {
            self.deal(rng, out);
        }
        out.timer(self.timeouts.round, self.timer_id(ROUND1));
        let attempt = self.config.attempt();
        let (now_msgs, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.future)
            .into_iter()
            .partition(|(_, m)| m.attempt == attempt);
        self.future = later;
        for (from, msg) in now_msgs {
            self.handle(now, from, msg, rng, out);
        }
    }

    fn deal(&mut self, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        let (config, me, key, share) = (&self.config, self.me, &self.key, self.share.as_ref());
        let n = u16::try_from(config.recipients().len()).unwrap_or(u16::MAX);
        let victims = [
            NodeIndex::new(1 + me.get() % n),
            NodeIndex::new(1 + (me.get() + 1) % n),
        ];
        let victims: Vec<NodeIndex> = victims.into_iter().flatten().collect();
        let dealing = match self.behaviour {
            DkgBehaviour::Silent => return,
            DkgBehaviour::Honest | DkgBehaviour::FalseAccuser => {
                dkg::deal(config, me, key, share, rng)
            }
            DkgBehaviour::BadShares => {
                byzantine::deal_bad_shares(config, me, key, share, &victims, false, rng)
            }
            DkgBehaviour::GarbageShares => {
                byzantine::deal_bad_shares(config, me, key, share, &victims[..1], true, rng)
            }
            DkgBehaviour::BadProofOfPossession => {
                byzantine::deal_bad_proof_of_possession(config, me, key, rng)
            }
            DkgBehaviour::Equivocate => {
                let a = dkg::deal(config, me, key, share, rng);
                let b = dkg::deal(config, me, key, share, rng);
                if let (Ok(a), Ok(b)) = (a, b) {
                    let attempt = config.attempt();
                    for p in &self.peers {
                        let d = if p % 2 == 0 { a.clone() } else { b.clone() };
                        out.send(*p, DkgMsg::new(attempt, DkgBody::Dealing(d)));
                    }
                    self.store_dealing(a);
                }
                return;
            }
        };
        if let Ok(d) = dealing {
            self.store_dealing(d.clone());
            self.broadcast(DkgBody::Dealing(d), out);
        }
    }

    fn store_dealing(&mut self, d: Dealing<S>) -> bool {
        let entry = self.dealings.entry(d.dealer()).or_default();
        if entry.contains(&d) || entry.len() >= 2 {
            return false;
        }
        entry.push(d);
        true
    }

    fn all_dealings(&self) -> Vec<Dealing<S>> {
        self.dealings.values().flatten().cloned().collect()
    }

    fn handle(
        &mut self,
        now: Time,
        from: Addr,
        msg: DkgMsg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DkgMsg>,
    ) {
        if self.behaviour == DkgBehaviour::Silent {
            return;
        }
        let attempt = self.config.attempt();
        if msg.attempt > attempt {
            self.future.push((from, msg));
            return;
        }
        if msg.attempt < attempt {
            return;
        }
        match msg.body {
            DkgBody::Dealing(d) | DkgBody::Relay(d) => {
                let dealer = d.dealer();
                if let Some(shares) = self.shares.as_mut() {
                    // A dealing that arrives after round 2: take this node's share from it.
                    // A bad one is refused here and finalize keeps reporting it missing.
                    let _ = shares.absorb(&self.config, &self.key, &d);
                }
                if !self.store_dealing(d) {
                    return;
                }
                match self.phase {
                    Phase::Dealing if self.dealings.len() == self.config.dealers().len() => {
                        self.round2(rng, out);
                    }
                    Phase::AwaitingRelay(missing) if missing == dealer => {
                        self.try_finalize(now, rng, out);
                    }
                    _ => {}
                }
            }
            DkgBody::Response(r) => {
                self.responses.entry(r.recipient()).or_insert(r);
                if matches!(self.phase, Phase::Responding)
                    && self.responses.len() == self.config.recipients().len()
                {
                    self.end_round2(now, rng, out);
                }
            }
            DkgBody::Confirmation(c) => {
                self.confirmations.entry(c.node()).or_insert(c);
                if matches!(self.phase, Phase::Confirming(_))
                    && self.confirmations.len() == self.config.recipients().len()
                {
                    self.end_round3(now, rng, out);
                }
            }
            DkgBody::RelayRequest(dealer) => {
                if let Some([d]) = self.dealings.get(&dealer).map(Vec::as_slice) {
                    out.send(from, DkgMsg::new(attempt, DkgBody::Relay(d.clone())));
                }
            }
            DkgBody::SyncRequest => {
                for body in &self.sent {
                    out.send(from, DkgMsg::new(attempt, body.clone()));
                }
            }
        }
    }

    fn round2(&mut self, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        self.shares = None;
        if self.is_recipient() {
            let dealings = self.all_dealings();
            let responded = match self.behaviour {
                DkgBehaviour::FalseAccuser => {
                    let accused = self.config.dealers().keys().find(|i| **i != self.me);
                    let honest = dkg::respond(&self.config, self.me, &self.key, &dealings, rng);
                    match accused {
                        Some(a) => byzantine::respond_with_false_complaint(
                            &self.config,
                            self.me,
                            &self.key,
                            &dealings,
                            *a,
                            rng,
                        )
                        .and_then(|r| honest.map(|(_, s)| (r, s))),
                        None => honest,
                    }
                }
                _ => dkg::respond(&self.config, self.me, &self.key, &dealings, rng),
            };
            if let Ok((response, shares)) = responded {
                self.responses.insert(self.me, response.clone());
                self.broadcast(DkgBody::Response(response), out);
                self.shares = Some(shares);
            }
        }
        self.phase = Phase::Responding;
        out.timer(self.timeouts.round, self.timer_id(ROUND2));
    }

    fn end_round2(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        if matches!(self.phase, Phase::Responding) {
            self.try_finalize(now, rng, out);
        }
    }

    /// Round 3, with round 2's shares (plus any relayed dealings absorbed since).
    fn try_finalize(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        let dealings = self.all_dealings();
        let observer = ReceivedShares::observer();
        let received = match &self.shares {
            Some(shares) => shares,
            // Round 2 failed for this recipient: it has no shares to finalize with.
            None if self.is_recipient() => {
                return self.finish(now, Err(Error::NotAParticipant(self.me)));
            }
            None => &observer,
        };
        let responses: Vec<Response<S>> = self.responses.values().cloned().collect();
        let result = dkg::finalize(
            &self.config,
            &self.key,
            received,
            &dealings,
            &responses,
            rng,
        );
        match result {
            Ok((output, confirmation)) => {
                if let Some(c) = confirmation {
                    self.confirmations.insert(self.me, c);
                    self.broadcast(DkgBody::Confirmation(c), out);
                }
                self.phase = Phase::Confirming(Box::new(output));
                out.timer(self.timeouts.round, self.timer_id(ROUND3));
                if self.confirmations.len() == self.config.recipients().len() {
                    self.end_round3(now, rng, out);
                }
            }
            Err(Error::MissingDealing { dealer }) if self.relays < self.timeouts.max_relays => {
                self.relays += 1;
                self.phase = Phase::AwaitingRelay(dealer);
                let msg = DkgMsg::new(self.config.attempt(), DkgBody::RelayRequest(dealer));
                out.broadcast(&self.peers, &msg);
                out.timer(
                    self.timeouts.relay,
                    self.timer_id(RELAY) | (u64::from(self.relays) << 40),
                );
            }
            Err(e) => self.finish(now, Err(e)),
        }
    }

    fn end_round3(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        let Phase::Confirming(output) = std::mem::replace(&mut self.phase, Phase::Done) else {
            return;
        };
        let confirmations: Vec<Confirmation<S>> = self.confirmations.values().copied().collect();
        match dkg::confirm(&self.config, &output, &confirmations) {
            Ok(()) => self.finish(now, Ok(*output)),
            Err(Error::TranscriptMismatch { .. })
                if self.config.attempt() + 1 < self.timeouts.max_attempts =>
            {
                // Exclude the dealers this node saw equivocate; nodes that saw the same
                // responses exclude the same ones.
                let excluded: Vec<NodeIndex> = output
                    .faults()
                    .iter()
                    .filter(|(_, f)| matches!(f, Fault::Equivocation | Fault::BadShare))
                    .map(|(i, _)| *i)
                    .collect();
                match self.config.restart(&excluded) {
                    Ok(config) => {
                        self.config = config;
                        self.begin_attempt(now, rng, out);
                    }
                    Err(e) => self.finish(now, Err(e)),
                }
            }
            Err(e) => self.finish(now, Err(e)),
        }
    }
}

impl Actor for DkgNode {
    type Msg = DkgMsg;

    fn start(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        if self.behaviour != DkgBehaviour::Silent {
            self.begin_attempt(now, rng, out);
        }
    }

    fn on_message(
        &mut self,
        now: Time,
        from: Addr,
        msg: DkgMsg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DkgMsg>,
    ) {
        self.handle(now, from, msg, rng, out);
    }

    fn on_timer(&mut self, now: Time, timer: u64, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        let expected = |round| self.timer_id(round);
        let low = timer & 0xff_ffff_ffff;
        if low == expected(ROUND1) && matches!(self.phase, Phase::Dealing) {
            self.round2(rng, out);
        } else if low == expected(ROUND2) && matches!(self.phase, Phase::Responding) {
            self.end_round2(now, rng, out);
        } else if low == expected(RELAY)
            && timer >> 40 == u64::from(self.relays)
            && matches!(self.phase, Phase::AwaitingRelay(_))
        {
            self.try_finalize(now, rng, out);
        } else if low == expected(ROUND3) && matches!(self.phase, Phase::Confirming(_)) {
            self.end_round3(now, rng, out);
        }
    }

    fn on_restart(&mut self, _now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        if self.behaviour == DkgBehaviour::Silent || matches!(self.phase, Phase::Done) {
            return;
        }
        // Ask peers for what was missed, and re-arm the current round's timer.
        let msg = DkgMsg::new(self.config.attempt(), DkgBody::SyncRequest);
        out.broadcast(&self.peers, &msg);
        let round = match self.phase {
            Phase::Dealing => ROUND1,
            Phase::Responding => ROUND2,
            Phase::AwaitingRelay(_) => RELAY | (u64::from(self.relays) << 40),
            Phase::Confirming(_) | Phase::Done => ROUND3,
        };
        out.timer(
            self.timeouts.round,
            self.timer_id(round & 0xff) | (round & !0xff),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::Command;
    use rand::SeedableRng;

    #[test]
    fn a_dealer_broadcasts_its_dealing_and_arms_the_round_timer() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let keys: Vec<SecretScalar<S>> = (0..3).map(|_| SecretScalar::random(&mut rng)).collect();
        let committee = keys
            .iter()
            .enumerate()
            .filter_map(|(i, k)| {
                Some((
                    NodeIndex::new(u16::try_from(i + 1).ok()?)?,
                    k.public_point(),
                ))
            })
            .collect();
        let config = CeremonyConfig::dkg(1, 2, committee).unwrap();
        let me = NodeIndex::new(1).unwrap();
        let mut node = DkgNode::new(
            me,
            keys[0].clone(),
            None,
            DkgBehaviour::Honest,
            DkgTimeouts::default(),
            config,
        );
        let mut out = Outbox::default();
        node.start(0, &mut rng, &mut out);
        let sends = out
            .commands()
            .iter()
            .filter(|c| matches!(c, Command::Send { msg, .. } if msg.kind() == "dealing"))
            .count();
        let timers = out
            .commands()
            .iter()
            .filter(|c| matches!(c, Command::SetTimer { .. }))
            .count();
        assert_eq!((sends, timers), (2, 1));
    }
}
