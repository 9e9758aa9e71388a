//! The committed seed corpus is what `shoal_fuzz::seeds` makes today (so a format change
//! that leaves it stale fails here, and `scripts/fuzz.sh seeds` rewrites it), and every
//! seed passes its target's checks. Runs on stable: `cargo test` in fuzz/.

use std::collections::BTreeMap;
use std::path::PathBuf;

use shoal_fuzz::seeds::{self, TARGETS};

fn seeds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("seeds")
}

#[test]
fn committed_seeds_are_the_generated_ones() {
    let mut committed = BTreeMap::new();
    for target in TARGETS {
        let dir = seeds_dir().join(target);
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|error| panic!("{}: {error}", dir.display()));
        for entry in entries {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&path).expect("seed file is readable");
            committed.insert((target.to_string(), name), bytes);
        }
    }
    let generated: BTreeMap<(String, String), Vec<u8>> = seeds::all()
        .into_iter()
        .map(|seed| ((seed.target.to_string(), seed.name), seed.bytes))
        .collect();
    let stale: Vec<_> = generated
        .iter()
        .filter(|(key, bytes)| committed.get(*key) != Some(*bytes))
        .map(|(key, _)| key)
        .chain(committed.keys().filter(|key| !generated.contains_key(*key)))
        .collect();
    assert!(
        stale.is_empty(),
        "seeds differ from what shoal_fuzz::seeds makes (run scripts/fuzz.sh seeds): {stale:?}"
    );
}

#[test]
fn every_seed_passes_its_target() {
    for seed in seeds::all() {
        match seed.target {
            "codec_apply" => shoal_fuzz::codec_apply(&seed.bytes),
            "spec_file" => shoal_fuzz::spec_file(&seed.bytes),
            "api_request" => shoal_fuzz::api_request(&seed.bytes),
            "sync_wire" => shoal_fuzz::sync_wire(&seed.bytes),
            other => panic!("seed for unknown target {other}"),
        }
    }
}

/// Each seed reaches the path it is there for: pushes and sync answers are accepted by the
/// receiver, good spec files parse and bad ones are refused, every API line and every
/// wire part decodes.
#[test]
fn seeds_reach_what_they_are_for() {
    use shoal_crdt::codec;
    let max = shoal_fuzz::body_bytes_max();
    let sender = shoal_fuzz::sample::node(shoal_fuzz::sample::SENDER);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    // The pushes follow each other, in the order they were made, on one receiver; each
    // sync answer starts from the sample state.
    let mut pushed = shoal_fuzz::sample::receiver();
    for seed in seeds::all() {
        let name = seed.name.as_str();
        let label = format!("{}/{name}", seed.target);
        match seed.target {
            "codec_apply" if name.starts_with("delta-") => {
                let delta = codec::decode_delta(&seed.bytes, max).expect(&label);
                let now = shoal_fuzz::sample::now();
                let result = if name.starts_with("delta-push-") {
                    pushed.apply_delta(now, &sender, &delta)
                } else {
                    shoal_fuzz::sample::receiver().apply_delta(now, &sender, &delta)
                };
                let applied = result.unwrap_or_else(|error| panic!("{label}: {error}"));
                assert_eq!(
                    applied.entries_applied > 0,
                    name != "delta-sync-nothing",
                    "{label}: {applied:?}"
                );
                *counts.entry("delta").or_default() += 1;
            }
            "codec_apply" if name.starts_with("summary-") => {
                codec::decode_summary(&seed.bytes, max).expect(&label);
                *counts.entry("summary").or_default() += 1;
            }
            "codec_apply" if name.starts_with("snapshot-") => {
                let snapshot = codec::decode_snapshot(&seed.bytes, max).expect(&label);
                let owner = snapshot.node.clone();
                shoal_crdt::Replica::from_snapshot(owner, shoal_fuzz::sample::MAX_DRIFT, snapshot)
                    .unwrap_or_else(|error| panic!("{label}: {error}"));
                *counts.entry("snapshot").or_default() += 1;
            }
            "spec_file" => {
                let text = std::str::from_utf8(&seed.bytes).expect(&label);
                let parsed = shoal::cli::spec_file::parse(text);
                assert_eq!(
                    parsed.is_err(),
                    name.starts_with("bad-") || name.starts_with("same-"),
                    "{label}: {parsed:?}"
                );
                *counts.entry("spec").or_default() += 1;
            }
            "api_request" => {
                shoal::api::server::decode_request_line(&seed.bytes).expect(&label);
                *counts.entry("request").or_default() += 1;
            }
            "sync_wire" => {
                use shoal::sync::wire;
                if name.starts_with("query-") {
                    let text = std::str::from_utf8(&seed.bytes).expect(&label);
                    wire::LogQuery::parse(Some(text)).expect(&label);
                } else if name == "sync-response-compact" {
                    wire::decode_compact_sync_response(&seed.bytes, max).expect(&label);
                } else if name.starts_with("sync-response-") {
                    wire::decode_sync_response(&seed.bytes, max).expect(&label);
                } else if name.starts_with("sync-request-") {
                    let request = wire::decode_sync_request(&seed.bytes, max).expect(&label);
                    assert!(
                        matches!(request, wire::SyncRequest::Compact(_)),
                        "{label}: {request:?}"
                    );
                } else {
                    let stream_bytes_max = wire::log_stream_bytes_max(max);
                    wire::decode_log_piece(&seed.bytes, max, stream_bytes_max).expect(&label);
                }
                *counts.entry("wire").or_default() += 1;
            }
            other => panic!("seed for unknown target {other}"),
        }
    }
    for kind in ["delta", "summary", "snapshot", "spec", "request", "wire"] {
        assert!(
            counts.get(kind).copied().unwrap_or(0) > 0,
            "no {kind} seed: {counts:?}"
        );
    }
}
