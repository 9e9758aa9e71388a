//! Mutual TLS refusals over real HTTP/3 on loopback: a client with no certificate, with one
//! from a foreign CA, or with an expired one gets no data and changes nothing (the server's
//! digest, summary and redb file are byte-for-byte the same), and the refusal is logged with
//! its reason. A server outside the cluster CA, or not the node the caller expects, is refused
//! by the client. A legitimate peer, through the same server, does change the state: the
//! positive control that shows the checks can fail.

mod net_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use net_support::{Pki, Server, apply_service, limits, node_id, open_node, raw_client};
use shoal::sync::pki::Validity;
use shoal::sync::{self, SyncError, wire};
use shoal_crdt::codec;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn take(&self) -> String {
        String::from_utf8(std::mem::take(&mut *self.0.lock().unwrap())).unwrap()
    }
}

/// An encoded delta adding a service, written by a replica named `origin`.
fn intruding_delta(origin: &str) -> Vec<u8> {
    let mut replica = shoal_crdt::Replica::new(node_id(origin), Duration::from_secs(1));
    let spec = shoal::cli::spec_file::parse("name = \"evil\"\nimage = \"/evil\"\n")
        .unwrap()
        .remove(0);
    let delta = replica
        .put_service(
            shoal::state::Clock::now(&shoal::state::SystemClock),
            spec.name,
            spec.spec,
        )
        .unwrap();
    codec::encode_delta(&delta)
}

/// Dials the server with `client` and tries to push a delta and pull the state. Returns the
/// error; panics if any request got an answer.
async fn attempt(client: &quinn::Endpoint, server: &Server, origin: &str) -> SyncError {
    let mut session = match sync::connect(client, server.address, None, &limits()).await {
        Ok(session) => session,
        Err(error) => return error,
    };
    let pushed = session.post(wire::PATH_PUSH, intruding_delta(origin)).await;
    let pulled = session
        .post(
            wire::PATH_SYNC,
            codec::encode_summary(
                &shoal_crdt::Replica::new(node_id(origin), Duration::from_secs(1)).summary(),
            ),
        )
        .await;
    match (pushed, pulled) {
        (Err(error), Err(_)) => error,
        (pushed, pulled) => panic!("a refused client got an answer: {pushed:?} {pulled:?}"),
    }
}

#[tokio::test]
async fn clients_without_a_valid_certificate_get_nothing_and_change_nothing() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "server").await;
    apply_service(&server.node, "web", "/images/web");
    let before = server.fingerprint();

    // No certificate at all.
    let anonymous = raw_client(&pki.ca_cert(), None);
    let error = attempt(&anonymous, &server, "anonymous").await;
    assert_eq!(
        server.fingerprint(),
        before,
        "no-certificate client changed state ({error})"
    );
    let log = capture.take();
    assert!(log.contains("refused connection"), "{log}");
    assert!(log.contains("no certificates"), "{log}");

    // A certificate from another CA, with a node id that looks legitimate.
    let foreign = Pki::new();
    let foreign_paths = foreign.issue("node-b");
    let client = raw_client(&pki.ca_cert(), Some(&foreign_paths));
    let error = attempt(&client, &server, "node-b").await;
    assert_eq!(
        server.fingerprint(),
        before,
        "foreign-ca client changed state ({error})"
    );
    let log = capture.take();
    assert!(log.contains("refused client certificate"), "{log}");
    assert!(log.contains("UnknownIssuer"), "{log}");

    // A certificate from the right CA that expired an hour ago.
    let now = SystemTime::now();
    let expired = pki.issue_with(
        "node-c",
        Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        },
    );
    let client = raw_client(&pki.ca_cert(), Some(&expired));
    let error = attempt(&client, &server, "node-c").await;
    assert_eq!(
        server.fingerprint(),
        before,
        "expired client changed state ({error})"
    );
    let log = capture.take();
    assert!(log.contains("refused client certificate"), "{log}");
    assert!(log.to_lowercase().contains("expired"), "{log}");

    // Positive control: a valid peer through the same server pulls the state and pushes its
    // own change, and the server's database changes.
    let good_tls = pki.material("node-d");
    let good_endpoint = sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &good_tls).unwrap();
    let good = open_node(dir.path(), "node-d", good_endpoint.local_addr().unwrap());
    // As a daemon does at startup: its metadata first, so its push joins it.
    good.heartbeat().unwrap();
    apply_service(&good, "api", "/images/api");
    let stats = sync::sync_once(
        &good_endpoint,
        &good,
        server.address,
        Some(&node_id("server")),
        &limits(),
    )
    .await
    .unwrap();
    assert_eq!(stats.peer, node_id("server"));
    assert!(
        stats.entries_received > 0 && stats.entries_sent > 0,
        "{stats:?}"
    );
    assert_ne!(server.fingerprint(), before);
    assert_eq!(
        server.node.digest(),
        good.digest(),
        "one push-pull converges two nodes"
    );
    good_endpoint.close(0u32.into(), b"");
    server.stop().await;
}

#[tokio::test]
async fn clients_refuse_servers_outside_the_cluster_or_not_the_expected_node() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let tls = pki.material("node-a");
    let endpoint = sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
    let node = open_node(dir.path(), "node-a", endpoint.local_addr().unwrap());
    let before = node.digest();

    // An impostor with a certificate from another CA, holding state we must not take.
    let foreign = Pki::new();
    let impostor_dir = tempfile::tempdir().unwrap();
    let impostor = Server::start(&foreign, impostor_dir.path(), "server").await;
    apply_service(&impostor.node, "evil", "/evil");
    let error = sync::sync_once(&endpoint, &node, impostor.address, None, &limits())
        .await
        .unwrap_err();
    assert!(matches!(error, SyncError::Connect { .. }), "{error}");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");
    assert_eq!(node.digest(), before);
    let impostor_before = impostor.fingerprint();

    // A cluster member that is not the node we meant to dial.
    let other = Server::start(&pki, dir.path(), "node-b").await;
    apply_service(&other.node, "web", "/images/web");
    let error = sync::sync_once(
        &endpoint,
        &node,
        other.address,
        Some(&node_id("node-c")),
        &limits(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, SyncError::Connect { .. }), "{error}");
    assert_eq!(node.digest(), before);

    // The same member, expected correctly: the sync goes through.
    sync::sync_once(
        &endpoint,
        &node,
        other.address,
        Some(&node_id("node-b")),
        &limits(),
    )
    .await
    .unwrap();
    assert_eq!(node.digest(), other.node.digest());
    assert_eq!(impostor.fingerprint(), impostor_before);
    endpoint.close(0u32.into(), b"");
    other.stop().await;
    impostor.stop().await;
}
