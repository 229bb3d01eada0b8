//! The simulator's DKG/reshare participant: the node's own sans-IO state machine,
//! [`tkms_crypto::ceremony::Participant`], run as a simulator [`Actor`] on virtual time. The
//! real node drives the same type over libp2p with wall-clock timers.

use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    ceremony::{Action, Participant, Timeouts},
    dkg::{CeremonyConfig, CeremonyOutput},
    Error, KeyShare, NodeIndex, Secp256k1, SecretScalar,
};

use crate::sim::{Actor, Addr, Message, Outbox, Time, MS, SECOND};

/// The suite the simulator runs on.
pub type S = Secp256k1;

/// How a participant misbehaves.
pub use tkms_crypto::ceremony::Behaviour as DkgBehaviour;

/// Timeouts and retry limits, in virtual time.
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

impl From<DkgTimeouts> for Timeouts {
    fn from(t: DkgTimeouts) -> Self {
        Self {
            round: Duration::from_micros(t.round),
            relay: Duration::from_micros(t.relay),
            max_relays: t.max_relays,
            max_attempts: t.max_attempts,
        }
    }
}

/// A ceremony message with its real wire size.
#[derive(Clone, Debug)]
pub struct DkgMsg {
    msg: tkms_crypto::ceremony::Message<S>,
    size: usize,
}

impl DkgMsg {
    fn new(msg: tkms_crypto::ceremony::Message<S>) -> Self {
        let size = msg.to_bytes().len();
        Self { msg, size }
    }
}

impl Message for DkgMsg {
    fn wire_size(&self) -> usize {
        self.size
    }

    fn kind(&self) -> &'static str {
        self.msg.kind()
    }
}

/// One participant of a DKG or reshare ceremony.
#[derive(Debug)]
pub struct DkgNode {
    inner: Participant<S>,
    actions: Vec<Action<S>>,
}

fn micros(d: Duration) -> Time {
    Time::try_from(d.as_micros()).unwrap_or(Time::MAX)
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
        Self {
            inner: Participant::new(me, key, share, timeouts.into(), config)
                .with_behaviour(behaviour),
            actions: Vec::new(),
        }
    }

    /// The outcome, once finished.
    pub fn result(&self) -> Option<&Result<CeremonyOutput<S>, Error>> {
        self.inner.result()
    }

    /// Take the outcome out.
    pub fn take_result(&mut self) -> Option<Result<CeremonyOutput<S>, Error>> {
        self.inner.take_result()
    }

    /// When it finished (virtual time).
    pub fn done_at(&self) -> Option<Time> {
        self.inner.done_at().map(micros)
    }

    /// The attempt in progress or finished.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt()
    }

    /// Its behaviour.
    pub fn behaviour(&self) -> DkgBehaviour {
        self.inner.behaviour()
    }

    /// The node index.
    pub fn index(&self) -> NodeIndex {
        self.inner.index()
    }

    /// Hand the participant's actions to the simulator.
    fn flush(&mut self, out: &mut Outbox<DkgMsg>) {
        for action in self.actions.drain(..) {
            match action {
                Action::Send { to, msg } => out.send(to.get(), DkgMsg::new(msg)),
                Action::SetTimer { after, timer } => out.timer(micros(after), timer),
            }
        }
    }
}

impl Actor for DkgNode {
    type Msg = DkgMsg;

    fn start(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        self.inner
            .start(Duration::from_micros(now), rng, &mut self.actions);
        self.flush(out);
    }

    fn on_message(
        &mut self,
        now: Time,
        from: Addr,
        msg: DkgMsg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<DkgMsg>,
    ) {
        if let Some(from) = NodeIndex::new(from) {
            let now = Duration::from_micros(now);
            self.inner
                .on_message(now, from, msg.msg, rng, &mut self.actions);
        }
        self.flush(out);
    }

    fn on_timer(&mut self, now: Time, timer: u64, rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        let now = Duration::from_micros(now);
        self.inner.on_timer(now, timer, rng, &mut self.actions);
        self.flush(out);
    }

    fn on_restart(&mut self, _now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<DkgMsg>) {
        self.inner.on_restart(&mut self.actions);
        self.flush(out);
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
