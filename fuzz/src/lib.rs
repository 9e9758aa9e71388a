//! What shoal's fuzz targets check on one input. Each target in `fuzz_targets/` is one call
//! to a function here, so `tests/seeds.rs` replays the committed seeds through the same
//! checks on stable, and `examples/write_seeds.rs` writes those seeds from real bodies.
//!
//! A target fails on a panic anywhere in the code it drives, and on these properties:
//! - `codec_apply`: bytes a peer or the disk could hand over, decoded with the sync body
//!   limit as a delta, a summary and a snapshot. A delta is applied to a replica that holds
//!   the sample cluster's state (`sample`): refused, the replica is exactly as before;
//!   accepted, a new node that pulls from the replica gets the same state, and the replica
//!   restarts from its snapshot with the same state, plans from its view and keeps writing
//!   locally. A summary is answered with a delta and observed before GC; a snapshot is
//!   loaded as a restart would, then held to the same rules but the newcomer's (a state
//!   file's clock is not checked against drift). Whatever decodes re-encodes to itself.
//! - `spec_file`: `shoal service apply -f` text. What parses is valid, its workload fields
//!   parse, ports print back to themselves, and the services travel unchanged through the
//!   API line, a replica, the codec and a peer's replica.
//! - `api_request`: one line on the API socket. What decodes re-encodes to itself, and the
//!   services of an apply that validate replicate as above.
//! - `sync_wire`: the sync protocol's other parts: the `GET /v1/logs` query (also through
//!   `http::Uri`, as the server sees it), a `/v1/sync` response body (to a full or a compact
//!   summary) and a log piece as a client reads them, and a compact summary as a server
//!   reads it. What parses re-encodes to itself; a compact summary that rebuilds has the
//!   digest it names, and the reply to it leads back to the receiver's summary; a reply is
//!   read against the receiver's version vector and what it describes is answered.

pub mod sample;
pub mod seeds;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use shoal::agent::config::SyncSettings;
use shoal::api::server::decode_request_line;
use shoal::api::{API_VERSION, Envelope, LOG_OFFSETS_MAX, NamedSpec, Request};
use shoal::cli::spec_file::{self, SERVICES_PER_FILE_MAX};
use shoal::containers::logs::locate;
use shoal::schedule::view::ClusterView;
use shoal::sync::wire::{self, LogQuery};
use shoal_crdt::codec::{self, DecodeError};
use shoal_crdt::compact;
use shoal_crdt::{
    CompactSummary, Delta, NodeId, PortMapping, Replica, Snapshot, Summary, SummaryReply,
};

use sample::{MAX_DRIFT, at, node, now};

/// The daemon's default `sync.body_bytes_max`: every sync body is decoded with it.
pub fn body_bytes_max() -> usize {
    SyncSettings::default().body_bytes_max
}

/// The sample receiver and its snapshot, built once per process.
fn receiver() -> &'static (Replica, Snapshot) {
    static RECEIVER: OnceLock<(Replica, Snapshot)> = OnceLock::new();
    RECEIVER.get_or_init(|| {
        let replica = sample::receiver();
        let snapshot = replica.to_snapshot();
        (replica, snapshot)
    })
}

/// A node that joins later and pulls everything; no sample or fuzzed write is its own.
const NEWCOMER: &str = "newcomer-9";
/// When the newcomer pulls: later than anything a replica accepted at `now()` (whose
/// clock may then be up to the drift limit ahead), so its clock check passes.
fn newcomer_time() -> shoal_crdt::NTP64 {
    at(120_000)
}

// ---- codec_apply ------------------------------------------------------------------------

pub fn codec_apply(data: &[u8]) {
    // The limit is checked before anything else.
    if let Some(under) = data.len().checked_sub(1) {
        assert!(
            matches!(
                codec::decode_delta(data, under),
                Err(DecodeError::TooLarge { .. })
            ),
            "a body over the limit was not refused as too large"
        );
    }
    let max = body_bytes_max();
    if let Ok(delta) = codec::decode_delta(data, max) {
        assert_delta_round_trips(&delta);
        apply_to_receiver(&delta);
    }
    if let Ok(summary) = codec::decode_summary(data, max) {
        let encoded = codec::encode_summary(&summary);
        assert_eq!(
            codec::decode_summary(&encoded, usize::MAX),
            Ok(summary.clone())
        );
        answer_summary(&summary);
    }
    if let Ok(snapshot) = codec::decode_snapshot(data, max) {
        let encoded = codec::encode_snapshot(&snapshot);
        assert_eq!(
            codec::decode_snapshot(&encoded, usize::MAX),
            Ok(snapshot.clone())
        );
        load_snapshot(snapshot);
    }
}

fn assert_delta_round_trips(delta: &Delta) {
    let encoded = codec::encode_delta(delta);
    assert_eq!(codec::decode_delta(&encoded, usize::MAX), Ok(delta.clone()));
}

/// `POST /v1/push` from a member: `Node::apply_remote`'s use of the replica.
fn apply_to_receiver(delta: &Delta) {
    let (base, before) = receiver();
    let mut replica = base.clone();
    let from = node(sample::SENDER);
    match replica.apply_delta(now(), &from, delta) {
        Err(_) => assert!(
            replica.to_snapshot() == *before,
            "a refused delta changed the replica"
        ),
        Ok(_) => {
            newcomer_pulls(&replica);
            accepted(&mut replica);
            // Once more: duplicates arrive all the time.
            let digest = replica.digest();
            if replica.apply_delta(now(), &from, delta).is_ok() {
                assert_eq!(
                    replica.digest(),
                    digest,
                    "applying a delta twice changed the state"
                );
            }
        }
    }
}

/// `POST /v1/sync` from a member: the answer, then GC with what the asker said it has.
fn answer_summary(summary: &Summary) {
    let (base, _) = receiver();
    let mut replica = base.clone();
    let delta = replica.delta_for(summary);
    assert_delta_round_trips(&delta);
    replica.observe_summary(&node(sample::SENDER), summary);
    replica.collect_garbage();
    assert_restarts(&replica);
}

/// A compact summary as a server gets it: rebuilt against the receiver's version vector, and
/// when that works, answered like the full summary it stands for.
fn answer_compact_summary(compact: &CompactSummary) {
    let (base, _) = receiver();
    let encoded = codec::encode_compact_summary(compact);
    assert_eq!(
        codec::decode_compact_summary(&encoded, usize::MAX).as_ref(),
        Ok(compact)
    );
    if let Some(summary) = base.expand_summary(now(), compact) {
        assert_eq!(
            compact::vv_digest(&summary.vv),
            compact.vv_digest,
            "a compact summary rebuilt into a vector of another digest"
        );
        let reply = base.summary_reply(&summary.vv);
        assert_eq!(
            compact::expand_reply(&summary.vv, reply),
            Some(base.summary()),
            "the reply to a rebuilt summary does not lead back to the receiver's"
        );
        answer_summary(&summary);
    }
}

/// A reply to our compact summary, as a caller reads it: either the peer's summary it
/// describes (then answered like any summary) or nothing.
fn read_reply(reply: SummaryReply) {
    let (base, _) = receiver();
    if let Some(summary) = compact::expand_reply(base.version_vector(), reply) {
        answer_summary(&summary);
    }
}

/// A state file read at startup (`state::load`).
fn load_snapshot(snapshot: Snapshot) {
    let owner = snapshot.node.clone();
    if let Ok(mut replica) = Replica::from_snapshot(owner, MAX_DRIFT, snapshot) {
        accepted(&mut replica);
    }
}

/// What must hold of a replica that accepted a state: it restarts on it, plans from it,
/// and keeps working.
fn accepted(replica: &mut Replica) {
    assert_restarts(replica);
    plan(replica);
    // The node keeps heartbeating (its metadata, the write the daemon makes every second).
    let own = replica.node().clone();
    let meta = replica
        .state()
        .node(&own)
        .cloned()
        .unwrap_or_else(|| sample::meta(3));
    let _ = replica.put_node_meta(now(), meta);
    assert_restarts(replica);
    let summary = replica.summary();
    replica.observe_summary(&node(sample::SENDER), &summary);
    replica.collect_garbage();
    assert_restarts(replica);
}

/// A node must always restart on a state it once accepted, and find the same state.
fn assert_restarts(replica: &Replica) {
    let encoded = codec::encode_snapshot(&replica.to_snapshot());
    let snapshot = match codec::decode_snapshot(&encoded, usize::MAX) {
        Ok(snapshot) => snapshot,
        Err(error) => panic!("the replica's own snapshot does not decode: {error}"),
    };
    let reloaded = match Replica::from_snapshot(replica.node().clone(), MAX_DRIFT, snapshot) {
        Ok(reloaded) => reloaded,
        Err(error) => panic!("cannot restart on a state the replica accepted: {error}"),
    };
    assert_eq!(
        reloaded.digest(),
        replica.digest(),
        "restart changed the state"
    );
    assert_eq!(reloaded.version_vector(), replica.version_vector());
}

/// The planner's view and placement, every member live.
fn plan(replica: &Replica) {
    let live: BTreeSet<NodeId> = replica.state().nodes().map(|(id, _)| id.clone()).collect();
    let view = ClusterView::read(replica.state(), replica.node(), &live);
    let _ = view.placement();
    let _ = replica.state().ip_conflicts();
    let _ = replica.state().subnet_conflicts();
}

/// A new node pulls everything from `replica` and holds the same state.
fn newcomer_pulls(replica: &Replica) {
    let newcomer_id = node(NEWCOMER);
    if replica.version_vector().get(&newcomer_id) > 0 {
        return; // the fuzzer wrote in the newcomer's name: that is not a newcomer
    }
    let mut newcomer = Replica::new(newcomer_id, MAX_DRIFT);
    let delta = replica.delta_for(&newcomer.summary());
    assert_delta_round_trips(&delta);
    if let Err(error) = newcomer.apply_delta(newcomer_time(), replica.node(), &delta) {
        panic!("a new node refuses the state a replica accepted: {error}");
    }
    assert_eq!(newcomer.digest(), replica.digest(), "a full pull differs");
    // A relayed range is covered only as far as the newcomer can show (the trust model in
    // ARCHITECTURE.md): never beyond what the replica covers.
    for (origin, counter) in &newcomer.version_vector().dots {
        assert!(
            *counter <= replica.version_vector().get(origin),
            "the newcomer covers {origin} up to {counter}, beyond the replica"
        );
    }
}

// ---- spec_file ---------------------------------------------------------------------------

pub fn spec_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(services) = spec_file::parse(text) else {
        return;
    };
    assert!(!services.is_empty() && services.len() <= SERVICES_PER_FILE_MAX);
    for service in &services {
        assert_workload_parses(service);
    }
    // What `shoal service apply` sends decodes to the same services on the daemon.
    let request = Request::ServiceApply {
        services: services.clone(),
    };
    assert_request_round_trips(&request);
    replicate(&services);
}

/// A spec that validated has workload fields that parse, and ports that print back.
fn assert_workload_parses(service: &NamedSpec) {
    let spec = &service.spec;
    if let Err(error) = spec.validate() {
        panic!(
            "service {} passed parsing but not validate: {error}",
            service.name
        );
    }
    let ports = spec.port_mappings().expect("validated ports parse");
    for port in &ports {
        let printed = port.to_string();
        assert_eq!(
            printed.parse::<PortMapping>().ok(),
            Some(*port),
            "port {printed:?} does not parse back"
        );
    }
    assert_eq!(spec.host_ports().len(), ports.len());
    spec.volume_mounts().expect("validated volumes parse");
    spec.tmpfs_mounts().expect("validated tmpfs mounts parse");
}

/// Valid services go through a replica, the codec and a peer unchanged.
fn replicate(services: &[NamedSpec]) {
    let mut writer = Replica::new(node("n1"), MAX_DRIFT);
    for (offset, service) in (0u64..).zip(services) {
        if let Err(error) =
            writer.put_service(at(offset), service.name.clone(), service.spec.clone())
        {
            panic!("a valid spec was refused by the replica: {error}");
        }
    }
    let delta = writer.delta_for(&Summary::default());
    let encoded = codec::encode_delta(&delta);
    let decoded = match codec::decode_delta(&encoded, usize::MAX) {
        Ok(decoded) => decoded,
        Err(error) => panic!("a delta of valid specs does not decode: {error}"),
    };
    assert_eq!(decoded, delta);
    let mut peer = Replica::new(node("n2"), MAX_DRIFT);
    if let Err(error) = peer.apply_delta(now(), writer.node(), &decoded) {
        panic!("a peer refused valid specs: {error}");
    }
    for service in services {
        let held = peer.state().service(&service.name).map(|(spec, _)| spec);
        // A later service of the same name (only the API allows one) wins in the writer too.
        let written = writer.state().service(&service.name).map(|(spec, _)| spec);
        assert_eq!(held, written, "service {} changed on the way", service.name);
    }
}

// ---- api_request -------------------------------------------------------------------------

pub fn api_request(data: &[u8]) {
    let Ok(request) = decode_request_line(data) else {
        return;
    };
    assert_request_round_trips(&request);
    match &request {
        Request::ServiceApply { services } => {
            let valid: Vec<NamedSpec> = services
                .iter()
                .filter(|service| service.spec.validate().is_ok())
                .cloned()
                .collect();
            for service in &valid {
                assert_workload_parses(service);
            }
            replicate(&valid);
        }
        Request::Logs { target, offsets } => {
            assert!(offsets.len() <= LOG_OFFSETS_MAX);
            let (replica, _) = receiver();
            let records: Vec<_> = replica.state().containers().cloned().collect();
            let _ = locate(target, replica.node(), &records, &[]);
        }
        _ => {}
    }
}

/// The line the client writes for `request` decodes to `request`.
fn assert_request_round_trips(request: &Request) {
    let envelope = Envelope {
        version: API_VERSION,
        request: request.clone(),
    };
    let mut line = serde_json::to_vec(&envelope).expect("requests serialize");
    line.push(b'\n');
    match decode_request_line(&line) {
        Ok(decoded) => assert_eq!(&decoded, request, "the request changed on the way"),
        Err(error) => panic!("the client's own line is refused: {error}"),
    }
}

// ---- sync_wire ---------------------------------------------------------------------------

pub fn sync_wire(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(query) = LogQuery::parse(Some(text)) {
            assert_log_query_round_trips(&query);
        }
        // As the server gets it: the request target parsed by `http`.
        if let Ok(uri) = format!("{}?{text}", wire::PATH_LOGS).parse::<http::Uri>() {
            let _ = wire::route(&http::Method::GET, uri.path());
            if let Ok(query) = LogQuery::parse(uri.query()) {
                assert_log_query_round_trips(&query);
            }
        }
    }
    let max = body_bytes_max();
    if let Ok((delta, summary)) = wire::decode_sync_response(data, max) {
        let body = wire::encode_sync_response(&delta, &codec::encode_summary(&summary));
        let decoded = wire::decode_sync_response(&body, usize::MAX).ok();
        assert_eq!(decoded, Some((delta, summary)), "a sync response changed");
    }
    if let Ok((delta, reply)) = wire::decode_compact_sync_response(data, max) {
        let body = wire::encode_sync_response(&delta, &codec::encode_summary_reply(&reply));
        let decoded = wire::decode_compact_sync_response(&body, usize::MAX).ok();
        assert_eq!(
            decoded,
            Some((delta, reply.clone())),
            "a compact sync response changed"
        );
        read_reply(reply);
    }
    if let Ok(wire::SyncRequest::Compact(compact)) = wire::decode_sync_request(data, max) {
        answer_compact_summary(&compact);
    }
    let stream_bytes_max = wire::log_stream_bytes_max(max);
    if let Ok(piece) = wire::decode_log_piece(data, max, stream_bytes_max) {
        for (data, offset) in [
            (&piece.stdout, piece.stdout_offset),
            (&piece.stderr, piece.stderr_offset),
        ] {
            assert!(data.len() as u64 <= stream_bytes_max && data.len() as u64 <= offset);
        }
        let body = wire::encode_log_piece(&piece);
        let decoded = wire::decode_log_piece(&body, usize::MAX, u64::MAX).ok();
        assert_eq!(decoded, Some(piece), "a log piece changed");
    }
}

fn assert_log_query_round_trips(query: &LogQuery) {
    assert!(query.stream_bytes_max >= 1);
    let text = query.to_query();
    assert!(
        text.len() <= wire::LOG_QUERY_BYTES_MAX,
        "{text:?} is over the limit"
    );
    assert_eq!(LogQuery::parse(Some(&text)).ok().as_ref(), Some(query));
    let uri: http::Uri = match query.path_and_query().parse() {
        Ok(uri) => uri,
        Err(error) => panic!(
            "{:?} is not a valid request target: {error}",
            query.path_and_query()
        ),
    };
    assert_eq!(uri.path(), wire::PATH_LOGS);
    assert_eq!(LogQuery::parse(uri.query()).ok().as_ref(), Some(query));
}
