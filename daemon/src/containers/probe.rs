//! The I/O half of health checks: one probe of one container, bounded by the check's
//! `timeout_ms`. TCP: a connection. HTTP: a connection, `GET <path> HTTP/1.1` with `Host`
//! and `Connection: close`, and a status line (parsed with `httparse`) that says 2xx or
//! 3xx. Command: run inside the container by the runtime (`Runtime::exec`, on a blocking
//! thread), healthy when it exits 0. `containers::health` decides when.
//!
//! Where: a container with an address on the node bridge is reached at that address from
//! the node. A container without one (the node has no container subnet) has a network
//! namespace of its own with only loopback, so the probe's socket is made inside that
//! namespace (a short-lived thread enters `/proc/<pid>/ns/net`, connects to 127.0.0.1
//! and hands the connected socket back; a socket stays in the namespace it was made in,
//! and the thread's namespace ends with the thread).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use shoal_crdt::HealthProbe;
use shoal_oci::{ExecOutcome, ExitStatus, Runtime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::health::HealthTarget;

/// The most of an HTTP response read before its status line must have come.
pub const PROBE_RESPONSE_BYTES_MAX: usize = 8 * 1024;

/// Why a probe failed. The messages are the `reason` of an unhealthy status, so they hold
/// nothing that changes from one probe to the next (no timings beyond the configured
/// timeout), and a status is not rewritten for every failed probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeFailure {
    #[error("no answer from {addr} within {timeout_ms} ms")]
    Timeout { addr: SocketAddr, timeout_ms: u64 },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} answered HTTP status {code}")]
    Status { addr: SocketAddr, code: u16 },
    #[error("{addr} did not answer with an HTTP status line: {why}")]
    NotHttp { addr: SocketAddr, why: String },
    #[error("{program} exited with code {code}")]
    Exited { program: String, code: i32 },
    #[error("{program} was killed by signal {signal}")]
    Signaled { program: String, signal: i32 },
    #[error("{program} did not end within {timeout_ms} ms")]
    CommandTimeout { program: String, timeout_ms: u64 },
    #[error("cannot run {program} in the container: {message}")]
    Exec { program: String, message: String },
    #[error("a command check is run by the runtime, not reached over the network")]
    NotNetwork,
}

/// How a probe reaches its container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// At this address, from the node.
    Address(IpAddr),
    /// At 127.0.0.1 inside the network namespace of this process (the container's init).
    Namespace { pid: i32 },
}

/// How a target's probes reach it; `None` when it has neither an address nor a process.
pub fn route(target: &HealthTarget) -> Option<Route> {
    match (target.ip, target.pid) {
        (Some(ip), _) => Some(Route::Address(IpAddr::V4(ip))),
        (None, Some(pid)) => Some(Route::Namespace { pid }),
        (None, None) => None,
    }
}

/// Probes `target` once; a command check runs through `runtime`.
pub async fn probe(target: &HealthTarget, runtime: &Arc<dyn Runtime>) -> Result<(), ProbeFailure> {
    if let HealthProbe::Cmd { argv } = &target.probe {
        return command(runtime, &target.id, argv, target.check.timeout_ms).await;
    }
    let route = route(target).unwrap_or(Route::Address(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    probe_at(route, &target.probe, target.check.timeout_ms).await
}

/// Runs `argv` in container `id` and waits for it, within `timeout_ms` (the runtime kills
/// it then). The failure names the program only: its reason stays the same from one
/// failed probe to the next.
pub async fn command(
    runtime: &Arc<dyn Runtime>,
    id: &str,
    argv: &[String],
    timeout_ms: u64,
) -> Result<(), ProbeFailure> {
    let program = argv.first().cloned().unwrap_or_default();
    let (runtime, id, args) = (Arc::clone(runtime), id.to_owned(), argv.to_vec());
    let ran = tokio::task::spawn_blocking(move || runtime.exec(&id, &args, timeout_ms)).await;
    match ran {
        Ok(Ok(ExecOutcome::Exited(ExitStatus::Code(0)))) => Ok(()),
        Ok(Ok(ExecOutcome::Exited(ExitStatus::Code(code)))) => {
            Err(ProbeFailure::Exited { program, code })
        }
        Ok(Ok(ExecOutcome::Exited(ExitStatus::Signal(signal)))) => {
            Err(ProbeFailure::Signaled { program, signal })
        }
        Ok(Ok(ExecOutcome::Exited(ExitStatus::Unknown))) => Err(ProbeFailure::Exec {
            program,
            message: "its exit status could not be collected".to_owned(),
        }),
        Ok(Ok(ExecOutcome::TimedOut)) => Err(ProbeFailure::CommandTimeout {
            program,
            timeout_ms,
        }),
        Ok(Err(error)) => Err(ProbeFailure::Exec {
            program,
            message: error.to_string(),
        }),
        Err(joined) => Err(ProbeFailure::Exec {
            program,
            message: format!("the probe thread ended: {joined}"),
        }),
    }
}

/// Probes `probe` through `route`, all of it within `timeout_ms`.
pub async fn probe_at(
    route: Route,
    probe: &HealthProbe,
    timeout_ms: u64,
) -> Result<(), ProbeFailure> {
    let port = match probe {
        HealthProbe::Http { port, .. } | HealthProbe::Tcp { port } => *port,
        HealthProbe::Cmd { .. } => return Err(ProbeFailure::NotNetwork),
    };
    let ip = match route {
        Route::Address(ip) => ip,
        Route::Namespace { .. } => IpAddr::V4(Ipv4Addr::LOCALHOST),
    };
    let addr = SocketAddr::new(ip, port);
    let work = async {
        let mut stream = connect(route, addr, timeout_ms)
            .await
            .map_err(|source| ProbeFailure::Connect { addr, source })?;
        match probe {
            HealthProbe::Tcp { .. } => Ok(()),
            HealthProbe::Http { host, path, .. } => http_get(&mut stream, addr, host, path).await,
            HealthProbe::Cmd { .. } => Err(ProbeFailure::NotNetwork),
        }
    };
    match tokio::time::timeout(Duration::from_millis(timeout_ms), work).await {
        Ok(result) => result,
        Err(_) => Err(ProbeFailure::Timeout { addr, timeout_ms }),
    }
}

async fn connect(route: Route, addr: SocketAddr, timeout_ms: u64) -> std::io::Result<TcpStream> {
    let Route::Namespace { pid } = route else {
        return TcpStream::connect(addr).await;
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("shoal-probe".to_owned())
        .spawn(move || {
            let _ = sender.send(connect_in_namespace(pid, addr, timeout_ms));
        })?;
    let stream = receiver
        .await
        .map_err(|_| std::io::Error::other("the probe thread ended without an answer"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

/// On a thread of its own, which ends after: enters `pid`'s network namespace and
/// connects there.
fn connect_in_namespace(
    pid: i32,
    addr: SocketAddr,
    timeout_ms: u64,
) -> std::io::Result<std::net::TcpStream> {
    let path = format!("/proc/{pid}/ns/net");
    let namespace = std::fs::File::open(&path)
        .map_err(|error| std::io::Error::new(error.kind(), format!("{path}: {error}")))?;
    nix::sched::setns(&namespace, nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|errno| std::io::Error::other(format!("entering {path}: {errno}")))?;
    std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(timeout_ms.max(1)))
}

async fn http_get(
    stream: &mut TcpStream,
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(), ProbeFailure> {
    let io = |source| ProbeFailure::Io { addr, source };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: shoal-health\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        port = addr.port()
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buffer = vec![0u8; PROBE_RESPONSE_BYTES_MAX];
    let mut filled = 0;
    loop {
        let read = stream.read(&mut buffer[filled..]).await.map_err(io)?;
        filled += read;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        let parsed = response.parse(&buffer[..filled]);
        // The status line is all a probe needs: a reason phrase is only set once the
        // line ended, so a partial parse with one has the whole status line.
        let code = match parsed {
            Ok(httparse::Status::Complete(_)) => response.code,
            Ok(httparse::Status::Partial) if response.reason.is_some() => response.code,
            Ok(httparse::Status::Partial) => None,
            Err(httparse::Error::TooManyHeaders) => response.code,
            Err(error) => {
                return Err(ProbeFailure::NotHttp {
                    addr,
                    why: error.to_string(),
                });
            }
        };
        if let Some(code) = code {
            return if (200..400).contains(&code) {
                Ok(())
            } else {
                Err(ProbeFailure::Status { addr, code })
            };
        }
        if read == 0 {
            return Err(ProbeFailure::NotHttp {
                addr,
                why: "the connection closed before the status line".to_owned(),
            });
        }
        if filled == buffer.len() {
            return Err(ProbeFailure::NotHttp {
                addr,
                why: format!("no status line in the first {PROBE_RESPONSE_BYTES_MAX} bytes"),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;

    use super::*;

    /// A server on 127.0.0.1 that answers every connection with `answer` (after reading
    /// the request) or, when `answer` is `None`, holds it open silently.
    async fn server(answer: Option<&'static str>) -> (u16, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 1024];
            let read = stream.read(&mut request).await.unwrap();
            request.truncate(read);
            match answer {
                Some(answer) => stream.write_all(answer.as_bytes()).await.unwrap(),
                None => tokio::time::sleep(Duration::from_secs(5)).await,
            }
            request
        });
        (port, task)
    }

    fn http(port: u16, path: &str) -> HealthProbe {
        HealthProbe::Http {
            host: "127.0.0.1".to_owned(),
            port,
            path: path.to_owned(),
        }
    }

    const LOCAL: Route = Route::Address(IpAddr::V4(Ipv4Addr::LOCALHOST));

    #[tokio::test]
    async fn http_probe_sends_a_get_and_reads_the_status() {
        let (port, server_task) = server(Some("HTTP/1.1 204 No Content\r\n\r\n")).await;
        probe_at(LOCAL, &http(port, "/healthz?x=1"), 2000)
            .await
            .unwrap();
        let request = String::from_utf8(server_task.await.unwrap()).unwrap();
        assert!(
            request.starts_with("GET /healthz?x=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains(&format!("\r\nHost: 127.0.0.1:{port}\r\n")));
        assert!(request.contains("\r\nConnection: close\r\n"));

        // A redirect is healthy; the status line alone is enough.
        let (port, _) = server(Some("HTTP/1.1 301 Moved\r\nLocation: /x\r\n")).await;
        probe_at(LOCAL, &http(port, "/"), 2000).await.unwrap();

        let (port, _) = server(Some("HTTP/1.1 503 Service Unavailable\r\n\r\n")).await;
        let failure = probe_at(LOCAL, &http(port, "/"), 2000).await.unwrap_err();
        assert!(
            matches!(failure, ProbeFailure::Status { code: 503, .. }),
            "{failure}"
        );

        let (port, _) = server(Some("SSH-2.0-OpenSSH\r\n")).await;
        let failure = probe_at(LOCAL, &http(port, "/"), 2000).await.unwrap_err();
        assert!(matches!(failure, ProbeFailure::NotHttp { .. }), "{failure}");

        let (port, _) = server(Some("HTTP/1.1 2")).await;
        let failure = probe_at(LOCAL, &http(port, "/"), 2000).await.unwrap_err();
        assert!(
            failure
                .to_string()
                .contains("closed before the status line"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn a_silent_server_times_out_and_a_closed_port_refuses() {
        let (port, _) = server(None).await;
        let failure = probe_at(LOCAL, &http(port, "/"), 200).await.unwrap_err();
        assert!(
            matches!(
                failure,
                ProbeFailure::Timeout {
                    timeout_ms: 200,
                    ..
                }
            ),
            "{failure}"
        );
        // The TCP probe only connects, so the same silent server passes it.
        let (port, _) = server(None).await;
        probe_at(LOCAL, &HealthProbe::Tcp { port }, 200)
            .await
            .unwrap();

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let failure = probe_at(LOCAL, &HealthProbe::Tcp { port }, 1000)
            .await
            .unwrap_err();
        assert!(matches!(failure, ProbeFailure::Connect { .. }), "{failure}");
    }

    #[tokio::test]
    async fn a_command_check_passes_on_exit_zero_and_names_its_program_otherwise() {
        use crate::containers::images::{FakeImages, Images};
        use shoal_oci::{ContainerConfig, FakeRuntime, Limits, RootfsMode};
        let fake = Arc::new(FakeRuntime::new());
        let runtime: Arc<dyn Runtime> = fake.clone();
        let argv = vec!["/bin/check".to_owned(), "--deep".to_owned()];
        // Not created: the runtime's error, with the program named.
        let failure = command(&runtime, "c1", &argv, 500).await.unwrap_err();
        assert!(
            failure
                .to_string()
                .starts_with("cannot run /bin/check in the container: "),
            "{failure}"
        );
        let image = FakeImages::new("missing/")
            .prepare(&shoal_crdt::ServiceSpec::new("img"))
            .unwrap();
        fake.create(&ContainerConfig {
            id: "c1".to_owned(),
            image,
            command: None,
            env: Vec::new(),
            limits: Limits::default(),
            netns_path: None,
            rootfs_mode: RootfsMode::Auto,
            mounts: Vec::new(),
            annotations: Default::default(),
        })
        .unwrap();
        fake.start("c1").unwrap();
        command(&runtime, "c1", &argv, 500).await.unwrap();
        assert!(
            fake.calls()
                .contains(&shoal_oci::fake_runtime::FakeCall::Exec(
                    "c1".to_owned(),
                    argv.clone()
                ))
        );
        for (outcome, reason) in [
            (
                ExecOutcome::Exited(ExitStatus::Code(2)),
                "/bin/check exited with code 2",
            ),
            (
                ExecOutcome::Exited(ExitStatus::Signal(9)),
                "/bin/check was killed by signal 9",
            ),
            (
                ExecOutcome::TimedOut,
                "/bin/check did not end within 500 ms",
            ),
        ] {
            fake.set_exec_outcome("c1", outcome);
            let failure = command(&runtime, "c1", &argv, 500).await.unwrap_err();
            assert_eq!(failure.to_string(), reason);
        }
    }

    #[tokio::test]
    async fn a_namespace_route_connects_inside_that_namespace() {
        // This process's own namespace: what is reached there is the local server.
        let pid = i32::try_from(std::process::id()).unwrap();
        let (port, _) = server(Some("HTTP/1.1 200 OK\r\n\r\n")).await;
        match probe_at(Route::Namespace { pid }, &http(port, "/"), 2000).await {
            Ok(()) => {}
            // Entering a namespace needs CAP_SYS_ADMIN.
            Err(ProbeFailure::Connect { source, .. }) if source.to_string().contains("EPERM") => {}
            Err(failure) => panic!("{failure}"),
        }
        let failure = probe_at(
            Route::Namespace { pid: i32::MAX },
            &HealthProbe::Tcp { port },
            500,
        )
        .await
        .unwrap_err();
        assert!(failure.to_string().contains("/proc/"), "{failure}");
    }
}
