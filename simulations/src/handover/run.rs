//! A handover scenario, its run, and the invariant every run must keep.

use std::collections::BTreeMap;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    collect::Breakers, ecies, handover::Holder, shamir, KeyShare, NodeIndex, PublicKeySet,
    SecretScalar,
};

use crate::sim::{Addr, Crash, NetConfig, Simulator, Time, MS, SECOND};
use tkms_crypto::ClusterSuite as S;

use super::{HActor, HManager, HNode, HRecord, HandoverBroken, SimEpoch, SimShare, MANAGER};

/// A handover run.
#[derive(Clone, Debug)]
pub struct HandoverScenario {
    /// Seed of the run's only RNG.
    pub seed: u64,
    /// Committee before and after, with thresholds.
    pub from: (u16, u16),
    /// The new committee size and threshold.
    pub to: (u16, u16),
    /// When the reshare starts.
    pub reshare_at: Time,
    /// How long each member's part of the ceremony takes.
    pub ceremony_time: Time,
    /// A request every this often.
    pub interval: Time,
    /// Requests stop then.
    pub stop_at: Time,
    /// The run ends then.
    pub horizon: Time,
    /// Crashes (the manager is address 0).
    pub crashes: Vec<Crash>,
    /// A deliberately broken variant.
    pub broken: Option<HandoverBroken>,
}

impl HandoverScenario {
    /// 5/3 -> 7/4 at 1 s, a request every 10 ms until 4 s, run until 8 s.
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            from: (5, 3),
            to: (7, 4),
            reshare_at: SECOND,
            ceremony_time: 60 * MS,
            interval: 10 * MS,
            stop_at: 4 * SECOND,
            horizon: 8 * SECOND,
            crashes: Vec::new(),
            broken: None,
        }
    }
}

/// What a handover run ended with.
#[derive(Debug)]
pub struct HandoverRun {
    /// Every request.
    pub records: Vec<HRecord>,
    /// Each node: (address, epochs held, committed epoch).
    pub nodes: Vec<(Addr, Vec<u64>, u64)>,
    /// The epoch the manager serves at the end, and the one it recorded.
    pub serving: Option<u64>,
    /// The recorded (committed) epoch.
    pub recorded: Option<u64>,
    /// The new epoch's number.
    pub new_epoch: u64,
    /// The new committee.
    pub new_committee: Vec<Addr>,
    /// Whether the final served key set has the original public key.
    pub same_key: bool,
}

/// The node actors: the old committee holds epoch 1 (committed), the new one is dealt the
/// epoch-2 share it adopts when its part of the ceremony ends.
fn nodes(
    s: &HandoverScenario,
    all: &[Addr],
    (old_shares, old_keys): (&[KeyShare<S>], &PublicKeySet<S>),
    (new_shares, new_keys): (&[KeyShare<S>], &PublicKeySet<S>),
) -> BTreeMap<Addr, HActor> {
    let mut actors = BTreeMap::new();
    for a in all {
        let old = old_shares.iter().find(|sh| sh.index().get() == *a);
        let holder = match old {
            Some(sh) => Holder::restore(
                vec![(
                    1,
                    SimShare {
                        share: sh.clone(),
                        keys: old_keys.clone(),
                        transcript: [1; 32],
                    },
                )],
                1,
                1,
            ),
            None => Holder::default(),
        };
        let next = new_shares
            .iter()
            .find(|sh| sh.index().get() == *a)
            .map(|sh| SimShare {
                share: sh.clone(),
                keys: new_keys.clone(),
                transcript: [2; 32],
            });
        actors.insert(
            *a,
            HActor::Node(Box::new(HNode {
                index: *a,
                holder,
                next,
                in_ceremony: None,
                ceremony_time: s.ceremony_time,
                broken: s.broken,
            })),
        );
    }
    actors
}

/// Run `s`.
pub fn run_handover(s: &HandoverScenario) -> Result<HandoverRun, tkms_crypto::Error> {
    let mut rng = ChaCha20Rng::seed_from_u64(s.seed);
    let secret = SecretScalar::<S>::random(&mut rng);
    let (old_shares, old_keys) = shamir::deal(&secret, s.from.1, s.from.0, &mut rng)?;
    let (new_shares, new_keys) = shamir::deal(&secret, s.to.1, s.to.0, &mut rng)?;
    let plaintext = b"opened across the switch".to_vec();
    let ciphertext = ecies::encrypt::<S>(&old_keys.public_key(), &plaintext, &mut rng)?;
    let all: Vec<Addr> = (1..=s.from.0.max(s.to.0)).collect();
    let mut actors = nodes(s, &all, (&old_shares, &old_keys), (&new_shares, &new_keys));
    let old_holders: Vec<Addr> = (1..=s.from.0).collect();
    let first = SimEpoch {
        epoch: 1,
        keys: old_keys.clone(),
        transcript: [1; 32],
        holders: old_holders.clone(),
    };
    let next = SimEpoch {
        epoch: 2,
        keys: new_keys.clone(),
        transcript: [2; 32],
        holders: (1..=s.to.0).collect(),
    };
    let manager = HManager {
        recorded: Some(first.clone()),
        serving: Some(first),
        next,
        participants: all.clone(),
        nodes: all.clone(),
        breakers: Breakers::new(old_holders.iter().filter_map(|a| NodeIndex::new(*a))),
        open: BTreeMap::new(),
        ceremony: None,
        statuses: BTreeMap::new(),
        records: Vec::new(),
        ciphertext,
        plaintext,
        reshare_at: s.reshare_at,
        interval: s.interval,
        stop_at: s.stop_at,
        node_timeout: 200 * MS,
        broken: s.broken,
    };
    actors.insert(MANAGER, HActor::Manager(Box::new(manager)));
    let net = NetConfig {
        loss: 0.0,
        ..NetConfig::default()
    };
    let done = Simulator::new(actors, net, &s.crashes, rng).finish(s.horizon);
    let mut run = HandoverRun {
        records: Vec::new(),
        nodes: Vec::new(),
        serving: None,
        recorded: None,
        new_epoch: 2,
        new_committee: (1..=s.to.0).collect(),
        same_key: false,
    };
    for (a, actor) in done.actors {
        match actor {
            HActor::Manager(m) => {
                run.records = m.records;
                run.serving = m.serving.as_ref().map(|e| e.epoch);
                run.recorded = m.recorded.as_ref().map(|e| e.epoch);
                run.same_key = m
                    .serving
                    .as_ref()
                    .is_some_and(|e| e.keys.public_key_encoded() == old_keys.public_key_encoded());
            }
            HActor::Node(n) => run.nodes.push((a, n.held_epochs(), n.committed())),
        }
    }
    Ok(run)
}

/// **No request lost to an epoch switch.** Every request the manager answered was served, and
/// at the end every node agrees: members of the new committee hold its share and nothing
/// older, the others (and members that missed the reshare) hold nothing; the manager serves
/// and recorded the epoch all nodes were told is committed; the public key never changed.
pub fn handover_invariant(run: &HandoverRun) -> Result<(), String> {
    if let Some((k, r)) = run
        .records
        .iter()
        .enumerate()
        .find(|(_, r)| !r.interrupted && !r.served)
    {
        return Err(format!(
            "request {k} (epoch {}, issued at {} ms) failed",
            r.epoch,
            r.issued / MS
        ));
    }
    let Some(serving) = run.serving else {
        return Err("the manager serves nothing".into());
    };
    if run.recorded != Some(serving) {
        return Err(format!(
            "the manager serves epoch {serving} but recorded {:?}",
            run.recorded
        ));
    }
    if !run.same_key {
        return Err("the public key changed".into());
    }
    for (node, held, committed) in &run.nodes {
        if *committed != serving {
            return Err(format!(
                "node {node} was told epoch {committed} is committed; the manager serves {serving}"
            ));
        }
        if held.iter().any(|e| *e != serving) {
            return Err(format!(
                "node {node} still holds epochs {held:?} besides the committed {serving}"
            ));
        }
    }
    Ok(())
}
