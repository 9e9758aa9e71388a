//! Bad bodies over real mutual-TLS HTTP/3 against a real node (redb in a temp dir): malformed,
//! truncated, oversized (declared and streamed), wrong-version, stale-base and future-clock
//! bodies, and writes from a certificate that has not joined, are refused with their status
//! and leave the digest, summary and database file unchanged; wrong paths and methods are
//! refused too. A valid push, last, does change state. A body longer or shorter than its
//! Content-Length is refused (400), sent by a raw HTTP/3 client since the daemon's own client
//! always declares the true length.

mod net_support;

use std::time::Duration;

use http::StatusCode;
use net_support::{Pki, Server, apply_service, limits, node_id};
use shoal::state::{Clock, SystemClock};
use shoal::sync::{self, PeerSession, wire};
use shoal_crdt::compact::{RECENT_ORIGINS_MAX, expand_reply, vv_digest};
use shoal_crdt::{
    Capacity, CompactSummary, NTP64, NodeMeta, Replica, SummaryReply, Timestamp, codec,
};

fn service(name: &str) -> shoal::api::NamedSpec {
    shoal::cli::spec_file::parse(&format!("name = \"{name}\"\nimage = \"/images/{name}\"\n"))
        .unwrap()
        .remove(0)
}

/// A replica named like the client's certificate, so its deltas are the client's own writes.
fn client_replica() -> Replica {
    Replica::new(node_id("client"), Duration::from_secs(1))
}

/// The client's node metadata: what it pushes first, to join.
fn join(replica: &mut Replica, now: NTP64) -> shoal_crdt::Delta {
    let meta = NodeMeta {
        address: "127.0.0.1:7000".parse().unwrap(),
        capacity: Capacity {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        },
        subnet: None,
        heartbeat: Timestamp::new(now, node_id("client").hlc_id()),
        labels: Default::default(),
        incarnation: None,
        drain: None,
    };
    replica.put_node_meta(now, meta).unwrap()
}

fn put(replica: &mut Replica, now: NTP64, name: &str) -> shoal_crdt::Delta {
    let spec = service(name);
    replica.put_service(now, spec.name, spec.spec).unwrap()
}

async fn session(pki: &Pki, server: &Server) -> (quinn::Endpoint, PeerSession) {
    let tls = pki.material("client");
    let endpoint = sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
    let session = sync::connect(
        &endpoint,
        server.address,
        Some(&node_id("server")),
        &limits(),
    )
    .await
    .unwrap();
    (endpoint, session)
}

#[tokio::test]
async fn bad_bodies_are_refused_with_their_status_and_change_nothing() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "server").await;
    apply_service(&server.node, "web", "/images/web");
    let (_endpoint, mut session) = session(&pki, &server).await;
    let max = limits().body_bytes_max;

    // The client has not joined: a write of its own without its metadata is refused.
    let mut client = client_replica();
    let unjoined = codec::encode_delta(&put(&mut client_replica(), SystemClock.now(), "early"));
    let before = server.fingerprint();
    let reply = session.post(wire::PATH_PUSH, unjoined).await.unwrap();
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.message());
    assert!(
        reply.message().contains("not a member"),
        "{}",
        reply.message()
    );
    assert_eq!(server.fingerprint(), before);
    // Its metadata joins it; the other cases are pushes of a member.
    let joined = codec::encode_delta(&join(&mut client, SystemClock.now()));
    let reply = session.post(wire::PATH_PUSH, joined).await.unwrap();
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.message());
    let before = server.fingerprint();

    let valid = codec::encode_delta(&put(&mut client.clone(), SystemClock.now(), "api"));

    let mut wrong_version = valid.clone();
    wrong_version[5..7].copy_from_slice(&99u16.to_le_bytes());
    let mut summary_wrong_version = codec::encode_summary(&client_replica().summary());
    summary_wrong_version[5..7].copy_from_slice(&99u16.to_le_bytes());

    // Two changes; pushing only the second one lacks its base.
    let mut stale_replica = client.clone();
    put(&mut stale_replica, SystemClock.now(), "first");
    let stale = codec::encode_delta(&put(&mut stale_replica, SystemClock.now(), "second"));

    // Written with a clock an hour ahead: beyond the one-second drift the server allows.
    let mut future_replica = client.clone();
    let an_hour = NTP64::from(Duration::from_secs(3600));
    let future = codec::encode_delta(&put(
        &mut future_replica,
        SystemClock.now() + an_hour,
        "future",
    ));

    // Compact summaries: counters out of order, too many, and one that does not rebuild here.
    let compact = |recent: Vec<(shoal_crdt::NodeId, u64)>, vv_digest| {
        codec::encode_compact_summary(&CompactSummary {
            vv_digest,
            digest: client.digest(),
            recent,
        })
    };
    let unordered = compact(
        vec![(node_id("server"), 1), (node_id("client"), 1)],
        [0; 16],
    );
    let too_many = compact(
        (0..=RECENT_ORIGINS_MAX)
            .map(|index| (node_id(&format!("m{index:03}")), 1))
            .collect(),
        [0; 16],
    );
    let wrong_digest = compact(Vec::new(), [7; 16]);

    let cases: Vec<(&str, &str, Vec<u8>, StatusCode, &str)> = vec![
        (
            "compact summary out of order",
            wire::PATH_SYNC,
            unordered,
            StatusCode::BAD_REQUEST,
            "not in strict node order",
        ),
        (
            "compact summary listing too many counters",
            wire::PATH_SYNC,
            too_many,
            StatusCode::BAD_REQUEST,
            "more than the limit of 64",
        ),
        (
            "compact summary that does not rebuild",
            wire::PATH_SYNC,
            wrong_digest,
            StatusCode::CONFLICT,
            wire::SEND_FULL_SUMMARY,
        ),
        (
            "malformed push",
            wire::PATH_PUSH,
            b"this is not a delta".to_vec(),
            StatusCode::BAD_REQUEST,
            "magic",
        ),
        (
            "malformed sync",
            wire::PATH_SYNC,
            vec![0xff; 40],
            StatusCode::BAD_REQUEST,
            "magic",
        ),
        (
            "empty push",
            wire::PATH_PUSH,
            Vec::new(),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            "truncated push",
            wire::PATH_PUSH,
            valid[..valid.len() / 2].to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        (
            "summary as delta",
            wire::PATH_PUSH,
            codec::encode_summary(&client_replica().summary()),
            StatusCode::BAD_REQUEST,
            "kind",
        ),
        (
            "wrong version push",
            wire::PATH_PUSH,
            wrong_version,
            StatusCode::BAD_REQUEST,
            "version 99",
        ),
        (
            "wrong version sync",
            wire::PATH_SYNC,
            summary_wrong_version,
            StatusCode::BAD_REQUEST,
            "version 99",
        ),
        (
            "oversized push",
            wire::PATH_PUSH,
            vec![0u8; max + 1],
            StatusCode::PAYLOAD_TOO_LARGE,
            "exceeds the limit",
        ),
        (
            "stale base",
            wire::PATH_PUSH,
            stale,
            StatusCode::CONFLICT,
            "",
        ),
        (
            "future clock",
            wire::PATH_PUSH,
            future,
            StatusCode::UNPROCESSABLE_ENTITY,
            "",
        ),
        (
            "push asking for too many forwards",
            "/v1/push?hops=17",
            valid.clone(),
            StatusCode::BAD_REQUEST,
            "push query: hops=17 is more than the 16 allowed",
        ),
        (
            "push with another query",
            "/v1/push?ttl=3",
            valid.clone(),
            StatusCode::BAD_REQUEST,
            "expected hops=<n>",
        ),
        (
            "other protocol version",
            "/v2/push",
            valid.clone(),
            StatusCode::NOT_FOUND,
            "unsupported protocol version",
        ),
        (
            "unknown path",
            "/v1/nothing",
            valid.clone(),
            StatusCode::NOT_FOUND,
            "no such endpoint",
        ),
    ];
    for (what, path, body, status, message) in cases {
        let reply = session.post(path, body).await.unwrap();
        assert_eq!(reply.status, status, "{what}: {}", reply.message());
        assert!(
            reply.message().contains(message),
            "{what}: {:?} lacks {message:?}",
            reply.message()
        );
        assert_eq!(
            server.fingerprint(),
            before,
            "{what} changed the server's state"
        );
    }

    // A body over the limit without a Content-Length is cut off while streaming.
    let reply = session
        .post_unsized(wire::PATH_PUSH, vec![7u8; 4 * max])
        .await
        .unwrap();
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.message()
    );
    assert_eq!(
        server.fingerprint(),
        before,
        "streamed oversized body changed state"
    );

    // Positive control, on the same connection: the valid delta is applied and persisted.
    let reply = session.post(wire::PATH_PUSH, valid.clone()).await.unwrap();
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.message());
    let after = server.fingerprint();
    assert_ne!(after.0, before.0, "digest");
    assert_ne!(after.2, before.2, "database file");
    // Re-delivery is idempotent and harmless.
    let reply = session.post(wire::PATH_PUSH, valid).await.unwrap();
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(server.fingerprint().0, after.0);
    session.close();
    server.stop().await;
}

/// `POST path` with `body` and a `content-length` of `declared`, over a raw HTTP/3 connection
/// presenting the client's certificate; the status and the reason.
async fn post_declaring(
    endpoint: &quinn::Endpoint,
    server: &Server,
    path: &str,
    declared: usize,
    body: Vec<u8>,
) -> (StatusCode, String) {
    use bytes::Buf;
    let name = shoal::sync::tls::server_name_for(Some(&node_id("server")));
    let connection = endpoint
        .connect(server.address, &name)
        .unwrap()
        .await
        .unwrap();
    let (mut driver, mut send) = h3::client::new(h3_quinn::Connection::new(connection.clone()))
        .await
        .unwrap();
    let drive = tokio::spawn(async move {
        let _ = futures::future::poll_fn(|context| driver.poll_close(context)).await;
    });
    let request = http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("https://{name}{path}"))
        .header(http::header::CONTENT_TYPE, wire::CONTENT_TYPE)
        .header(http::header::CONTENT_LENGTH, declared)
        .body(())
        .unwrap();
    let mut stream = send.send_request(request).await.unwrap();
    // The server may stop reading a refused body; its answer still comes.
    let _ = stream.send_data(bytes::Bytes::from(body)).await;
    let _ = stream.finish().await;
    let response = stream.recv_response().await.unwrap();
    let mut text = Vec::new();
    while let Some(mut chunk) = stream.recv_data().await.unwrap() {
        while chunk.has_remaining() {
            let part = chunk.chunk().to_vec();
            chunk.advance(part.len());
            text.extend(part);
        }
    }
    connection.close(0u32.into(), b"done");
    drive.abort();
    (
        response.status(),
        String::from_utf8_lossy(&text).into_owned(),
    )
}

#[tokio::test]
async fn a_body_longer_or_shorter_than_its_content_length_is_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "server").await;
    apply_service(&server.node, "web", "/images/web");
    let before = server.fingerprint();
    let endpoint =
        sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &pki.material("client")).unwrap();
    // A join (the client's metadata with its own write), so the positive control is accepted.
    let mut replica = client_replica();
    let now = SystemClock.now();
    join(&mut replica, now);
    put(&mut replica, now, "api");
    let valid = codec::encode_delta(&replica.own_delta_since(0));
    let summary = codec::encode_summary(&client_replica().summary());
    let cases = [
        // A valid delta followed by bytes the length does not cover.
        (
            "longer push",
            wire::PATH_PUSH,
            valid.len(),
            [&valid[..], &[0u8; 64][..]].concat(),
            "longer than its content-length",
        ),
        (
            "shorter push",
            wire::PATH_PUSH,
            valid.len() + 64,
            valid.clone(),
            "shorter than its content-length",
        ),
        (
            "longer sync",
            wire::PATH_SYNC,
            4,
            summary.clone(),
            "longer than its content-length of 4 bytes",
        ),
        (
            "shorter sync",
            wire::PATH_SYNC,
            summary.len() + 1,
            summary.clone(),
            "shorter than its content-length",
        ),
    ];
    for (what, path, declared, body, message) in cases {
        let (status, reason) = post_declaring(&endpoint, &server, path, declared, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {reason}");
        assert!(
            reason.contains(message),
            "{what}: {reason:?} lacks {message:?}"
        );
        assert_eq!(
            server.fingerprint(),
            before,
            "{what} changed the server's state"
        );
    }
    // Positive control: the same delta with its true length is applied.
    let (status, reason) =
        post_declaring(&endpoint, &server, wire::PATH_PUSH, valid.len(), valid).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{reason}");
    assert_ne!(server.fingerprint().0, before.0);
    server.stop().await;
}

#[tokio::test]
async fn sync_returns_what_the_caller_lacks_and_the_server_summary() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "server").await;
    apply_service(&server.node, "web", "/images/web");
    apply_service(&server.node, "db", "/images/db");
    let (_endpoint, mut session) = session(&pki, &server).await;

    let replica = client_replica();
    let reply = session
        .post(wire::PATH_SYNC, codec::encode_summary(&replica.summary()))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.message());
    let (delta, theirs) = wire::decode_sync_response(&reply.body, limits().body_bytes_max).unwrap();
    assert_eq!(theirs, server.node.summary());
    let mut replica = replica;
    replica
        .apply_delta(SystemClock.now(), &node_id("server"), &delta)
        .unwrap();
    assert_eq!(replica.digest(), server.node.digest());

    // Caught up: the next delta is empty.
    let reply = session
        .post(wire::PATH_SYNC, codec::encode_summary(&replica.summary()))
        .await
        .unwrap();
    let (delta, _) = wire::decode_sync_response(&reply.body, limits().body_bytes_max).unwrap();
    assert!(delta.is_empty(), "{delta:?}");
    session.close();
    server.stop().await;
}

#[tokio::test]
async fn a_compact_summary_is_answered_with_what_the_caller_lacks_and_the_difference() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&pki, dir.path(), "server").await;
    apply_service(&server.node, "web", "/images/web");
    let (_endpoint, mut session) = session(&pki, &server).await;

    // The client holds what the server held, then the server writes once more.
    let mut replica = client_replica();
    let delta = server
        .node
        .delta_for(&node_id("client"), &replica.summary());
    replica
        .apply_delta(SystemClock.now(), &node_id("server"), &delta)
        .unwrap();
    apply_service(&server.node, "db", "/images/db");

    // A compact summary that lists every counter rebuilds on any receiver.
    let sent = replica.version_vector().clone();
    let compact = CompactSummary {
        vv_digest: vv_digest(&sent),
        digest: replica.digest(),
        recent: sent.dots.iter().map(|(n, c)| (n.clone(), *c)).collect(),
    };
    let reply = session
        .post(wire::PATH_SYNC, codec::encode_compact_summary(&compact))
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.message());
    let (delta, answer) =
        wire::decode_compact_sync_response(&reply.body, limits().body_bytes_max).unwrap();
    match &answer {
        SummaryReply::Diff { counters, .. } => {
            assert_eq!(
                counters,
                &[(
                    node_id("server"),
                    server.node.summary().vv.get(&node_id("server"))
                )]
            );
        }
        full => panic!("expected the difference, got {full:?}"),
    }
    assert_eq!(expand_reply(&sent, answer), Some(server.node.summary()));
    replica
        .apply_delta(SystemClock.now(), &node_id("server"), &delta)
        .unwrap();
    assert_eq!(replica.digest(), server.node.digest());
    session.close();
    server.stop().await;
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let mut tight = limits();
    tight.connections_max = 1;
    let server = Server::start_with(&pki.material("server"), dir.path(), "server", tight).await;
    let (_first_endpoint, mut first) = session(&pki, &server).await;
    let tls = pki.material("client-2");
    let second = sync::bind_endpoint("127.0.0.1:0".parse().unwrap(), &tls).unwrap();
    let error = sync::connect(&second, server.address, None, &limits()).await;
    assert!(
        error.is_err(),
        "a second connection was accepted over connections_max = 1"
    );
    // The first connection still works.
    let reply = first
        .post(
            wire::PATH_SYNC,
            codec::encode_summary(&client_replica().summary()),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    first.close();
    server.stop().await;
}
