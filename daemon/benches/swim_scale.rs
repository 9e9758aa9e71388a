//! SWIM at fleet scale, sans-IO (issue 14): `cargo bench -p shoal --bench swim_scale`.
//!
//! N members of the daemon's own `swim::Swim` (foca, default `[membership]` timing) in one
//! process (`swim::sim::SwimWorld`: virtual time, 1 ms per hop, one seed), for N = 10, 100
//! and 1,000 (`SHOAL_SWIM_SIZES=10,100,1000`). For each N:
//! - idle cost: packets and bytes each member sends per probe period, over 30 periods from
//!   60 periods after all members see each other (flat in N is the target);
//! - a failure: one member goes silent; periods until every other member counts it down
//!   (suspicion, then the word spreading on probes: grows as log N);
//! - a partition into two halves for 60 s: periods until every member counts the whole
//!   other half down (the split), then, after the 60 s, the heal: periods until every
//!   member sees every other alive again.
//!
//! The baseline for "flat" is the smallest N, in the same run. Each N runs twice: with the
//! daemon's dissemination and, as the baseline for the failure, split and heal figures,
//! with foca's own (`Dissemination::PIGGYBACK_ONLY`: news on probes and acks only, passed
//! on 4 log10(N + 1) times, suspicions timed out by their prober only).

use std::time::Instant;

use shoal::state::members::PeerState;
use shoal::swim::sim::SwimWorld;
use shoal::swim::{Dissemination, SwimConfig};

const SEED: u64 = 14;
const IDLE_PERIODS: u64 = 30;
const SETTLE_PERIODS: u64 = 60;
const PARTITION_MS: u64 = 60_000;
/// Give up after this much virtual time on any one phase.
const PHASE_MS_MAX: u64 = 600_000;

struct Figures {
    members: usize,
    join_periods: u64,
    packets_per_period: f64,
    bytes_per_period: f64,
    failure_periods: u64,
    split_periods: Option<u64>,
    heal_periods: Option<u64>,
    wall_seconds: f64,
}

/// Runs in steps of one period until `done` holds; the periods it took, or `None` once
/// `within_ms` passed.
fn periods_until(
    world: &mut SwimWorld,
    period_ms: u64,
    within_ms: u64,
    mut done: impl FnMut(&SwimWorld) -> bool,
) -> Option<u64> {
    let started = world.now_ms;
    while !done(world) {
        if world.now_ms - started >= within_ms {
            return None;
        }
        let next = world.now_ms + period_ms;
        world.run(next);
    }
    Some((world.now_ms - started) / period_ms)
}

/// Whether every member sees every other in `state` (checked on a sample of observers for
/// large N: the check is quadratic).
fn everyone_sees(world: &SwimWorld, members: &[usize], state: PeerState) -> bool {
    let step = (members.len() / 50).max(1);
    let observers: Vec<usize> = members.iter().copied().step_by(step).collect();
    world.all_see(&observers, members, state)
}

fn measure(members: usize, dissemination: Dissemination) -> Figures {
    let wall = Instant::now();
    let config = SwimConfig {
        cluster_size: u32::try_from(members).expect("members fit u32"),
        dissemination,
        ..SwimConfig::default()
    };
    let period = config.probe_period_ms;
    let mut world = SwimWorld::new(members, &config, SEED);
    let all: Vec<usize> = (0..members).collect();
    let join_periods = periods_until(&mut world, period, PHASE_MS_MAX, |world| {
        everyone_sees(world, &all, PeerState::Alive)
    })
    .expect("members find each other");

    // The join's updates ride on the probes for a while (each is piggybacked about
    // 4 log10(N) times); the idle window opens once they are out.
    let until = world.now_ms + SETTLE_PERIODS * period;
    world.run(until);
    let (packets_before, bytes_before) = world.sent();
    let until = world.now_ms + IDLE_PERIODS * period;
    world.run(until);
    let (packets_after, bytes_after) = world.sent();
    let per_member_period = (members as u64 * IDLE_PERIODS) as f64;
    let packets_per_period = (packets_after - packets_before) as f64 / per_member_period;
    let bytes_per_period = (bytes_after - bytes_before) as f64 / per_member_period;

    let silent = members / 2;
    world.isolated.insert(silent);
    let others: Vec<usize> = all.iter().copied().filter(|m| *m != silent).collect();
    let failure_periods = periods_until(&mut world, period, PHASE_MS_MAX, |world| {
        let step = (others.len() / 50).max(1);
        others
            .iter()
            .step_by(step)
            .all(|observer| world.state_of(*observer, silent) == Some(PeerState::Down))
    })
    .expect("the silent member is found down");
    world.isolated.clear();
    // Let it come back (it renews itself) before the partition.
    periods_until(&mut world, period, PHASE_MS_MAX, |world| {
        everyone_sees(world, &all, PeerState::Alive)
    })
    .expect("the silent member comes back");

    world.sides = Some(all.iter().map(|m| u8::from(*m >= members / 2)).collect());
    let until = world.now_ms + PARTITION_MS;
    let observers: Vec<usize> = all.iter().copied().step_by((members / 50).max(1)).collect();
    let split_periods = periods_until(&mut world, period, PARTITION_MS, |world| {
        world.all_see_the_other_side_down(&observers)
    });
    world.run(until);
    world.sides = None;
    let heal_periods = periods_until(&mut world, period, PHASE_MS_MAX, |world| {
        everyone_sees(world, &all, PeerState::Alive)
    });
    Figures {
        members,
        join_periods,
        packets_per_period,
        bytes_per_period,
        failure_periods,
        split_periods,
        heal_periods,
        wall_seconds: wall.elapsed().as_secs_f64(),
    }
}

fn main() {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let sizes: Vec<usize> = std::env::var("SHOAL_SWIM_SIZES")
        .ok()
        .map(|sizes| {
            sizes
                .split(',')
                .map(|size| size.trim().parse().expect("SHOAL_SWIM_SIZES: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![10, 100, 1_000]);
    let runs: Vec<(Figures, Figures)> = sizes
        .iter()
        .map(|members| {
            let daemon = Dissemination::DAEMON;
            (
                measure(*members, daemon),
                measure(*members, Dissemination::PIGGYBACK_ONLY),
            )
        })
        .collect();
    let base = &runs[0].0;
    println!(
        "SWIM, sans-IO, default [membership] timing (probe every 1 s), seed {SEED}; \
         per member per probe period; x = ratio to {} members; (foca's) = the same world \
         with foca's own dissemination (news on probes and acks only)\n",
        base.members
    );
    println!(
        "| members | join (periods) | (foca's) | packets sent | (foca's) | x | bytes sent | (foca's) | x | failure known to all (periods) | (foca's) | half/half split known to all (periods) | (foca's) | heal of a {} s split (periods) | (foca's) |",
        PARTITION_MS / 1000
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let shown = |periods: Option<u64>, within: &str| {
        periods.map_or_else(|| format!("not within {within}"), |p| p.to_string())
    };
    for (f, foca) in &runs {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0} B | {:.0} B | {:.2} | {} | {} | {} | {} | {} | {} |",
            f.members,
            f.join_periods,
            foca.join_periods,
            f.packets_per_period,
            foca.packets_per_period,
            f.packets_per_period / base.packets_per_period,
            f.bytes_per_period,
            foca.bytes_per_period,
            f.bytes_per_period / base.bytes_per_period,
            f.failure_periods,
            foca.failure_periods,
            shown(f.split_periods, "60 s"),
            shown(foca.split_periods, "60 s"),
            shown(f.heal_periods, "600 s"),
            shown(foca.heal_periods, "600 s"),
        );
        eprintln!(
            "{} members simulated in {:.1} s (foca's: {:.1} s)",
            f.members, f.wall_seconds, foca.wall_seconds
        );
    }
}
