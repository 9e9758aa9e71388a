//! Certificate rotation on a real `shoal daemon` process: SIGHUP reloads tls.cert_file and
//! tls.key_file, and new handshakes then present the new certificate; a reload from a bad file
//! is refused with a clear log line and the daemon keeps presenting (and serving with) the
//! certificate it had. `shoal status` warns while the node's certificate expires within the
//! warning window, and stops warning once a longer-lived one is loaded. The reload is announced
//! to systemd (RELOADING=1 with MONOTONIC_USEC, then READY=1), as `Type=notify-reload` needs.

mod host_support;
mod net_support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use host_support::{BINARY, Cluster, Daemon, wait_for};
use nix::sys::signal::Signal;
use rustls::pki_types::CertificateDer;
use shoal::sync::pki::{self, NodePaths};

/// The end-entity certificate the daemon at `address` presents in a fresh full handshake
/// (a new client each time, so nothing is resumed), dialing with `identity`.
fn presented_certificate(address: SocketAddr, ca_cert: &Path, identity: &NodePaths) -> Vec<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = net_support::raw_client(ca_cert, Some(identity));
        let connection = client.connect(address, "node-a").unwrap().await.unwrap();
        let chain = connection
            .peer_identity()
            .unwrap()
            .downcast::<Vec<CertificateDer<'static>>>()
            .unwrap();
        connection.close(0u32.into(), b"");
        client.wait_idle().await;
        chain[0].to_vec()
    })
}

fn file_certificate(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn status_text(daemon: &Daemon) -> String {
    let output = Command::new(BINARY)
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("status")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn sighup_rotates_the_certificate_and_a_bad_file_keeps_the_old_one() {
    let mut cluster = Cluster::new(1, "[containers]\nenabled = false\n");
    let ca_dir = cluster.root.path().join("ca");
    let probe = pki::issue_node_cert(
        &ca_dir,
        &"probe".parse().unwrap(),
        &[],
        30,
        &cluster.root.path().join("probe"),
        false,
    )
    .unwrap();
    cluster.start_all();
    let daemon = &cluster.nodes[0];
    let cert_file = daemon.dir.join("node-a.pem");
    let key_file = daemon.dir.join("node-a.key");
    let ca_cert = ca_dir.join(pki::CA_CERT_FILE);
    let presented = || presented_certificate(daemon.address, &ca_cert, &probe);

    let first = file_certificate(&cert_file);
    assert_eq!(presented(), first);
    // The cluster kit issues certificates for one day: inside the warning window.
    let status = status_text(daemon);
    assert!(
        status.contains("warning:")
            && status.contains("certificate")
            && status.contains("expires in"),
        "{status}"
    );

    // New files in place: nothing changes until the daemon is told.
    pki::issue_node_cert(
        &ca_dir,
        &"node-a".parse().unwrap(),
        &["127.0.0.1".to_owned()],
        30,
        &daemon.dir,
        true,
    )
    .unwrap();
    let second = file_certificate(&cert_file);
    assert_ne!(first, second);
    assert_eq!(presented(), first);

    daemon.signal(Signal::SIGHUP);
    wait_for("the reloaded certificate to be presented", 10_000, || {
        (presented() == second).then_some(())
    });
    assert!(
        daemon.log().contains("tls certificates reloaded"),
        "{}",
        daemon.log()
    );
    let status = status_text(daemon);
    assert!(!status.contains("expires in"), "{status}");

    // A key that does not parse: the reload is refused, the daemon keeps the loaded pair.
    std::fs::write(&key_file, "not a key\n").unwrap();
    let failures = count(&daemon.log(), "tls certificate reload failed");
    daemon.signal(Signal::SIGHUP);
    wait_for("the refused reload to be logged", 10_000, || {
        (count(&daemon.log(), "tls certificate reload failed") > failures).then_some(())
    });
    let log = daemon.log();
    assert!(log.contains("node-a.key"), "{log}");
    assert!(log.contains("keeping the certificates in use"), "{log}");
    assert_eq!(presented(), second);

    // A certificate for another node is refused the same way, even with its own key.
    let other = pki::issue_node_cert(
        &ca_dir,
        &"node-z".parse().unwrap(),
        &[],
        30,
        &cluster.root.path().join("other"),
        false,
    )
    .unwrap();
    std::fs::copy(&other.cert, &cert_file).unwrap();
    std::fs::copy(&other.key, &key_file).unwrap();
    let failures = count(&daemon.log(), "tls certificate reload failed");
    daemon.signal(Signal::SIGHUP);
    wait_for("the refused reload to be logged", 10_000, || {
        (count(&daemon.log(), "tls certificate reload failed") > failures).then_some(())
    });
    assert!(daemon.log().contains("node-z"), "{}", daemon.log());
    assert_eq!(presented(), second);

    // The daemon is alive and still answers.
    assert!(status_text(daemon).starts_with("node:        node-a"));
    let daemon = &mut cluster.nodes[0];
    assert!(daemon.stop().success(), "{}", daemon.log());
}

/// Receives notifications until one satisfies `done`, or panics after `timeout_ms`.
fn receive_until(
    socket: &std::os::unix::net::UnixDatagram,
    timeout_ms: u64,
    mut done: impl FnMut(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    let mut buffer = vec![0u8; 4096];
    let mut seen = Vec::new();
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out; notifications so far: {seen:?}"
        );
        let Ok(length) = socket.recv(&mut buffer) else {
            continue;
        };
        let message = String::from_utf8_lossy(&buffer[..length]).into_owned();
        if done(&message) {
            return message;
        }
        seen.push(message);
    }
}

/// What `Type=notify-reload` needs of a reload: RELOADING=1 with MONOTONIC_USEC in one message
/// after the signal, then READY=1.
#[test]
fn a_reload_is_announced_to_systemd() {
    let mut cluster = Cluster::new(1, "[containers]\nenabled = false\n");
    let notify_path = cluster.root.path().join("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    socket
        .set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let daemon = &mut cluster.nodes[0];
    daemon.extra_env = vec![("NOTIFY_SOCKET".into(), notify_path.display().to_string())];
    daemon.start();
    receive_until(&socket, 30_000, |m| m.lines().any(|l| l == "READY=1"));
    daemon.signal(Signal::SIGHUP);
    let reloading = receive_until(&socket, 10_000, |m| m.lines().any(|l| l == "RELOADING=1"));
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    receive_until(&socket, 10_000, |m| m.lines().any(|l| l == "READY=1"));
    assert!(
        daemon.log().contains("tls certificates reloaded"),
        "{}",
        daemon.log()
    );
    assert!(daemon.stop().success(), "{}", daemon.log());
}
