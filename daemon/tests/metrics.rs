//! The metrics endpoint of a real daemon: node-a with `[metrics] listen` on 127.0.0.1 and
//! node-b without, syncing over real HTTP/3. Scraped over real TCP, node-a reports both
//! members live, its anti-entropy exchanges, the bytes they moved, its durable commits and
//! their latency, its reconcile passes, and after a service is applied on it, its eager
//! push to node-b. Any other path is 404, and the endpoint closes with the daemon.

mod host_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use host_support::{Cluster, wait_for};
use shoal::metrics::sample;

const TIMEOUT_MS: u64 = 30_000;

/// A TCP port free on 127.0.0.1 right now.
fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One plain HTTP/1.1 GET of `path`: the status code and the body, or `None` when nothing
/// answers yet.
fn get(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    assert!(
        status != 200
            || head
                .to_ascii_lowercase()
                .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    Some((status, body.to_string()))
}

/// A series and what its value must satisfy.
type Check<'a> = (&'a str, fn(f64) -> bool);

/// Scrapes until every check holds, and returns the last scrape.
fn scrape_until(address: SocketAddr, what: &str, checks: &[Check]) -> String {
    let mut last = String::new();
    let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for(what, TIMEOUT_MS, || {
            let (status, body) = get(address, "/metrics")?;
            assert_eq!(status, 200, "{body}");
            last = body.clone();
            checks
                .iter()
                .all(|(series, check)| sample(&body, series).is_some_and(check))
                .then_some(body)
        })
    }));
    found.unwrap_or_else(|_| panic!("{what}: last scrape:\n{last}"))
}

#[test]
fn a_daemon_serves_its_metrics_and_nothing_else() {
    let mut cluster = Cluster::new(2, "");
    let metrics_address = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let config = &cluster.nodes[0].config;
    let mut text = std::fs::read_to_string(config).unwrap();
    text.push_str(&format!("\n[metrics]\nlisten = \"{metrics_address}\"\n"));
    std::fs::write(config, text).unwrap();
    cluster.start_all();

    let body = scrape_until(
        metrics_address,
        "node-a's metrics to show node-b live and synced",
        &[
            ("shoal_members{state=\"live\"}", |v| v == 2.0),
            ("shoal_members{state=\"down\"}", |v| v == 0.0),
            ("shoal_sync_exchanges_total{outcome=\"ok\"}", |v| v > 0.0),
            ("shoal_sync_sent_bytes_total", |v| v > 0.0),
            ("shoal_sync_received_bytes_total", |v| v > 0.0),
            ("shoal_state_commits_total", |v| v > 0.0),
            ("shoal_state_commit_duration_seconds_count", |v| v > 0.0),
            ("shoal_reconcile_passes_total", |v| v > 0.0),
            ("shoal_sync_connections_total{how=\"dialed\"}", |v| v > 0.0),
            ("shoal_sync_connections_total{how=\"reused\"}", |v| v > 0.0),
        ],
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let commits_before = sample(&body, "shoal_state_commits_total").unwrap();

    cluster.nodes[0].apply("web", "/images/web.tar");
    let body = scrape_until(
        metrics_address,
        "node-a's metrics to count the eager push of the applied service",
        &[("shoal_eager_pushes_total{outcome=\"ok\"}", |v| v > 0.0)],
    );
    assert!(sample(&body, "shoal_state_commits_total").unwrap() > commits_before);

    for path in ["/", "/metrics/", "/other"] {
        let (status, _) = get(metrics_address, path).expect("the endpoint answers");
        assert_eq!(status, 404, "GET {path}");
    }

    for node in &mut cluster.nodes {
        assert!(node.stop().success(), "{}:\n{}", node.name, node.log());
    }
    // Stopped with the daemon.
    assert!(get(metrics_address, "/metrics").is_none());
}
