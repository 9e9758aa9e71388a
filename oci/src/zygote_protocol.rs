//! What the daemon and its zygote say to each other: one JSON object per line on a Unix
//! socket. The zygote first sends a `Hello`; then the daemon sends one `Request` and waits
//! for its `Response` before sending the next. Every line is bounded (`REQUEST_BYTES_MAX`,
//! `RESPONSE_BYTES_MAX`), and a reader never buffers more than the bound.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::runtime::ExitStatus;

/// Bumped on any change to the messages below; a zygote of another version is refused.
pub const PROTOCOL_VERSION: u32 = 2;
/// A request holds an id and a few paths (each at most `PATH_MAX`, 4 KiB).
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
/// Also the most a worker writes into its pipe, far below the pipe's 64 KiB buffer, so a
/// worker never blocks on its answer.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024;
/// Error texts from libcontainer are cut to this many bytes.
pub const MESSAGE_BYTES_MAX: usize = 4 * 1024;
/// How much one read takes from the socket or pipe.
const READ_CHUNK_BYTES: usize = 4 * 1024;

/// The zygote's first line: proof that the program started is a zygote of this version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    pub protocol: u32,
    pub pid: i32,
}

/// A libcontainer call that clones a process or changes the working directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    /// `ContainerBuilder::build` of the bundle in `bundle_dir`, with the container's
    /// stdout and stderr going to the two FIFOs (opened by the zygote's worker).
    Create {
        id: String,
        state_dir: PathBuf,
        bundle_dir: PathBuf,
        stdout_fifo: PathBuf,
        stderr_fifo: PathBuf,
    },
    /// `Container::start` of a created container.
    Start { id: String, state_dir: PathBuf },
    /// Runs `args` inside the running container `id` (libcontainer's tenant builder: its
    /// namespaces, root, cgroup, user and environment), input and output `/dev/null`; killed
    /// if it has not ended `timeout_ms` after the request began.
    Exec {
        id: String,
        state_dir: PathBuf,
        args: Vec<String>,
        timeout_ms: u64,
    },
}

/// Which part of a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// Opening the FIFOs or `/dev/null` for the container.
    Open,
    /// Setting up `ContainerBuilder`.
    Configure,
    Create,
    Load,
    Start,
    /// Joining a running container with a command.
    Exec,
    /// The worker process itself: it could not be forked, or ended without an answer.
    Worker,
}

impl Step {
    /// The word used in `RuntimeError::Libcontainer::action`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Configure => "configure",
            Self::Create => "create",
            Self::Load => "load",
            Self::Start => "start",
            Self::Exec => "exec in",
            Self::Worker => "run the zygote worker for",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Response {
    /// The container's init waits for `Start`; `pid` as seen from the host.
    Created {
        pid: i32,
    },
    Started,
    /// The command of an `Exec` ended so.
    Ran {
        exit: ExitStatus,
    },
    /// The command of an `Exec` was killed at its timeout.
    TimedOut,
    Failed {
        step: Step,
        message: String,
    },
}

impl Response {
    /// A failure whose text is cut to `MESSAGE_BYTES_MAX` on a character boundary.
    pub fn failed(step: Step, message: impl std::fmt::Display) -> Self {
        let mut message = message.to_string();
        if message.len() > MESSAGE_BYTES_MAX {
            let mut end = MESSAGE_BYTES_MAX;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        Self::Failed { step, message }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("a line longer than {bytes_max} bytes")]
    TooLong { bytes_max: usize },
    #[error("the stream ended inside a line")]
    Truncated,
    #[error("a malformed message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes `message` as one line, refusing to send more than `bytes_max` bytes.
pub fn write_line<T: serde::Serialize>(
    writer: &mut impl Write,
    message: &T,
    bytes_max: usize,
) -> Result<(), ProtocolError> {
    let mut line = serde_json::to_vec(message)?;
    line.push(b'\n');
    if line.len() > bytes_max {
        return Err(ProtocolError::TooLong { bytes_max });
    }
    writer.write_all(&line)?;
    writer.flush()?;
    Ok(())
}

/// Bytes read but not yet taken as a line.
#[derive(Debug, Default)]
pub struct LineReader {
    pending: Vec<u8>,
}

impl LineReader {
    /// The next complete line (without its newline) if one has arrived.
    pub fn take_line(&mut self, bytes_max: usize) -> Result<Option<Vec<u8>>, ProtocolError> {
        match self.pending.iter().position(|&byte| byte == b'\n') {
            Some(end) if end < bytes_max => {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                Ok(Some(line))
            }
            Some(_) => Err(ProtocolError::TooLong { bytes_max }),
            None if self.pending.len() >= bytes_max => Err(ProtocolError::TooLong { bytes_max }),
            None => Ok(None),
        }
    }

    /// One read from `reader` into the buffer; the number of bytes read, 0 at the end.
    pub fn fill(&mut self, reader: &mut impl Read) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        loop {
            match reader.read(&mut chunk) {
                Ok(count) => {
                    self.pending.extend_from_slice(&chunk[..count]);
                    return Ok(count);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
    }

    /// Blocks until a whole line has arrived; `None` if the stream ended between lines.
    pub fn read_line(
        &mut self,
        reader: &mut impl Read,
        bytes_max: usize,
    ) -> Result<Option<Vec<u8>>, ProtocolError> {
        loop {
            if let Some(line) = self.take_line(bytes_max)? {
                return Ok(Some(line));
            }
            if self.fill(reader)? == 0 {
                return if self.pending.is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Truncated)
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(bytes: &[u8], bytes_max: usize) -> Vec<Result<Option<Vec<u8>>, String>> {
        let mut reader = LineReader::default();
        let mut input = bytes;
        let mut results = Vec::new();
        loop {
            let result = reader
                .read_line(&mut input, bytes_max)
                .map_err(|error| error.to_string());
            let done = !matches!(result, Ok(Some(_)));
            results.push(result);
            if done {
                return results;
            }
        }
    }

    #[test]
    fn lines_are_split_and_bounded() {
        assert_eq!(
            read_all(b"ab\ncd\n", 16),
            vec![Ok(Some(b"ab".to_vec())), Ok(Some(b"cd".to_vec())), Ok(None)]
        );
        assert_eq!(
            read_all(b"ab\ncd", 16),
            vec![
                Ok(Some(b"ab".to_vec())),
                Err("the stream ended inside a line".to_owned())
            ]
        );
        // A line of exactly the bound is refused: the bound counts the newline.
        assert_eq!(
            read_all(b"abcd\n", 4),
            vec![Err("a line longer than 4 bytes".to_owned())]
        );
        assert_eq!(
            read_all(b"abc\n", 4),
            vec![Ok(Some(b"abc".to_vec())), Ok(None)]
        );
        // No newline in sight: the reader stops at the bound instead of buffering on.
        let endless = vec![b'x'; 10 * READ_CHUNK_BYTES];
        assert_eq!(
            read_all(&endless, 100),
            vec![Err("a line longer than 100 bytes".to_owned())]
        );
    }

    #[test]
    fn messages_round_trip_and_writes_are_bounded() {
        let request = Request::Create {
            id: "c1".to_owned(),
            state_dir: "/run/state".into(),
            bundle_dir: "/run/containers/c1".into(),
            stdout_fifo: "/run/containers/c1/stdout.fifo".into(),
            stderr_fifo: "/run/containers/c1/stderr.fifo".into(),
        };
        let mut wire = Vec::new();
        write_line(&mut wire, &request, REQUEST_BYTES_MAX).unwrap();
        let line = LineReader::default()
            .read_line(&mut &wire[..], REQUEST_BYTES_MAX)
            .unwrap()
            .unwrap();
        assert_eq!(serde_json::from_slice::<Request>(&line).unwrap(), request);
        let error = write_line(&mut Vec::new(), &request, 10).unwrap_err();
        assert!(matches!(error, ProtocolError::TooLong { bytes_max: 10 }));
    }

    #[test]
    fn failure_texts_are_cut_on_a_character_boundary() {
        let long = "é".repeat(MESSAGE_BYTES_MAX);
        let Response::Failed { message, .. } = Response::failed(Step::Create, &long) else {
            panic!("a failure");
        };
        assert!(message.len() <= MESSAGE_BYTES_MAX && message.len() >= MESSAGE_BYTES_MAX - 1);
        let mut wire = Vec::new();
        write_line(
            &mut wire,
            &Response::failed(Step::Create, &long),
            RESPONSE_BYTES_MAX,
        )
        .unwrap();
    }
}
