//! The seed corpus: real bodies, made by the same code the daemon and the CLI run. Deltas
//! are the eager pushes of local operations and anti-entropy answers between the sample
//! replicas (one a full snapshot delta), summaries and snapshots are theirs, spec files
//! are README's example and files built from specs that use every field, API lines are
//! what the client writes, and sync parts are what the server answers.
//! `examples/write_seeds.rs` writes them to `seeds/<target>/`; `tests/seeds.rs` checks
//! that the committed files are these and replays them through the targets' checks.

use std::collections::BTreeMap;

use shoal::api::{API_VERSION, Envelope, NamedSpec, Request};
use shoal::sync::wire::{self, LogPiece, LogQuery};
use shoal_crdt::{
    CompactSummary, ContainerStatus, NodeStatus, Replica, Resource, RunState, ServiceName,
    ServiceSpec, Summary,
};
use shoal_crdt::{codec, compact};

use crate::sample::{self, MAX_DRIFT, at, node};

/// One seed: the target it feeds, its file name, its bytes.
pub struct Seed {
    pub target: &'static str,
    pub name: String,
    pub bytes: Vec<u8>,
}

pub const TARGETS: [&str; 4] = ["codec_apply", "spec_file", "api_request", "sync_wire"];

/// Every seed, in a fixed order; the same bytes on every run.
pub fn all() -> Vec<Seed> {
    let mut seeds = Vec::new();
    codec_apply(&mut seeds);
    spec_file(&mut seeds);
    api_request(&mut seeds);
    sync_wire(&mut seeds);
    seeds
}

fn push(seeds: &mut Vec<Seed>, target: &'static str, name: impl Into<String>, bytes: Vec<u8>) {
    seeds.push(Seed {
        target,
        name: name.into(),
        bytes,
    });
}

fn name(text: &str) -> ServiceName {
    text.parse().expect("seed service names are valid")
}

/// Pushes the receiver (`n3`) has not seen: local operations of n1 and n2 after the sample
/// history, each one's delta as the eager push sends it, then anti-entropy answers.
fn codec_apply(seeds: &mut Vec<Seed>) {
    let target = "codec_apply";
    let [mut n1, mut n2, n3] = sample::cluster();
    let mut delta = |name: &str, delta: shoal_crdt::Delta| {
        push(
            seeds,
            target,
            format!("delta-{name}"),
            codec::encode_delta(&delta),
        );
    };
    let mut time_ms = 55_000;
    let mut tick = || {
        time_ms += 10;
        at(time_ms)
    };
    let mut api = sample::web_spec();
    api.ports = vec!["9000:9000".into()];
    api.publish.mode = shoal_crdt::PublishMode::Mesh;
    delta(
        "push-put-service",
        n1.put_service(tick(), name("api"), api).expect("seed op"),
    );
    delta(
        "push-remove-service",
        n1.remove_service(tick(), &name("web")).expect("seed op"),
    );
    delta(
        "push-heartbeat",
        n1.put_node_meta(tick(), sample::meta(1)).expect("seed op"),
    );
    let container = "web-0a1b".parse().expect("seed container id");
    let ip = n2
        .state()
        .container(&container)
        .and_then(|record| record.ip)
        .or_else(|| {
            n2.state()
                .ip_allocations()
                .into_iter()
                .find(|allocation| allocation.container == container)
                .map(|allocation| allocation.ip)
        });
    if let Some(ip) = ip {
        delta(
            "push-release-ip",
            n2.release_ip(tick(), ip).expect("seed op"),
        );
    }
    delta(
        "push-remove-container",
        n2.remove_container(tick(), &container).expect("seed op"),
    );
    delta(
        "push-adjust-counter",
        n2.adjust_resource(tick(), Resource::CpuMillis, -250)
            .expect("seed op"),
    );
    let mut status = NodeStatus::default();
    status.containers.insert(
        "web-0a1b".parse().expect("seed container id"),
        ContainerStatus {
            state: RunState::Exited {
                code: Some(137),
                signal: Some(9),
            },
            started_unix_ms: Some(1_700_000_000_000),
            restarts: 3,
            health: Default::default(),
            spec: Some("0123456789abcdef".to_owned()),
            ready: true,
            retiring: false,
        },
    );
    delta(
        "push-status",
        n2.put_node_status(tick(), status).expect("seed op"),
    );
    // Anti-entropy: n1's answer to n3's summary (one origin), then n1 after hearing from
    // n2 (two origins), a full snapshot for a node below the GC floor, and nothing.
    delta("sync-one-origin", n1.delta_for(&n3.summary()));
    let from_n2 = n2.delta_for(&n1.summary());
    n1.apply_delta(tick(), n2.node(), &from_n2)
        .expect("seed sync");
    delta("sync-two-origins", n1.delta_for(&n3.summary()));
    delta("sync-full", n1.delta_for(&Summary::default()));
    delta("sync-nothing", n1.delta_for(&n1.summary()));
    let mut summary = |name: &str, summary: Summary| {
        push(
            seeds,
            target,
            format!("summary-{name}"),
            codec::encode_summary(&summary),
        );
    };
    summary("empty", Summary::default());
    summary("receiver", n3.summary());
    summary("ahead", n1.summary());
    let mut snapshot = |name: &str, replica: &Replica| {
        push(
            seeds,
            target,
            format!("snapshot-{name}"),
            codec::encode_snapshot(&replica.to_snapshot()),
        );
    };
    snapshot("fresh", &Replica::new(node("n4"), MAX_DRIFT));
    snapshot("receiver", &n3);
    snapshot("n1", &n1);
}

/// README's example spec, with a digest of the right shape.
const README_SPEC: &str = r#"name = "web"
image = "/var/lib/images/web.tar"   # OCI layout dir, oci-archive or docker-archive (e.g. from dockerTools)
image_digest = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
command = ["/bin/httpd", "-f", "-p", "8080"]
env = { GREETING = "hello" }        # replicated to every node: no secrets here
replicas = 3
restart = "on-failure"              # never | on-failure | always
ports = ["80:8080", "127.0.0.1:9000:9000", "5353:53/udp"]  # [host_ip:]host_port:container_port[/tcp|/udp]
volumes = ["/srv/web:/data:ro", "cache:/var/cache/web"]    # host path (must exist) or named volume; :ro | :rw
tmpfs = ["/tmp:size=64m"]           # target[:size=N[k|m|g]], default 64m
env_files = ["/run/keys/web.env"]   # KEY=VALUE lines, read on the node when the container starts
secrets = { tls_key = "/run/keys/web-key" }  # mounted read-only at /run/secrets/tls_key
[publish]
mode = "host"                       # host (default) | mesh
[resources]
cpu_millis = 250
memory_bytes = 67108864
pids_max = 128
"#;

/// A spec file's text for `services`: one service inline, several as `[[service]]`.
fn spec_text(services: &[(&str, ServiceSpec)]) -> String {
    let table = |(name, spec): &(&str, ServiceSpec)| {
        let mut table = toml::Table::try_from(spec).expect("specs serialize to TOML");
        table.insert("name".into(), toml::Value::String((*name).into()));
        table
    };
    let document = match services {
        [one] => table(one),
        many => toml::Table::from_iter([(
            "service".to_string(),
            toml::Value::Array(
                many.iter()
                    .map(|service| toml::Value::Table(table(service)))
                    .collect(),
            ),
        )]),
    };
    toml::to_string(&document).expect("tables serialize")
}

fn spec_file(seeds: &mut Vec<Seed>) {
    let target = "spec_file";
    push(seeds, target, "readme.toml", README_SPEC.into());
    push(
        seeds,
        target,
        "minimal.toml",
        b"name = \"web\"\nimage = \"/var/lib/images/web.tar\"\n".to_vec(),
    );
    push(
        seeds,
        target,
        "every-field.toml",
        spec_text(&[("web", sample::web_spec())]).into_bytes(),
    );
    let mut mesh = ServiceSpec::new("/img/api.tar");
    mesh.ports = vec!["0.0.0.0:9000:9000/tcp".into(), "9001:9001/udp".into()];
    mesh.publish.mode = shoal_crdt::PublishMode::Mesh;
    mesh.restart = shoal_crdt::RestartPolicy::Always;
    let mut cache = ServiceSpec::new("/img/cache.tar");
    cache.volumes = vec!["cache-data:/data".into(), "/srv/cache:/srv:rw".into()];
    cache.tmpfs = vec![
        "/run:size=1g".into(),
        "/scratch:size=512k".into(),
        "/tmp".into(),
    ];
    cache.secrets = BTreeMap::from([
        ("tls_key".into(), "/run/keys/cache-key".into()),
        ("tls_cert".into(), "/run/keys/cache-cert".into()),
    ]);
    push(
        seeds,
        target,
        "three-services.toml",
        spec_text(&[("web", sample::web_spec()), ("api", mesh), ("cache", cache)]).into_bytes(),
    );
    // Refused ones, as the spec_file tests write them: each names its field.
    for (file, text) in [
        (
            "bad-port.toml",
            "name = \"web\"\nimage = \"/i\"\nports = [\"80:0\"]\n",
        ),
        (
            "bad-volume.toml",
            "name = \"web\"\nimage = \"/i\"\nvolumes = [\"data\"]\n",
        ),
        (
            "bad-tmpfs.toml",
            "name = \"web\"\nimage = \"/i\"\ntmpfs = [\"/tmp:size=1t\"]\n",
        ),
        (
            "bad-secret.toml",
            "name = \"web\"\nimage = \"/i\"\nsecrets = { \"../x\" = \"/k\" }\n",
        ),
        (
            "same-port-twice.toml",
            "name = \"web\"\nimage = \"/i\"\nports = [\"80:80\", \"0.0.0.0:80:81\"]\n",
        ),
    ] {
        push(seeds, target, file, text.into());
    }
}

fn request_line(request: Request) -> Vec<u8> {
    let mut line = serde_json::to_vec(&Envelope {
        version: API_VERSION,
        request,
    })
    .expect("requests serialize");
    line.push(b'\n');
    line
}

fn api_request(seeds: &mut Vec<Seed>) {
    let target = "api_request";
    let mut mesh = ServiceSpec::new("/img/api.tar");
    mesh.ports = vec!["9000:9000".into()];
    mesh.publish.mode = shoal_crdt::PublishMode::Mesh;
    let requests = [
        (
            "service-apply",
            Request::ServiceApply {
                services: vec![
                    NamedSpec {
                        name: name("web"),
                        spec: sample::web_spec(),
                    },
                    NamedSpec {
                        name: name("api"),
                        spec: mesh,
                    },
                ],
            },
        ),
        ("service-list", Request::ServiceList),
        (
            "service-remove",
            Request::ServiceRemove { name: name("web") },
        ),
        ("nodes", Request::Nodes),
        ("status", Request::Status),
        ("ps", Request::Ps),
        ("volume-list", Request::VolumeList),
        (
            "volume-remove",
            Request::VolumeRemove {
                name: "cache".into(),
            },
        ),
        (
            "logs",
            Request::Logs {
                target: "web".into(),
                offsets: BTreeMap::from([
                    ("web-0a1b".into(), (120, 0)),
                    ("web-2c3d".into(), (4096, 17)),
                ]),
            },
        ),
    ];
    for (file, request) in requests {
        push(seeds, target, format!("{file}.json"), request_line(request));
    }
}

fn sync_wire(seeds: &mut Vec<Seed>) {
    let target = "sync_wire";
    let query = |container: &str, stdout: u64, stderr: u64, bytes_max: u64| LogQuery {
        container: container.parse().expect("seed container id"),
        stdout_offset: stdout,
        stderr_offset: stderr,
        stream_bytes_max: bytes_max,
    };
    for (file, query) in [
        ("query-start", query("web-0a1b", 0, 0, 4_194_240)),
        ("query-follow", query("web-2c3d", 4096, 17, 65_536)),
        (
            "query-largest",
            query(&"x".repeat(128), u64::MAX, u64::MAX, u64::MAX),
        ),
    ] {
        push(seeds, target, file, query.to_query().into_bytes());
    }
    let [mut n1, _, n3] = sample::cluster();
    n1.put_service(at(55_000), name("api"), ServiceSpec::new("/img/api.tar"))
        .expect("seed op");
    push(
        seeds,
        target,
        "sync-response-one-service",
        wire::encode_sync_response(
            &n1.delta_for(&n3.summary()),
            &codec::encode_summary(&n1.summary()),
        ),
    );
    // A compact summary listing every counter of n3 (so it rebuilds anywhere), and n1's
    // answer to it: the delta and the difference.
    let vv = n3.version_vector();
    let compact = CompactSummary {
        vv_digest: compact::vv_digest(vv),
        digest: n3.digest(),
        recent: vv.dots.iter().map(|(n, c)| (n.clone(), *c)).collect(),
    };
    push(
        seeds,
        target,
        "sync-request-compact",
        codec::encode_compact_summary(&compact),
    );
    push(
        seeds,
        target,
        "sync-response-compact",
        wire::encode_sync_response(
            &n1.delta_for(&n3.summary()),
            &codec::encode_summary_reply(&n1.summary_reply(vv)),
        ),
    );
    push(
        seeds,
        target,
        "sync-response-full",
        wire::encode_sync_response(
            &n1.delta_for(&Summary::default()),
            &codec::encode_summary(&n1.summary()),
        ),
    );
    for (file, piece) in [
        (
            "log-piece",
            LogPiece {
                stdout: b"listening on :80\nGET / 200\n".to_vec(),
                stderr: b"warning: no cache\n".to_vec(),
                stdout_offset: 4096 + 27,
                stderr_offset: 17 + 18,
                running: true,
                more: false,
            },
        ),
        (
            "log-piece-empty",
            LogPiece {
                stdout: Vec::new(),
                stderr: Vec::new(),
                stdout_offset: 0,
                stderr_offset: 0,
                running: false,
                more: true,
            },
        ),
    ] {
        push(seeds, target, file, wire::encode_log_piece(&piece));
    }
}
