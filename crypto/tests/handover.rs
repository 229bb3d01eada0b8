//! The epoch handover decision: serve the newest committed epoch that enough nodes hold,
//! finish or roll back an interrupted ceremony, tell every node of the commit.

#![allow(clippy::unwrap_used)] // tests may panic on failure

use tkms_crypto::handover::{decide, EpochId, Held, Known, Report};

fn id(epoch: u64) -> EpochId {
    EpochId {
        epoch,
        commitment: vec![2; 33],
        transcript_hash: vec![u8::try_from(epoch).unwrap(); 32],
    }
}

fn held(epoch: u64, index: u16, t: u16, n: u16) -> Held {
    Held {
        id: id(epoch),
        index,
        threshold: t,
        committee: (1..=n).collect(),
    }
}

fn report(node: u16, held: Vec<Held>, committed: u64) -> Report<u16> {
    Report {
        node,
        held,
        committed,
        in_ceremony: false,
    }
}

/// Five nodes of epoch 1 (3 of 5), all told it is committed.
fn steady() -> Vec<Report<u16>> {
    (1..=5)
        .map(|i| report(i, vec![held(1, i, 3, 5)], 1))
        .collect()
}

#[test]
fn steady_state_serves_the_committed_epoch_and_settles_nothing() {
    let d = decide(
        Known {
            recorded: 1,
            ..Known::default()
        },
        &steady(),
    );
    let serve = d.serve.unwrap();
    assert_eq!(serve.id.epoch, 1);
    assert_eq!(serve.holders.len(), 5);
    assert_eq!(d.commit, None);
    assert!(d.abort.is_empty() && d.settle.is_empty());
}

#[test]
fn a_fresh_manager_without_a_state_file_serves_what_the_nodes_say_is_committed() {
    let d = decide(Known::default(), &steady());
    assert_eq!(d.serve.unwrap().id.epoch, 1);
}

/// Reshare 1 -> 2 (5/3 -> 7/4): the nodes finished and hold epoch 2, nobody committed it.
fn finished_reshare() -> Vec<Report<u16>> {
    let mut reports = steady();
    for r in &mut reports {
        r.held.push(held(2, r.node, 4, 7));
    }
    reports.push(report(6, vec![held(2, 6, 4, 7)], 0));
    reports.push(report(7, vec![held(2, 7, 4, 7)], 0));
    reports
}

#[test]
fn a_ceremony_still_running_is_left_alone() {
    let mut reports = finished_reshare();
    reports[6].in_ceremony = true;
    let d = decide(
        Known {
            recorded: 1,
            ..Known::default()
        },
        &reports,
    );
    assert_eq!(d.serve.unwrap().id.epoch, 1);
    assert_eq!(d.commit, None);
    assert!(d.abort.is_empty());
    let d = decide(
        Known {
            recorded: 1,
            published: None,
            ceremony_running: true,
        },
        &finished_reshare(),
    );
    assert_eq!(d.commit, None);
}

#[test]
fn a_finished_ceremony_whose_manager_crashed_is_committed() {
    let d = decide(
        Known {
            recorded: 1,
            ..Known::default()
        },
        &finished_reshare(),
    );
    assert_eq!(d.serve.as_ref().unwrap().id.epoch, 1);
    let commit = d.commit.unwrap();
    assert_eq!(commit.id.epoch, 2);
    assert_eq!(commit.holders.len(), 7);
    assert!(d.abort.is_empty());
}

#[test]
fn after_the_commit_every_node_is_told_and_the_leavers_retire() {
    // The manager committed 2 (recorded), then crashed before telling the nodes; node 5
    // left the committee (it only dealt).
    let mut reports = finished_reshare();
    reports[4].held.retain(|h| h.id.epoch == 1);
    let d = decide(
        Known {
            recorded: 2,
            ..Known::default()
        },
        &reports,
    );
    assert_eq!(d.serve.unwrap().id.epoch, 2);
    assert_eq!(d.settle, vec![1, 2, 3, 4, 5, 6, 7]);
    // Once told, only the one still behind is named.
    for r in &mut reports {
        r.committed = 2;
        r.held.retain(|h| h.id.epoch == 2);
    }
    reports[0].held.insert(0, held(1, 1, 3, 5));
    let d = decide(Known::default(), &reports);
    assert_eq!(d.serve.unwrap().id.epoch, 2);
    assert_eq!(d.settle, vec![1]);
}

#[test]
fn a_stale_state_file_does_not_hold_the_cluster_back() {
    let mut reports = finished_reshare();
    for r in &mut reports {
        r.committed = 2;
        r.held.retain(|h| h.id.epoch == 2);
    }
    // The manager's file says 1, the nodes were all told 2 and erased 1.
    let d = decide(
        Known {
            recorded: 1,
            ..Known::default()
        },
        &reports,
    );
    assert_eq!(d.serve.unwrap().id.epoch, 2);
    assert!(d.settle.is_empty() && d.abort.is_empty() && d.commit.is_none());
}

#[test]
fn a_ceremony_that_too_few_finished_is_rolled_back() {
    let mut reports = steady();
    reports[0].held.push(held(2, 1, 4, 7));
    reports[1].held.push(held(2, 2, 4, 7));
    let d = decide(
        Known {
            recorded: 1,
            ..Known::default()
        },
        &reports,
    );
    assert_eq!(d.serve.unwrap().id.epoch, 1);
    assert_eq!(d.commit, None);
    assert_eq!(d.abort, vec![(1, 2), (2, 2)]);
}

#[test]
fn with_a_chain_the_published_epoch_is_the_commit_point() {
    // Published 2 on chain, manager crashed before recording it: epoch 2 is committed.
    let d = decide(
        Known {
            recorded: 1,
            published: Some(2),
            ceremony_running: false,
        },
        &finished_reshare(),
    );
    assert_eq!(d.serve.unwrap().id.epoch, 2);
    assert_eq!(d.commit, None);
}

#[test]
fn too_few_reachable_holders_serves_nothing_new() {
    let reports: Vec<_> = steady().into_iter().take(2).collect();
    let d = decide(
        Known {
            recorded: 1,
            ..Known::default()
        },
        &reports,
    );
    assert_eq!(d.serve, None);
    assert!(d.settle.is_empty());
}
