//! Whom to sync with: a sans-IO peer selector. No sockets, no clock, randomness from a seed.
//!
//! Inputs are the members known from node metadata (with liveness) and the configured seeds;
//! outputs are targets for one anti-entropy round or for an eager push. Rules:
//! - a round picks up to `fanout` live members at random; if fewer are live, the remaining
//!   slots go to random others: down members (so a returning node is noticed) and seeds not
//!   yet known as members (so a fresh node finds the cluster);
//! - an eager push goes to `fanout` live members at random (a forwarded one never back to
//!   the member it came from), or to the seeds while no member is live;
//! - addresses found to be this node itself ([`PeerSelector::mark_self`]) are never chosen;
//! - a target carries the expected node id when known, so the TLS handshake checks it;
//! - at most one anti-entropy exchange per address is under way ([`UnderWay`]); a member
//!   that comes back while one to its address is under way is exchanged with as soon as
//!   that one fails, not a random round later.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use shoal_crdt::NodeId;

/// A member of the cluster as seen from node metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub node: NodeId,
    pub address: SocketAddr,
    pub live: bool,
}

/// Someone to dial.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    pub address: SocketAddr,
    pub expected: Option<NodeId>,
}

/// Seeded random choice of peers; deterministic for a given seed and input sequence.
#[derive(Debug)]
pub struct PeerSelector {
    rng: StdRng,
    own_addresses: BTreeSet<SocketAddr>,
}

impl PeerSelector {
    pub fn new(rng_seed: u64) -> Self {
        Self {
            rng: StdRng::seed_from_u64(rng_seed),
            own_addresses: BTreeSet::new(),
        }
    }

    /// Records that `address` reaches this node itself (a seed list often includes it).
    pub fn mark_self(&mut self, address: SocketAddr) {
        self.own_addresses.insert(address);
    }

    /// The wait before the next round: `interval_ms` plus a uniform jitter in `0..=jitter_ms`.
    pub fn next_delay_ms(&mut self, interval_ms: u64, jitter_ms: u64) -> u64 {
        interval_ms.saturating_add(self.rng.gen_range(0..=jitter_ms))
    }

    /// Targets of one anti-entropy round, at most `fanout`, never the same address twice.
    pub fn round_targets(
        &mut self,
        members: &[Member],
        seeds: &[SocketAddr],
        fanout: usize,
    ) -> Vec<Target> {
        let mut seen = self.own_addresses.clone();
        let mut live = Vec::new();
        let mut others = Vec::new();
        for member in members {
            if !seen.insert(member.address) {
                continue;
            }
            let target = Target {
                address: member.address,
                expected: Some(member.node.clone()),
            };
            if member.live {
                live.push(target);
            } else {
                others.push(target);
            }
        }
        for seed in seeds {
            if seen.insert(*seed) {
                others.push(Target {
                    address: *seed,
                    expected: None,
                });
            }
        }
        live.shuffle(&mut self.rng);
        others.shuffle(&mut self.rng);
        let mut chosen: Vec<Target> = live.into_iter().take(fanout).collect();
        let missing = fanout - chosen.len();
        chosen.extend(others.into_iter().take(missing));
        assert!(chosen.len() <= fanout);
        chosen
    }

    /// Targets of an eager push: `fanout` live members at random, never `exclude` (the
    /// member a forwarded push came from); the seeds while no member is live and nothing is
    /// excluded (a local change of a node that knows no one yet).
    pub fn push_targets(
        &mut self,
        members: &[Member],
        seeds: &[SocketAddr],
        fanout: usize,
        exclude: Option<&NodeId>,
    ) -> Vec<Target> {
        let mut seen = self.own_addresses.clone();
        let mut live: Vec<Target> = members
            .iter()
            .filter(|member| {
                member.live && exclude != Some(&member.node) && seen.insert(member.address)
            })
            .map(|member| Target {
                address: member.address,
                expected: Some(member.node.clone()),
            })
            .collect();
        if !live.is_empty() {
            live.shuffle(&mut self.rng);
            live.truncate(fanout);
            return live;
        }
        if exclude.is_some() {
            return Vec::new();
        }
        seeds
            .iter()
            .filter(|seed| seen.insert(**seed))
            .map(|seed| Target {
                address: *seed,
                expected: None,
            })
            .collect()
    }
}

/// The anti-entropy exchanges under way, one at most per address, and the members that came
/// back while one to their address was under way (it was dialed before they returned, and
/// most likely fails). Bounded by the addresses under way.
#[derive(Debug, Default)]
pub struct UnderWay {
    addresses: BTreeSet<SocketAddr>,
    /// Returned members waiting for the exchange under way to their address; a subset of
    /// `addresses`.
    returned: BTreeMap<SocketAddr, NodeId>,
}

impl UnderWay {
    /// Whether an exchange with `address` is under way.
    pub fn contains(&self, address: &SocketAddr) -> bool {
        self.addresses.contains(address)
    }

    /// Marks an exchange with `address` as started; false (and nothing changes) when one
    /// is under way already.
    pub fn start(&mut self, address: SocketAddr) -> bool {
        self.addresses.insert(address)
    }

    /// `peer`, at `address`, came back (SWIM says alive again): true when the caller starts
    /// an exchange with it now (marked as under way). When one to that address is under way
    /// already, the member waits for it ([`UnderWay::finished`]).
    pub fn returned(&mut self, peer: NodeId, address: SocketAddr) -> bool {
        if self.start(address) {
            return true;
        }
        self.returned.insert(address, peer);
        false
    }

    /// The exchange with `address` ended. When a member came back while it was under way
    /// and it failed, that member is exchanged with at once: the target to start, already
    /// marked as under way. A successful one did exchange with the member.
    pub fn finished(&mut self, address: SocketAddr, succeeded: bool) -> Option<Target> {
        let waiting = self.returned.remove(&address);
        match waiting {
            Some(peer) if !succeeded => Some(Target {
                address,
                expected: Some(peer),
            }),
            _ => {
                self.addresses.remove(&address);
                None
            }
        }
    }
}

/// The eager-push fanout for a cluster of `members` (this node included) when none is
/// configured: ln N + 3, rounded up (5 for 3 members, 7 for 48, 10 for 1,000). With every
/// node forwarding a change new to it once to that many, the chance that some node is left
/// for anti-entropy is about N·e^-fanout: 5 % whatever N.
pub fn automatic_push_fanout(members: usize) -> usize {
    let members = members.max(1) as f64;
    (members.ln() + 3.0).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn member(name: &str, port: u16, live: bool) -> Member {
        Member {
            node: name.parse().unwrap(),
            address: address(port),
            live,
        }
    }

    fn ports(targets: &[Target]) -> Vec<u16> {
        let mut ports: Vec<u16> = targets.iter().map(|target| target.address.port()).collect();
        ports.sort_unstable();
        ports
    }

    #[test]
    fn a_member_returning_during_an_exchange_to_its_address_is_exchanged_with_when_it_fails() {
        let mut under_way = UnderWay::default();
        let back: NodeId = "back".parse().unwrap();
        // Nothing under way: the returned member is exchanged with at once.
        assert!(under_way.returned(back.clone(), address(1)));
        assert!(under_way.contains(&address(1)));
        assert!(!under_way.start(address(1)), "one exchange per address");
        assert_eq!(under_way.finished(address(1), true), None);
        assert!(!under_way.contains(&address(1)));

        // A round dialed the address while the member was down; it comes back meanwhile.
        assert!(under_way.start(address(2)));
        assert!(!under_way.returned(back.clone(), address(2)));
        // The old exchange fails: the member's exchange starts now, under way at once.
        assert_eq!(
            under_way.finished(address(2), false),
            Some(Target {
                address: address(2),
                expected: Some(back.clone()),
            })
        );
        assert!(under_way.contains(&address(2)));
        assert!(!under_way.start(address(2)));
        // That one ends: nothing more waits.
        assert_eq!(under_way.finished(address(2), false), None);
        assert!(!under_way.contains(&address(2)));

        // An exchange under way that succeeds did reach the returned member: no second one.
        assert!(under_way.start(address(3)));
        assert!(!under_way.returned(back, address(3)));
        assert_eq!(under_way.finished(address(3), true), None);
        assert!(!under_way.contains(&address(3)));
        assert!(under_way.returned.is_empty());
    }

    #[test]
    fn seeds_are_used_until_members_are_known() {
        let mut selector = PeerSelector::new(7);
        let seeds = [address(1), address(2), address(3), address(4)];
        let targets = selector.round_targets(&[], &seeds, 2);
        assert_eq!(targets.len(), 2);
        assert!(targets.iter().all(|target| target.expected.is_none()));
        assert_eq!(
            ports(&selector.push_targets(&[], &seeds, 2, None)),
            [1, 2, 3, 4]
        );
        // A forward goes to members only.
        let from: NodeId = "a".parse().unwrap();
        assert!(
            selector
                .push_targets(&[], &seeds, 2, Some(&from))
                .is_empty()
        );
    }

    #[test]
    fn live_members_come_first_and_fill_with_others() {
        let mut selector = PeerSelector::new(1);
        let members = [
            member("a", 10, true),
            member("b", 11, false),
            member("c", 12, true),
            member("d", 13, true),
        ];
        for _ in 0..50 {
            let targets = selector.round_targets(&members, &[address(10), address(20)], 2);
            assert_eq!(targets.len(), 2);
            for target in &targets {
                let port = target.address.port();
                assert!(
                    [10, 12, 13].contains(&port),
                    "down member or seed chosen: {port}"
                );
                assert!(target.expected.is_some());
            }
        }
        // Three live members, fanout four: one slot for a down member or an unknown seed; the
        // seed at port 10 is a known member's address and is not dialed twice.
        let targets = selector.round_targets(&members, &[address(10), address(20)], 4);
        let chosen = ports(&targets);
        assert_eq!(chosen.len(), 4);
        assert!(
            chosen.starts_with(&[10, 12, 13]) || chosen == [10, 11, 12, 13],
            "{chosen:?}"
        );
        let unique: BTreeSet<u16> = chosen.iter().copied().collect();
        assert_eq!(unique.len(), chosen.len());
        // Push: live members up to the fanout, never seeds while members are live.
        assert_eq!(
            ports(&selector.push_targets(&members, &[address(20)], 5, None)),
            [10, 12, 13]
        );
        let mut seen = BTreeSet::new();
        for _ in 0..50 {
            let targets = ports(&selector.push_targets(&members, &[address(20)], 2, None));
            assert_eq!(targets.len(), 2);
            assert!(targets.iter().all(|port| [10, 12, 13].contains(port)));
            seen.extend(targets);
        }
        assert_eq!(seen.len(), 3, "the fanout's members are chosen at random");
        // A forward never goes back to the member it came from.
        let from: NodeId = "c".parse().unwrap();
        for _ in 0..20 {
            let targets = ports(&selector.push_targets(&members, &[], 2, Some(&from)));
            assert_eq!(targets, [10, 13]);
        }
    }

    #[test]
    fn the_automatic_fanout_grows_as_log_n() {
        assert_eq!(automatic_push_fanout(0), 3);
        assert_eq!(automatic_push_fanout(3), 5);
        assert_eq!(automatic_push_fanout(48), 7);
        assert_eq!(automatic_push_fanout(1_000), 10);
    }

    #[test]
    fn own_address_is_never_chosen() {
        let mut selector = PeerSelector::new(3);
        selector.mark_self(address(1));
        let seeds = [address(1), address(2)];
        for _ in 0..20 {
            assert_eq!(ports(&selector.round_targets(&[], &seeds, 3)), [2]);
        }
        assert_eq!(ports(&selector.push_targets(&[], &seeds, 3, None)), [2]);
    }

    #[test]
    fn choices_and_delays_are_deterministic_per_seed_and_spread_out() {
        let members: Vec<Member> = (0..10)
            .map(|i| member(&format!("n{i}"), 100 + i, true))
            .collect();
        let run = |seed: u64| {
            let mut selector = PeerSelector::new(seed);
            (0..20)
                .map(|_| {
                    let delay = selector.next_delay_ms(1000, 200);
                    (delay, ports(&selector.round_targets(&members, &[], 3)))
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42), run(43));
        let rounds = run(42);
        assert!(
            rounds
                .iter()
                .all(|(delay, _)| (1000..=1200).contains(delay))
        );
        let distinct_delays: BTreeSet<u64> = rounds.iter().map(|(delay, _)| *delay).collect();
        assert!(
            distinct_delays.len() > 5,
            "jitter must vary: {distinct_delays:?}"
        );
        let everyone: BTreeSet<u16> = rounds
            .iter()
            .flat_map(|(_, chosen)| chosen.clone())
            .collect();
        assert_eq!(everyone.len(), 10, "every member is eventually chosen");
        assert_eq!(PeerSelector::new(0).next_delay_ms(500, 0), 500);
    }
}
