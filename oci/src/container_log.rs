//! Container output: each stream goes through a FIFO into a size-capped log file.
//!
//! The container gets the FIFO opened read-write, so it always holds a reader itself and
//! never dies of SIGPIPE while no daemon is reading (it blocks once the pipe buffer is full
//! instead); a restarted daemon reopens the FIFO and carries on. The log file is rotated to
//! `<name>.1` when it reaches `log_bytes_max`, so a stream never takes more than twice that.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::stat::Mode;

/// How often a reader checks whether it should stop.
const STOP_POLL_MS: u16 = 100;
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// A log file that rotates once to `<path>.1` when it would exceed `bytes_max`.
pub struct CappedLog {
    path: PathBuf,
    file: File,
    bytes_written: u64,
    bytes_max: u64,
}

impl CappedLog {
    pub fn open(path: &Path, bytes_max: u64) -> io::Result<Self> {
        assert!(bytes_max > 0);
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let bytes_written = file.metadata()?.len();
        Ok(Self {
            path: path.to_owned(),
            file,
            bytes_written,
            bytes_max,
        })
    }

    pub fn rotated_path(path: &Path) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(".1");
        PathBuf::from(name)
    }

    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            if self.bytes_written >= self.bytes_max {
                fs::rename(&self.path, Self::rotated_path(&self.path))?;
                self.file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .truncate(false)
                    .open(&self.path)?;
                self.bytes_written = 0;
            }
            let room = (self.bytes_max - self.bytes_written) as usize;
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.file.write_all(now)?;
            self.bytes_written += now.len() as u64;
            bytes = later;
        }
        Ok(())
    }
}

/// Makes the FIFO at `path` if it is not there yet.
pub fn make_fifo(path: &Path) -> io::Result<()> {
    match nix::unistd::mkfifo(path, Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The container's end: read-write, close-on-exec (libcontainer dup2s it onto fd 1 or 2).
pub fn open_container_end(fifo: &Path) -> io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(fifo)?;
    Ok(file.into())
}

/// The daemon's end, opened without blocking even if the container has already gone.
pub fn open_reader_end(fifo: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(fifo)?;
    let flags = fcntl(file.as_raw_fd(), FcntlArg::F_GETFL)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(flags))?;
    Ok(file)
}

/// Copies from `reader` into a capped log until every writer has closed the FIFO or `stop`
/// is set.
pub fn spawn_reader(
    mut reader: File,
    log_path: PathBuf,
    log_bytes_max: u64,
    stop: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    let mut log = CappedLog::open(&log_path, log_bytes_max)?;
    std::thread::Builder::new()
        .name("shoal-log".to_owned())
        .spawn(move || {
            let mut buffer = vec![0u8; READ_CHUNK_BYTES];
            while !stop.load(Ordering::Relaxed) {
                let mut poll_fds = [PollFd::new(reader.as_fd(), PollFlags::POLLIN)];
                match poll(&mut poll_fds, PollTimeout::from(STOP_POLL_MS)) {
                    Ok(0) | Err(nix::Error::EINTR) => continue,
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, path = %log_path.display(), "log poll failed");
                        return;
                    }
                }
                match reader.read(&mut buffer) {
                    Ok(0) => return,
                    Ok(count) => {
                        if let Err(error) = log.write(&buffer[..count]) {
                            tracing::warn!(%error, path = %log_path.display(), "log write failed");
                        }
                    }
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => {
                        tracing::warn!(%error, path = %log_path.display(), "log read failed");
                        return;
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_log_rotates_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let mut log = CappedLog::open(&path, 10).unwrap();
        log.write(b"0123456").unwrap();
        log.write(b"789abcdef").unwrap();
        log.write(b"ghijklmnopqrstuvwxyz").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"uvwxyz");
        assert_eq!(
            fs::read(CappedLog::rotated_path(&path)).unwrap(),
            b"klmnopqrst"
        );
    }

    #[test]
    fn reader_copies_fifo_until_writers_close() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("out.fifo");
        make_fifo(&fifo).unwrap();
        let writer = open_container_end(&fifo).unwrap();
        let reader = open_reader_end(&fifo).unwrap();
        let log_path = dir.path().join("out.log");
        let handle = spawn_reader(
            reader,
            log_path.clone(),
            1 << 20,
            Arc::new(AtomicBool::new(false)),
        )
        .unwrap();
        let mut writer = File::from(writer);
        writer.write_all(b"hello\n").unwrap();
        drop(writer);
        handle.join().unwrap();
        assert_eq!(fs::read(&log_path).unwrap(), b"hello\n");
    }
}
