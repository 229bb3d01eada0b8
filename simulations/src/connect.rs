//! Connection set-up: before two actors exchange their first message, a real transport opens
//! a connection, and that message waits for it. The nodes run libp2p over TCP: TCP's SYN and
//! SYN-ACK, then multistream-select, Noise XX and yamux, with the first message going out with
//! the last handshake message. Measured across the emulated WAN (`tkms testnet up --netns`,
//! docs/BENCHMARKS.md), the first ceremony message of a pair left about five one-way trips
//! after the dial.

use std::collections::BTreeMap;

use rand::Rng as _;
use rand_chacha::ChaCha20Rng;

use crate::sim::{Addr, Latency, NetConfig, Time, SECOND};

/// How a connection is set up before the first message between two actors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connect {
    /// One-way trips before the first message can leave.
    pub trips: u32,
    /// Retransmission timeout of a lost SYN or SYN-ACK (the first two trips), doubling
    /// (Linux: 1 s). Later handshake packets are retried after the network's `retransmit`.
    pub syn_retransmit: Time,
}

impl Connect {
    /// libp2p over TCP as the nodes run it.
    pub const LIBP2P_TCP: Self = Self {
        trips: 5,
        syn_retransmit: SECOND,
    };

    /// How long a new connection's handshake takes: `trips` one-way trips, each lost with the
    /// link's loss and then retried (a SYN or SYN-ACK after `syn_retransmit`, later packets
    /// after the network's `retransmit`; doubling, at most 7 retries, as messages).
    fn handshake(self, latency: &Latency, net: &NetConfig, rng: &mut ChaCha20Rng) -> Time {
        let mut total: Time = 0;
        for trip in 0..self.trips {
            let mut rto = if trip < 2 {
                self.syn_retransmit
            } else {
                net.retransmit
            };
            for _ in 0..7 {
                if net.loss <= 0.0 || !rng.gen_bool(net.loss.clamp(0.0, 1.0)) {
                    break;
                }
                total = total.saturating_add(rto);
                rto = rto.saturating_mul(2);
            }
            total = total.saturating_add(latency.sample(rng));
        }
        total
    }
}

/// When the connection of each pair of actors is (or will be) up.
#[derive(Debug, Default)]
pub struct Connections {
    up: BTreeMap<(Addr, Addr), Time>,
}

impl Connections {
    /// How long a message from `from` to `to` sent at `now` waits for their connection: not
    /// at all once it is up, until it is while it opens, and a whole handshake if there is
    /// none yet (which opens it).
    pub fn wait(
        &mut self,
        (from, to): (Addr, Addr),
        now: Time,
        connect: Connect,
        latency: &Latency,
        net: &NetConfig,
        rng: &mut ChaCha20Rng,
    ) -> Time {
        let key = (from.min(to), from.max(to));
        let up = if let Some(&up) = self.up.get(&key) {
            up
        } else {
            let up = now.saturating_add(connect.handshake(latency, net, rng));
            self.up.insert(key, up);
            up
        };
        up.saturating_sub(now)
    }

    /// Forget every connection of `a` (it crashed: its peers dial it anew).
    pub fn drop_all(&mut self, a: Addr) {
        self.up.retain(|(x, y), _| *x != a && *y != a);
    }
}
