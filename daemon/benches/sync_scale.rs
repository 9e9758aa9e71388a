//! The sync protocol at fleet scale, sans-IO (issue 14): `cargo bench -p shoal --bench
//! sync_scale`.
//!
//! N replicas exchange what the daemon exchanges, with SWIM (foca, tuned to N as the daemon
//! tunes it) deciding who is live, in one process from one seed (`sync::sim::SyncWorld`:
//! virtual time, 1 ms per message), the daemon's default timing (anti-entropy with one peer
//! every 1 s + up to 200 ms, the automatic push fanout ln N + 3), for N = 10, 100 and 1,000
//! (`SHOAL_SYNC_SIZES`). Each world starts once SWIM's join is over: every member sees every
//! other alive and the join's updates are out. For each N:
//! - idle, every member refreshing its metadata as the daemon does (about one refresh a
//!   second in the fleet, carried by anti-entropy): sync messages and body bytes each member
//!   sends per round (1 s) over 30 rounds with compact summaries, beside the same with full
//!   summaries only (the baseline, the 30 rounds before, same world), the share of compact
//!   summaries the receiver could not rebuild, and SWIM's packets and bytes;
//! - a change written on one member: the push hops and the time until every member holds
//!   it, how many got it by push, and the messages each member sent for it;
//! - the same change with eager push off: rounds of anti-entropy until every member holds
//!   it (log N is the target);
//! - a partition into two halves for 60 s, each half writing a change, then the heal: time
//!   until every replica holds one state.
//!
//! The baseline for "flat" is the smallest N, in the same run.

use std::time::Instant;

use shoal::swim::SwimConfig;
use shoal::sync::sim::{SyncSimConfig, SyncWorld};

const SEED: u64 = 14;
const ROUND_MS: u64 = 1_000;
const IDLE_ROUNDS: u64 = 30;
const PARTITION_MS: u64 = 60_000;
/// Give up after this much virtual time on any one phase.
const PHASE_MS_MAX: u64 = 600_000;

struct Figures {
    members: usize,
    idle_messages: f64,
    idle_bytes: f64,
    /// Idle bytes with full summaries only (the baseline for the compact ones).
    idle_bytes_full: f64,
    /// Compact summaries the receiver could not rebuild, of those sent.
    compact_refused: f64,
    swim_packets: f64,
    swim_bytes: f64,
    push_hops: u8,
    push_ms: u64,
    by_push: usize,
    change_messages: f64,
    anti_entropy_rounds: Option<u64>,
    heal_ms: Option<u64>,
    wall_seconds: f64,
}

/// Wall time of each phase, on stderr: where a large N spends its time.
struct Phase {
    members: usize,
    started: Instant,
}

impl Phase {
    fn new(members: usize) -> Phase {
        Phase {
            members,
            started: Instant::now(),
        }
    }

    fn done(&mut self, name: &str) {
        eprintln!(
            "  {} members: {name} in {:.1} s",
            self.members,
            self.started.elapsed().as_secs_f64()
        );
        self.started = Instant::now();
    }
}

/// Runs until every member holds the followed change; the virtual time it took.
fn until_reached(world: &mut SyncWorld, start: u64, step_ms: u64) -> Option<u64> {
    while !world.reached().iter().all(Option::is_some) {
        if world.now_ms() - start > PHASE_MS_MAX {
            return None;
        }
        let next = world.now_ms() + step_ms;
        world.run(next);
    }
    world
        .reached()
        .iter()
        .filter_map(|reached| reached.map(|r| r.at_ms))
        .max()
        .map(|last| last - start)
}

fn measure(members: usize) -> Figures {
    let wall = Instant::now();
    let swim = SwimConfig::default();
    let n = members as f64;

    let mut phase = Phase::new(members);
    // Idle (members refreshing their metadata as the daemon does), first with full summaries
    // only, then with compact ones; then a change pushed.
    let idle = SyncSimConfig {
        refreshes: true,
        compact_summaries: false,
        ..SyncSimConfig::default()
    };
    let mut world = SyncWorld::new(members, idle, &swim, SEED);
    phase.done("world and SWIM join");
    let (_, bytes) = world.sent();
    let start = world.now_ms();
    world.run(start + IDLE_ROUNDS * ROUND_MS);
    let (_, bytes_after) = world.sent();
    let idle_bytes_full = (bytes_after - bytes) as f64 / (n * IDLE_ROUNDS as f64);
    phase.done("idle rounds, full summaries");
    world.config_mut().compact_summaries = true;
    let (compact_sent, compact_refused) = (world.compact_sent, world.compact_refused);
    let (messages, bytes) = world.sent();
    let (swim_packets, swim_bytes) = world.swim.sent();
    let start = world.now_ms();
    world.run(start + IDLE_ROUNDS * ROUND_MS);
    let (messages_after, bytes_after) = world.sent();
    let (swim_packets_after, swim_bytes_after) = world.swim.sent();
    let per = n * IDLE_ROUNDS as f64;
    let idle_messages = (messages_after - messages) as f64 / per;
    let idle_bytes = (bytes_after - bytes) as f64 / per;
    let swim_packets = (swim_packets_after - swim_packets) as f64 / per;
    let swim_bytes = (swim_bytes_after - swim_bytes) as f64 / per;
    let compact_refused = (world.compact_refused - compact_refused) as f64
        / (world.compact_sent - compact_sent).max(1) as f64;
    phase.done("idle rounds, compact summaries");

    let start = world.now_ms();
    let (before, _) = world.sent();
    world.write_followed(members / 3, "web");
    let push_ms = until_reached(&mut world, start, 1).unwrap_or(u64::MAX);
    let (after, _) = world.sent();
    let reached = world.reached().to_vec();
    let by_push = reached
        .iter()
        .filter(|reached| reached.is_some_and(|r| r.hops.is_some()))
        .count();
    let push_hops = reached
        .iter()
        .filter_map(|reached| reached.and_then(|r| r.hops))
        .max()
        .unwrap_or(0);
    // Messages in the window of the change: its pushes and forwards, and the anti-entropy
    // requests of those milliseconds.
    let change_messages = (after - before) as f64 / n;
    phase.done("eager push");

    // Anti-entropy alone.
    let config = SyncSimConfig {
        eager_push: false,
        ..SyncSimConfig::default()
    };
    let mut world = SyncWorld::new(members, config, &swim, SEED);
    phase.done("world and SWIM join");
    let start = world.now_ms();
    world.write_followed(members / 3, "web");
    let anti_entropy_rounds =
        until_reached(&mut world, start, ROUND_MS).map(|ms| ms.div_ceil(ROUND_MS));
    phase.done("anti-entropy only");

    // A partition of two halves, a change on each side, the heal.
    let mut world = SyncWorld::new(members, SyncSimConfig::default(), &swim, SEED);
    phase.done("world and SWIM join");
    world.swim.sides = Some(
        (0..members)
            .map(|index| u8::from(index >= members / 2))
            .collect(),
    );
    let start = world.now_ms();
    world.write_followed(1, "left");
    world.write_followed(members - 2, "right");
    world.run(start + PARTITION_MS);
    phase.done("partition");
    world.swim.sides = None;
    let healed = world.now_ms();
    let mut heal_ms = None;
    while world.now_ms() - healed <= PHASE_MS_MAX {
        if world.converged() {
            heal_ms = Some(world.now_ms() - healed);
            break;
        }
        let next = world.now_ms() + 100;
        world.run(next);
    }

    phase.done("heal");

    Figures {
        members,
        idle_messages,
        idle_bytes,
        idle_bytes_full,
        compact_refused,
        swim_packets,
        swim_bytes,
        push_hops,
        push_ms,
        by_push,
        change_messages,
        anti_entropy_rounds,
        heal_ms,
        wall_seconds: wall.elapsed().as_secs_f64(),
    }
}

fn main() {
    let sizes: Vec<usize> = match std::env::var("SHOAL_SYNC_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|size| {
                size.trim()
                    .parse()
                    .expect("SHOAL_SYNC_SIZES: numbers, comma-separated")
            })
            .collect(),
        Err(_) => vec![10, 100, 1_000],
    };
    let figures: Vec<Figures> = sizes
        .iter()
        .map(|members| {
            let figures = measure(*members);
            eprintln!(
                "{members} members measured in {:.1} s",
                figures.wall_seconds
            );
            figures
        })
        .collect();
    let base = &figures[0];
    println!(
        "sync at scale, sans-IO, seed {SEED}, default timing; idle per member per round (1 s), x = ratio to {} members:\n",
        base.members
    );
    println!(
        "| members | sync msgs | sync bytes | x | full summaries: bytes | compact refused | SWIM pkts | SWIM bytes | change: hops | ms | by push | msgs per member | anti-entropy only: rounds | heal after 60 s halves |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for f in &figures {
        println!(
            "| {} | {:.2} | {:.0} B | {:.2} | {:.0} B | {:.1} % | {:.2} | {:.0} B | {} | {} | {}/{} | {:.1} | {} | {} |",
            f.members,
            f.idle_messages,
            f.idle_bytes,
            f.idle_bytes / base.idle_bytes,
            f.idle_bytes_full,
            100.0 * f.compact_refused,
            f.swim_packets,
            f.swim_bytes,
            f.push_hops,
            f.push_ms,
            f.by_push,
            f.members,
            f.change_messages,
            f.anti_entropy_rounds
                .map_or("none in 600 s".to_owned(), |rounds| rounds.to_string()),
            f.heal_ms.map_or("none in 600 s".to_owned(), |ms| format!(
                "{:.1} s",
                ms as f64 / 1000.0
            )),
        );
    }
}
