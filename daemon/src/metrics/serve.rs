//! The metrics endpoint: plain HTTP/1.1 on the configured `[metrics] listen` address only,
//! `GET /metrics` answers the registry in OpenMetrics text, anything else 404 (405 for
//! another method on `/metrics`).
//!
//! Bounds: at most `CONNECTIONS_MAX` connections at once (more are closed unanswered), one
//! request per connection (no keep-alive: a scraper reconnects each interval, so no idle
//! connection is ever kept), request headers of at most `HEADER_BYTES_MAX` bytes and
//! `HEADERS_MAX` lines read within `HEADER_READ_TIMEOUT_MS`, and the whole connection within
//! `CONNECTION_TIMEOUT_MS`. A scrape first calls `sample` (off the async workers, since it
//! may read the node under its lock) to set the gauges, then encodes.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::Metrics;

/// The one path served.
pub const PATH_METRICS: &str = "/metrics";
/// Connections served at once; more are closed at once.
pub const CONNECTIONS_MAX: usize = 16;
/// Largest request head read (hyper's smallest read buffer is 8 KiB).
pub const HEADER_BYTES_MAX: usize = 8192;
/// Most header lines in a request.
pub const HEADERS_MAX: usize = 32;
/// Time a connection has to send its request head.
pub const HEADER_READ_TIMEOUT_MS: u64 = 5_000;
/// Time a connection may stay open in all.
pub const CONNECTION_TIMEOUT_MS: u64 = 10_000;
/// The OpenMetrics text content type.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Sets the sampled gauges from the current state before a scrape is encoded.
pub type Sample = Arc<dyn Fn(&Metrics) + Send + Sync>;

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("metrics.listen {address}: cannot listen: {source}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the endpoint's TCP listener on `address` (port 0 picks a free port).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| ServeError::Bind { address, source })
}

/// Serves scrapes on `listener` until `shutdown` completes; open connections are then
/// dropped.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    sample: Sample,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Out of file descriptors and the like: wait instead of spinning.
                        tracing::warn!(%error, "metrics: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    tracing::debug!(%remote, connections_max = CONNECTIONS_MAX, "metrics: refused connection: too many connections");
                    continue;
                };
                let metrics = metrics.clone();
                let sample = sample.clone();
                connections.spawn(async move {
                    let served = tokio::time::timeout(
                        Duration::from_millis(CONNECTION_TIMEOUT_MS),
                        serve_connection(stream, metrics, sample),
                    )
                    .await;
                    match served {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::debug!(%remote, %error, "metrics: connection failed"),
                        Err(_) => tracing::debug!(%remote, "metrics: connection timed out"),
                    }
                    drop(permit);
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    metrics: Arc<Metrics>,
    sample: Sample,
) -> Result<(), hyper::Error> {
    let service = service_fn(move |request: Request<Incoming>| {
        let metrics = metrics.clone();
        let sample = sample.clone();
        async move { Ok::<_, Infallible>(answer(&request, metrics, sample).await) }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(HEADER_READ_TIMEOUT_MS))
        .max_buf_size(HEADER_BYTES_MAX)
        .max_header_size(HEADER_BYTES_MAX)
        .max_headers(HEADERS_MAX)
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service)
        .await
}

async fn answer(
    request: &Request<Incoming>,
    metrics: Arc<Metrics>,
    sample: Sample,
) -> Response<Full<Bytes>> {
    if request.uri().path() != PATH_METRICS {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: only GET /metrics is served\n",
        );
    }
    if request.method() != Method::GET {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is allowed on /metrics\n",
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return response;
    }
    let encoded = tokio::task::spawn_blocking(move || {
        sample(&metrics);
        metrics.encode()
    })
    .await;
    match encoded {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(CONTENT_TYPE),
            );
            response
        }
        Err(error) => {
            tracing::error!(%error, "metrics: sampling panicked");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "sampling failed\n")
        }
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: SocketAddr, request: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        // Read until the server closes; a reset after a refused request ends it too.
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        while let Ok(length) = stream.read(&mut buffer).await {
            if length == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..length]);
        }
        String::from_utf8_lossy(&response).into_owned()
    }

    #[tokio::test]
    async fn scrapes_sample_then_encode_and_other_paths_are_404() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let address = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        metrics.reconcile_pass();
        let sample: Sample = Arc::new(|metrics: &Metrics| {
            metrics.set_members([("live", 3), ("suspect", 0), ("down", 0)])
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, metrics, sample, async {
            let _ = stopped.await;
        }));

        let response = get(address, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains(CONTENT_TYPE), "{response}");
        assert!(
            response.contains("\nshoal_reconcile_passes_total 1\n"),
            "{response}"
        );
        assert!(
            response.contains("\nshoal_members{state=\"live\"} 3\n"),
            "{response}"
        );
        assert!(response.ends_with("# EOF\n"), "{response}");

        let response = get(address, "GET /other HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(response.starts_with("HTTP/1.1 404"), "{response}");
        let response = get(
            address,
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(response.starts_with("HTTP/1.1 405"), "{response}");

        // A head over the bound is refused, not buffered.
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(HEADER_BYTES_MAX * 2)
        );
        let response = get(address, &huge).await;
        assert!(response.starts_with("HTTP/1.1 431"), "{response}");

        let _ = stop.send(());
        server.await.unwrap();
    }
}
