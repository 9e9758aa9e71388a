//! The daemon's side of the zygote (see `zygote`): starts it through `posix_spawn` (safe
//! in a process with threads: the child only execs), sends it one request at a time with
//! a deadline, and when the deadline passes or the zygote has died, kills it with its
//! workers and starts a new one.
//!
//! The zygote is the leader of its own process group, which its workers and libcontainer's
//! intermediate processes share (a container's init leaves it with `setsid`), so one
//! `killpg` ends everything a stuck request left behind except the container's init, which
//! is in the container's cgroup for the caller to sweep. This process becomes a child
//! subreaper before the first zygote starts, so the inits that workers leave behind are
//! handed to it and it collects their exit status.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::zygote::{SOCKET_FD, SUBCOMMAND};
use crate::zygote_protocol::{
    Hello, LineReader, PROTOCOL_VERSION, ProtocolError, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX,
    Request, Response, write_line,
};

/// How long a freshly started zygote has to say hello.
pub const HELLO_TIMEOUT_MS: u64 = 10_000;
/// How long a kill waits for the zygote itself to be gone.
const KILL_WAIT_MS: u64 = 5_000;
/// How long a kill then waits for the rest of its process group. A process that stays
/// (one in a frozen cgroup cannot die) is in a container's cgroup, whose sweep reaps it.
const GROUP_WAIT_MS: u64 = 1_000;
const REAP_POLL_MS: u64 = 2;
/// The zygote's socket is moved to at least this descriptor before the spawn, so the
/// `dup2` onto `SOCKET_FD` always makes a copy without close-on-exec.
const SPAWN_FD_MIN: i32 = 10;

/// How to start a zygote: a program whose `main` hands over to `shoal_oci::zygote::main`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZygoteCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

impl ZygoteCommand {
    /// This process's own executable as `<exe> zygote`: for binaries whose `main` checks
    /// for `zygote::SUBCOMMAND` first, as the `shoal` binary does. `/proc/self/exe` still
    /// names the running binary after an upgrade replaced the file on disk.
    pub fn this_executable() -> Self {
        Self {
            program: PathBuf::from("/proc/self/exe"),
            args: vec![OsString::from(SUBCOMMAND)],
        }
    }

    pub fn new<A: Into<OsString>>(
        program: impl Into<PathBuf>,
        args: impl IntoIterator<Item = A>,
    ) -> Self {
        Self {
            program: program.into(),
            args: args.into_iter().map(Into::into).collect(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ZygoteError {
    #[error("cannot make this process a child subreaper: {0}")]
    Subreaper(#[source] io::Error),
    #[error("cannot start the zygote {program}: {source}")]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{program} did not start as a zygote of protocol {PROTOCOL_VERSION}: {detail}")]
    NoHello { program: PathBuf, detail: String },
    #[error("no answer to {action} within {timeout_ms} ms; the zygote was killed and restarted")]
    Timeout {
        action: &'static str,
        timeout_ms: u64,
    },
    #[error("the zygote ended during {action}; it was restarted")]
    Ended { action: &'static str },
    #[error("{action}: {source}")]
    Protocol {
        action: &'static str,
        #[source]
        source: ProtocolError,
    },
}

/// A running zygote, replaced whenever it dies or misses a deadline.
pub struct Zygote {
    command: ZygoteCommand,
    process: Mutex<Option<ZygoteProcess>>,
}

impl Zygote {
    /// Makes this process a child subreaper and starts the first zygote.
    pub fn start(command: ZygoteCommand) -> Result<Self, ZygoteError> {
        // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) } != 0 {
            return Err(ZygoteError::Subreaper(io::Error::last_os_error()));
        }
        let process = ZygoteProcess::spawn(&command)?;
        Ok(Self {
            command,
            process: Mutex::new(Some(process)),
        })
    }

    /// The zygote's pid while one runs (for tests and diagnostics).
    pub fn pid(&self) -> Option<i32> {
        self.lock().as_ref().map(|process| process.pid.as_raw())
    }

    /// Sends `request` and waits up to `timeout_ms` for the answer. A dead zygote is
    /// replaced first. One that misses the deadline or breaks the protocol is killed with
    /// its workers and replaced, and the request fails; except that a request the zygote
    /// died without reading (it could not have acted on it) is sent once more to the new one.
    pub fn request(&self, request: &Request, timeout_ms: u64) -> Result<Response, ZygoteError> {
        let action = match request {
            Request::Create { .. } => "create",
            Request::Start { .. } => "start",
            Request::Exec { .. } => "exec in",
        };
        let mut slot = self.lock();
        let mut resent = false;
        loop {
            let process = match slot.take() {
                Some(process) if !process.has_ended() => slot.insert(process),
                ended => {
                    if let Some(process) = ended {
                        tracing::warn!(
                            pid = process.pid.as_raw(),
                            "the zygote ended; starting another"
                        );
                        process.kill();
                    }
                    slot.insert(ZygoteProcess::spawn(&self.command)?)
                }
            };
            let failure = match process.exchange(request, action, timeout_ms) {
                Ok(response) => return Ok(response),
                Err(failure) => failure,
            };
            tracing::warn!(error = %failure.error, "killing the zygote and starting another");
            if let Some(process) = slot.take() {
                process.kill();
            }
            match ZygoteProcess::spawn(&self.command) {
                Ok(process) => *slot = Some(process),
                // The next request tries again.
                Err(error) => tracing::warn!(%error, "cannot restart the zygote"),
            }
            if failure.unread && !resent && slot.is_some() {
                resent = true;
                continue;
            }
            return Err(failure.error);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<ZygoteProcess>> {
        self.process
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if let Some(process) = self.lock().take() {
            process.kill();
        }
    }
}

struct ZygoteProcess {
    pid: Pid,
    socket: UnixStream,
    reader: LineReader,
}

impl ZygoteProcess {
    fn spawn(command: &ZygoteCommand) -> Result<Self, ZygoteError> {
        let spawn_error = |source| ZygoteError::Spawn {
            program: command.program.clone(),
            source,
        };
        let (ours, theirs) = UnixStream::pair().map_err(spawn_error)?;
        let theirs = dup_at_least(theirs.as_fd(), SPAWN_FD_MIN).map_err(spawn_error)?;
        let pid = posix_spawn(command, &theirs).map_err(spawn_error)?;
        drop(theirs);
        let mut process = Self {
            pid,
            socket: ours,
            reader: LineReader::default(),
        };
        let hello = process
            .read_line(Instant::now() + Duration::from_millis(HELLO_TIMEOUT_MS))
            .map_err(|error| error.to_string())
            .and_then(|line| {
                serde_json::from_slice::<Hello>(&line).map_err(|error| error.to_string())
            });
        let expected = Hello {
            protocol: PROTOCOL_VERSION,
            pid: pid.as_raw(),
        };
        match hello {
            Ok(hello) if hello == expected => Ok(process),
            other => {
                process.kill();
                let detail = match other {
                    Ok(hello) => format!("it said {hello:?}"),
                    Err(error) => error,
                };
                Err(ZygoteError::NoHello {
                    program: command.program.clone(),
                    detail,
                })
            }
        }
    }

    fn exchange(
        &mut self,
        request: &Request,
        action: &'static str,
        timeout_ms: u64,
    ) -> Result<Response, Failure> {
        let deadline = Instant::now() + Duration::from_millis(timeout_ms);
        let protocol = |source: ProtocolError| Failure {
            // On a Unix socket, EPIPE on a write means the zygote had closed its end, and
            // ECONNRESET on a read that it closed with our bytes unread: either way it
            // never acted on this request.
            unread: matches!(&source, ProtocolError::Io(error)
                if matches!(error.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)),
            error: ZygoteError::Protocol { action, source },
        };
        // A request is far smaller than the socket buffer, so this write does not wait.
        self.socket
            .set_write_timeout(Some(Duration::from_millis(timeout_ms.max(1))))
            .map_err(|error| protocol(error.into()))?;
        write_line(&mut &self.socket, request, REQUEST_BYTES_MAX).map_err(protocol)?;
        let line = self.read_line(deadline).map_err(|error| match error {
            ReadError::Timeout => Failure {
                unread: false,
                error: ZygoteError::Timeout { action, timeout_ms },
            },
            ReadError::Ended => Failure {
                unread: false,
                error: ZygoteError::Ended { action },
            },
            ReadError::Protocol(source) => protocol(source),
        })?;
        serde_json::from_slice(&line).map_err(|error| protocol(ProtocolError::from(error)))
    }

    fn read_line(&mut self, deadline: Instant) -> Result<Vec<u8>, ReadError> {
        loop {
            if let Some(line) = self.reader.take_line(RESPONSE_BYTES_MAX)? {
                return Ok(line);
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ReadError::Timeout);
            }
            let wait_ms = remaining.as_millis().saturating_add(1).min(u16::MAX.into()) as u16;
            let mut fds = [PollFd::new(self.socket.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(wait_ms)) {
                Ok(0) | Err(nix::Error::EINTR) => continue,
                Ok(_) => {}
                Err(error) => return Err(ReadError::Protocol(io::Error::from(error).into())),
            }
            if self
                .reader
                .fill(&mut &self.socket)
                .map_err(ProtocolError::from)?
                == 0
            {
                return Err(ReadError::Ended);
            }
        }
    }

    /// Whether the zygote has ended (and been reaped).
    fn has_ended(&self) -> bool {
        !matches!(
            waitpid(self.pid, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        )
    }

    /// Kills the zygote's process group and reaps what of it were this process's children:
    /// the zygote, then the workers and intermediates handed over when it died.
    fn kill(self) {
        let _ = killpg(self.pid, Signal::SIGKILL);
        drop(self.socket);
        let zygote_gone = reap_within(self.pid, KILL_WAIT_MS);
        let group_gone = reap_within(Pid::from_raw(-self.pid.as_raw()), GROUP_WAIT_MS);
        if !(zygote_gone && group_gone) {
            tracing::warn!(
                pid = self.pid.as_raw(),
                zygote_gone,
                "processes of a killed zygote's group are still there"
            );
        }
    }
}

/// Reaps `target` (a pid, or a process group as a negative pid) until nothing of it is this
/// process's child any more; false if some of it still runs after `wait_ms`.
fn reap_within(target: Pid, wait_ms: u64) -> bool {
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    loop {
        match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {
                if Instant::now() >= deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(REAP_POLL_MS));
            }
            Ok(_) | Err(nix::Error::EINTR) => {}
            // ECHILD: no child of this process left there.
            Err(_) => return true,
        }
    }
}

/// A request that failed, and whether the zygote provably never read it.
struct Failure {
    error: ZygoteError,
    unread: bool,
}

enum ReadError {
    Timeout,
    Ended,
    Protocol(ProtocolError),
}

impl From<ProtocolError> for ReadError {
    fn from(error: ProtocolError) -> Self {
        Self::Protocol(error)
    }
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Timeout => write!(formatter, "no answer in time"),
            Self::Ended => write!(formatter, "it ended"),
            Self::Protocol(error) => write!(formatter, "{error}"),
        }
    }
}

/// A close-on-exec copy of `fd` numbered at least `minimum`.
fn dup_at_least(fd: std::os::fd::BorrowedFd<'_>, minimum: i32) -> io::Result<OwnedFd> {
    let raw = fcntl(fd.as_raw_fd(), FcntlArg::F_DUPFD_CLOEXEC(minimum))?;
    // SAFETY: fcntl just returned this new descriptor and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) })
}

/// Starts `command` with an empty environment, stdin from `/dev/null`, `socket` as
/// descriptor `SOCKET_FD`, in a new process group, with no signal blocked and every signal
/// at its default action.
fn posix_spawn(command: &ZygoteCommand, socket: &OwnedFd) -> io::Result<Pid> {
    let invalid = |_| io::Error::from(io::ErrorKind::InvalidInput);
    let program = CString::new(command.program.as_os_str().as_bytes()).map_err(invalid)?;
    let mut argv_owned = vec![program.clone()];
    for arg in &command.args {
        argv_owned.push(CString::new(arg.as_bytes()).map_err(invalid)?);
    }
    let mut argv: Vec<*mut libc::c_char> = argv_owned
        .iter()
        .map(|arg| arg.as_ptr().cast_mut())
        .collect();
    argv.push(std::ptr::null_mut());
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    let check = |code: libc::c_int| {
        if code == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(code))
        }
    };
    // SAFETY: the file actions and attributes are initialised before use and destroyed on
    // every path; every pointer handed over (program, argv, envp, path) points to
    // NUL-terminated data that outlives the call, and argv and envp end with null.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let mut attributes: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(error) = check(libc::posix_spawnattr_init(&mut attributes)) {
            libc::posix_spawn_file_actions_destroy(&mut actions);
            return Err(error);
        }
        let result = (|| {
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                c"/dev/null".as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                socket.as_raw_fd(),
                SOCKET_FD,
            ))?;
            let mut no_signals: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut no_signals);
            let mut all_signals: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all_signals);
            check(libc::posix_spawnattr_setsigmask(
                &mut attributes,
                &no_signals,
            ))?;
            check(libc::posix_spawnattr_setsigdefault(
                &mut attributes,
                &all_signals,
            ))?;
            check(libc::posix_spawnattr_setpgroup(&mut attributes, 0))?;
            let flags = libc::POSIX_SPAWN_SETPGROUP
                | libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF;
            check(libc::posix_spawnattr_setflags(&mut attributes, flags as _))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(
                &mut pid,
                program.as_ptr(),
                &actions,
                &attributes,
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(Pid::from_raw(pid))
        })();
        libc::posix_spawnattr_destroy(&mut attributes);
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}
