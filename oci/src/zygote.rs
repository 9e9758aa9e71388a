//! The zygote: a helper process with one thread that makes the libcontainer calls which
//! clone a process or change the working directory (`ContainerBuilder::build`,
//! `Container::start`, and the tenant builder that runs a command inside a running
//! container), on request from the daemon, as containerd's shims do for it.
//!
//! A raw clone copies only the calling thread; a lock any other thread held at that instant
//! (the allocator's, stdout's, a tracing writer's, Rust's environment lock) stays held in
//! the child forever, and libcontainer's child code takes locks. The daemon has many
//! threads, so it never clones: it starts this process (the daemon's own binary run as
//! `shoal zygote`, through `posix_spawn` with an empty environment) and sends it requests
//! over a socket on descriptor 3 (`zygote_protocol`).
//!
//! For each request the zygote forks a worker, still with one thread, which makes the call
//! and writes the answer into a pipe; the zygote waits for the worker to end, then passes
//! the answer on. So libcontainer's working-directory changes and whatever else it leaves
//! in a process die with the worker, and the container's init, a child of the worker,
//! is handed to the daemon (a child subreaper) when the worker ends: the daemon stays the
//! parent that collects the container's exit status, as when it cloned in-process.
//!
//! *Invariant:* the zygote and its workers have one thread. Nothing here starts a thread,
//! an async runtime or a tracing subscriber; the zygote checks its thread count at start.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;

use libcontainer::container::Container;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, kill};
use nix::sys::stat::{SFlag, fstat};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, getpid, getppid, pipe2};

use crate::bundle;
use crate::container_log;
use crate::zygote_protocol::{
    Hello, LineReader, PROTOCOL_VERSION, ProtocolError, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX,
    Request, Response, Step, write_line,
};

/// The first argument that makes a binary run as the zygote (`shoal zygote`).
pub const SUBCOMMAND: &str = "zygote";
/// The descriptor the zygote's socket arrives on.
pub const SOCKET_FD: RawFd = 3;

#[derive(Debug, thiserror::Error)]
pub enum ZygoteServeError {
    #[error(
        "descriptor {SOCKET_FD} is not a socket: `zygote` is started by the daemon, not by hand"
    )]
    NoSocket,
    #[error("{threads} threads at start; a zygote must start with one")]
    Threads { threads: usize },
    #[error("cannot read the thread count: {0}")]
    ThreadCount(#[source] io::Error),
    #[error("talking to the daemon: {0}")]
    Protocol(#[from] ProtocolError),
}

/// The whole zygote process: serves requests on descriptor 3 until the daemon closes it.
/// Call it first thing in `main` when the first argument is `SUBCOMMAND`, before anything
/// that could start a thread.
pub fn main() -> ExitCode {
    match serve_descriptor() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal zygote: {error}");
            ExitCode::FAILURE
        }
    }
}

fn serve_descriptor() -> Result<(), ZygoteServeError> {
    let is_socket = fstat(SOCKET_FD)
        .map(|stat| SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK)
        .unwrap_or(false);
    if !is_socket {
        return Err(ZygoteServeError::NoSocket);
    }
    // A Rust `main` ignores SIGPIPE; the containers this process's workers create inherit
    // their signal dispositions, and a container's processes expect the default.
    // SAFETY: setting a signal's disposition to its default installs no handler.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let threads = thread_count().map_err(ZygoteServeError::ThreadCount)?;
    if threads != 1 {
        return Err(ZygoteServeError::Threads { threads });
    }
    // SAFETY: descriptor 3 is a socket (checked above) that the daemon handed to this
    // process for it alone; nothing else in this process owns it.
    let socket = unsafe { UnixStream::from_raw_fd(SOCKET_FD) };
    // Workers and the containers' processes must not inherit the daemon's socket.
    let _ = fcntl(
        socket.as_raw_fd(),
        FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    serve(socket)
}

/// The number of threads of this process, from `/proc/self/status`.
pub fn thread_count() -> io::Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Threads: line in /proc/self/status"))
}

fn serve(socket: UnixStream) -> Result<(), ZygoteServeError> {
    let hello = Hello {
        protocol: PROTOCOL_VERSION,
        pid: getpid().as_raw(),
    };
    write_line(&mut &socket, &hello, RESPONSE_BYTES_MAX)?;
    let mut reader = LineReader::default();
    loop {
        let Some(line) = reader.read_line(&mut &socket, REQUEST_BYTES_MAX)? else {
            return Ok(()); // the daemon closed its end: it stopped or dropped its runtime
        };
        let request: Request = serde_json::from_slice(&line).map_err(ProtocolError::from)?;
        match run_in_worker(&socket, &request) {
            Some(response) => write_line(&mut &socket, &response, RESPONSE_BYTES_MAX)?,
            None => return Ok(()), // the daemon went away while the worker ran
        }
    }
}

/// Forks a worker for `request` and waits for it; `None` if the daemon hung up meanwhile
/// (the worker is then killed).
fn run_in_worker(socket: &UnixStream, request: &Request) -> Option<Response> {
    let (answer_read, answer_write) = match pipe2(OFlag::O_CLOEXEC) {
        Ok(pipe) => pipe,
        Err(error) => return Some(Response::failed(Step::Worker, error)),
    };
    let zygote = getpid();
    // SAFETY: this process has one thread (checked at start, and nothing here starts one),
    // so the child may run any code: no lock can be held by a thread that does not exist.
    match unsafe { fork() } {
        Err(error) => Some(Response::failed(Step::Worker, error)),
        Ok(ForkResult::Child) => {
            // SAFETY: the child's copy of the daemon's socket is closed so that neither the
            // worker nor the container's processes hold it; the `UnixStream` owning it in
            // the parent's memory is never dropped here (the worker leaves with `_exit`).
            unsafe { libc::close(socket.as_raw_fd()) };
            drop(answer_read);
            worker(zygote, request, answer_write)
        }
        Ok(ForkResult::Parent { child }) => {
            drop(answer_write);
            collect(socket, child, answer_read)
        }
    }
}

/// The worker: runs `request`, writes the answer, ends. Never returns.
fn worker(zygote: Pid, request: &Request, answer: OwnedFd) -> ! {
    // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number; it makes a killed zygote
    // take its worker with it. The parent is a process with one thread, so "the parent
    // thread ended" means "the zygote ended".
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if getppid() != zygote {
        // SAFETY: ends this process at once, as a forked child should.
        unsafe { libc::_exit(1) };
    }
    let response = perform(request);
    let mut answer = File::from(answer);
    let code = match write_line(&mut answer, &response, RESPONSE_BYTES_MAX) {
        Ok(()) => 0,
        Err(_) => 1,
    };
    // SAFETY: ends the worker without running exit handlers or destructors that belong to
    // the zygote's copy of the process state.
    unsafe { libc::_exit(code) }
}

/// Waits for the worker to end, then reads its answer from the pipe. Watches the daemon's
/// socket meanwhile: if the daemon hangs up, the worker is killed and `None` returned, so a
/// zygote whose daemon died does not stay behind waiting for a stuck worker.
fn collect(socket: &UnixStream, worker: Pid, answer: OwnedFd) -> Option<Response> {
    let pidfd = match pidfd_open(worker) {
        Ok(pidfd) => pidfd,
        Err(error) => {
            // Without a pidfd, wait blocking: the daemon's timeout still bounds the request.
            let status = reap(worker);
            return Some(read_answer(answer, status, Some(error)));
        }
    };
    loop {
        let mut fds = [
            PollFd::new(pidfd.as_fd(), PollFlags::POLLIN),
            PollFd::new(socket.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(error) => {
                let _ = kill(worker, Signal::SIGKILL);
                reap(worker);
                return Some(Response::failed(Step::Worker, error));
            }
        }
        // The daemon sends nothing while a request runs, so a readable socket means it hung
        // up (or broke the protocol): either way nobody waits for this answer.
        let hung_up = fds[1].revents().is_some_and(|events| {
            events.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
        });
        if hung_up {
            let _ = kill(worker, Signal::SIGKILL);
            reap(worker);
            return None;
        }
        if fds[0].revents().is_some_and(|events| !events.is_empty()) {
            let status = reap(worker);
            return Some(read_answer(answer, status, None));
        }
    }
}

fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

fn reap(pid: Pid) -> Option<WaitStatus> {
    loop {
        match waitpid(pid, None) {
            Err(nix::Error::EINTR) => continue,
            Ok(status) => return Some(status),
            Err(_) => return None,
        }
    }
}

/// The worker has ended and written everything it will: take the line if it is there. The
/// container's processes may hold the pipe's write end, so the read must not wait for more.
fn read_answer(answer: OwnedFd, status: Option<WaitStatus>, note: Option<io::Error>) -> Response {
    let no_answer = |detail: String| {
        Response::failed(
            Step::Worker,
            format!("the worker ended ({status:?}) without an answer{detail}"),
        )
    };
    if let Err(error) = fcntl(answer.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
        return no_answer(format!(": {error}"));
    }
    let mut file = File::from(answer);
    let mut reader = LineReader::default();
    loop {
        match reader.take_line(RESPONSE_BYTES_MAX) {
            Ok(Some(line)) => {
                return serde_json::from_slice(&line)
                    .unwrap_or_else(|error| no_answer(format!(": {error}")));
            }
            Ok(None) => {}
            Err(error) => return no_answer(format!(": {error}")),
        }
        match reader.fill(&mut file) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
            Err(error) => return no_answer(format!(": {error}")),
        }
    }
    no_answer(
        note.map(|note| format!(" (no pidfd: {note})"))
            .unwrap_or_default(),
    )
}

/// The libcontainer call itself, in the worker.
fn perform(request: &Request) -> Response {
    match request {
        Request::Create {
            id,
            state_dir,
            bundle_dir,
            stdout_fifo,
            stderr_fifo,
        } => create(id, state_dir, bundle_dir, stdout_fifo, stderr_fifo),
        Request::Start { id, state_dir } => start(id, state_dir),
        Request::Exec {
            id,
            state_dir,
            args,
            timeout_ms,
        } => exec(id, state_dir, args, *timeout_ms),
    }
}

fn create(
    id: &str,
    state_dir: &Path,
    bundle_dir: &Path,
    stdout_fifo: &Path,
    stderr_fifo: &Path,
) -> Response {
    if let Err(error) = bundle::validate_id(id) {
        return Response::failed(Step::Configure, error);
    }
    let open = |path: &Path| {
        container_log::open_container_end(path)
            .map_err(|error| Response::failed(Step::Open, format!("{}: {error}", path.display())))
    };
    let (stdout, stderr) = match (open(stdout_fifo), open(stderr_fifo)) {
        (Ok(stdout), Ok(stderr)) => (stdout, stderr),
        (Err(failure), _) | (_, Err(failure)) => return failure,
    };
    let stdin = match File::open("/dev/null") {
        Ok(stdin) => stdin,
        Err(error) => return Response::failed(Step::Open, format!("/dev/null: {error}")),
    };
    let builder = match builder(id, state_dir, stdin, stdout, stderr) {
        Ok(builder) => builder,
        Err(failure) => return failure,
    };
    let built = builder
        .as_init(bundle_dir)
        .with_systemd(false)
        .with_detach(true)
        .build();
    match built {
        Ok(container) => match container.pid() {
            Some(pid) => Response::Created { pid: pid.as_raw() },
            None => Response::failed(Step::Create, "no pid after create"),
        },
        Err(error) => Response::failed(Step::Create, error),
    }
}

/// libcontainer's builder for container `id` under `state_dir`, with its standard streams.
fn builder(
    id: &str,
    state_dir: &Path,
    stdin: File,
    stdout: impl Into<OwnedFd>,
    stderr: impl Into<OwnedFd>,
) -> Result<ContainerBuilder, Response> {
    ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(state_dir)
        .map(|builder| {
            builder
                .with_stdin(stdin)
                .with_stdout(stdout)
                .with_stderr(stderr)
        })
        .map_err(|error| Response::failed(Step::Configure, error))
}

fn start(id: &str, state_dir: &Path) -> Response {
    if let Err(error) = bundle::validate_id(id) {
        return Response::failed(Step::Configure, error);
    }
    let mut container = match Container::load(state_dir.join(id)) {
        Ok(container) => container,
        Err(error) => return Response::failed(Step::Load, error),
    };
    match container.start() {
        Ok(()) => Response::Started,
        Err(error) => Response::failed(Step::Start, error),
    }
}

/// Runs `args` in the running container `id` as a tenant process (a child of this worker),
/// waits for it until `timeout_ms` after the call began, and kills it then.
fn exec(id: &str, state_dir: &Path, args: &[String], timeout_ms: u64) -> Response {
    let began = std::time::Instant::now();
    if let Err(error) = bundle::validate_id(id) {
        return Response::failed(Step::Configure, error);
    }
    let null = |write: bool| {
        std::fs::OpenOptions::new()
            .read(!write)
            .write(write)
            .open("/dev/null")
            .map_err(|error| Response::failed(Step::Open, format!("/dev/null: {error}")))
    };
    let (stdin, stdout, stderr) = match (null(false), null(true), null(true)) {
        (Ok(stdin), Ok(stdout), Ok(stderr)) => (stdin, stdout, stderr),
        (Err(failure), _, _) | (_, Err(failure), _) | (_, _, Err(failure)) => return failure,
    };
    let builder = match builder(id, state_dir, stdin, stdout, stderr) {
        Ok(builder) => builder,
        Err(failure) => return failure,
    };
    let built = builder
        .as_tenant()
        .with_container_args(args.to_vec())
        .with_detach(true)
        .build();
    // The tenant builder names a notify socket in the container's state directory for each
    // call and leaves it there; execs run one at a time, so whatever is there is ours.
    remove_tenant_sockets(&state_dir.join(id));
    let response = match built {
        Ok(pid) => {
            let left_ms = timeout_ms.saturating_sub(began.elapsed().as_millis() as u64);
            match wait_until(pid, left_ms) {
                Some(status) => Response::Ran { exit: status },
                None => {
                    let _ = kill(pid, Signal::SIGKILL);
                    reap(pid);
                    Response::TimedOut
                }
            }
        }
        Err(error) => Response::failed(Step::Exec, error),
    };
    // A tenant process lives in the container's pid namespace but is this worker's child:
    // left unreaped (a failed exec's, whose pid libcontainer does not return), its zombie
    // would pass to the daemon, which reaps only containers' inits, and the container's init
    // could then never finish exiting (the kernel waits for every process of the namespace
    // to be reaped). So every child is reaped before the worker ends.
    reap_children(TENANT_REAP_MS);
    response
}

/// How long a worker waits for its tenant's processes to end before killing them.
const TENANT_REAP_MS: u64 = 2_000;

/// Reaps every child of this process; those still running after `wait_ms` are killed first.
fn reap_children(wait_ms: u64) {
    use nix::sys::wait::WaitPidFlag;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if std::time::Instant::now() >= deadline {
                    for child in children() {
                        let _ = kill(child, Signal::SIGKILL);
                    }
                    while !matches!(waitpid(None, None), Err(nix::Error::ECHILD)) {}
                    return;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(_) => return, // ECHILD: none left
        }
    }
}

/// This process's children, from `/proc/self/task/<pid>/children` (one thread: the pid).
fn children() -> Vec<Pid> {
    let path = format!("/proc/self/task/{}/children", getpid());
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|pid| pid.parse().ok())
        .map(Pid::from_raw)
        .collect()
}

/// Waits up to `timeout_ms` for this worker's child `pid` to end; `None` if it still runs.
fn wait_until(pid: Pid, timeout_ms: u64) -> Option<crate::runtime::ExitStatus> {
    use crate::runtime::ExitStatus;
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(timeout_ms);
    let status = |status: Option<WaitStatus>| match status {
        Some(WaitStatus::Exited(_, code)) => ExitStatus::Code(code),
        Some(WaitStatus::Signaled(_, signal, _)) => ExitStatus::Signal(signal as i32),
        _ => ExitStatus::Unknown,
    };
    let Ok(pidfd) = pidfd_open(pid) else {
        // It has already been reaped or cannot be watched: a blocking wait, bounded by the
        // daemon's deadline on the whole request.
        return Some(status(reap(pid)));
    };
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return None;
        }
        let left_ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(left_ms)) {
            Ok(0) | Err(nix::Error::EINTR) => continue,
            Ok(_) => return Some(status(reap(pid))),
            // Cannot watch it: it is killed, as at the timeout.
            Err(_) => return None,
        }
    }
}

/// Removes the tenant builder's notify sockets (`tenant-notify-*.sock`) from `dir`.
fn remove_tenant_sockets(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("tenant-notify-") && name.ends_with(".sock") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
