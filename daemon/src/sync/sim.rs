//! `SyncWorld`: the sync protocol at fleet scale, sans-IO. N replicas (`shoal_crdt::Replica`)
//! exchange what the daemon exchanges — anti-entropy push-pull with one random live peer per
//! round, eager pushes to `push_fanout` random live members, forwards of pushes new to their
//! receiver with one hop less — as encoded bodies counted in bytes, over a network that
//! delivers each message 1 ms after it is sent unless a cut is in its way. Who is live comes
//! from the daemon's own SWIM ([`SwimWorld`], foca, tuned to the fleet's size as the daemon
//! tunes it) run in the same virtual time; peer choice is the daemon's own [`PeerSelector`].
//! One seed replays a run exactly.
//!
//! What it leaves out: TLS, HTTP/3 framing and QUIC (counted bytes are bodies), durability,
//! the node's trust checks (every member here is honest) and bodies too large for one
//! message (a state here fits).

use std::collections::BTreeMap;
use std::time::Duration;

use shoal_crdt::compact::expand_reply;
use shoal_crdt::{
    ApplyError, Capacity, CompactSummary, Delta, NTP64, NodeMeta, Replica, ServiceSpec, Summary,
    SummaryReply, Timestamp, VersionVector, codec,
};

use super::gossip::PUSH_HOPS;
use super::membership::{Member, PeerSelector, automatic_push_fanout};
use super::wire::SEND_FULL_SUMMARY;
use crate::state::members::PeerState;
use crate::state::node::REFRESH_MS_PER_MEMBER;
use crate::swim::SwimConfig;
use crate::swim::sim::{SwimWorld, member_address as address, member_at as index_of, member_name};

/// Virtual time 0 is this instant (2026-01-01T00:00:00Z), so HLC stamps look like real ones.
const EPOCH_MS: u64 = 1_767_225_600_000;
/// Clock drift the replicas accept (they share one clock).
const MAX_DRIFT: Duration = Duration::from_secs(1);
/// The join's updates are out within this many SWIM periods (about 25 for 1,000 members).
const SETTLE_PERIODS_MAX: u64 = 600;

/// How the replicas sync (the daemon's `[sync]` and gossip settings).
#[derive(Debug, Clone)]
pub struct SyncSimConfig {
    pub interval_ms: u64,
    pub jitter_ms: u64,
    /// Peers per anti-entropy round.
    pub fanout: usize,
    pub eager_push: bool,
    /// `None`: `automatic_push_fanout` of the fleet's size.
    pub push_fanout: Option<usize>,
    /// Members write metadata refreshes as the daemon does with SWIM: each one
    /// `REFRESH_MS_PER_MEMBER` per member after its last (about one a second in the fleet),
    /// not pushed, so anti-entropy carries them. Off, the idle state is all equal.
    pub refreshes: bool,
    /// Anti-entropy sends compact summaries when they are smaller (the daemon does).
    pub compact_summaries: bool,
}

impl Default for SyncSimConfig {
    fn default() -> Self {
        SyncSimConfig {
            interval_ms: 1_000,
            jitter_ms: 200,
            fanout: 1,
            eager_push: true,
            push_fanout: None,
            refreshes: false,
            compact_summaries: true,
        }
    }
}

/// A message on the wire, as the daemon's requests carry them.
enum Message {
    /// `POST /v1/sync`: the caller's summary.
    SyncRequest(Summary),
    /// `POST /v1/sync` with a compact summary; `sent` is what the caller keeps, not sent.
    CompactRequest {
        compact: CompactSummary,
        sent: VersionVector,
    },
    /// Its answer: what the caller lacks and the answering node's summary.
    SyncResponse(Delta, Summary),
    /// The answer to a compact summary; `sent` is the caller's own, kept, not sent.
    CompactResponse {
        delta: Delta,
        reply: SummaryReply,
        sent: VersionVector,
    },
    /// 409: the compact summary did not rebuild; the caller sends its full summary.
    SendFull,
    /// `POST /v1/push?hops=`; `origin` marks the writer's own push, which falls back to an
    /// exchange when the receiver lacks its base.
    Push {
        delta: std::sync::Arc<Delta>,
        hops: u8,
        origin: bool,
    },
}

/// When a member first held the change being followed, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reached {
    pub at_ms: u64,
    /// Push hops from the writer (1: the writer pushed to it); `None`: by anti-entropy.
    pub hops: Option<u8>,
}

/// Members `0..n` (named as in [`SwimWorld`]) with their replicas.
pub struct SyncWorld {
    pub swim: SwimWorld,
    pub replicas: Vec<Replica>,
    config: SyncSimConfig,
    selectors: Vec<PeerSelector>,
    next_round_ms: Vec<u64>,
    /// By (arrival ms, sequence): (to, from, message).
    wire: BTreeMap<(u64, u64), (usize, usize, Message)>,
    sequence: u64,
    /// Sync messages and body bytes each member sent (SWIM's are counted by `swim`).
    pub sent_messages: Vec<u64>,
    pub sent_bytes: Vec<u64>,
    /// Anti-entropy requests by form: compact summaries sent, and those refused (409).
    pub compact_sent: u64,
    pub compact_refused: u64,
    pub full_sent: u64,
    /// When each member writes its next metadata refresh (`SyncSimConfig::refreshes`).
    next_refresh_ms: Vec<u64>,
    followed: Option<(shoal_crdt::ServiceName, Vec<Option<Reached>>)>,
}

fn physical(now_ms: u64) -> NTP64 {
    crate::state::clock::ms_to_ntp(EPOCH_MS + now_ms)
}

/// How often each member refreshes its metadata: the daemon's rule with SWIM.
fn refresh_period_ms(members: usize) -> u64 {
    (members as u64)
        .saturating_mul(REFRESH_MS_PER_MEMBER)
        .max(1_000)
}

impl SyncWorld {
    /// `members` members whose replicas already hold every member's node metadata (as after
    /// the join), and whose SWIM, tuned to `members` as the daemon tunes it, has met everyone
    /// and has no update about the join left to send; `seed` seeds every random choice.
    pub fn new(members: usize, config: SyncSimConfig, swim: &SwimConfig, seed: u64) -> SyncWorld {
        let mut replicas: Vec<Replica> = (0..members)
            .map(|index| Replica::new(member_name(index), MAX_DRIFT))
            .collect();
        let mut everyone = Replica::new(
            "sim-seed".parse().unwrap_or_else(|_| member_name(members)),
            MAX_DRIFT,
        );
        for (index, replica) in replicas.iter_mut().enumerate() {
            let node = member_name(index);
            let meta = NodeMeta {
                address: address(index),
                capacity: Capacity {
                    cpu_millis: 4_000,
                    memory_bytes: 8 << 30,
                },
                subnet: None,
                heartbeat: Timestamp::new(NTP64(0), node.hlc_id()),
                labels: BTreeMap::new(),
                incarnation: None,
                drain: None,
            };
            let delta = replica
                .put_node_meta(physical(0), meta)
                .unwrap_or_else(|error| panic!("{node} writes its metadata: {error}"));
            everyone
                .apply_delta(physical(0), &node, &delta)
                .unwrap_or_else(|error| panic!("the seed takes {node}'s metadata: {error}"));
        }
        let all = everyone.delta_for(&Summary::default());
        for replica in &mut replicas {
            let node = replica.node().clone();
            replica
                .apply_delta(physical(0), everyone.node(), &all)
                .unwrap_or_else(|error| panic!("{node} takes everyone's metadata: {error}"));
        }
        // The daemon's SWIM driver tunes SWIM to the members of the document
        // (`Swim::resize`): how many times an update is piggybacked grows as log N.
        let swim = &SwimConfig {
            cluster_size: u32::try_from(members).unwrap_or(u32::MAX),
            ..swim.clone()
        };
        let mut swim_world = SwimWorld::new(members, swim, seed);
        // SWIM's join: run until every member sees every other alive.
        let everyone_index: Vec<usize> = (0..members).collect();
        let step = (members / 50).max(1);
        let observers: Vec<usize> = everyone_index.iter().copied().step_by(step).collect();
        while !swim_world.all_see(&observers, &everyone_index, PeerState::Alive) {
            let next = swim_world.now_ms + swim.probe_period_ms;
            swim_world.run(next);
        }
        // Then until the join's updates are out (no member has one left to piggyback), so
        // that SWIM is idle when the sync starts.
        let joined_ms = swim_world.now_ms;
        while swim_world
            .swims
            .iter()
            .any(|swim| swim.updates_backlog() > 0)
        {
            assert!(
                swim_world.now_ms - joined_ms < SETTLE_PERIODS_MAX * swim.probe_period_ms,
                "seed {seed}: SWIM still has updates to send {SETTLE_PERIODS_MAX} periods after the join"
            );
            let next = swim_world.now_ms + swim.probe_period_ms;
            swim_world.run(next);
        }
        let start_ms = swim_world.now_ms;
        let mut selectors: Vec<PeerSelector> = (0..members)
            .map(|index| PeerSelector::new(seed.wrapping_mul(7_919).wrapping_add(index as u64)))
            .collect();
        let next_round_ms = selectors
            .iter_mut()
            .map(|selector| start_ms + selector.next_delay_ms(config.interval_ms, config.jitter_ms))
            .collect();
        // Refreshes start spread over one period, as after a fleet's staggered starts.
        let refresh_ms = refresh_period_ms(members);
        let next_refresh_ms = (0..members)
            .map(|index| {
                let spread = (seed ^ index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16;
                start_ms + spread % refresh_ms
            })
            .collect();
        SyncWorld {
            swim: swim_world,
            replicas,
            config,
            selectors,
            next_round_ms,
            wire: BTreeMap::new(),
            sequence: 0,
            sent_messages: vec![0; members],
            sent_bytes: vec![0; members],
            compact_sent: 0,
            compact_refused: 0,
            full_sent: 0,
            next_refresh_ms,
            followed: None,
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.swim.now_ms
    }

    /// The configuration, to change from now on (refreshes, compact summaries).
    pub fn config_mut(&mut self) -> &mut SyncSimConfig {
        &mut self.config
    }

    /// The members as member `index` sees them: live unless its SWIM says down.
    fn members_seen_by(&self, index: usize) -> Vec<Member> {
        let states = self.swim.states_seen_by(index);
        (0..self.replicas.len())
            .filter(|other| *other != index)
            .map(|other| Member {
                node: self.replicas[other].node().clone(),
                address: address(other),
                live: states[other] != Some(PeerState::Down),
            })
            .collect()
    }

    fn push_fanout(&self) -> usize {
        self.config
            .push_fanout
            .unwrap_or_else(|| automatic_push_fanout(self.replicas.len()))
    }

    fn passes(&self, from: usize, to: usize) -> bool {
        !self.swim.isolated.contains(&from)
            && !self.swim.isolated.contains(&to)
            && self
                .swim
                .sides
                .as_ref()
                .is_none_or(|sides| sides[from] == sides[to])
    }

    fn send(&mut self, from: usize, to: usize, message: Message) {
        let bytes = match &message {
            Message::SyncRequest(summary) => codec::encode_summary(summary).len(),
            Message::CompactRequest { compact, .. } => codec::encode_compact_summary(compact).len(),
            Message::SyncResponse(delta, summary) => {
                codec::encode_delta(delta).len() + codec::encode_summary(summary).len() + 4
            }
            Message::CompactResponse { delta, reply, .. } => {
                codec::encode_delta(delta).len() + codec::encode_summary_reply(reply).len() + 4
            }
            Message::SendFull => SEND_FULL_SUMMARY.len(),
            Message::Push { delta, .. } => shoal_crdt::encoded_delta_bytes(delta),
        };
        self.sent_messages[from] += 1;
        self.sent_bytes[from] += bytes as u64;
        self.sequence += 1;
        self.wire
            .insert((self.now_ms() + 1, self.sequence), (to, from, message));
    }

    /// Member `index` writes a service `name` (pushed eagerly when so configured) and the
    /// world follows when each member first holds it.
    pub fn write_followed(&mut self, index: usize, name: &str) {
        let service: shoal_crdt::ServiceName = name
            .parse()
            .unwrap_or_else(|error| panic!("service name {name}: {error}"));
        let now = physical(self.now_ms());
        let delta = self.replicas[index]
            .put_service(now, service.clone(), ServiceSpec::new("/img"))
            .unwrap_or_else(|error| panic!("n{index} writes {name}: {error}"));
        let mut reached = vec![None; self.replicas.len()];
        reached[index] = Some(Reached {
            at_ms: self.now_ms(),
            hops: Some(0),
        });
        self.followed = Some((service, reached));
        if self.config.eager_push {
            let members = self.members_seen_by(index);
            let fanout = self.push_fanout();
            let targets = self.selectors[index].push_targets(&members, &[], fanout, None);
            let delta = std::sync::Arc::new(delta);
            for target in targets {
                let message = Message::Push {
                    delta: delta.clone(),
                    hops: PUSH_HOPS,
                    origin: true,
                };
                self.send(index, index_of(target.address), message);
            }
        }
    }

    /// When each member first held the followed change.
    pub fn reached(&self) -> &[Option<Reached>] {
        self.followed
            .as_ref()
            .map_or(&[], |(_, reached)| reached.as_slice())
    }

    fn note_reached(&mut self, index: usize, hops: Option<u8>) {
        let now_ms = self.now_ms();
        if let Some((service, reached)) = &mut self.followed
            && reached[index].is_none()
            && self.replicas[index].state().service(service).is_some()
        {
            reached[index] = Some(Reached {
                at_ms: now_ms,
                hops,
            });
        }
    }

    /// Whether every replica holds the same state.
    pub fn converged(&self) -> bool {
        let first = self.replicas[0].digest();
        self.replicas
            .iter()
            .all(|replica| replica.digest() == first)
    }

    /// Runs until `until_ms` of virtual time: SWIM, anti-entropy rounds and messages in time
    /// order. An apply error other than a missing base would be a bug: it panics.
    pub fn run(&mut self, until_ms: u64) {
        loop {
            let next_message = self.wire.keys().next().map(|key| key.0);
            let (round_index, next_round) = self
                .next_round_ms
                .iter()
                .copied()
                .enumerate()
                .min_by_key(|(_, at)| *at)
                .unwrap_or((0, u64::MAX));
            let next = next_message.unwrap_or(u64::MAX).min(next_round);
            if next > until_ms {
                break;
            }
            self.swim.run(next);
            if next_message == Some(next) {
                if let Some((_, (to, from, message))) = self.wire.pop_first()
                    && self.passes(from, to)
                {
                    self.deliver(to, from, message);
                }
            } else {
                self.round(round_index);
            }
        }
        self.swim.run(until_ms);
    }

    fn round(&mut self, index: usize) {
        if self.config.refreshes && self.now_ms() >= self.next_refresh_ms[index] {
            self.refresh(index);
        }
        let members = self.members_seen_by(index);
        let targets = self.selectors[index].round_targets(&members, &[], self.config.fanout);
        for target in targets {
            let to = index_of(target.address);
            let compact = self
                .config
                .compact_summaries
                .then(|| self.replicas[index].compact_summary(physical(self.now_ms())))
                .flatten();
            match compact {
                Some((compact, sent)) => {
                    self.compact_sent += 1;
                    self.send(index, to, Message::CompactRequest { compact, sent });
                }
                None => {
                    self.full_sent += 1;
                    let summary = self.replicas[index].summary();
                    self.send(index, to, Message::SyncRequest(summary));
                }
            }
        }
        let delay =
            self.selectors[index].next_delay_ms(self.config.interval_ms, self.config.jitter_ms);
        self.next_round_ms[index] = self.now_ms() + delay;
    }

    /// Member `index` writes its metadata again, with a new heartbeat; not pushed.
    fn refresh(&mut self, index: usize) {
        let node = member_name(index);
        let now = physical(self.now_ms());
        let mut meta = self.replicas[index]
            .state()
            .node(&node)
            .cloned()
            .unwrap_or_else(|| panic!("{node} holds its own metadata"));
        meta.heartbeat = Timestamp::new(now, node.hlc_id());
        self.replicas[index]
            .put_node_meta(now, meta)
            .unwrap_or_else(|error| panic!("{node} refreshes its metadata: {error}"));
        self.next_refresh_ms[index] = self.now_ms() + refresh_period_ms(self.replicas.len());
    }

    fn apply(&mut self, to: usize, from: usize, delta: &Delta) -> Result<usize, ApplyError> {
        let now = physical(self.now_ms());
        let applied = self.replicas[to].apply_delta(now, &member_name(from), delta)?;
        Ok(applied.entries_applied)
    }

    fn deliver(&mut self, to: usize, from: usize, message: Message) {
        match message {
            Message::SyncRequest(theirs) => {
                let delta = self.replicas[to].delta_for(&theirs);
                let ours = self.replicas[to].summary();
                self.send(to, from, Message::SyncResponse(delta, ours));
            }
            Message::CompactRequest { compact, sent } => {
                let now = physical(self.now_ms());
                match self.replicas[to].expand_summary(now, &compact) {
                    Some(theirs) => {
                        let delta = self.replicas[to].delta_for(&theirs);
                        let reply = self.replicas[to].summary_reply(&theirs.vv);
                        let message = Message::CompactResponse { delta, reply, sent };
                        self.send(to, from, message);
                    }
                    None => {
                        self.compact_refused += 1;
                        self.send(to, from, Message::SendFull);
                    }
                }
            }
            Message::SendFull => {
                self.full_sent += 1;
                let summary = self.replicas[to].summary();
                self.send(to, from, Message::SyncRequest(summary));
            }
            Message::SyncResponse(delta, theirs) => self.answered(to, from, &delta, &theirs),
            Message::CompactResponse { delta, reply, sent } => {
                let theirs = expand_reply(&sent, reply)
                    .unwrap_or_else(|| panic!("n{to} cannot read n{from}'s reply"));
                self.answered(to, from, &delta, &theirs);
            }
            Message::Push {
                delta,
                hops,
                origin,
            } => match self.apply(to, from, &delta) {
                Ok(entries) => {
                    let depth = PUSH_HOPS.saturating_sub(hops).saturating_add(1);
                    self.note_reached(to, (hops > 0 || origin).then_some(depth));
                    if hops > 0 && entries > 0 {
                        let members = self.members_seen_by(to);
                        let fanout = self.push_fanout();
                        let exclude = member_name(from);
                        let targets =
                            self.selectors[to].push_targets(&members, &[], fanout, Some(&exclude));
                        for target in targets {
                            let message = Message::Push {
                                delta: delta.clone(),
                                hops: hops - 1,
                                origin: false,
                            };
                            self.send(to, index_of(target.address), message);
                        }
                    }
                }
                // The writer's push to a member that lacks its base: an exchange instead.
                Err(ApplyError::StaleBase { .. }) if origin => {
                    let summary = self.replicas[from].summary();
                    self.send(from, to, Message::SyncRequest(summary));
                }
                // A forward to a member that lacks its base: anti-entropy brings it.
                Err(ApplyError::StaleBase { .. }) => {}
                Err(error) => panic!("n{to} refused n{from}'s push: {error}"),
            },
        }
    }

    /// The caller `to` got `from`'s answer: applies what it lacked, pushes back what `from`
    /// lacks.
    fn answered(&mut self, to: usize, from: usize, delta: &Delta, theirs: &Summary) {
        if !delta.is_empty() {
            self.apply(to, from, delta)
                .unwrap_or_else(|error| panic!("n{to} refused n{from}'s answer: {error}"));
            self.note_reached(to, None);
        }
        let back = self.replicas[to].delta_for(theirs);
        if !back.is_empty() {
            self.send(
                to,
                from,
                Message::Push {
                    delta: std::sync::Arc::new(back),
                    hops: 0,
                    origin: false,
                },
            );
        }
    }

    /// Total sync messages and body bytes sent so far.
    pub fn sent(&self) -> (u64, u64) {
        (
            self.sent_messages.iter().sum(),
            self.sent_bytes.iter().sum(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick_swim() -> SwimConfig {
        SwimConfig::default()
    }

    #[test]
    fn a_change_reaches_every_member_by_epidemic_push_in_a_few_hops() {
        let mut world = SyncWorld::new(60, SyncSimConfig::default(), &quick_swim(), 3);
        let (messages_before, _) = world.sent();
        let start = world.now_ms();
        world.write_followed(7, "web");
        world.run(start + 50);
        let reached = world.reached();
        let by_push = reached
            .iter()
            .filter(|reached| reached.is_some_and(|r| r.hops.is_some()))
            .count();
        // ln 60 + 3 = 7.1: fanout 8; the chance that a member is missed is about 60·e^-8.
        assert_eq!(by_push, 60, "{reached:?}");
        let deepest = reached.iter().filter_map(|r| r.and_then(|r| r.hops)).max();
        assert!(deepest.is_some_and(|hops| hops <= 4), "{deepest:?}");
        // Every member forwards once: about fanout messages per member, not N per writer.
        let (messages_after, _) = world.sent();
        let pushes = messages_after - messages_before;
        assert!(pushes <= 60 * 8 + 60, "{pushes} messages");
    }

    #[test]
    fn anti_entropy_alone_spreads_a_change_and_ends_in_one_state() {
        let config = SyncSimConfig {
            eager_push: false,
            ..SyncSimConfig::default()
        };
        let mut world = SyncWorld::new(40, config, &quick_swim(), 5);
        let start = world.now_ms();
        world.write_followed(0, "web");
        world.run(start + 30_000);
        assert!(world.reached().iter().all(Option::is_some));
        assert!(world.converged());
        let last = world
            .reached()
            .iter()
            .filter_map(|reached| reached.map(|r| r.at_ms))
            .max()
            .unwrap_or(u64::MAX);
        // Push-pull with one peer a round: about log2 N rounds, well within 15.
        assert!(
            last - start < 15_000,
            "last reached after {} ms",
            last - start
        );
    }

    #[test]
    fn two_halves_that_wrote_apart_end_in_one_state_after_the_heal() {
        let mut world = SyncWorld::new(40, SyncSimConfig::default(), &quick_swim(), 9);
        world.swim.sides = Some((0..40).map(|index| u8::from(index >= 20)).collect());
        let start = world.now_ms();
        world.write_followed(3, "left");
        world.write_followed(30, "right");
        world.run(start + 30_000);
        assert!(!world.converged(), "the halves cannot have met");
        world.swim.sides = None;
        let healed = world.now_ms();
        while !world.converged() {
            assert!(
                world.now_ms() - healed < 120_000,
                "no convergence 2 min after the heal"
            );
            let next = world.now_ms() + 1_000;
            world.run(next);
        }
        let left: shoal_crdt::ServiceName = "left".parse().unwrap();
        assert!(world.replicas[39].state().service(&left).is_some());
    }

    #[test]
    fn idle_members_that_refresh_exchange_compact_summaries_in_fewer_bytes_and_converge() {
        let config = SyncSimConfig {
            refreshes: true,
            compact_summaries: false,
            ..SyncSimConfig::default()
        };
        let mut world = SyncWorld::new(60, config, &quick_swim(), 21);
        let idle_bytes = |world: &mut SyncWorld| {
            let (_, before) = world.sent();
            let start = world.now_ms();
            world.run(start + 30_000);
            world.sent().1 - before
        };
        let full = idle_bytes(&mut world);
        assert_eq!(world.compact_sent, 0);
        world.config_mut().compact_summaries = true;
        let compact = idle_bytes(&mut world);
        let (sent, refused) = (world.compact_sent, world.compact_refused);
        // About one exchange per member per second, nearly all of them compact and rebuilt.
        assert!(sent > 60 * 25, "{sent} compact summaries sent");
        assert!(refused * 20 < sent, "{refused} of {sent} refused");
        assert!(
            compact * 4 < full * 3,
            "{compact} bytes compact, {full} full"
        );
        // The refreshes stop; what they wrote spreads to everyone.
        world.config_mut().refreshes = false;
        let start = world.now_ms();
        world.run(start + 20_000);
        assert!(world.converged());
        assert!(world.compact_sent > sent, "compact summaries still in use");
    }

    #[test]
    fn a_seed_replays_exactly() {
        let run = |seed| {
            let mut world = SyncWorld::new(20, SyncSimConfig::default(), &quick_swim(), seed);
            let start = world.now_ms();
            world.write_followed(4, "web");
            world.run(start + 5_000);
            (world.sent(), world.reached().to_vec())
        };
        assert_eq!(run(11), run(11));
    }
}
