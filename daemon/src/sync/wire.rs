//! The sync protocol on the wire: paths, body framing and status codes.
//!
//! Version 1, both requests are `POST` with `content-type: application/vnd.shoal`:
//! - `/v1/sync`: body = our `Summary` (shoal_crdt::codec). Response 200, body =
//!   `u32 big-endian length of D` ++ `D` ++ `S`, where `D` is the encoded `Delta` the caller
//!   lacks and `S` the server's encoded `Summary`, so the caller can push back what the server
//!   lacks with `/v1/push`.
//! - `/v1/push`: body = an encoded `Delta`. Response 204 once it is durable and applied.
//!
//! Every encoded part carries the codec's magic and format version. Refusals answer with a
//! `text/plain` reason: 400 malformed, truncated or wrong-version body; 404 unknown path
//! (including other protocol versions); 405 not POST; 409 stale base (the caller pulls first);
//! 413 body over the limit (refused before it is read in full); 422 clock too far ahead;
//! 500 storage failure; 503 server busy. A refused request changes nothing.

use http::StatusCode;
use shoal_crdt::codec::{self, DecodeError};
use shoal_crdt::{Delta, Summary};

pub const PATH_SYNC: &str = "/v1/sync";
pub const PATH_PUSH: &str = "/v1/push";
/// The path prefix of the protocol version this build speaks.
pub const PATH_PREFIX: &str = "/v1/";
pub const CONTENT_TYPE: &str = "application/vnd.shoal";
const LENGTH_PREFIX_BYTES: usize = 4;

/// A body that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("{part}: {source}")]
    Decode {
        part: &'static str,
        #[source]
        source: DecodeError,
    },
    #[error("sync response truncated: {0}")]
    Truncated(String),
}

impl WireError {
    /// The status a server answers this error with.
    pub fn status(&self) -> StatusCode {
        match self {
            WireError::Decode {
                source: DecodeError::TooLarge { .. },
                ..
            } => StatusCode::PAYLOAD_TOO_LARGE,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The requests of protocol version 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Sync,
    Push,
}

/// Why a request's method and path are refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    pub status: StatusCode,
    pub message: String,
}

/// Maps method and path to a route.
pub fn route(method: &http::Method, path: &str) -> Result<Route, RouteError> {
    let route = match path {
        PATH_SYNC => Route::Sync,
        PATH_PUSH => Route::Push,
        _ if path.starts_with("/v") && !path.starts_with(PATH_PREFIX) => {
            return Err(RouteError {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "{path}: unsupported protocol version, this node speaks {PATH_PREFIX}"
                ),
            });
        }
        _ => {
            return Err(RouteError {
                status: StatusCode::NOT_FOUND,
                message: format!("{path}: no such endpoint"),
            });
        }
    };
    if method != http::Method::POST {
        return Err(RouteError {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{path}: method {method} not allowed, use POST"),
        });
    }
    Ok(route)
}

pub fn decode_summary(bytes: &[u8], body_bytes_max: usize) -> Result<Summary, WireError> {
    codec::decode_summary(bytes, body_bytes_max).map_err(|source| WireError::Decode {
        part: "summary",
        source,
    })
}

pub fn decode_delta(bytes: &[u8], body_bytes_max: usize) -> Result<Delta, WireError> {
    codec::decode_delta(bytes, body_bytes_max).map_err(|source| WireError::Decode {
        part: "delta",
        source,
    })
}

/// Frames the `/v1/sync` response body.
pub fn encode_sync_response(delta: &Delta, summary: &Summary) -> Vec<u8> {
    let delta_bytes = codec::encode_delta(delta);
    let summary_bytes = codec::encode_summary(summary);
    let length = u32::try_from(delta_bytes.len()).expect("an encoded delta is under 4 GiB");
    let mut body =
        Vec::with_capacity(LENGTH_PREFIX_BYTES + delta_bytes.len() + summary_bytes.len());
    body.extend_from_slice(&length.to_be_bytes());
    body.extend_from_slice(&delta_bytes);
    body.extend_from_slice(&summary_bytes);
    body
}

/// Parses the `/v1/sync` response body.
pub fn decode_sync_response(
    bytes: &[u8],
    body_bytes_max: usize,
) -> Result<(Delta, Summary), WireError> {
    let Some((prefix, rest)) = bytes.split_first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Err(WireError::Truncated(format!(
            "{} bytes, no length prefix",
            bytes.len()
        )));
    };
    let delta_length = u32::from_be_bytes(*prefix) as usize;
    if delta_length > rest.len() {
        return Err(WireError::Truncated(format!(
            "delta of {delta_length} bytes announced, {} present",
            rest.len()
        )));
    }
    let (delta_bytes, summary_bytes) = rest.split_at(delta_length);
    Ok((
        decode_delta(delta_bytes, body_bytes_max)?,
        decode_summary(summary_bytes, body_bytes_max)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn replica(name: &str) -> shoal_crdt::Replica {
        shoal_crdt::Replica::new(name.parse().unwrap(), Duration::from_secs(1))
    }

    #[test]
    fn routes() {
        let check = |method: http::Method, path: &str, expected: Result<Route, u16>| {
            let got = route(&method, path).map_err(|error| error.status.as_u16());
            assert_eq!(got, expected, "{method} {path}");
        };
        check(http::Method::POST, "/v1/sync", Ok(Route::Sync));
        check(http::Method::POST, "/v1/push", Ok(Route::Push));
        check(http::Method::GET, "/v1/sync", Err(405));
        check(http::Method::POST, "/v2/sync", Err(404));
        check(http::Method::POST, "/sync", Err(404));
        check(http::Method::POST, "/v1/other", Err(404));
        let message = route(&http::Method::POST, "/v2/sync").unwrap_err().message;
        assert_eq!(
            message,
            "/v2/sync: unsupported protocol version, this node speaks /v1/"
        );
    }

    #[test]
    fn sync_response_round_trips_and_refuses_truncation() {
        let a = replica("a");
        let b = replica("b");
        let delta = a.delta_for(&b.summary());
        let body = encode_sync_response(&delta, &a.summary());
        let (got_delta, got_summary) = decode_sync_response(&body, 1 << 20).unwrap();
        assert_eq!(got_delta, delta);
        assert_eq!(got_summary, a.summary());
        for cut in [0, 3, 4, body.len() - 1] {
            assert!(
                decode_sync_response(&body[..cut], 1 << 20).is_err(),
                "cut at {cut}"
            );
        }
        let mut lying = body.clone();
        lying[..4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            decode_sync_response(&lying, 1 << 20),
            Err(WireError::Truncated(_))
        ));
    }

    #[test]
    fn decode_errors_map_to_statuses() {
        let summary = codec::encode_summary(&replica("a").summary());
        let too_large = decode_summary(&summary, 2).unwrap_err();
        assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let garbage = decode_summary(b"definitely not a summary", 1 << 20).unwrap_err();
        assert_eq!(garbage.status(), StatusCode::BAD_REQUEST);
    }
}
