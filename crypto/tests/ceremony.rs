//! The sans-IO ceremony participant: a DKG and a reshare among participants wired to each
//! other by an in-order queue (no timers fire), a wire round trip of every message kind, and
//! messages attributed to the wrong sender ignored.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use std::{collections::BTreeMap, collections::VecDeque, time::Duration};

use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    ceremony::{Action, Body, Message, Participant, Timeouts},
    dkg::CeremonyConfig,
    KeyShare, NodeIndex, PublicKeySet, Secp256k1, SecretScalar,
};

type S = Secp256k1;

fn idx(i: u16) -> NodeIndex {
    NodeIndex::new(i).unwrap()
}

struct Net {
    nodes: BTreeMap<NodeIndex, Participant<S>>,
    queue: VecDeque<(NodeIndex, NodeIndex, Message<S>)>,
    wire: Vec<Vec<u8>>,
}

impl Net {
    fn new(nodes: BTreeMap<NodeIndex, Participant<S>>) -> Self {
        Self {
            nodes,
            queue: VecDeque::new(),
            wire: Vec::new(),
        }
    }

    fn push(&mut self, from: NodeIndex, actions: Vec<Action<S>>) {
        for a in actions {
            if let Action::Send { to, msg } = a {
                // Every message crosses the wire encoding, as it does between real nodes.
                let bytes = msg.to_bytes();
                let back = Message::from_bytes(&bytes).unwrap();
                assert_eq!(back, msg);
                self.wire.push(bytes);
                self.queue.push_back((from, to, back));
            }
        }
    }

    /// Start everyone and deliver until the queue is empty.
    fn run(&mut self, rng: &mut ChaCha20Rng) {
        let ids: Vec<NodeIndex> = self.nodes.keys().copied().collect();
        for i in ids {
            let mut out = Vec::new();
            self.nodes
                .get_mut(&i)
                .unwrap()
                .start(Duration::ZERO, rng, &mut out);
            self.push(i, out);
        }
        while let Some((from, to, msg)) = self.queue.pop_front() {
            let Some(node) = self.nodes.get_mut(&to) else {
                continue;
            };
            let mut out = Vec::new();
            node.on_message(Duration::from_millis(1), from, msg, rng, &mut out);
            self.push(to, out);
        }
    }
}

fn keys(n: u16, rng: &mut ChaCha20Rng) -> BTreeMap<NodeIndex, SecretScalar<S>> {
    (1..=n)
        .map(|i| (idx(i), SecretScalar::random(rng)))
        .collect()
}

fn dkg(
    keys: &BTreeMap<NodeIndex, SecretScalar<S>>,
    t: u16,
    rng: &mut ChaCha20Rng,
) -> (BTreeMap<NodeIndex, KeyShare<S>>, PublicKeySet<S>) {
    let committee = keys.iter().map(|(i, k)| (*i, k.public_point())).collect();
    let config = CeremonyConfig::dkg(1, t, committee).unwrap();
    let nodes = keys
        .iter()
        .map(|(i, k)| {
            let p = Participant::new(*i, k.clone(), None, Timeouts::default(), config.clone());
            (*i, p)
        })
        .collect();
    let mut net = Net::new(nodes);
    net.run(rng);
    let mut shares = BTreeMap::new();
    let mut public = None;
    for (i, node) in &mut net.nodes {
        assert!(node.is_done(), "node {i} did not finish without timers");
        let out = node.take_result().unwrap().unwrap();
        if let Some(p) = &public {
            assert_eq!(out.public(), p, "node {i} disagrees on the public key set");
        }
        public = Some(out.public().clone());
        shares.insert(*i, out.into_share().unwrap());
    }
    (shares, public.unwrap())
}

#[test]
fn a_dkg_over_the_wire_finishes_with_one_key_and_a_reshare_keeps_it() {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let node_keys = keys(5, &mut rng);
    let (shares, public) = dkg(&node_keys, 3, &mut rng);

    // Reshare 5/3 -> 7/4: nodes 1..=5 keep their node keys, deal from their shares and
    // receive new ones; nodes 6 and 7 join.
    let mut keys = node_keys.clone();
    keys.extend(
        self::keys(7, &mut rng)
            .into_iter()
            .filter(|(i, _)| i.get() > 5),
    );
    let dealers = node_keys
        .iter()
        .map(|(i, k)| (*i, k.public_point()))
        .collect();
    let recipients = keys.iter().map(|(i, k)| (*i, k.public_point())).collect();
    let config = CeremonyConfig::reshare(2, 4, public.clone(), dealers, recipients).unwrap();
    let nodes = keys
        .iter()
        .map(|(i, k)| {
            let share = shares.get(i).cloned();
            let p = Participant::new(*i, k.clone(), share, Timeouts::default(), config.clone());
            (*i, p)
        })
        .collect();
    let mut net = Net::new(nodes);
    net.run(&mut rng);
    for (i, node) in &mut net.nodes {
        let out = node.take_result().unwrap().unwrap();
        assert_eq!(out.public().public_key(), public.public_key(), "node {i}");
        assert_eq!(out.public().threshold(), 4);
        assert!(out.share().is_some(), "node {i}");
    }
}

#[test]
fn messages_from_someone_other_than_their_signer_are_ignored() {
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let keys = keys(3, &mut rng);
    let committee = keys.iter().map(|(i, k)| (*i, k.public_point())).collect();
    let config = CeremonyConfig::dkg(1, 2, committee).unwrap();
    let mk = |i: u16| {
        Participant::new(
            idx(i),
            keys[&idx(i)].clone(),
            None,
            Timeouts::default(),
            config.clone(),
        )
    };
    let (mut one, mut two) = (mk(1), mk(2));
    let mut out = Vec::new();
    one.start(Duration::ZERO, &mut rng, &mut out);
    let dealing = out
        .iter()
        .find_map(|a| match a {
            Action::Send { msg, .. } if matches!(msg.body, Body::Dealing(_)) => Some(msg.clone()),
            _ => None,
        })
        .unwrap();
    let mut started = Vec::new();
    two.start(Duration::ZERO, &mut rng, &mut started);

    // Node 3 forwards node 1's dealing as if it were its own: ignored, nothing answered.
    let mut reply = Vec::new();
    two.on_message(
        Duration::ZERO,
        idx(3),
        dealing.clone(),
        &mut rng,
        &mut reply,
    );
    // A relay request for dealer 1 is answered only if node 2 stored that dealing.
    let ask = Message::new(0, Body::RelayRequest(idx(1)));
    two.on_message(Duration::ZERO, idx(3), ask.clone(), &mut rng, &mut reply);
    assert!(
        reply.is_empty(),
        "a dealing sent by a non-dealer was stored"
    );

    // The same dealing from its dealer is stored and relayed on request.
    two.on_message(Duration::ZERO, idx(1), dealing, &mut rng, &mut reply);
    reply.clear();
    two.on_message(Duration::ZERO, idx(3), ask, &mut rng, &mut reply);
    assert!(
        matches!(&reply[..], [Action::Send { to, msg }] if *to == idx(3) && matches!(msg.body, Body::Relay(_)))
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes never panic the decoder, and whatever decodes re-encodes to the input.
    #[test]
    fn message_decoding_is_total_and_canonical(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(m) = Message::<S>::from_bytes(&bytes) {
            prop_assert_eq!(m.to_bytes(), bytes);
        }
    }

    /// Every kind of message survives the wire, and a truncated one is refused.
    #[test]
    fn real_messages_round_trip_and_truncations_fail(seed in any::<u64>(), cut in 1usize..64) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let keys = keys(3, &mut rng);
        let committee = keys.iter().map(|(i, k)| (*i, k.public_point())).collect();
        let config = CeremonyConfig::dkg(1, 2, committee).unwrap();
        let mut p = Participant::new(idx(1), keys[&idx(1)].clone(), None, Timeouts::default(), config);
        let mut out = Vec::new();
        p.start(Duration::ZERO, &mut rng, &mut out);
        let mut msgs: Vec<Message<S>> = out.into_iter().filter_map(|a| match a {
            Action::Send { msg, .. } => Some(msg),
            Action::SetTimer { .. } => None,
        }).collect();
        msgs.push(Message::new(3, Body::RelayRequest(idx(2))));
        msgs.push(Message::new(0, Body::SyncRequest));
        for m in msgs {
            let bytes = m.to_bytes();
            prop_assert_eq!(&Message::from_bytes(&bytes).unwrap(), &m);
            if cut < bytes.len() {
                prop_assert!(Message::<S>::from_bytes(&bytes[..bytes.len() - cut]).is_err());
            }
        }
    }
}
