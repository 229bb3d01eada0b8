//! The epoch life cycle (docs/RELIABILITY.md "Epoch handover"), decided from what the nodes
//! hold rather than from a manager's file: which epoch to serve, which ceremony result to
//! commit (an interrupted ceremony finished), which to roll back, and which nodes still hold
//! shares that a commit supersedes. A pure function of its inputs, so the manager (at start and
//! on every reconciliation) and the simulator (a manager crashing at every step of a reshare)
//! run the same decision.
//!
//! An epoch is *proposed* while its ceremony runs, *held* once members store their shares,
//! *committed* once the manager records it (with a chain: once it is published there, the
//! commit point), and *retired* when a newer epoch is committed: its shares are erased at
//! every node, including nodes that left the committee.
//!
//! The rules:
//! - the committed epoch number `C` is the newest of what the manager recorded, what any node
//!   was told, and what the chain publishes;
//! - serve the newest epoch numbered `<= C` that at least its threshold of reachable nodes
//!   hold with one transcript;
//! - with no ceremony running (here or at any node), an epoch newer than `C` held by at least
//!   its threshold with one transcript is committed (the interrupted ceremony finished); any
//!   other epoch newer than `C` is rolled back where it is held;
//! - once an epoch is served, every node that still holds an older share, or was not told of
//!   the commit, is told (and erases, or retires).

use std::collections::BTreeMap;

/// One epoch's identity as nodes report it: number, Feldman commitment and transcript hash.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EpochId {
    /// The epoch number.
    pub epoch: u64,
    /// The commitment's encoding (its first point is the public key).
    pub commitment: Vec<u8>,
    /// The agreed transcript hash.
    pub transcript_hash: Vec<u8>,
}

/// A share a node holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    /// Which epoch.
    pub id: EpochId,
    /// The node's index in it.
    pub index: u16,
    /// The epoch's threshold.
    pub threshold: u16,
    /// The epoch's committee (every index dealt a share).
    pub committee: Vec<u16>,
}

/// What a reachable node reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<N> {
    /// The node (a URL, an address).
    pub node: N,
    /// The shares it holds.
    pub held: Vec<Held>,
    /// The newest epoch it was told is committed (0: none).
    pub committed: u64,
    /// Whether a ceremony is running at it.
    pub in_ceremony: bool,
}

/// An epoch and the reachable nodes holding it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate<N> {
    /// The epoch.
    pub id: EpochId,
    /// Its threshold.
    pub threshold: u16,
    /// Its committee (every index dealt a share).
    pub committee: Vec<u16>,
    /// `(index, node)` of each reachable holder, by index.
    pub holders: Vec<(u16, N)>,
}

/// What the manager should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision<N> {
    /// The epoch to serve: the newest committed one with enough reachable holders (`None`:
    /// none has; keep what is served).
    pub serve: Option<Candidate<N>>,
    /// A held, uncommitted epoch to commit now (an interrupted ceremony is finished).
    pub commit: Option<Candidate<N>>,
    /// Uncommitted shares to roll back: `(node, epoch)`.
    pub abort: Vec<(N, u64)>,
    /// Nodes to tell of the commit of the served epoch (they hold older shares, or were not
    /// told).
    pub settle: Vec<N>,
}

/// What the manager knows besides the nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Known {
    /// The newest epoch the manager recorded as committed (0: none).
    pub recorded: u64,
    /// The epoch the chain publishes, when a chain is configured.
    pub published: Option<u64>,
    /// Whether this manager is running a ceremony now.
    pub ceremony_running: bool,
}

/// Decide from `known` and the `reports` of the reachable nodes.
pub fn decide<N: Clone + Ord>(known: Known, reports: &[Report<N>]) -> Decision<N> {
    let committed = reports
        .iter()
        .map(|r| r.committed)
        .chain([known.recorded, known.published.unwrap_or(0)])
        .max()
        .unwrap_or(0);
    let mut groups: BTreeMap<&EpochId, Candidate<N>> = BTreeMap::new();
    for r in reports {
        for h in &r.held {
            let c = groups.entry(&h.id).or_insert_with(|| Candidate {
                id: h.id.clone(),
                threshold: h.threshold,
                committee: h.committee.clone(),
                holders: Vec::new(),
            });
            c.holders.push((h.index, r.node.clone()));
        }
    }
    for c in groups.values_mut() {
        c.holders.sort();
        c.holders.dedup_by_key(|(i, _)| *i);
    }
    let enough = |c: &Candidate<N>| c.threshold > 0 && c.holders.len() >= usize::from(c.threshold);
    // Per epoch number, the transcript held most widely (a split cannot come out of a
    // completed ceremony; the minority is rolled back with the rest).
    let mut best: BTreeMap<u64, &Candidate<N>> = BTreeMap::new();
    for c in groups.values() {
        let slot = best.entry(c.id.epoch).or_insert(c);
        if c.holders.len() > slot.holders.len() {
            *slot = c;
        }
    }
    let serve = best
        .range(..=committed)
        .rev()
        .map(|(_, c)| *c)
        .find(|c| enough(c))
        .cloned();
    let quiet = !known.ceremony_running && reports.iter().all(|r| !r.in_ceremony);
    let commit = if quiet {
        best.range(committed.saturating_add(1)..)
            .next_back()
            .map(|(_, c)| *c)
            .filter(|c| enough(c))
            .cloned()
    } else {
        None
    };
    let mut abort = Vec::new();
    if quiet {
        for c in groups.values() {
            let kept = commit.as_ref().is_some_and(|k| k.id == c.id);
            if c.id.epoch > committed && !kept {
                abort.extend(c.holders.iter().map(|(_, n)| (n.clone(), c.id.epoch)));
            }
        }
    }
    let settle = match &serve {
        Some(s) if s.id.epoch == committed => reports
            .iter()
            .filter(|r| r.committed < committed || r.held.iter().any(|h| h.id.epoch < committed))
            .map(|r| r.node.clone())
            .collect(),
        _ => Vec::new(),
    };
    Decision {
        serve,
        commit,
        abort,
        settle,
    }
}

/// A share a node can hold in a [`Holder`].
pub trait HeldShare {
    /// The transcript hash its epoch was agreed on.
    fn transcript_hash(&self) -> &[u8];
}

/// Why a [`Holder`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// No share of any epoch yet.
    #[error("this node holds no key share yet (no DKG has completed)")]
    NoShare,
    /// The node left the committee of the committed epoch.
    #[error("this node is retired: it holds no share of the committed epoch {committed}")]
    Retired {
        /// The committed epoch.
        committed: u64,
    },
    /// Not an epoch this node holds.
    #[error("this node serves epoch{} {}, not {asked}", if held.len() == 1 { "" } else { "s" }, held.iter().map(u64::to_string).collect::<Vec<_>>().join(", "))]
    NotHeld {
        /// The epoch asked for.
        asked: u64,
        /// The epochs held.
        held: Vec<u64>,
    },
    /// A ceremony asked for an epoch that is not newer than every one seen.
    #[error("epoch {asked} is not newer than epoch {seen}, which this node already saw; ceremonies produce later epochs")]
    Stale {
        /// The epoch asked for.
        asked: u64,
        /// The newest epoch seen.
        seen: u64,
    },
    /// A commit names an epoch held with another transcript.
    #[error("epoch {0} is held here with another transcript hash")]
    TranscriptMismatch(u64),
    /// An abort names the committed epoch (or an older one).
    #[error("epoch {epoch} is committed (committed epoch {committed}); it cannot be rolled back")]
    Committed {
        /// The epoch asked to abort.
        epoch: u64,
        /// The committed epoch.
        committed: u64,
    },
}

/// The epochs one node holds (docs/RELIABILITY.md "Epoch handover"): the committed epoch, and
/// while a ceremony's result waits for the manager's commit, the new one beside it. Every epoch
/// held is served, so requests in flight across a switch succeed; a commit erases every older
/// share, and a node without a share of the committed epoch is retired. The node's vault-backed
/// store and the simulator both drive this type; it does no IO (the node persists what each
/// step returns).
#[derive(Debug)]
pub struct Holder<T> {
    epochs: BTreeMap<u64, std::sync::Arc<T>>,
    committed: u64,
    last_ceremony: u64,
}

impl<T> Default for Holder<T> {
    fn default() -> Self {
        Self {
            epochs: BTreeMap::new(),
            committed: 0,
            last_ceremony: 0,
        }
    }
}

impl<T: HeldShare> Holder<T> {
    /// A holder restored from storage.
    pub fn restore(shares: Vec<(u64, T)>, committed: u64, last_ceremony: u64) -> Self {
        Self {
            epochs: shares
                .into_iter()
                .map(|(e, s)| (e, std::sync::Arc::new(s)))
                .collect(),
            committed,
            last_ceremony,
        }
    }

    /// The share of `epoch`, if held.
    pub fn get(&self, epoch: u64) -> Result<std::sync::Arc<T>, Refusal> {
        if let Some(share) = self.epochs.get(&epoch) {
            return Ok(std::sync::Arc::clone(share));
        }
        if self.retired() {
            return Err(Refusal::Retired {
                committed: self.committed,
            });
        }
        if self.epochs.is_empty() {
            return Err(Refusal::NoShare);
        }
        Err(Refusal::NotHeld {
            asked: epoch,
            held: self.epochs.keys().copied().collect(),
        })
    }

    /// Every share held, oldest first.
    pub fn held(&self) -> impl Iterator<Item = (u64, &std::sync::Arc<T>)> {
        self.epochs.iter().map(|(e, s)| (*e, s))
    }

    /// The newest committed epoch (0: none).
    pub fn committed(&self) -> u64 {
        self.committed
    }

    /// The newest epoch a ceremony was started for.
    pub fn last_ceremony(&self) -> u64 {
        self.last_ceremony
    }

    /// Whether the node holds no share of the committed epoch (nor a newer one).
    pub fn retired(&self) -> bool {
        self.committed > 0 && self.epochs.keys().all(|e| *e < self.committed)
    }

    /// Whether a ceremony may produce `epoch`: newer than every epoch held, committed or
    /// started before (numbers are never reused). The caller records it durably, then calls
    /// [`Self::began`].
    pub fn check_ceremony(&self, epoch: u64) -> Result<(), Refusal> {
        let seen = self
            .epochs
            .keys()
            .next_back()
            .copied()
            .unwrap_or(0)
            .max(self.last_ceremony)
            .max(self.committed);
        if epoch <= seen {
            return Err(Refusal::Stale { asked: epoch, seen });
        }
        Ok(())
    }

    /// A ceremony for `epoch` started.
    pub fn began(&mut self, epoch: u64) {
        self.last_ceremony = self.last_ceremony.max(epoch);
    }

    /// Hold `share` of `epoch` (a ceremony's result), beside the epochs already held.
    pub fn adopt(&mut self, epoch: u64, share: T) {
        self.epochs.insert(epoch, std::sync::Arc::new(share));
    }

    /// Whether a commit of `epoch` with `transcript_hash` is acceptable: a node that holds the
    /// epoch must hold it with that transcript.
    pub fn check_commit(&self, epoch: u64, transcript_hash: &[u8]) -> Result<(), Refusal> {
        match self.epochs.get(&epoch) {
            Some(share) if share.transcript_hash() != transcript_hash => {
                Err(Refusal::TranscriptMismatch(epoch))
            }
            _ => Ok(()),
        }
    }

    /// Commit `epoch` (checked with [`Self::check_commit`], its marker stored): drop every
    /// older share. Whether `epoch` is held, and the epochs dropped (which the caller erases
    /// from storage).
    pub fn commit(&mut self, epoch: u64) -> (bool, Vec<u64>) {
        self.committed = self.committed.max(epoch);
        let floor = self.committed;
        let older: Vec<u64> = self.epochs.range(..floor).map(|(e, _)| *e).collect();
        for e in &older {
            self.epochs.remove(e);
        }
        (self.epochs.contains_key(&epoch), older)
    }

    /// Whether `epoch` may be rolled back (it is newer than the committed one).
    pub fn check_abort(&self, epoch: u64) -> Result<(), Refusal> {
        if epoch <= self.committed {
            return Err(Refusal::Committed {
                epoch,
                committed: self.committed,
            });
        }
        Ok(())
    }

    /// Roll back the uncommitted `epoch`: whether it was held.
    pub fn abort(&mut self, epoch: u64) -> bool {
        epoch > self.committed && self.epochs.remove(&epoch).is_some()
    }
}
