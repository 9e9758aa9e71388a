//! The blocking API client the CLI (and the demo and tests) use: one connection, one request
//! line and one response line at a time, every read and write bounded by a timeout.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{
    API_VERSION, ApiError, Envelope, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, Reply, Request,
};

/// A blocking client of the local API, one connection per client.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<std::os::unix::net::UnixStream>,
}

impl Client {
    /// Connects to the daemon's socket; `timeout` bounds every read and write.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ApiError> {
        let stream =
            std::os::unix::net::UnixStream::connect(path).map_err(|source| ApiError::Connect {
                path: path.to_path_buf(),
                source,
            })?;
        let io = |source| ApiError::Io {
            path: path.to_path_buf(),
            source,
        };
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        Ok(Client {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
        })
    }

    fn malformed(&self, message: String) -> ApiError {
        ApiError::Malformed {
            path: self.path.clone(),
            message,
        }
    }

    /// Sends one request and returns the decoded result.
    pub fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        request: Request,
    ) -> Result<T, ApiError> {
        let mut line = serde_json::to_vec(&Envelope {
            version: API_VERSION,
            request,
        })
        .map_err(|error| self.malformed(error.to_string()))?;
        line.push(b'\n');
        if line.len() > REQUEST_BYTES_MAX {
            return Err(ApiError::Refused(format!(
                "request of {} bytes is larger than the {REQUEST_BYTES_MAX} allowed",
                line.len()
            )));
        }
        let io = |source| ApiError::Io {
            path: self.path.clone(),
            source,
        };
        // A daemon at its connection limit answers with an error line and closes before
        // reading the request, so a write refused by a closed socket still has a reply to read.
        let write_failed = match self.reader.get_mut().write_all(&line) {
            Ok(()) => None,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Some(error)
            }
            Err(error) => return Err(io(error)),
        };
        let mut response = Vec::new();
        let limit = u64::try_from(RESPONSE_BYTES_MAX).unwrap_or(u64::MAX);
        let read = (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut response);
        if response.last() != Some(&b'\n') {
            if let Some(error) = write_failed {
                return Err(io(error));
            }
            read.map_err(io)?;
            return Err(self.malformed(
                "the daemon closed the connection without a complete response".to_string(),
            ));
        }
        let reply: Reply =
            serde_json::from_slice(&response).map_err(|error| self.malformed(error.to_string()))?;
        match reply {
            Reply::Ok(value) => {
                serde_json::from_value(value).map_err(|error| self.malformed(error.to_string()))
            }
            Reply::Error(message) => Err(ApiError::Refused(message)),
        }
    }
}
