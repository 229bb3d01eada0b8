//! Connection set-up: before two actors exchange their first message, a real transport opens
//! a connection, and that message waits for it. The nodes run libp2p over TCP: TCP's SYN and
//! SYN-ACK, then multistream-select, Noise XX and yamux (lazily negotiated: the first message
//! could go with Noise's third message, four one-way trips after the dial). Fitted to the
//! nodes' ceremony times across the emulated WAN (`tkms testnet up --netns`,
//! docs/BENCHMARKS.md), the first message leaves five one-way trips after the dial (then takes
//! its own latency): four fall short by about one trip at every RTT measured.

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

    /// Forget every connection of `a` (it crashed or came back: its peers dial it anew). A
    /// partition keeps them (the nodes close a connection only after 10 s of silence).
    pub fn drop_all(&mut self, a: Addr) {
        self.up.retain(|(x, y), _| *x != a && *y != a);
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng as _;

    use super::*;
    use crate::sim::{Jitter, MS};

    fn link(loss: f64) -> (Latency, NetConfig) {
        let latency = Latency {
            base: 10 * MS,
            jitter: 0,
            dist: Jitter::Uniform,
        };
        (
            latency,
            NetConfig {
                latency,
                loss,
                ..NetConfig::default()
            },
        )
    }

    #[test]
    fn a_handshake_takes_its_trips_once_per_pair_until_a_crash() {
        let (latency, net) = link(0.0);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let mut c = Connections::default();
        let connect = Connect::LIBP2P_TCP;
        assert_eq!(
            c.wait((1, 2), 0, connect, &latency, &net, &mut rng),
            50 * MS
        );
        // Opening: the reverse direction waits for the same connection; up: no wait.
        assert_eq!(
            c.wait((2, 1), 20 * MS, connect, &latency, &net, &mut rng),
            30 * MS
        );
        assert_eq!(
            c.wait((1, 2), 60 * MS, connect, &latency, &net, &mut rng),
            0
        );
        // Another pair dials its own.
        assert_eq!(
            c.wait((1, 3), 60 * MS, connect, &latency, &net, &mut rng),
            50 * MS
        );
        c.drop_all(2);
        assert_eq!(
            c.wait((1, 2), 100 * MS, connect, &latency, &net, &mut rng),
            50 * MS
        );
        assert_eq!(
            c.wait((1, 3), 200 * MS, connect, &latency, &net, &mut rng),
            0
        );
    }

    #[test]
    fn a_lost_syn_costs_a_second_and_a_lost_later_packet_the_retransmission() {
        // Every packet lost: each is retried 7 times, the timeout doubling from 1 s for the
        // SYN and SYN-ACK (1 + 2 + ... + 64 = 127 s) and from 200 ms for the third trip.
        let (latency, net) = link(1.0);
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let connect = Connect {
            trips: 3,
            syn_retransmit: SECOND,
        };
        let wait = Connections::default().wait((1, 2), 0, connect, &latency, &net, &mut rng);
        assert_eq!(wait, 2 * 127 * SECOND + 127 * 200 * MS + 3 * 10 * MS);
    }
}
