//! The manager of a handover run: it issues requests, collects partials through the
//! breakers, reconciles with the nodes' reports and runs the reshare.

use std::time::Duration;

use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    collect::{Breakers, Collector, Outcome},
    delegation::DelegationRequest,
    ecies,
    handover::{self, Known, Report},
    NodeIndex,
};

use crate::sim::{Addr, Outbox, Time, MS};

use super::{HManager, HMsg, HOpen, HRecord, HTimer, HandoverBroken, SimEpoch};

impl HTimer {
    pub(super) fn encode(self) -> u64 {
        match self {
            Self::Issue => 1 << 56,
            Self::Call { id, node } => (2 << 56) | (u64::from(node) << 32) | u64::from(id),
            Self::Reconcile => 3 << 56,
            Self::Decide => 4 << 56,
            Self::Reshare => 5 << 56,
            Self::CeremonyTimeout(e) => (6 << 56) | (e & 0xffff_ffff),
            Self::CeremonyEnd(e) => (7 << 56) | (e & 0xffff_ffff),
        }
    }

    pub(super) fn decode(t: u64) -> Option<Self> {
        let low = t & 0xffff_ffff;
        let id = u32::try_from(low).ok()?;
        let node = u16::try_from((t >> 32) & 0xffff).ok()?;
        Some(match t >> 56 {
            1 => Self::Issue,
            2 => Self::Call { id, node },
            3 => Self::Reconcile,
            4 => Self::Decide,
            5 => Self::Reshare,
            6 => Self::CeremonyTimeout(low),
            7 => Self::CeremonyEnd(low),
            _ => return None,
        })
    }
}

pub(super) fn at(now: Time) -> Duration {
    Duration::from_micros(now)
}

impl HManager {
    pub(super) fn drained(&self) -> bool {
        let serving = self.serving.as_ref().map_or(0, |s| s.epoch);
        self.open.values().all(|o| o.request.epoch() == serving)
    }

    pub(super) fn commit(&mut self, epoch: SimEpoch) {
        self.recorded = Some(epoch.clone());
        self.breakers = Breakers::new(epoch.holders.iter().filter_map(|a| NodeIndex::new(*a)));
        self.serving = Some(epoch);
    }

    pub(super) fn issue(&mut self, now: Time, rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        let Some(serving) = self.serving.clone() else {
            return;
        };
        let id = u32::try_from(self.records.len()).unwrap_or(u32::MAX);
        let request = DelegationRequest::new(
            serving.epoch,
            format!("req-{id}").into_bytes(),
            *self.ciphertext.ephemeral(),
        );
        let plan = self.breakers.plan(at(now), serving.holders.len(), false);
        let mut collector = Collector::new(plan, serving.keys.threshold(), 1);
        let first = collector.start();
        self.records.push(HRecord {
            epoch: serving.epoch,
            issued: now,
            ..HRecord::default()
        });
        self.open.insert(
            id,
            HOpen {
                collector,
                request,
                keys: serving.keys,
                verified: Vec::new(),
            },
        );
        self.ask(id, first, out);
        self.step(now, id, rng, out);
    }

    pub(super) fn ask(&mut self, id: u32, nodes: Vec<NodeIndex>, out: &mut Outbox<HMsg>) {
        let Some(open) = self.open.get(&id) else {
            return;
        };
        for n in nodes {
            out.send(
                n.get(),
                HMsg::Partial {
                    id,
                    request: Box::new(open.request.clone()),
                },
            );
            out.timer(
                self.node_timeout,
                HTimer::Call { id, node: n.get() }.encode(),
            );
        }
    }

    pub(super) fn step(
        &mut self,
        now: Time,
        id: u32,
        _rng: &mut ChaCha20Rng,
        out: &mut Outbox<HMsg>,
    ) {
        let Some(open) = self.open.get_mut(&id) else {
            return;
        };
        if let Some((_, outcome)) = open.collector.settle().first().copied() {
            let served = outcome == Outcome::Served
                && tkms_crypto::delegation::combine(&open.verified, &open.keys)
                    .ok()
                    .and_then(|s| ecies::open_with_shared_secret(&s, &self.ciphertext).ok())
                    .is_some_and(|m| *m == *self.plaintext);
            self.open.remove(&id);
            if let Some(r) = self.records.get_mut(id as usize) {
                r.finished = Some(now);
                r.served = served;
            }
            return;
        }
        let more = open.collector.more();
        self.ask(id, more, out);
    }

    pub(super) fn reconcile(&mut self, out: &mut Outbox<HMsg>) {
        if self.ceremony.is_some() || self.broken == Some(HandoverBroken::ManagerTrustsItsFile) {
            return;
        }
        self.statuses.clear();
        out.broadcast(&self.nodes, &HMsg::Status);
        out.timer(100 * MS, HTimer::Decide.encode());
    }

    pub(super) fn decide(&mut self, out: &mut Outbox<HMsg>) {
        if self.ceremony.is_some() {
            return;
        }
        let reports: Vec<Report<Addr>> = self.statuses.values().cloned().collect();
        let known = Known {
            recorded: self.recorded.as_ref().map_or(0, |r| r.epoch),
            published: None,
            ceremony_running: false,
        };
        let decision = handover::decide(known, &reports);
        let epoch_of = |c: &handover::Candidate<Addr>, this: &Self| -> Option<SimEpoch> {
            let keys = [&this.next]
                .into_iter()
                .chain(this.recorded.as_ref())
                .find(|e| e.epoch == c.id.epoch)?
                .clone();
            Some(SimEpoch {
                holders: c.holders.iter().map(|(_, a)| *a).collect(),
                ..keys
            })
        };
        if let Some(c) = &decision.commit {
            if let Some(e) = epoch_of(c, self) {
                self.commit(e);
            }
            return;
        }
        if let Some(c) = &decision.serve {
            let current = self.serving.as_ref().map(|s| (s.epoch, s.holders.len()));
            if current.is_none_or(|(e, holders)| {
                e < c.id.epoch || (e == c.id.epoch && holders < c.holders.len())
            }) {
                if let Some(e) = epoch_of(c, self) {
                    self.commit(e);
                }
            }
        }
        for (node, epoch) in &decision.abort {
            out.send(*node, HMsg::Abort { epoch: *epoch });
        }
        if self.drained() {
            if let Some(serving) = &self.serving {
                for node in &decision.settle {
                    out.send(
                        *node,
                        HMsg::Commit {
                            epoch: serving.epoch,
                            transcript: serving.transcript,
                        },
                    );
                }
            }
        }
    }

    pub(super) fn ceremony_ended(&mut self, out: &mut Outbox<HMsg>) {
        let Some(run) = self.ceremony.take() else {
            return;
        };
        if run.holders.len() >= usize::from(self.next.keys.threshold()) {
            let mut next = self.next.clone();
            next.epoch = run.epoch;
            next.holders = run.holders;
            self.commit(next);
        } else {
            for node in &run.holders {
                out.send(*node, HMsg::Abort { epoch: run.epoch });
            }
        }
    }
}
