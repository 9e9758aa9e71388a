//! `SwimWorld`: many `Swim`s in one process with virtual time and a network that delivers
//! each packet 1 ms after it is sent, unless a cut is in its way. Deterministic for a seed,
//! so the unit tests and the scale bench (`cargo bench -p shoal --bench swim_scale`) replay
//! exactly; it counts what was sent, to show per-member cost against the fleet's size.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use shoal_crdt::NodeId;

use super::core::{Swim, SwimConfig, SwimTimer};
use super::identity::SwimId;
use crate::state::members::PeerState;

/// A packet on its way: when it arrives, to whom, from whom.
struct InFlight {
    at_ms: u64,
    to: usize,
    from: usize,
    packet: Bytes,
}

/// Members `0..n`, named `n0`, `n1`, ...
pub struct SwimWorld {
    pub swims: Vec<Swim>,
    pub now_ms: u64,
    sequence: u64,
    timers: BTreeMap<(u64, u64), (usize, SwimTimer)>,
    packets: VecDeque<InFlight>,
    /// Members whose packets, in and out, are lost.
    pub isolated: BTreeSet<usize>,
    /// When set, a packet passes only between members of one side.
    pub sides: Option<Vec<u8>>,
    /// Packets and bytes each member sent.
    pub sent_packets: Vec<u64>,
    pub sent_bytes: Vec<u64>,
    index_of: BTreeMap<NodeId, usize>,
}

/// The name of member `index`.
pub fn member_name(index: usize) -> NodeId {
    format!("n{index}")
        .parse()
        .unwrap_or_else(|_| unreachable!("n<digits> is a valid node id"))
}

/// The first port of the members' addresses: member `index` listens on this plus `index`.
const FIRST_PORT: usize = 7000;

/// The address of member `index` (loopback; nothing listens, it only names the member).
pub fn member_address(index: usize) -> std::net::SocketAddr {
    let port = u16::try_from(FIRST_PORT + index % 50_000).unwrap_or(7000);
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// The member an address of [`member_address`] names.
pub fn member_at(address: std::net::SocketAddr) -> usize {
    usize::from(address.port()).saturating_sub(FIRST_PORT)
}

fn identity(index: usize, started_ms: u64) -> SwimId {
    SwimId::new(member_name(index), member_address(index), started_ms)
}

impl SwimWorld {
    /// `members` members, each announced to member 0 at the start; `seed` seeds each one's
    /// randomness (member `i` gets `seed + i`).
    pub fn new(members: usize, config: &SwimConfig, seed: u64) -> SwimWorld {
        let mut world = SwimWorld {
            swims: (0..members)
                .map(|index| Swim::new(identity(index, 1_000), config.clone(), seed + index as u64))
                .collect(),
            now_ms: 0,
            sequence: 0,
            timers: BTreeMap::new(),
            packets: VecDeque::new(),
            isolated: BTreeSet::new(),
            sides: None,
            sent_packets: vec![0; members],
            sent_bytes: vec![0; members],
            index_of: (0..members)
                .map(|index| (member_name(index), index))
                .collect(),
        };
        for index in 1..members {
            world.announce(index, 0);
        }
        world
    }

    /// Member `from` announces itself to member `to`.
    pub fn announce(&mut self, from: usize, to: usize) {
        let target = SwimId::placeholder(member_name(to), identity(to, 0).address);
        if self.swims[from].announce(target).is_ok() {
            self.collect(from);
        }
    }

    /// Replaces member `index` by a restarted one (a newer identity, its timers gone), which
    /// announces itself to member `to`.
    pub fn restart(&mut self, index: usize, started_ms: u64, config: &SwimConfig, to: usize) {
        self.swims[index] = Swim::new(identity(index, started_ms), config.clone(), started_ms);
        self.timers.retain(|_, (owner, _)| *owner != index);
        self.announce(index, to);
    }

    /// Takes what member `index` produced: its timers and its packets.
    pub fn collect(&mut self, index: usize) {
        let outbox = self.swims[index].take_outbox();
        for (after, timer) in outbox.timers {
            self.sequence += 1;
            let after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            self.timers.insert(
                (self.now_ms.saturating_add(after_ms), self.sequence),
                (index, timer),
            );
        }
        for (to, packet) in outbox.sends {
            let Some(&target) = self.index_of.get(to.node()) else {
                continue;
            };
            self.sent_packets[index] += 1;
            self.sent_bytes[index] += packet.len() as u64;
            self.packets.push_back(InFlight {
                at_ms: self.now_ms + 1,
                to: target,
                from: index,
                packet,
            });
        }
    }

    fn passes(&self, from: usize, to: usize) -> bool {
        !self.isolated.contains(&from)
            && !self.isolated.contains(&to)
            && self
                .sides
                .as_ref()
                .is_none_or(|sides| sides[from] == sides[to])
    }

    /// Runs until `until_ms` of virtual time. Every packet and timer is handled; a refusal
    /// would be a bug in the protocol or the world, so it panics.
    pub fn run(&mut self, until_ms: u64) {
        loop {
            let next_packet = self.packets.front().map(|packet| packet.at_ms);
            let next_timer = self.timers.keys().next().map(|key| key.0);
            let next = match (next_packet, next_timer) {
                (Some(p), Some(t)) => p.min(t),
                (Some(p), None) => p,
                (None, Some(t)) => t,
                (None, None) => break,
            };
            if next > until_ms {
                break;
            }
            self.now_ms = next;
            if next_packet == Some(next) {
                let Some(InFlight {
                    to, from, packet, ..
                }) = self.packets.pop_front()
                else {
                    break;
                };
                if !self.passes(from, to) {
                    continue;
                }
                if let Err(error) = self.swims[to].handle_packet(&member_name(from), &packet) {
                    panic!("n{to} refused a packet of n{from}: {error}");
                }
                self.collect(to);
            } else if let Some((_, (index, timer))) = self.timers.pop_first() {
                // A timer of a probe cycle that a restart or a stall cut short is refused;
                // the next one starts a new cycle, as in the daemon.
                let _ = self.swims[index].handle_timer(timer);
                self.collect(index);
            }
        }
        self.now_ms = until_ms;
    }

    /// What member `observer` thinks of member `member`.
    pub fn state_of(&self, observer: usize, member: usize) -> Option<PeerState> {
        let name = member_name(member);
        // The last entry for a node, as in `Swim::peers`.
        self.swims[observer]
            .views()
            .filter(|(id, _)| *id.node() == name)
            .map(|(_, view)| view.state)
            .last()
    }

    /// What member `observer` thinks of every member, by index (`None`: no entry, as for
    /// itself). One pass over its SWIM's entries: what `state_of` says of each member.
    pub fn states_seen_by(&self, observer: usize) -> Vec<Option<PeerState>> {
        let mut states = vec![None; self.swims.len()];
        for (id, view) in self.swims[observer].views() {
            if let Some(&index) = self.index_of.get(id.node()) {
                states[index] = Some(view.state);
            }
        }
        states
    }

    /// Whether every member in `observers` sees every member in `members` (but itself) in
    /// `state`.
    pub fn all_see(&self, observers: &[usize], members: &[usize], state: PeerState) -> bool {
        observers.iter().all(|observer| {
            let states = self.states_seen_by(*observer);
            members
                .iter()
                .filter(|member| *member != observer)
                .all(|member| states[*member] == Some(state))
        })
    }

    /// Whether, with the world cut into `sides`, every member in `observers` sees every
    /// member of the other side down. `false` while the world is not cut.
    pub fn all_see_the_other_side_down(&self, observers: &[usize]) -> bool {
        let Some(sides) = &self.sides else {
            return false;
        };
        observers.iter().all(|observer| {
            let states = self.states_seen_by(*observer);
            (0..self.swims.len())
                .filter(|member| sides[*member] != sides[*observer])
                .all(|member| states[member] == Some(PeerState::Down))
        })
    }

    /// Total packets and bytes sent so far.
    pub fn sent(&self) -> (u64, u64) {
        (self.sent_packets.iter().sum(), self.sent_bytes.iter().sum())
    }
}
