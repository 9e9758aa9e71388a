//! Prints the README's benchmark table: remote-op apply throughput of shoal's
//! replica against raw `crdts` types (the named baseline) and `automerge`,
//! measured in the same run, and delta sizes against the full state.
//!
//! Run: `cargo bench -p shoal-crdt --bench table`. Times are medians of a few
//! repetitions on whatever core the process gets; compare the ratios rather than
//! the absolute numbers. A shoal row and its baseline run alternately, and the
//! ratio is the median of each pair's: a machine whose speed drifts during the
//! run moves both sides of a pair alike.

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use shoal_crdt::{Replica, ServiceSpec, codec};

use common::*;

const APPLY_OPS: usize = 20_000;
/// automerge applies changes one at a time far more slowly (and its cost per
/// change grows with the history), so it is compared on a smaller run with
/// shoal and crdts measured on that same smaller run.
const AUTOMERGE_OPS: usize = 2_000;
const REPETITIONS: usize = 15;
/// Copies of each write a member receives in a fleet of 48 (`sync.push_fanout`'s default).
const FANOUT_AT_48: usize = 7;

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn time<T>(repetitions: usize, mut work: impl FnMut() -> T) -> Duration {
    black_box(work()); // warm up
    median(
        (0..repetitions)
            .map(|_| {
                let start = Instant::now();
                black_box(work());
                start.elapsed()
            })
            .collect(),
    )
}

/// Medians of `baseline` and `subject` run alternately `repetitions` times, and the
/// median of their ratio within each pair.
struct Paired {
    baseline: Duration,
    subject: Duration,
    ratio: f64,
}

fn paired<A, B>(
    repetitions: usize,
    mut baseline: impl FnMut() -> A,
    mut subject: impl FnMut() -> B,
) -> Paired {
    black_box(baseline()); // warm up
    black_box(subject());
    let mut baselines = Vec::with_capacity(repetitions);
    let mut subjects = Vec::with_capacity(repetitions);
    let mut ratios = Vec::with_capacity(repetitions);
    for _ in 0..repetitions {
        let start = Instant::now();
        black_box(baseline());
        let base = start.elapsed();
        let start = Instant::now();
        black_box(subject());
        let took = start.elapsed();
        ratios.push(took.as_secs_f64() / base.as_secs_f64());
        baselines.push(base);
        subjects.push(took);
    }
    ratios.sort_by(f64::total_cmp);
    Paired {
        baseline: median(baselines),
        subject: median(subjects),
        ratio: ratios[ratios.len() / 2],
    }
}

fn ops_per_second(ops: usize, elapsed: Duration) -> f64 {
    ops as f64 / elapsed.as_secs_f64()
}

fn row(workload: &str, implementation: &str, ops: usize, elapsed: Duration, ratio: f64) {
    println!(
        "| {workload} | {implementation} | {ops} | {:.2} ms | {:.0} | {ratio:.2}x |",
        elapsed.as_secs_f64() * 1e3,
        ops_per_second(ops, elapsed),
    );
}

/// A baseline row and its shoal row.
fn rows(workload: &str, baseline_name: &str, ops: usize, pair: &Paired) {
    row(workload, baseline_name, ops, pair.baseline, 1.0);
    row(
        workload,
        "shoal Replica::apply_delta",
        ops,
        pair.subject,
        pair.ratio,
    );
}

fn ratio(elapsed: Duration, baseline: Duration) -> f64 {
    elapsed.as_secs_f64() / baseline.as_secs_f64()
}

fn main() {
    // Cargo passes `--bench`; there is nothing to filter.
    let late = physical(APPLY_OPS + 1);

    println!(
        "### Remote-op apply (one core, median of {REPETITIONS} alternate runs; ratio = time / raw crdts time, median of the pairs')\n"
    );
    println!("| workload | implementation | ops | time | ops/s | time vs crdts |");
    println!("|---|---|---:|---:|---:|---:|");
    let map_baseline = "crdts BTreeMap<K, LWWReg> (baseline)";

    let crdts_ops = crdts_map_set(APPLY_OPS);
    let shoal_ops = shoal_map_set(APPLY_OPS);
    let map_set = format!("LWW-Map set ({MAP_KEYS} keys)");
    let pair = paired(
        REPETITIONS,
        || crdts_apply(&crdts_ops),
        || shoal_apply(&shoal_ops, late),
    );
    rows(&map_set, map_baseline, APPLY_OPS, &pair);

    let small_crdts_ops = crdts_map_set(AUTOMERGE_OPS);
    let small_shoal_ops = shoal_map_set(AUTOMERGE_OPS);
    let automerge_ops = automerge_map_set(AUTOMERGE_OPS);
    let small = paired(
        REPETITIONS,
        || crdts_apply(&small_crdts_ops),
        || shoal_apply(&small_shoal_ops, late),
    );
    let automerge = time(3, || automerge_apply(&automerge_ops));
    let automerge_batch = time(3, || automerge_apply_batch(&automerge_ops));
    rows(&map_set, map_baseline, AUTOMERGE_OPS, &small);
    row(
        &map_set,
        "automerge 0.12 apply_changes",
        AUTOMERGE_OPS,
        automerge,
        ratio(automerge, small.baseline),
    );
    row(
        &map_set,
        "automerge 0.12, all changes in one batch",
        AUTOMERGE_OPS,
        automerge_batch,
        ratio(automerge_batch, small.baseline),
    );

    // The same workloads with a spec like a fleet's service's (a command, variables, ports,
    // volumes, a health check): validation and copies grow with the spec.
    let service_like = format!("LWW-Map set, service-like spec ({MAP_KEYS} keys)");
    for ops in [APPLY_OPS, AUTOMERGE_OPS] {
        let crdts_ops = crdts_map_set_of(ops, service_like_spec);
        let shoal_ops = shoal_map_set_of(ops, service_like_spec);
        let pair = paired(
            REPETITIONS,
            || crdts_apply(&crdts_ops),
            || shoal_apply(&shoal_ops, late),
        );
        rows(&service_like, map_baseline, ops, &pair);
    }

    // The push delivers a write to a member from about `push_fanout` others (ln N + 3: 7 at
    // 48 members); the copies after the first are writes the member holds already.
    for (workload, spec) in [
        (
            "LWW-Map set, each write delivered 7 times",
            minimal_spec as fn(usize) -> ServiceSpec,
        ),
        (
            "LWW-Map set, service-like spec, each write delivered 7 times",
            service_like_spec,
        ),
    ] {
        let crdts_ops = crdts_map_set_of(APPLY_OPS, spec);
        let shoal_ops = shoal_map_set_of(APPLY_OPS, spec);
        let pair = paired(
            3,
            || crdts_apply_copies(&crdts_ops, FANOUT_AT_48),
            || shoal_apply_copies(&shoal_ops, late, FANOUT_AT_48),
        );
        rows(workload, map_baseline, APPLY_OPS * FANOUT_AT_48, &pair);
    }

    let crdts_set_ops = crdts_or_set(APPLY_OPS);
    let shoal_set_ops = shoal_or_set(APPLY_OPS);
    let pair = paired(
        REPETITIONS,
        || crdts_or_set_apply(&crdts_set_ops),
        || shoal_apply(&shoal_set_ops, late),
    );
    rows(
        "OR-Set add/remove (2:1)",
        "crdts Orswot (baseline)",
        APPLY_OPS,
        &pair,
    );

    println!(
        "\nshoal vs automerge on the {AUTOMERGE_OPS}-op map-set workload: {:.1}x faster one change at a time, {:.1}x in one batch\n",
        ratio(automerge, small.subject),
        ratio(automerge_batch, small.subject),
    );

    println!("### Delta size after k changes in a state of n services (encoded bytes)\n");
    println!("| n entries | full state | k=1 | k=10 | k=100 | k=1000 | delta_for time, k=1 |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for entries in [1_000, 10_000, 100_000] {
        let mut source = Replica::new(node("source"), max_drift());
        for key in 0..entries {
            source
                .put_service(
                    physical(key),
                    service_name(key),
                    ServiceSpec::new(image(key)),
                )
                .expect("valid spec");
        }
        let full = codec::encode_snapshot(&source.to_snapshot()).len();
        let peer_summary = source.summary();
        let mut cells = Vec::new();
        let mut one_change_time = Duration::ZERO;
        for changes in [1, 10, 100, 1_000] {
            let mut changed = source.clone();
            for change in 0..changes {
                let at = physical(entries + change);
                changed
                    .put_service(
                        at,
                        service_name(change * 7 % entries),
                        ServiceSpec::new(image(change)),
                    )
                    .expect("valid");
            }
            let delta = changed.delta_for(&peer_summary);
            assert_eq!(
                delta.entry_count(),
                changes,
                "the delta holds exactly the changed entries"
            );
            let bytes = codec::encode_delta(&delta).len();
            cells.push(format!(
                "{bytes} B ({:.3}%)",
                100.0 * bytes as f64 / full as f64
            ));
            if changes == 1 {
                one_change_time = time(REPETITIONS, || changed.delta_for(&peer_summary));
            }
        }
        println!(
            "| {entries} | {full} B | {} | {:.1} µs |",
            cells.join(" | "),
            one_change_time.as_secs_f64() * 1e6
        );
    }
}
