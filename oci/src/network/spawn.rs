//! Starting a helper program without Rust's `Command`. `Command::spawn` holds
//! Rust's environment lock while it forks; libcontainer clones container
//! processes from another thread at any moment and the clone then takes that
//! lock, so a clone made while a spawn is in progress deadlocks forever. Here
//! the program starts through `posix_spawnp` with an empty environment, which
//! takes no Rust lock (the search in `PATH` reads the C environment directly).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};

/// Standard output kept from one run; more is read and dropped, so the program
/// never blocks on a full pipe.
const STDOUT_BYTES_MAX: u64 = 16 * 1024 * 1024;

/// What a finished program left behind.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Runs `program args...` to completion with stdin from `/dev/null`, keeping at
/// most `STDOUT_BYTES_MAX` of its output and `stderr_bytes_max` of its errors.
pub(crate) fn run(
    program: &str,
    args: &[&str],
    stderr_bytes_max: u64,
) -> std::io::Result<Finished> {
    let invalid = |_| std::io::Error::from(std::io::ErrorKind::InvalidInput);
    let program_c = CString::new(program).map_err(invalid)?;
    let mut argv_c = vec![program_c.clone()];
    for arg in args {
        argv_c.push(CString::new(*arg).map_err(invalid)?);
    }
    let mut argv: Vec<*mut libc::c_char> =
        argv_c.iter().map(|arg| arg.as_ptr().cast_mut()).collect();
    argv.push(std::ptr::null_mut());
    let envp: [*mut libc::c_char; 1] = [std::ptr::null_mut()];
    let dev_null = c"/dev/null";

    let (stdout_read, stdout_write) = pipe2(OFlag::O_CLOEXEC)?;
    let (stderr_read, stderr_write) = pipe2(OFlag::O_CLOEXEC)?;
    let pid = spawn(
        &program_c,
        &argv,
        &envp,
        dev_null,
        &stdout_write,
        &stderr_write,
    )?;
    // The child has its copies; ours must go, or the reads below never see EOF.
    drop(stdout_write);
    drop(stderr_write);

    let (stdout, stderr) = std::thread::scope(|scope| {
        let errors = scope.spawn(|| read_bounded(stderr_read, stderr_bytes_max));
        let output = read_bounded(stdout_read, STDOUT_BYTES_MAX);
        (output, errors.join().unwrap_or_else(|_| Ok(Vec::new())))
    });
    let status = wait(pid)?;
    Ok(Finished {
        status,
        stdout: stdout?,
        stderr: stderr?,
    })
}

fn spawn(
    program: &CString,
    argv: &[*mut libc::c_char],
    envp: &[*mut libc::c_char],
    dev_null: &std::ffi::CStr,
    stdout: &OwnedFd,
    stderr: &OwnedFd,
) -> std::io::Result<Pid> {
    let check = |code: libc::c_int| {
        if code == 0 {
            Ok(())
        } else {
            Err(std::io::Error::from_raw_os_error(code))
        }
    };
    // SAFETY: the file actions object is initialised before use and destroyed on
    // every path; every pointer handed over (program, argv, envp, path) points to
    // NUL-terminated data that outlives the call, and argv/envp end with null.
    unsafe {
        let mut actions: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut actions))?;
        let result = (|| {
            check(libc::posix_spawn_file_actions_addopen(
                &mut actions,
                0,
                dev_null.as_ptr(),
                libc::O_RDONLY,
                0,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                stdout.as_raw_fd(),
                1,
            ))?;
            check(libc::posix_spawn_file_actions_adddup2(
                &mut actions,
                stderr.as_raw_fd(),
                2,
            ))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawnp(
                &mut pid,
                program.as_ptr(),
                &actions,
                std::ptr::null(),
                argv.as_ptr(),
                envp.as_ptr(),
            ))?;
            Ok(Pid::from_raw(pid))
        })();
        libc::posix_spawn_file_actions_destroy(&mut actions);
        result
    }
}

fn read_bounded(fd: OwnedFd, bytes_max: u64) -> std::io::Result<Vec<u8>> {
    let mut file = std::fs::File::from(fd);
    let mut kept = Vec::new();
    (&mut file).take(bytes_max).read_to_end(&mut kept)?;
    std::io::copy(&mut file, &mut std::io::sink())?;
    Ok(kept)
}

fn wait(pid: Pid) -> std::io::Result<ExitStatus> {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(ExitStatus::from_raw(code << 8)),
            Ok(WaitStatus::Signaled(_, signal, _)) => {
                return Ok(ExitStatus::from_raw(signal as i32));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(errno) => return Err(errno.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_status_and_errors_come_back() {
        let finished = run("sh", &["-c", "echo out; echo err >&2; exit 3"], 1024).unwrap();
        assert_eq!(finished.status.code(), Some(3));
        assert_eq!(finished.stdout, b"out\n");
        assert_eq!(finished.stderr, b"err\n");
    }

    #[test]
    fn errors_are_capped_and_the_program_still_finishes() {
        let finished = run(
            "sh",
            &["-c", "head -c 200000 /dev/zero >&2; echo done"],
            100,
        )
        .unwrap();
        assert!(finished.status.success());
        assert_eq!(finished.stderr.len(), 100);
        assert_eq!(finished.stdout, b"done\n");
    }

    #[test]
    fn a_missing_program_is_an_error() {
        let error = run("shoal-no-such-program", &[], 100).err().unwrap();
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
    }
}
