//! TCP and HTTP probes that run inside a lab namespace: a one-shot HTTP/1.0
//! client with timeouts, a small HTTP server that records who connected, and
//! a bulk download for benches.
//!
//! A namespace is entered by a short-lived thread (`setns` changes only the
//! calling thread); a socket made there stays in that namespace wherever it is
//! used afterwards. Every connect, read and write has a timeout, and every
//! response read is bounded, so a probe never hangs a test.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

/// Largest HTTP response [`get`] keeps (a bench's bulk download is counted,
/// not kept: [`download`]).
pub const RESPONSE_BYTES_MAX: usize = 1024 * 1024;

/// Largest request head the [`HttpServer`] reads.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;

/// How long the server waits for a client's request head.
const SERVER_READ_TIMEOUT_MS: u64 = 2_000;

/// How often the server's accept loop looks at its stop flag.
const ACCEPT_POLL_MS: u64 = 10;

/// Why a probe failed. [`ProbeError::is_unanswered`] tells a port that is
/// closed or filtered from other failures.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open namespace {path}: {source}")]
    OpenNetns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot enter namespace {netns}: {source}")]
    Enter { netns: String, source: nix::Error },
    #[error("a probe thread in namespace {netns} panicked")]
    Panicked { netns: String },
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddrV4,
        source: std::io::Error,
    },
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddrV4,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddrV4,
        source: std::io::Error,
    },
    #[error("{addr} sent no HTTP status line: {head:?}")]
    NotHttp { addr: SocketAddrV4, head: String },
    #[error("{addr} answered with more than {max} bytes", max = RESPONSE_BYTES_MAX)]
    TooLarge { addr: SocketAddrV4 },
}

impl ProbeError {
    /// The connection was refused, reset or timed out: nothing listens there,
    /// or a firewall drops the traffic.
    pub fn is_unanswered(&self) -> bool {
        use std::io::ErrorKind::*;
        match self {
            ProbeError::Connect { source, .. } => matches!(
                source.kind(),
                ConnectionRefused | TimedOut | WouldBlock | HostUnreachable | NetworkUnreachable
            ),
            ProbeError::Io { source, .. } => matches!(
                source.kind(),
                ConnectionReset | ConnectionAborted | TimedOut | WouldBlock
            ),
            _ => false,
        }
    }
}

/// Runs `f` on a thread that has entered the network namespace `netns`
/// (a name under /run/netns) and returns its result.
pub fn in_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, ProbeError> {
    let path = PathBuf::from("/run/netns").join(netns);
    let file = File::open(&path).map_err(|source| ProbeError::OpenNetns {
        path: path.clone(),
        source,
    })?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| ProbeError::Enter {
                    netns: netns.to_owned(),
                    source,
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| ProbeError::Panicked {
                netns: netns.to_owned(),
            })?
    })
}

/// An HTTP answer: its status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET path` over HTTP/1.0 from the calling thread's namespace; each of
/// connect, write and read waits at most `timeout`.
pub fn get(addr: SocketAddrV4, path: &str, timeout: Duration) -> Result<HttpResponse, ProbeError> {
    let mut stream = connect(addr, timeout)?;
    let io = |source| ProbeError::Io { addr, source };
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io)?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(RESPONSE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(io)?;
    if raw.len() > RESPONSE_BYTES_MAX {
        return Err(ProbeError::TooLarge { addr });
    }
    parse_response(addr, &raw)
}

/// [`get`] from inside the namespace `netns`.
pub fn get_in(
    netns: &str,
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse, ProbeError> {
    in_netns(netns, || get(addr, path, timeout))?
}

/// `GET path` from the calling thread's namespace, counting the bytes of the
/// whole response (head and body) without keeping them; returns the count and
/// the time from before the connect to the last byte.
pub fn download(
    addr: SocketAddrV4,
    path: &str,
    timeout: Duration,
) -> Result<(u64, Duration), ProbeError> {
    let started = Instant::now();
    let mut stream = connect(addr, timeout)?;
    let io = |source| ProbeError::Io { addr, source };
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io)?;
    let mut buffer = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(count) => total += count as u64,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(io(error)),
        }
    }
    Ok((total, started.elapsed()))
}

fn connect(addr: SocketAddrV4, timeout: Duration) -> Result<TcpStream, ProbeError> {
    let stream = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)
        .map_err(|source| ProbeError::Connect { addr, source })?;
    let io = |source| ProbeError::Io { addr, source };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    Ok(stream)
}

fn parse_response(addr: SocketAddrV4, raw: &[u8]) -> Result<HttpResponse, ProbeError> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .filter(|line| line.starts_with("HTTP/"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ProbeError::NotHttp {
            addr,
            head: head.chars().take(200).collect(),
        })?;
    Ok(HttpResponse {
        status,
        body: body.to_owned(),
    })
}

/// A request the [`HttpServer`] answered: who sent it and its request line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    pub peer: SocketAddr,
    pub line: String,
}

/// An HTTP/1.0 server listening inside a namespace that answers every request
/// with `200` and a fixed body, and records each request's peer address.
/// Dropping it stops the server and closes its socket.
#[derive(Debug)]
pub struct HttpServer {
    addr: SocketAddrV4,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// Listens on `addr` inside `netns` and serves `body`.
    pub fn start(netns: &str, addr: SocketAddrV4, body: &str) -> Result<HttpServer, ProbeError> {
        let listener = in_netns(netns, || TcpListener::bind(addr))?
            .map_err(|source| ProbeError::Listen { addr, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| ProbeError::Listen { addr, source })?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (seen.clone(), stop.clone());
            let body = body.to_owned();
            std::thread::spawn(move || serve(listener, &body, &seen, &stop))
        };
        Ok(HttpServer {
            addr,
            seen,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Every request answered so far, oldest first.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.seen
            .lock()
            .map(|seen| seen.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn serve(listener: TcpListener, body: &str, seen: &Mutex<Vec<SeenRequest>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if let Some(line) = answer(stream, body)
                    && let Ok(mut seen) = seen.lock()
                {
                    seen.push(SeenRequest { peer, line });
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS));
            }
            Err(error) => {
                eprintln!("probe server: accept: {error}");
                std::thread::sleep(Duration::from_millis(ACCEPT_POLL_MS));
            }
        }
    }
}

/// Reads one request head (bounded, with a timeout) and answers it; returns
/// the request line, or `None` if the client sent no complete head.
fn answer(mut stream: TcpStream, body: &str) -> Option<String> {
    let timeout = Some(Duration::from_millis(SERVER_READ_TIMEOUT_MS));
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(timeout).ok()?;
    stream.set_write_timeout(timeout).ok()?;
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return None;
        }
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return None,
            Ok(count) => head.extend_from_slice(&buffer[..count]),
        }
    }
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let response = format!(
        "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
    Some(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::{Lab, OUTSIDE_ADDRESS};

    /// The outside host serves, a lab host fetches from it, and the server
    /// sees the lab host's address; a closed port is reported as unanswered.
    #[test]
    fn a_host_fetches_from_the_outside_host_and_is_seen_by_its_address() {
        if !crate::require_root() {
            return;
        }
        let mut lab = Lab::create(1).expect("lab");
        let outside = lab.add_outside().expect("outside host");
        let outside_netns = outside.netns.name().to_owned();
        let addr = SocketAddrV4::new(OUTSIDE_ADDRESS, 8000);
        let server = HttpServer::start(&outside_netns, addr, "hello from outside").expect("server");
        let host = lab.host(0);
        let answer =
            get_in(host.netns.name(), addr, "/probe", Duration::from_secs(2)).expect("get");
        assert_eq!(
            answer,
            HttpResponse {
                status: 200,
                body: "hello from outside".into()
            }
        );
        let seen = server.seen();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].peer.ip(), std::net::IpAddr::V4(host.address));
        assert_eq!(seen[0].line, "GET /probe HTTP/1.0");

        let closed = SocketAddrV4::new(OUTSIDE_ADDRESS, 8001);
        let error = get_in(host.netns.name(), closed, "/", Duration::from_secs(2))
            .expect_err("nothing listens on 8001");
        assert!(error.is_unanswered(), "{error}");
    }

    /// The outside host has no route to a container subnet until one is added.
    #[test]
    fn outside_routes_are_added_on_request_only() {
        if !crate::require_root() {
            return;
        }
        let mut lab = Lab::create(1).expect("lab");
        lab.add_outside().expect("outside host");
        let outside = lab.outside().expect("outside host").netns.name().to_owned();
        let routes = || {
            let output =
                crate::command::run("ip", &["-n", &outside, "route", "show"]).expect("ip route");
            String::from_utf8_lossy(&output.stdout).into_owned()
        };
        assert!(!routes().contains("10.88."), "{}", routes());
        lab.route_outside("10.88.1.0/24", lab.host(0).address)
            .expect("route");
        assert!(
            routes().contains("10.88.1.0/24 via 10.231.0.10"),
            "{}",
            routes()
        );
    }

    /// A bulk download through the lab counts every byte of the response.
    #[test]
    fn download_counts_the_whole_response() {
        if !crate::require_root() {
            return;
        }
        let mut lab = Lab::create(1).expect("lab");
        let outside = lab.add_outside().expect("outside").netns.name().to_owned();
        let body = "x".repeat(100_000);
        let addr = SocketAddrV4::new(OUTSIDE_ADDRESS, 8002);
        let _server = HttpServer::start(&outside, addr, &body).expect("server");
        let (bytes, _) = in_netns(lab.host(0).netns.name(), || {
            download(addr, "/", Duration::from_secs(2))
        })
        .expect("enter")
        .expect("download");
        assert!(bytes > 100_000 && bytes < 100_300, "{bytes}");
    }
}
