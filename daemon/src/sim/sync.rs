//! Sync between the simulated nodes, modelled on the daemon's (`sync/gossip.rs`,
//! `sync/client.rs`, `sync/server.rs`, `Node::apply_remote`):
//! - eager push: every local change goes to every member the sender sees as live; a
//!   receiver that lacks its base answers 409 and the sender runs a full exchange;
//! - anti-entropy: every interval plus jitter, an exchange with `fanout` members, live ones
//!   first; the asker sends its summary, the responder answers with what the asker lacks
//!   and its own summary, the asker applies it and pushes back what the responder lacks;
//! - a remote delta that changes what the planner plans from wakes the reconcile loop;
//! - a daemon that is down answers nothing; a message that does not decode is dropped and
//!   counted (a fault, never a panic).
//!
//! `exchange` is the same exchange run synchronously, for the settle rounds.

use rand::seq::SliceRandom;
use shoal_crdt::{ApplyError, Delta, codec};

use super::checks::Violation;
use super::network::{Envelope, Fate, Payload};
use super::world::{Event, World, trace};
use crate::state::Clock;
use crate::state::members::{Liveness, changes_plan_inputs, heartbeat_is_recent};

/// What became of a received delta.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Received {
    Applied,
    /// Its base is missing here (`ApplyError::StaleBase`): nothing changed, pull first.
    Stale,
    /// It did not decode: dropped.
    Undecodable,
}

impl World {
    /// The other members `node` knows, each with whether it counts as live: its heartbeat
    /// is recent, or this daemon completed an exchange with it recently
    /// (`gossip::Driver::members`).
    fn members(&self, node: usize) -> Vec<(usize, bool)> {
        let sim = &self.nodes[node];
        let now = sim.clock.now();
        let down_after_ms = self.config.down_after_ms;
        sim.state()
            .nodes()
            .filter(|(id, _)| **id != sim.id)
            .filter_map(|(id, meta)| {
                let index = *self.index_of.get(id)?;
                let synced = sim
                    .synced_ms
                    .get(&index)
                    .is_some_and(|at| self.now_ms.saturating_sub(*at) < down_after_ms);
                Some((
                    index,
                    synced || heartbeat_is_recent(meta, now, down_after_ms),
                ))
            })
            .collect()
    }

    pub(crate) fn send(&mut self, from: usize, to: usize, payload: Payload) {
        self.stats.messages_sent += 1;
        match self.network.send(&mut self.rng, self.now_ms, from, to) {
            Fate::Partitioned => self.stats.messages_partitioned += 1,
            Fate::Lost => self.stats.messages_lost += 1,
            Fate::Deliver {
                first_ms,
                duplicate_ms,
            } => {
                if let Some(at) = duplicate_ms {
                    self.stats.messages_duplicated += 1;
                    let copy = Envelope {
                        from,
                        to,
                        payload: payload.clone(),
                    };
                    self.schedule(at, Event::Deliver(copy));
                }
                self.schedule(first_ms, Event::Deliver(Envelope { from, to, payload }));
            }
        }
    }

    /// Pushes a local change of `node` to every member it sees as live.
    pub(crate) fn push(&mut self, node: usize, delta: &Delta) {
        let bytes = codec::encode_delta(delta);
        let targets: Vec<usize> = self
            .members(node)
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(index, _)| index)
            .collect();
        for to in targets {
            self.send(
                node,
                to,
                Payload::Push {
                    delta: bytes.clone(),
                },
            );
        }
    }

    /// One anti-entropy round of `node`: exchanges with `fanout` members, live ones first
    /// (`PeerSelector::round_targets`).
    pub(crate) fn gossip_round(&mut self, node: usize) {
        let (mut live, mut others): (Vec<_>, Vec<_>) =
            self.members(node).into_iter().partition(|(_, live)| *live);
        live.shuffle(&mut self.rng);
        others.shuffle(&mut self.rng);
        let targets: Vec<usize> = live
            .into_iter()
            .chain(others)
            .take(self.config.fanout)
            .map(|(index, _)| index)
            .collect();
        let summary = codec::encode_summary(&self.nodes[node].replica().summary());
        for to in targets {
            self.send(
                node,
                to,
                Payload::SyncRequest {
                    summary: summary.clone(),
                },
            );
        }
    }

    pub(crate) fn deliver(&mut self, envelope: Envelope) -> Result<(), Violation> {
        let Envelope { from, to, payload } = envelope;
        if !self.nodes[to].is_running() || !self.network.connected(from, to) {
            self.stats.messages_dropped_down += 1;
            return Ok(());
        }
        let limit = self.config.message_bytes_max;
        match payload {
            Payload::SyncRequest { summary } => {
                let Ok(summary) = codec::decode_summary(&summary, limit) else {
                    self.undecodable(from, to, "summary");
                    return Ok(());
                };
                let from_id = self.nodes[from].id.clone();
                let (delta, own) = {
                    let mut replica = self.nodes[to].replica_mut();
                    replica.observe_summary(&from_id, &summary);
                    (
                        codec::encode_delta(&replica.delta_for(&summary)),
                        codec::encode_summary(&replica.summary()),
                    )
                };
                self.send(
                    to,
                    from,
                    Payload::SyncResponse {
                        delta,
                        summary: own,
                    },
                );
            }
            Payload::SyncResponse { delta, summary } => {
                if self.receive(to, from, &delta)? != Received::Applied {
                    return Ok(());
                }
                let Ok(summary) = codec::decode_summary(&summary, limit) else {
                    self.undecodable(from, to, "summary");
                    return Ok(());
                };
                let from_id = self.nodes[from].id.clone();
                let back = {
                    let mut replica = self.nodes[to].replica_mut();
                    replica.observe_summary(&from_id, &summary);
                    replica.delta_for(&summary)
                };
                if !back.is_empty() {
                    let delta = codec::encode_delta(&back);
                    self.send(to, from, Payload::Push { delta });
                }
                let now_ms = self.now_ms;
                self.nodes[to].synced_ms.insert(from, now_ms);
            }
            Payload::Push { delta } => {
                if self.receive(to, from, &delta)? == Received::Stale {
                    self.send(to, from, Payload::PushConflict);
                }
            }
            Payload::PushConflict => {
                let summary = codec::encode_summary(&self.nodes[to].replica().summary());
                self.send(to, from, Payload::SyncRequest { summary });
            }
        }
        Ok(())
    }

    fn undecodable(&mut self, from: usize, to: usize, what: &str) {
        self.stats.messages_undecodable += 1;
        let (from_id, to_id) = (self.nodes[from].id.clone(), self.nodes[to].id.clone());
        trace!(
            self,
            "{from_id} -> {to_id}: {what} does not decode; dropped"
        );
    }

    /// Decodes and applies a delta from `from` at `to`, as `Node::apply_remote`: all or
    /// nothing, waking the planner when it changes what the planner plans from. A refusal
    /// for drift or as invalid is a failure: every clock is within a quarter of the limit,
    /// and every delta is a real replica's.
    pub(crate) fn receive(
        &mut self,
        to: usize,
        from: usize,
        bytes: &[u8],
    ) -> Result<Received, Violation> {
        let delta = match codec::decode_delta(bytes, self.config.message_bytes_max) {
            Ok(delta) => delta,
            Err(_) => {
                self.undecodable(from, to, "delta");
                return Ok(Received::Undecodable);
            }
        };
        if delta.is_empty() {
            return Ok(Received::Applied);
        }
        let from_id = self.nodes[from].id.clone();
        let to_id = self.nodes[to].id.clone();
        let now = self.nodes[to].clock.now();
        let down_after_ms = self.config.down_after_ms;
        let result = {
            let mut replica = self.nodes[to].replica_mut();
            let wakes = changes_plan_inputs(
                replica.state(),
                &delta,
                &Liveness::heartbeats(now, down_after_ms),
            );
            replica
                .apply_delta(now, &from_id, &delta)
                .map(|applied| (applied, wakes))
        };
        match result {
            Ok((applied, wakes)) => {
                self.stats.deltas_applied += 1;
                if applied.entries_applied > 0 {
                    self.transitions.views_moved();
                    trace!(
                        self,
                        "{from_id} -> {to_id}: applied {} of {} entries{}",
                        applied.entries_applied,
                        delta.entry_count(),
                        if wakes { ", planner woken" } else { "" }
                    );
                    if wakes {
                        self.wake(to);
                    }
                }
                Ok(Received::Applied)
            }
            Err(ApplyError::StaleBase { .. }) => {
                self.stats.refused_stale += 1;
                Ok(Received::Stale)
            }
            Err(error) => Err(Violation(format!(
                "{to_id} refused a delta from {from_id}: {error}"
            ))),
        }
    }

    /// One exchange run to completion at once (settle rounds): `asker` pulls what it lacks
    /// from `responder` and pushes back what `responder` lacks.
    pub(crate) fn exchange(&mut self, asker: usize, responder: usize) -> Result<(), Violation> {
        let asker_id = self.nodes[asker].id.clone();
        let responder_id = self.nodes[responder].id.clone();
        let summary = self.nodes[asker].replica().summary();
        let (delta, theirs) = {
            let mut replica = self.nodes[responder].replica_mut();
            replica.observe_summary(&asker_id, &summary);
            (
                codec::encode_delta(&replica.delta_for(&summary)),
                replica.summary(),
            )
        };
        if self.receive(asker, responder, &delta)? != Received::Applied {
            return Err(Violation(format!(
                "{asker_id} could not apply {responder_id}'s answer to its own summary"
            )));
        }
        let back = {
            let mut replica = self.nodes[asker].replica_mut();
            replica.observe_summary(&responder_id, &theirs);
            codec::encode_delta(&replica.delta_for(&theirs))
        };
        if self.receive(responder, asker, &back)? != Received::Applied {
            return Err(Violation(format!(
                "{responder_id} could not apply what {asker_id} sent back for its summary"
            )));
        }
        let now_ms = self.now_ms;
        self.nodes[asker].synced_ms.insert(responder, now_ms);
        Ok(())
    }
}
