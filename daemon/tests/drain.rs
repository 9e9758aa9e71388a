//! Drain, undrain and evict from any node (issue 12), with three real daemons' sync tasks and
//! local APIs over real mutual-TLS HTTP/3 on loopback, real redb databases, and the real
//! `shoal` binary as the operator's CLI (containers disabled): `shoal node drain n2` on n1 is
//! written by n2 itself and shows on n1, n2 and n3; `undrain` from n3 clears it everywhere; an
//! unknown node is refused and nothing is drained; a live node and the node itself cannot be
//! evicted; `drain --wait` of a node that runs nothing returns at once; once n3 is stopped and
//! down, a drain of it says how to evict it, and `shoal node evict n3` on n1 removes it from
//! `shoal nodes` on n1 and n2. Every wait is polled against a deadline.

mod net_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use net_support::{Daemon, DaemonSpec, Pki, call, node_id};
use shoal::api::{NodeView, Request};
use shoal::sync::TlsMaterial;

const BINARY: &str = env!("CARGO_BIN_EXE_shoal");
const DEADLINE: Duration = Duration::from_secs(30);
const HEARTBEAT_MS: u64 = 200;
/// Short, so a stopped daemon counts as down soon.
const DOWN_AFTER_MS: u64 = 1_500;

/// A daemon named `name` with this test's heartbeat and down time.
fn start(tls: &TlsMaterial, dir: &Path, name: &str, seeds: Vec<SocketAddr>) -> Daemon {
    let spec = DaemonSpec {
        name,
        label: name,
        seeds,
        incarnation: None,
        down_after_ms: Some(DOWN_AFTER_MS),
        heartbeat_ms: HEARTBEAT_MS,
        rng_seed: u64::from(name.as_bytes()[1]),
    };
    Daemon::start(tls, dir, spec)
}

async fn nodes(daemon: &Daemon) -> Vec<NodeView> {
    call(&daemon.socket, Request::Nodes).await.unwrap()
}

/// Polls `check` until it holds, failing after `DEADLINE`.
async fn wait_until<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(
            started.elapsed() < DEADLINE,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the `shoal` binary against a daemon's socket.
async fn shoal(socket: &Path, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(BINARY);
    command.arg("--socket").arg(socket).args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `shoal ...` that must succeed; its stdout.
async fn shoal_ok(socket: &Path, args: &[&str]) -> String {
    let output = shoal(socket, args).await;
    let (stdout, stderr) = text(&output);
    assert!(
        output.status.success(),
        "shoal {args:?} failed: {stdout}{stderr}"
    );
    stdout
}

/// `shoal ...` that must fail; its stderr.
async fn shoal_fails(socket: &Path, args: &[&str]) -> String {
    let output = shoal(socket, args).await;
    let (stdout, stderr) = text(&output);
    assert!(
        !output.status.success(),
        "shoal {args:?} succeeded: {stdout}"
    );
    stderr
}

fn view<'a>(views: &'a [NodeView], name: &str) -> Option<&'a NodeView> {
    views.iter().find(|view| view.id == node_id(name))
}

/// Whether every daemon's `shoal nodes` shows `name` drained (`true`) or not (`false`).
async fn all_see_drained(daemons: &[&Daemon], name: &str, drained: bool) -> bool {
    for daemon in daemons {
        let views = nodes(daemon).await;
        match view(&views, name) {
            Some(view) if view.drain.is_some() == drained => {}
            _ => return false,
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_undrain_and_evict_work_from_any_node_and_refuse_what_they_cannot_do() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let n1 = start(&pki.material("n1"), dir.path(), "n1", Vec::new());
    let n2 = start(&pki.material("n2"), dir.path(), "n2", vec![n1.address]);
    let n3 = start(
        &pki.material("n3"),
        dir.path(),
        "n3",
        vec![n1.address, n2.address],
    );
    wait_until("n1, n2 and n3 know each other, all live", || async {
        for daemon in [&n1, &n2, &n3] {
            let views = nodes(daemon).await;
            if views.len() != 3 || !views.iter().all(|view| view.live) {
                return false;
            }
        }
        true
    })
    .await;

    // Drained from n1: written by n2 itself, seen by all three.
    let stdout = shoal_ok(
        &n1.socket,
        &["node", "drain", "n2", "--deadline-ms", "60000"],
    )
    .await;
    assert!(
        stdout.contains("drained n2 (deadline 60000 ms), written by the node itself"),
        "{stdout}"
    );
    assert!(n2.node.own_drain().is_some(), "n2 did not write its drain");
    let everyone = [&n1, &n2, &n3];
    wait_until("n1, n2 and n3 show n2 drained", || {
        all_see_drained(&everyone, "n2", true)
    })
    .await;
    let table = shoal_ok(&n1.socket, &["nodes"]).await;
    let line = table
        .lines()
        .find(|line| line.starts_with("n2"))
        .unwrap_or_default();
    assert!(line.contains("DRAINED ("), "{table}");
    let json = shoal_ok(&n3.socket, &["--json", "nodes"]).await;
    let views: Vec<NodeView> = serde_json::from_str(&json).unwrap();
    let drain = view(&views, "n2").and_then(|view| view.drain).unwrap();
    assert_eq!(drain.deadline_ms, 60_000);

    // Undrained from n3.
    let stdout = shoal_ok(&n3.socket, &["node", "undrain", "n2"]).await;
    assert!(stdout.contains("undrained n2"), "{stdout}");
    wait_until("n1, n2 and n3 show n2 undrained", || {
        all_see_drained(&everyone, "n2", false)
    })
    .await;

    // An unknown node is refused, named, and nothing is drained.
    let stderr = shoal_fails(&n1.socket, &["node", "drain", "zz"]).await;
    assert!(
        stderr.contains("node zz is not a member of this cluster"),
        "{stderr}"
    );
    // A deadline out of bounds is refused before anything is asked.
    let stderr = shoal_fails(&n1.socket, &["node", "drain", "n2", "--deadline-ms", "10"]).await;
    assert!(stderr.contains("drain deadline of 10 ms"), "{stderr}");
    for daemon in [&n1, &n2, &n3] {
        let views = nodes(daemon).await;
        assert!(
            views.iter().all(|view| view.drain.is_none()),
            "a refused drain drained something: {views:?}"
        );
        assert!(view(&views, "zz").is_none());
    }

    // A live node and the node itself cannot be evicted.
    let stderr = shoal_fails(&n1.socket, &["node", "evict", "n2"]).await;
    assert!(stderr.contains("node n2 is live"), "{stderr}");
    let stderr = shoal_fails(&n1.socket, &["node", "evict", "n1"]).await;
    assert!(stderr.contains("cannot evict itself"), "{stderr}");
    assert_eq!(nodes(&n1).await.len(), 3);

    // --wait on a node that runs nothing returns once the drain is seen here.
    let stdout = shoal_ok(
        &n2.socket,
        &["node", "drain", "n1", "--deadline-ms", "5000", "--wait"],
    )
    .await;
    assert!(
        stdout.contains("node n1 is drained: no container runs on it"),
        "{stdout}"
    );
    shoal_ok(&n1.socket, &["node", "undrain", "n1"]).await;
    let survivors = [&n1, &n2];
    wait_until("n1 undrained everywhere", || {
        all_see_drained(&survivors, "n1", false)
    })
    .await;

    // n3 stops; once it is down, a drain of it says how to evict it, and the eviction from
    // n1 removes it from n1's and n2's member lists.
    n3.stop().await;
    wait_until("n1 and n2 see n3 down", || async {
        for daemon in [&n1, &n2] {
            let views = nodes(daemon).await;
            if view(&views, "n3").is_none_or(|view| view.live) {
                return false;
            }
        }
        true
    })
    .await;
    let stderr = shoal_fails(&n1.socket, &["node", "drain", "n3"]).await;
    assert!(
        stderr.contains("node n3 did not answer")
            && stderr.contains("can be evicted with `shoal node evict n3`"),
        "{stderr}"
    );
    let stdout = shoal_ok(&n1.socket, &["node", "evict", "n3"]).await;
    assert!(stdout.contains("evicted n3"), "{stdout}");
    wait_until("n3 is gone from shoal nodes on n1 and n2", || async {
        for daemon in [&n1, &n2] {
            if view(&nodes(daemon).await, "n3").is_some() {
                return false;
            }
        }
        true
    })
    .await;
    let table = shoal_ok(&n2.socket, &["nodes"]).await;
    assert!(!table.contains("n3"), "{table}");

    n1.stop().await;
    n2.stop().await;
}
