//! Certificate expiry over real HTTP/3 on loopback, with certificates that live a few seconds:
//! a client that saved a TLS session while its certificate was valid cannot resume it after
//! the certificate expired (it gets a full handshake, and "certificate expired"); a connection
//! opened before the expiry is closed by the server when the client's certificate expires; and
//! the dialing side stops using a connection once the server's certificate expired. The first
//! request of each test, made while the certificate is valid, is the positive control.

mod net_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::StatusCode;
use net_support::{Pki, Server, limits, node_id, raw_client};
use shoal::sync::pki::{NodePaths, Validity};
use shoal::sync::{self, SyncError, TlsMaterial, wire};
use shoal_crdt::{Replica, codec};

/// How long a short-lived test certificate is valid after it is issued: long enough for a
/// handshake and one request on a loaded machine, short enough for a test.
const SHORT_LIFETIME_MS: u64 = 4_000;
/// Certificate times have one-second resolution and "expired" means strictly after notAfter.
const EXPIRY_MARGIN_MS: u64 = 1_200;

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
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A node certificate for `name` valid from five minutes ago until a few seconds from now.
fn short_lived(pki: &Pki, name: &str) -> (NodePaths, SystemTime) {
    let now = SystemTime::now();
    let not_after = now + Duration::from_millis(SHORT_LIFETIME_MS);
    let paths = pki.issue_with(
        name,
        Validity {
            not_before: now - Duration::from_secs(300),
            not_after,
        },
    );
    (paths, not_after)
}

/// Waits (polling the wall clock, which is what certificate checks read) until a certificate
/// with this notAfter is expired for every verifier.
async fn wait_until_expired(not_after: SystemTime) {
    let expired_at = not_after + Duration::from_millis(EXPIRY_MARGIN_MS);
    while SystemTime::now() < expired_at {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn summary_body(name: &str) -> Vec<u8> {
    codec::encode_summary(&Replica::new(node_id(name), Duration::from_secs(1)).summary())
}

fn logging() -> (Capture, tracing::subscriber::DefaultGuard) {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .finish();
    (capture, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_saved_session_does_not_outlive_the_client_certificate() {
    let (capture, _guard) = logging();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "server").await;
    let (paths, not_after) = short_lived(&pki, "node-r");
    // rustls' defaults: this client keeps the session tickets a server gives it and offers
    // them on its next connection to the same name, as an old or foreign peer would.
    let client = raw_client(&pki.ca_cert(), Some(&paths));

    let mut session = sync::connect(&client, server.address, Some(&node_id("server")), &limits())
        .await
        .unwrap();
    let reply = session
        .post(wire::PATH_SYNC, summary_body("node-r"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.message());
    session.close();

    wait_until_expired(not_after).await;
    let before = server.fingerprint();
    let outcome = async {
        let mut session =
            sync::connect(&client, server.address, Some(&node_id("server")), &limits()).await?;
        session.post(wire::PATH_SYNC, summary_body("node-r")).await
    }
    .await;
    assert!(
        outcome.is_err(),
        "a client whose certificate expired got an answer: {outcome:?}"
    );
    assert_eq!(server.fingerprint(), before);
    let log = capture.text();
    assert!(log.contains("refused client certificate"), "{log}");
    assert!(log.to_lowercase().contains("expired"), "{log}");
    server.stop().await;
}

#[tokio::test]
async fn the_server_closes_a_connection_when_the_client_certificate_expires() {
    let (capture, _guard) = logging();
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "server").await;
    let (paths, not_after) = short_lived(&pki, "node-e");
    let client = raw_client(&pki.ca_cert(), Some(&paths));

    let mut session = sync::connect(&client, server.address, Some(&node_id("server")), &limits())
        .await
        .unwrap();
    let reply = session
        .post(wire::PATH_SYNC, summary_body("node-e"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.message());

    // The connection stays within its idle timeout (10 s) the whole time: only the expiry can
    // end it.
    wait_until_expired(not_after).await;
    let outcome = session.post(wire::PATH_SYNC, summary_body("node-e")).await;
    assert!(
        outcome.is_err(),
        "a connection outlived its client certificate: {outcome:?}"
    );
    let log = capture.text();
    assert!(log.contains("peer certificate expired"), "{log}");
    server.stop().await;
}

#[tokio::test]
async fn the_client_stops_using_a_connection_when_the_server_certificate_expires() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (paths, not_after) = short_lived(&pki, "server");
    let server_tls = TlsMaterial::load(&pki.ca_cert(), &paths.cert, &paths.key).unwrap();
    let server = Server::start_with(&server_tls, dir.path(), "server", limits()).await;
    let client =
        sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material("client")).unwrap();

    let mut session = sync::connect(&client, server.address, Some(&node_id("server")), &limits())
        .await
        .unwrap();
    let reply = session
        .post(wire::PATH_SYNC, summary_body("client"))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.message());

    wait_until_expired(not_after).await;
    let error = session
        .post(wire::PATH_SYNC, summary_body("client"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("expired"), "{error}");

    // A new connection is refused in the handshake, as before.
    let error = sync::connect(&client, server.address, Some(&node_id("server")), &limits())
        .await
        .err()
        .expect("a server with an expired certificate was accepted");
    assert!(matches!(error, SyncError::Connect { .. }), "{error}");
    client.close(0u32.into(), b"");
    server.stop().await;
}
