//! Criterion benchmarks: remote-op apply throughput of shoal's replica (LWW-Map
//! set, OR-Set add/remove) next to raw `crdts` types and `automerge` on the same
//! workload, and `delta_for` cost for one change in small and large states
//! (it must not grow with the state). The README table comes from `table.rs`.

mod common;

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use shoal_crdt::{Replica, ServiceSpec};

use common::*;

const OPS: usize = 10_000;

fn map_set(c: &mut Criterion) {
    let late = physical(OPS + 1);
    let crdts_ops = crdts_map_set(OPS);
    let shoal_ops = shoal_map_set(OPS);
    // automerge's per-change apply is slow enough that 10k changes would take
    // minutes per sample; it gets its own, smaller group below.
    let mut group = c.benchmark_group("remote_apply_lww_map_set");
    group.throughput(Throughput::Elements(OPS as u64));
    group.sample_size(20);
    group.bench_function("crdts_lwwreg_btreemap", |b| {
        b.iter(|| crdts_apply(&crdts_ops))
    });
    group.bench_function("shoal_replica", |b| {
        b.iter(|| shoal_apply(&shoal_ops, late))
    });
    group.finish();

    let small = 1_000;
    let crdts_small = crdts_map_set(small);
    let shoal_small = shoal_map_set(small);
    let automerge_small = automerge_map_set(small);
    let mut group = c.benchmark_group("remote_apply_lww_map_set_1000_ops");
    group.throughput(Throughput::Elements(small as u64));
    group.sample_size(10);
    group.bench_function("crdts_lwwreg_btreemap", |b| {
        b.iter(|| crdts_apply(&crdts_small))
    });
    group.bench_function("shoal_replica", |b| {
        b.iter(|| shoal_apply(&shoal_small, late))
    });
    group.bench_function("automerge", |b| {
        b.iter(|| automerge_apply(&automerge_small))
    });
    group.finish();
}

fn or_set(c: &mut Criterion) {
    let late = physical(OPS + 1);
    let crdts_ops = crdts_or_set(OPS);
    let shoal_ops = shoal_or_set(OPS);
    let mut group = c.benchmark_group("remote_apply_or_set_add_remove");
    group.throughput(Throughput::Elements(OPS as u64));
    group.sample_size(20);
    group.bench_function("crdts_orswot", |b| {
        b.iter(|| crdts_or_set_apply(&crdts_ops))
    });
    group.bench_function("shoal_replica", |b| {
        b.iter(|| shoal_apply(&shoal_ops, late))
    });
    group.finish();
}

fn delta_for_one_change(c: &mut Criterion) {
    let mut group = c.benchmark_group("delta_for_one_change");
    for entries in [1_000, 100_000] {
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
        let summary = source.summary();
        source
            .put_service(
                physical(entries),
                service_name(0),
                ServiceSpec::new(image(entries)),
            )
            .expect("valid spec");
        group.bench_with_input(
            BenchmarkId::from_parameter(entries),
            &summary,
            |b, summary| b.iter(|| source.delta_for(summary)),
        );
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short windows keep `cargo bench -p shoal-crdt` well under five minutes.
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = map_set, or_set, delta_for_one_change
}
criterion_main!(benches);
