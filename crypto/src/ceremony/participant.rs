//! [`Participant`]: the state machine of one ceremony member.

use std::{collections::BTreeMap, time::Duration};

use rand_core::CryptoRngCore;

use crate::{
    dkg::{
        self, CeremonyConfig, CeremonyOutput, Confirmation, Dealing, Fault, ReceivedShares,
        Response,
    },
    Error, KeyShare, NodeIndex, SecretScalar, Suite,
};

use super::{Action, Behaviour, Body, Message, Round, Timeouts, Timer};

/// Where the participant is.
enum Phase<S: Suite> {
    /// Waiting for dealings.
    Dealing,
    /// Response sent; waiting for responses (the decrypted shares are in `shares`).
    Responding,
    /// Finalize needs a dealing we lack; a relay was requested.
    AwaitingRelay(NodeIndex),
    /// Confirmation sent; waiting for confirmations.
    Confirming(Box<CeremonyOutput<S>>),
    /// Finished (see [`Participant::result`]).
    Done,
}

/// Extra round timeouts one attempt may wait for missing dealings or responses.
const MAX_EXTENSIONS: u32 = 4;

/// One participant of a DKG or reshare ceremony.
pub struct Participant<S: Suite> {
    me: NodeIndex,
    key: SecretScalar<S>,
    share: Option<KeyShare<S>>,
    behaviour: Behaviour,
    timeouts: Timeouts,
    config: CeremonyConfig<S>,
    peers: Vec<NodeIndex>,
    phase: Phase<S>,
    /// Round 2's decrypted shares (secret; never sent). Late dealings relayed by peers are
    /// absorbed into it.
    shares: Option<ReceivedShares<S>>,
    dealings: BTreeMap<NodeIndex, Vec<Dealing<S>>>,
    responses: BTreeMap<NodeIndex, Response<S>>,
    confirmations: BTreeMap<NodeIndex, Confirmation<S>>,
    /// What this node broadcast in the current attempt (resent on a peer's sync request).
    sent: Vec<Body<S>>,
    /// Messages of later attempts, replayed when this node gets there.
    future: Vec<(NodeIndex, Message<S>)>,
    relays: u32,
    /// Round timers re-armed in this attempt because too few messages were in to proceed.
    extensions: u32,
    result: Option<Result<CeremonyOutput<S>, Error>>,
    done_at: Option<Duration>,
}

impl<S: Suite> std::fmt::Debug for Participant<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("me", &self.me)
            .field("epoch", &self.config.epoch())
            .field("attempt", &self.config.attempt())
            .field("finished", &self.result.is_some())
            .finish_non_exhaustive()
    }
}

impl<S: Suite> Participant<S> {
    /// Participant `me` with node key `key` in `config`; `share` is its current share when it
    /// deals in a reshare.
    pub fn new(
        me: NodeIndex,
        key: SecretScalar<S>,
        share: Option<KeyShare<S>>,
        timeouts: Timeouts,
        config: CeremonyConfig<S>,
    ) -> Self {
        let mut peers: Vec<NodeIndex> = config
            .dealers()
            .keys()
            .chain(config.recipients().keys())
            .copied()
            .filter(|i| *i != me)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        Self {
            me,
            key,
            share,
            behaviour: Behaviour::Honest,
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
            extensions: 0,
            result: None,
            done_at: None,
        }
    }

    /// Make this participant misbehave (fault injection).
    #[cfg(feature = "byzantine")]
    #[must_use]
    pub fn with_behaviour(mut self, behaviour: Behaviour) -> Self {
        self.behaviour = behaviour;
        self
    }

    /// The outcome, once finished.
    pub fn result(&self) -> Option<&Result<CeremonyOutput<S>, Error>> {
        self.result.as_ref()
    }

    /// Take the outcome out.
    pub fn take_result(&mut self) -> Option<Result<CeremonyOutput<S>, Error>> {
        self.result.take()
    }

    /// Whether the ceremony finished (successfully or not).
    pub fn is_done(&self) -> bool {
        matches!(self.phase, Phase::Done)
    }

    /// When it finished, on the runtime's clock.
    pub fn done_at(&self) -> Option<Duration> {
        self.done_at
    }

    /// The attempt in progress or finished.
    pub fn attempt(&self) -> u32 {
        self.config.attempt()
    }

    /// The configuration of the attempt in progress.
    pub fn config(&self) -> &CeremonyConfig<S> {
        &self.config
    }

    /// Its behaviour.
    pub fn behaviour(&self) -> Behaviour {
        self.behaviour
    }

    /// The node index.
    pub fn index(&self) -> NodeIndex {
        self.me
    }

    /// The other members of the ceremony.
    pub fn peers(&self) -> &[NodeIndex] {
        &self.peers
    }

    /// Called once when the ceremony starts.
    pub fn start(&mut self, now: Duration, rng: &mut impl CryptoRngCore, out: &mut Vec<Action<S>>) {
        if self.behaviour != Behaviour::Silent {
            self.begin_attempt(now, rng, out);
        }
    }

    /// A message arrived from `from` (as authenticated by the transport).
    pub fn on_message(
        &mut self,
        now: Duration,
        from: NodeIndex,
        msg: Message<S>,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<Action<S>>,
    ) {
        self.handle(now, from, msg, rng, out);
    }

    /// A timer armed earlier fired.
    pub fn on_timer(
        &mut self,
        now: Duration,
        timer: Timer,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<Action<S>>,
    ) {
        if timer.attempt != self.config.attempt() {
            return;
        }
        let threshold = usize::from(self.config.threshold());
        match (timer.round, &self.phase) {
            (Round::Dealing, Phase::Dealing) => {
                // With fewer dealings than the ceremony needs, proceeding can only fail: wait
                // another round (bounded) for slow dealers instead.
                if self.dealings.len() < self.config.required_dealers()
                    && self.extend(Round::Dealing, out)
                {
                    return;
                }
                self.round2(now, rng, out);
            }
            (Round::Responses, Phase::Responding) => {
                // Likewise, finalizing with fewer than t responses cannot produce a key that
                // the others agree on; a slow node waits for them rather than failing alone.
                if self.responses.len() < threshold && self.extend(Round::Responses, out) {
                    return;
                }
                self.end_round2(now, rng, out);
            }
            (Round::Relay(relay), Phase::AwaitingRelay(_)) if relay == self.relays => {
                self.try_finalize(now, rng, out);
            }
            (Round::Confirmations, Phase::Confirming(_)) => self.end_round3(now, rng, out),
            _ => {}
        }
    }

    /// The node comes back after a crash with this state: ask peers for what was missed, and
    /// re-arm the current round's timer (timers of the downtime are lost).
    pub fn on_restart(&mut self, out: &mut Vec<Action<S>>) {
        if self.behaviour == Behaviour::Silent || matches!(self.phase, Phase::Done) {
            return;
        }
        let msg = Message::new(self.config.attempt(), Body::SyncRequest);
        self.send_to_peers(&msg, out);
        let round = match self.phase {
            Phase::Dealing => Round::Dealing,
            Phase::Responding => Round::Responses,
            Phase::AwaitingRelay(_) => Round::Relay(self.relays),
            Phase::Confirming(_) | Phase::Done => Round::Confirmations,
        };
        out.push(Action::SetTimer {
            after: self.timeouts.round,
            timer: self.timer(round),
        });
    }

    /// Re-arm `round`'s timer once more, if this attempt has extensions left.
    fn extend(&mut self, round: Round, out: &mut Vec<Action<S>>) -> bool {
        if self.extensions >= MAX_EXTENSIONS {
            return false;
        }
        self.extensions += 1;
        out.push(Action::SetTimer {
            after: self.timeouts.round,
            timer: self.timer(round),
        });
        true
    }

    /// The timer of `round` in the current attempt.
    fn timer(&self, round: Round) -> Timer {
        Timer {
            attempt: self.config.attempt(),
            round,
        }
    }

    fn is_dealer(&self) -> bool {
        self.config.dealers().contains_key(&self.me)
    }

    fn is_recipient(&self) -> bool {
        self.config.recipients().contains_key(&self.me)
    }

    fn finish(&mut self, now: Duration, result: Result<CeremonyOutput<S>, Error>) {
        self.result = Some(result);
        self.done_at = Some(now);
        self.phase = Phase::Done;
    }

    fn send_to_peers(&self, msg: &Message<S>, out: &mut Vec<Action<S>>) {
        out.extend(self.peers.iter().map(|to| Action::Send {
            to: *to,
            msg: msg.clone(),
        }));
    }

    fn broadcast(&mut self, body: Body<S>, out: &mut Vec<Action<S>>) {
        let msg = Message::new(self.config.attempt(), body.clone());
        self.send_to_peers(&msg, out);
        self.sent.push(body);
    }

    fn begin_attempt(
        &mut self,
        now: Duration,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<Action<S>>,
    ) {
        self.phase = Phase::Dealing;
        self.dealings.clear();
        self.responses.clear();
        self.confirmations.clear();
        self.sent.clear();
        self.relays = 0;
        self.extensions = 0;
        self.shares = None;
        if self.is_dealer() {
            self.deal(rng, out);
        }
        out.push(Action::SetTimer {
            after: self.timeouts.round,
            timer: self.timer(Round::Dealing),
        });
        let attempt = self.config.attempt();
        let (now_msgs, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.future)
            .into_iter()
            .partition(|(_, m)| m.attempt == attempt);
        self.future = later;
        for (from, msg) in now_msgs {
            self.handle(now, from, msg, rng, out);
        }
    }

    /// Round 1: deal (or, for fault injection, misdeal).
    fn deal(&mut self, rng: &mut impl CryptoRngCore, out: &mut Vec<Action<S>>) {
        let dealing = match self.behaviour {
            Behaviour::Silent => return,
            #[cfg(feature = "byzantine")]
            Behaviour::Equivocate => return self.equivocate(rng, out),
            #[cfg(feature = "byzantine")]
            b @ (Behaviour::BadShares
            | Behaviour::GarbageShares
            | Behaviour::BadProofOfPossession) => self.misdeal(b, rng),
            _ => dkg::deal(&self.config, self.me, &self.key, self.share.as_ref(), rng),
        };
        if let Ok(d) = dealing {
            self.store_dealing(d.clone());
            self.broadcast(Body::Dealing(d), out);
        }
    }

    #[cfg(feature = "byzantine")]
    fn misdeal(
        &self,
        behaviour: Behaviour,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Dealing<S>, Error> {
        use crate::dkg::byzantine;
        let (config, me, key, share) = (&self.config, self.me, &self.key, self.share.as_ref());
        let n = u16::try_from(config.recipients().len()).unwrap_or(u16::MAX);
        let victims: Vec<NodeIndex> = [
            NodeIndex::new(1 + me.get() % n),
            NodeIndex::new(1 + (me.get() + 1) % n),
        ]
        .into_iter()
        .flatten()
        .collect();
        match behaviour {
            Behaviour::BadShares => {
                byzantine::deal_bad_shares(config, me, key, share, &victims, false, rng)
            }
            Behaviour::GarbageShares => {
                byzantine::deal_bad_shares(config, me, key, share, &victims[..1], true, rng)
            }
            Behaviour::BadProofOfPossession => {
                byzantine::deal_bad_proof_of_possession(config, me, key, rng)
            }
            _ => dkg::deal(config, me, key, share, rng),
        }
    }

    #[cfg(feature = "byzantine")]
    fn equivocate(&mut self, rng: &mut impl CryptoRngCore, out: &mut Vec<Action<S>>) {
        let (config, me, key, share) = (&self.config, self.me, &self.key, self.share.as_ref());
        let a = dkg::deal(config, me, key, share, rng);
        let b = dkg::deal(config, me, key, share, rng);
        if let (Ok(a), Ok(b)) = (a, b) {
            let attempt = config.attempt();
            for p in &self.peers {
                let d = if p.get() % 2 == 0 {
                    a.clone()
                } else {
                    b.clone()
                };
                out.push(Action::Send {
                    to: *p,
                    msg: Message::new(attempt, Body::Dealing(d)),
                });
            }
            self.store_dealing(a);
        }
    }

    /// Keep up to two distinct dealings per dealer (two is proof of equivocation).
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
        now: Duration,
        from: NodeIndex,
        msg: Message<S>,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<Action<S>>,
    ) {
        if self.behaviour == Behaviour::Silent || from == self.me {
            return;
        }
        let attempt = self.config.attempt();
        if msg.attempt > attempt {
            // Bounded: at most one attempt's worth of messages per peer is worth keeping.
            if self.future.len() < 16 * (self.peers.len() + 1) {
                self.future.push((from, msg));
            }
            return;
        }
        if msg.attempt < attempt {
            return;
        }
        match msg.body {
            Body::Dealing(d) if d.dealer() == from => self.on_dealing(now, d, rng, out),
            Body::Relay(d) => self.on_dealing(now, d, rng, out),
            Body::Response(r) if r.recipient() == from => {
                self.responses.entry(from).or_insert(r);
                if matches!(self.phase, Phase::Responding)
                    && self.responses.len() == self.config.recipients().len()
                {
                    self.end_round2(now, rng, out);
                }
            }
            Body::Confirmation(c) if c.node() == from => {
                self.confirmations.entry(from).or_insert(c);
                if matches!(self.phase, Phase::Confirming(_))
                    && self.confirmations.len() == self.config.recipients().len()
                {
                    self.end_round3(now, rng, out);
                }
            }
            Body::RelayRequest(dealer) => {
                if let Some([d]) = self.dealings.get(&dealer).map(Vec::as_slice) {
                    out.push(Action::Send {
                        to: from,
                        msg: Message::new(attempt, Body::Relay(d.clone())),
                    });
                }
            }
            Body::SyncRequest => {
                for body in &self.sent {
                    out.push(Action::Send {
                        to: from,
                        msg: Message::new(attempt, body.clone()),
                    });
                }
            }
            // A dealing, response or confirmation sent by someone other than its signer.
            Body::Dealing(_) | Body::Response(_) | Body::Confirmation(_) => {}
        }
    }

    fn on_dealing(
        &mut self,
        now: Duration,
        d: Dealing<S>,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<Action<S>>,
    ) {
        if !self.config.dealers().contains_key(&d.dealer()) {
            return;
        }
        let dealer = d.dealer();
        if let Some(shares) = self.shares.as_mut() {
            // A dealing that arrives after round 2: take this node's share from it. A bad one
            // is refused here and finalize keeps reporting it missing.
            let _ = shares.absorb(&self.config, &self.key, &d);
        }
        if !self.store_dealing(d) {
            return;
        }
        match self.phase {
            Phase::Dealing if self.dealings.len() == self.config.dealers().len() => {
                self.round2(now, rng, out);
            }
            Phase::AwaitingRelay(missing) if missing == dealer => {
                self.try_finalize(now, rng, out);
            }
            _ => {}
        }
    }

    /// Round 2: acknowledge good dealings, accuse bad ones.
    fn round2(&mut self, now: Duration, rng: &mut impl CryptoRngCore, out: &mut Vec<Action<S>>) {
        self.shares = None;
        if self.is_recipient() {
            let dealings = self.all_dealings();
            let responded = self.respond(&dealings, rng);
            if let Ok((response, shares)) = responded {
                self.responses.insert(self.me, response.clone());
                self.broadcast(Body::Response(response), out);
                self.shares = Some(shares);
            }
        }
        self.phase = Phase::Responding;
        out.push(Action::SetTimer {
            after: self.timeouts.round,
            timer: self.timer(Round::Responses),
        });
        // Every response may be in already (this node was the last to get its dealings): do
        // not wait for a timeout that nothing else will cut short.
        if self.responses.len() == self.config.recipients().len() {
            self.end_round2(now, rng, out);
        }
    }

    fn respond(
        &self,
        dealings: &[Dealing<S>],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Response<S>, ReceivedShares<S>), Error> {
        #[cfg(feature = "byzantine")]
        if self.behaviour == Behaviour::FalseAccuser {
            let honest = dkg::respond(&self.config, self.me, &self.key, dealings, rng);
            let accused = self.config.dealers().keys().find(|i| **i != self.me);
            return match accused {
                Some(a) => dkg::byzantine::respond_with_false_complaint(
                    &self.config,
                    self.me,
                    &self.key,
                    dealings,
                    *a,
                    rng,
                )
                .and_then(|r| honest.map(|(_, s)| (r, s))),
                None => honest,
            };
        }
        dkg::respond(&self.config, self.me, &self.key, dealings, rng)
    }

    fn end_round2(
        &mut self,
        now: Duration,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<Action<S>>,
    ) {
        if matches!(self.phase, Phase::Responding) {
            self.try_finalize(now, rng, out);
        }
    }

    /// Round 3, with round 2's shares (plus any relayed dealings absorbed since).
    fn try_finalize(
        &mut self,
        now: Duration,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<Action<S>>,
    ) {
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
                    self.broadcast(Body::Confirmation(c), out);
                }
                self.phase = Phase::Confirming(Box::new(output));
                out.push(Action::SetTimer {
                    after: self.timeouts.round,
                    timer: self.timer(Round::Confirmations),
                });
                if self.confirmations.len() == self.config.recipients().len() {
                    self.end_round3(now, rng, out);
                }
            }
            Err(Error::MissingDealing { dealer }) if self.relays < self.timeouts.max_relays => {
                self.relays += 1;
                self.phase = Phase::AwaitingRelay(dealer);
                // Ask for every dealing this node lacks at once, not one per relay round: a
                // node cut off during round 1 may miss many.
                let mut missing: Vec<NodeIndex> = self
                    .config
                    .dealers()
                    .keys()
                    .filter(|d| !self.dealings.contains_key(d))
                    .copied()
                    .collect();
                if !missing.contains(&dealer) {
                    missing.push(dealer);
                }
                for d in missing {
                    let msg = Message::new(self.config.attempt(), Body::RelayRequest(d));
                    self.send_to_peers(&msg, out);
                }
                out.push(Action::SetTimer {
                    after: self.timeouts.relay,
                    timer: self.timer(Round::Relay(self.relays)),
                });
            }
            Err(e) => self.finish(now, Err(e)),
        }
    }

    /// Round 4: agreement on the transcript hash.
    fn end_round3(
        &mut self,
        now: Duration,
        rng: &mut impl CryptoRngCore,
        out: &mut Vec<Action<S>>,
    ) {
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
