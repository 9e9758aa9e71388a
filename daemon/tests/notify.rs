//! systemd notification protocol against a real Unix datagram NOTIFY_SOCKET: READY=1 only
//! once the API answers, then STATUS= and WATCHDOG=1 (WATCHDOG_USEC set), and after SIGTERM
//! STOPPING=1, in that order, with exit status 0.

mod host_support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use host_support::Cluster;
use shoal::api::{Client, Request, StatusView};

/// Receives datagrams until `done` says so, or panics after `timeout_ms`.
fn receive_until(
    socket: &UnixDatagram,
    messages: &mut Vec<String>,
    timeout_ms: u64,
    mut done: impl FnMut(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_millis(timeout_ms);
    let mut buffer = vec![0u8; 4096];
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out; notifications so far: {messages:?}"
        );
        let Ok(length) = socket.recv(&mut buffer) else {
            continue;
        };
        let message = String::from_utf8(buffer[..length].to_vec()).unwrap();
        messages.push(message.clone());
        if done(&message) {
            return message;
        }
    }
}

#[test]
fn ready_status_watchdog_and_stopping_arrive_in_order() {
    let mut cluster = Cluster::new(1, "");
    let notify_path = cluster.root.path().join("notify.sock");
    let socket = UnixDatagram::bind(&notify_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let daemon = &mut cluster.nodes[0];
    daemon.extra_env = vec![
        ("NOTIFY_SOCKET".into(), notify_path.display().to_string()),
        ("WATCHDOG_USEC".into(), "400000".into()),
    ];
    daemon.start();
    let mut messages = Vec::new();
    receive_until(&socket, &mut messages, 30_000, |m| {
        m.lines().any(|l| l == "READY=1")
    });
    // READY=1 promises a node that answers: the API must answer right now, no retry.
    let mut client = Client::connect(&daemon.socket, Duration::from_secs(5))
        .expect("the api socket is bound before READY=1");
    let status: StatusView = client.call(Request::Status).unwrap();
    assert_eq!(status.node.as_str(), "node-a");
    let ready_index = messages.len() - 1;

    receive_until(&socket, &mut messages, 10_000, |m| m.starts_with("STATUS="));
    receive_until(&socket, &mut messages, 10_000, |m| {
        m.lines().any(|l| l == "WATCHDOG=1")
    });
    // At 400 ms the watchdog wants a ping every 200 ms: several arrive within a second.
    let watchdog_start = messages.len();
    std::thread::sleep(Duration::from_millis(1000));
    let mut buffer = vec![0u8; 4096];
    while let Ok(length) = socket.recv(&mut buffer) {
        messages.push(String::from_utf8(buffer[..length].to_vec()).unwrap());
        if messages.len() > watchdog_start + 50 {
            break;
        }
    }
    let pings = messages[watchdog_start..]
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count();
    assert!(
        pings >= 3,
        "only {pings} watchdog pings in 1 s: {messages:?}"
    );

    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    receive_until(&socket, &mut messages, 10_000, |m| {
        m.lines().any(|l| l == "STOPPING=1")
    });
    let mut child = daemon.child.take().unwrap();
    let status = host_support::wait_for("daemon exit", 20_000, || child.try_wait().unwrap());
    assert!(status.success(), "exit {status}:\n{}", daemon.log());

    // Order: nothing but READY-related lines before READY; STOPPING after every ping.
    let position = |needle: &str| {
        messages
            .iter()
            .position(|m| m.lines().any(|l| l.starts_with(needle)))
    };
    let stopping = position("STOPPING=1").unwrap();
    let first_status = position("STATUS=").unwrap();
    let first_watchdog = position("WATCHDOG=1").unwrap();
    let last_watchdog = messages
        .iter()
        .rposition(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .unwrap();
    assert_eq!(position("READY=1"), Some(ready_index));
    assert!(ready_index < first_status, "{messages:?}");
    assert!(ready_index < first_watchdog, "{messages:?}");
    assert!(last_watchdog < stopping, "{messages:?}");
    // The api socket is gone after a clean stop.
    assert!(!daemon.socket.exists());
}
