//! The handover run's actors on the simulator: what the manager and each node do on a
//! message, a timer, a crash and a restart.

use rand::Rng;
use rand_chacha::ChaCha20Rng;
use tkms_crypto::{
    collect::{Breakers, Liveness},
    delegation::PartialDelegation,
    NodeIndex,
};

use crate::sim::{Actor, Addr, Outbox, Time, SECOND};

use super::{manager::at, CeremonyRun, HActor, HMsg, HTimer, HandoverBroken, MANAGER, RECONCILE};

impl Actor for HActor {
    type Msg = HMsg;

    fn start(&mut self, _now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        if let Self::Manager(m) = self {
            out.timer(0, HTimer::Issue.encode());
            out.timer(RECONCILE, HTimer::Reconcile.encode());
            out.timer(m.reshare_at, HTimer::Reshare.encode());
        }
    }

    fn on_message(
        &mut self,
        now: Time,
        from: Addr,
        msg: HMsg,
        rng: &mut ChaCha20Rng,
        out: &mut Outbox<HMsg>,
    ) {
        match self {
            Self::Node(n) => match msg {
                HMsg::Partial { id, request } => {
                    let partial = n
                        .holder
                        .get(request.epoch())
                        .ok()
                        .map(|s| Box::new(PartialDelegation::create(&s.share, &request, rng)));
                    out.send(from, HMsg::PartialReply { id, partial });
                }
                HMsg::Status => out.send(from, HMsg::StatusReply(Box::new(n.report()))),
                HMsg::Start { epoch } if n.holder.check_ceremony(epoch).is_ok() => {
                    n.holder.began(epoch);
                    n.in_ceremony = Some(epoch);
                    let jitter = rng.gen_range(0..n.ceremony_time / 2 + 1);
                    out.timer(
                        n.ceremony_time + jitter,
                        HTimer::CeremonyEnd(epoch).encode(),
                    );
                }
                HMsg::Commit { epoch, transcript }
                    if n.holder.check_commit(epoch, &transcript).is_ok() =>
                {
                    n.holder.commit(epoch);
                }
                HMsg::Abort { epoch } if n.holder.check_abort(epoch).is_ok() => {
                    n.holder.abort(epoch);
                }
                _ => {}
            },
            Self::Manager(m) => match msg {
                HMsg::PartialReply { id, partial } => {
                    let Some(node) = NodeIndex::new(from) else {
                        return;
                    };
                    m.breakers.record(node, at(now), Liveness::Answered);
                    let Some(open) = m.open.get_mut(&id) else {
                        return;
                    };
                    if !open.collector.in_flight().contains(&node) {
                        return;
                    }
                    open.collector.answered(node);
                    match partial {
                        Some(p) if p.index() == node => {
                            open.collector.candidate(0, node);
                            match p.verify(&open.keys, &open.request) {
                                Ok(v) => {
                                    open.collector.verified(0, node);
                                    open.verified.push(v);
                                }
                                Err(_) => open.collector.rejected(0, node, "invalid proof"),
                            }
                        }
                        _ => open.collector.item_failed(0, node, "refused"),
                    }
                    m.step(now, id, rng, out);
                }
                HMsg::StatusReply(report) => {
                    m.statuses.insert(from, *report);
                }
                HMsg::Done { epoch, holds } => {
                    let Some(run) = m.ceremony.as_mut().filter(|r| r.epoch == epoch) else {
                        return;
                    };
                    run.waiting.remove(&from);
                    if holds {
                        run.holders.push(from);
                    }
                    if run.waiting.is_empty() {
                        m.ceremony_ended(out);
                    }
                }
                _ => {}
            },
        }
    }

    fn on_timer(&mut self, now: Time, timer: u64, rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        match (self, HTimer::decode(timer)) {
            (Self::Node(n), Some(HTimer::CeremonyEnd(epoch))) => {
                if n.in_ceremony != Some(epoch) {
                    return;
                }
                n.in_ceremony = None;
                let holds = n.next.take().is_some_and(|share| {
                    n.holder.adopt(epoch, share);
                    true
                });
                if holds && n.broken == Some(HandoverBroken::NodesSwitchOnFinish) {
                    n.holder.commit(epoch);
                }
                out.send(MANAGER, HMsg::Done { epoch, holds });
            }
            (Self::Manager(m), Some(t)) => match t {
                HTimer::Issue => {
                    if now < m.stop_at {
                        m.issue(now, rng, out);
                        out.timer(m.interval, HTimer::Issue.encode());
                    }
                }
                HTimer::Call { id, node } => {
                    let Some(n) = NodeIndex::new(node) else {
                        return;
                    };
                    let Some(open) = m.open.get_mut(&id) else {
                        return;
                    };
                    if open.collector.in_flight().contains(&n) {
                        m.breakers.record(n, at(now), Liveness::Down);
                        open.collector.node_failed(n, &"timeout");
                        m.step(now, id, rng, out);
                    }
                }
                HTimer::Reconcile => {
                    m.reconcile(out);
                    out.timer(RECONCILE, HTimer::Reconcile.encode());
                }
                HTimer::Decide => m.decide(out),
                HTimer::Reshare => {
                    let epoch = m.next.epoch;
                    m.ceremony = Some(CeremonyRun {
                        epoch,
                        waiting: m.participants.iter().copied().collect(),
                        holders: Vec::new(),
                    });
                    out.broadcast(&m.participants, &HMsg::Start { epoch });
                    out.timer(2 * SECOND, HTimer::CeremonyTimeout(epoch).encode());
                }
                HTimer::CeremonyTimeout(epoch) => {
                    if m.ceremony.as_ref().is_some_and(|r| r.epoch == epoch) {
                        m.ceremony_ended(out);
                    }
                }
                HTimer::CeremonyEnd(_) => {}
            },
            _ => {}
        }
    }

    fn on_restart(&mut self, now: Time, _rng: &mut ChaCha20Rng, out: &mut Outbox<HMsg>) {
        match self {
            Self::Node(n) => {
                // A crash ends its part of a ceremony: it missed the reshare.
                n.in_ceremony = None;
                n.next = None;
            }
            Self::Manager(m) => {
                // Only the committed epoch survives (the state file).
                m.open.clear();
                for r in m.records.iter_mut().filter(|r| r.finished.is_none()) {
                    r.interrupted = true;
                    r.finished = Some(now);
                }
                m.serving.clone_from(&m.recorded);
                m.breakers = Breakers::new(
                    m.serving
                        .iter()
                        .flat_map(|s| s.holders.iter().filter_map(|a| NodeIndex::new(*a))),
                );
                m.ceremony = None;
                m.statuses.clear();
                out.timer(0, HTimer::Issue.encode());
                out.timer(0, HTimer::Reconcile.encode());
            }
        }
    }
}
