//! A service's health check (`[health]` in a spec): what to probe, how often, and how many
//! failures make a container unhealthy. Parsed and checked here, with errors naming the
//! field (`health.http`, `health.timeout_ms`, ...); the node that runs a container probes it
//! (`shoal::containers::health` decides when, `shoal::containers::probe` probes).
//!
//! Defaults follow Docker's `HEALTHCHECK`: every 30 s, a 30 s timeout, 3 retries, no start
//! period. A check names exactly one of:
//! - `http = "http://127.0.0.1:8080/healthz"`: a `GET` whose status is 2xx or 3xx. The host
//!   is `127.0.0.1` or `localhost`, which means the container itself (its own address when it
//!   has one on the node bridge);
//! - `tcp = 8080`: a connection to the container's port;
//! - `cmd = ["/bin/check", "arg"]`: a command run inside the container (its namespaces,
//!   root, user and environment), healthy when it exits 0 within the timeout. The program is
//!   an absolute path or a name the container's `PATH` finds; no shell is involved, so write
//!   `["/bin/sh", "-c", "..."]` for one.

use serde::{Deserialize, Serialize};

/// Bounds of the timing fields, in milliseconds.
pub const HEALTH_INTERVAL_MS_MIN: u64 = 500;
pub const HEALTH_INTERVAL_MS_MAX: u64 = 3_600_000;
pub const HEALTH_TIMEOUT_MS_MIN: u64 = 100;
pub const HEALTH_TIMEOUT_MS_MAX: u64 = 300_000;
pub const HEALTH_START_PERIOD_MS_MAX: u64 = 3_600_000;
/// Consecutive failures before unhealthy: 1 to this.
pub const HEALTH_RETRIES_MAX: u32 = 100;
/// Longest `http` URL.
pub const HEALTH_URL_BYTES_MAX: usize = 1024;
/// Most words of a `cmd`, and most bytes of them all together.
pub const HEALTH_CMD_ARGS_MAX: usize = 64;
pub const HEALTH_CMD_BYTES_MAX: usize = 4096;

/// Docker's defaults.
pub const HEALTH_INTERVAL_MS_DEFAULT: u64 = 30_000;
pub const HEALTH_TIMEOUT_MS_DEFAULT: u64 = 30_000;
pub const HEALTH_RETRIES_DEFAULT: u32 = 3;
pub const HEALTH_START_PERIOD_MS_DEFAULT: u64 = 0;

fn default_interval_ms() -> u64 {
    HEALTH_INTERVAL_MS_DEFAULT
}
fn default_timeout_ms() -> u64 {
    HEALTH_TIMEOUT_MS_DEFAULT
}
fn default_retries() -> u32 {
    HEALTH_RETRIES_DEFAULT
}

/// The `[health]` table of a service spec.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http://127.0.0.1:<port>/<path>` (or `localhost`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// A port of the container to connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<u16>,
    /// A command to run inside the container: healthy when it exits 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub start_period_ms: u64,
}

/// What a check probes, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum HealthProbe {
    /// `GET path` on `port`, with `host` as the `Host` header.
    Http {
        host: String,
        port: u16,
        path: String,
    },
    Tcp {
        port: u16,
    },
    /// Run `argv` inside the container.
    Cmd {
        argv: Vec<String>,
    },
}

/// A health check field that failed validation; `field` is the name under `health.`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("health.{field}: {reason}")]
pub struct HealthError {
    pub field: &'static str,
    pub reason: String,
}

fn error(field: &'static str, reason: impl Into<String>) -> HealthError {
    HealthError {
        field,
        reason: reason.into(),
    }
}

impl HealthCheck {
    /// An HTTP check of `url` with the default timing.
    pub fn http(url: impl Into<String>) -> HealthCheck {
        HealthCheck {
            http: Some(url.into()),
            tcp: None,
            ..HealthCheck::tcp(1)
        }
    }

    /// A TCP check of `port` with the default timing.
    pub fn tcp(port: u16) -> HealthCheck {
        HealthCheck {
            http: None,
            tcp: Some(port),
            cmd: None,
            interval_ms: HEALTH_INTERVAL_MS_DEFAULT,
            timeout_ms: HEALTH_TIMEOUT_MS_DEFAULT,
            retries: HEALTH_RETRIES_DEFAULT,
            start_period_ms: HEALTH_START_PERIOD_MS_DEFAULT,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), HealthError> {
        self.probe()?;
        if !(HEALTH_INTERVAL_MS_MIN..=HEALTH_INTERVAL_MS_MAX).contains(&self.interval_ms) {
            return Err(error(
                "interval_ms",
                format!(
                    "{} is outside {HEALTH_INTERVAL_MS_MIN}..={HEALTH_INTERVAL_MS_MAX}",
                    self.interval_ms
                ),
            ));
        }
        if !(HEALTH_TIMEOUT_MS_MIN..=HEALTH_TIMEOUT_MS_MAX).contains(&self.timeout_ms) {
            return Err(error(
                "timeout_ms",
                format!(
                    "{} is outside {HEALTH_TIMEOUT_MS_MIN}..={HEALTH_TIMEOUT_MS_MAX}",
                    self.timeout_ms
                ),
            ));
        }
        if self.timeout_ms > self.interval_ms {
            return Err(error(
                "timeout_ms",
                format!(
                    "{} is longer than health.interval_ms ({})",
                    self.timeout_ms, self.interval_ms
                ),
            ));
        }
        if !(1..=HEALTH_RETRIES_MAX).contains(&self.retries) {
            return Err(error(
                "retries",
                format!("{} is outside 1..={HEALTH_RETRIES_MAX}", self.retries),
            ));
        }
        if self.start_period_ms > HEALTH_START_PERIOD_MS_MAX {
            return Err(error(
                "start_period_ms",
                format!(
                    "{} is more than {HEALTH_START_PERIOD_MS_MAX}",
                    self.start_period_ms
                ),
            ));
        }
        Ok(())
    }

    /// What to probe: exactly one of `http`, `tcp` and `cmd` must be given.
    pub fn probe(&self) -> Result<HealthProbe, HealthError> {
        match (&self.http, self.tcp, &self.cmd) {
            (Some(url), None, None) => {
                parse_http_url(url).map_err(|reason| error("http", reason.to_string()))
            }
            (None, Some(0), None) => Err(error("tcp", "port 0 is not a port")),
            (None, Some(port), None) => Ok(HealthProbe::Tcp { port }),
            (None, None, Some(argv)) => parse_cmd(argv),
            (None, None, None) => Err(error("http", "one of http, tcp or cmd must be given")),
            _ => Err(error(
                if self.http.is_some() { "http" } else { "tcp" },
                "give only one of http, tcp and cmd",
            )),
        }
    }
}

/// Why a health check's `http` URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpUrlError {
    #[error("is longer than {HEALTH_URL_BYTES_MAX} bytes")]
    TooLong,
    #[error("{url:?} does not start with \"http://\"")]
    NotHttp { url: String },
    #[error("{url:?} has no path (such as /healthz)")]
    NoPath { url: String },
    #[error("{url:?} has no port (http://127.0.0.1:<port>/<path>)")]
    NoPort { url: String },
    #[error("{url:?}: host {host:?} is not 127.0.0.1 or localhost (the container itself)")]
    Host { url: String, host: String },
    #[error("{url:?}: {port:?} is not a port (1 to 65535)")]
    Port { url: String, port: String },
    #[error("{url:?}: the path contains {bad:?} (only visible ASCII, no '#')")]
    Path { url: String, bad: char },
}

/// A `cmd`: at least a program, bounded, no NUL byte (a process's arguments are C strings).
fn parse_cmd(argv: &[String]) -> Result<HealthProbe, HealthError> {
    let Some(program) = argv.first() else {
        return Err(error(
            "cmd",
            "is empty; give the program and its arguments, e.g. [\"/bin/check\"]",
        ));
    };
    if program.is_empty() {
        return Err(error("cmd", "the program (the first word) is empty"));
    }
    if argv.len() > HEALTH_CMD_ARGS_MAX {
        return Err(error(
            "cmd",
            format!("has {} words, more than {HEALTH_CMD_ARGS_MAX}", argv.len()),
        ));
    }
    let bytes: usize = argv.iter().map(String::len).sum();
    if bytes > HEALTH_CMD_BYTES_MAX {
        return Err(error(
            "cmd",
            format!("is {bytes} bytes long, more than {HEALTH_CMD_BYTES_MAX}"),
        ));
    }
    if let Some(word) = argv.iter().position(|word| word.contains('\0')) {
        return Err(error("cmd", format!("word {word} contains a NUL byte")));
    }
    Ok(HealthProbe::Cmd {
        argv: argv.to_vec(),
    })
}

/// `http://127.0.0.1:<port>/<path>` or `http://localhost:<port>/<path>`.
fn parse_http_url(url: &str) -> Result<HealthProbe, HttpUrlError> {
    let url_owned = || url.to_owned();
    if url.len() > HEALTH_URL_BYTES_MAX {
        return Err(HttpUrlError::TooLong);
    }
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HttpUrlError::NotHttp { url: url_owned() })?;
    let (authority, path) = rest
        .find('/')
        .map(|slash| rest.split_at(slash))
        .ok_or_else(|| HttpUrlError::NoPath { url: url_owned() })?;
    let (host, port) = authority
        .rsplit_once(':')
        .ok_or_else(|| HttpUrlError::NoPort { url: url_owned() })?;
    if host != "127.0.0.1" && host != "localhost" {
        return Err(HttpUrlError::Host {
            url: url_owned(),
            host: host.to_owned(),
        });
    }
    let port_number: u16 =
        port.parse()
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| HttpUrlError::Port {
                url: url_owned(),
                port: port.to_owned(),
            })?;
    if let Some(bad) = path.chars().find(|c| !c.is_ascii_graphic() || *c == '#') {
        return Err(HttpUrlError::Path {
            url: url_owned(),
            bad,
        });
    }
    Ok(HealthProbe::Http {
        host: host.to_owned(),
        port: port_number,
        path: path.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<HealthProbe, &str>) {
        let check: HealthCheck = serde_json::from_str(text).unwrap();
        let result = check.validate().and_then(|()| check.probe());
        match (result, expected) {
            (Ok(probe), Ok(want)) => assert_eq!(probe, want, "{text}"),
            (Err(error), Err(want)) => {
                let message = error.to_string();
                assert!(message.starts_with(want), "{text}: {message}");
            }
            (got, want) => panic!("{text}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn probes_and_errors_name_the_field() {
        check(
            r#"{"http": "http://127.0.0.1:8080/healthz"}"#,
            Ok(HealthProbe::Http {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/healthz".into(),
            }),
        );
        check(
            r#"{"http": "http://localhost:80/"}"#,
            Ok(HealthProbe::Http {
                host: "localhost".into(),
                port: 80,
                path: "/".into(),
            }),
        );
        check(r#"{"tcp": 5432}"#, Ok(HealthProbe::Tcp { port: 5432 }));
        check(r#"{"http": "https://127.0.0.1:80/"}"#, Err("health.http: "));
        check(r#"{"http": "http://10.0.0.1:80/"}"#, Err("health.http: "));
        check(r#"{"http": "http://127.0.0.1/x"}"#, Err("health.http: "));
        check(r#"{"http": "http://127.0.0.1:80"}"#, Err("health.http: "));
        check(r#"{"http": "http://127.0.0.1:0/"}"#, Err("health.http: "));
        check(
            r#"{"http": "http://127.0.0.1:99999/"}"#,
            Err("health.http: "),
        );
        check(
            r#"{"http": "http://127.0.0.1:80/a b"}"#,
            Err("health.http: "),
        );
        check(r#"{}"#, Err("health.http: one of"));
        check(
            r#"{"tcp": 80, "http": "http://127.0.0.1:80/"}"#,
            Err("health.http: give only one"),
        );
        check(r#"{"tcp": 0}"#, Err("health.tcp: "));
        check(
            r#"{"cmd": ["/bin/check", "--quick"]}"#,
            Ok(HealthProbe::Cmd {
                argv: vec!["/bin/check".into(), "--quick".into()],
            }),
        );
        check(r#"{"cmd": []}"#, Err("health.cmd: is empty"));
        check(r#"{"cmd": [""]}"#, Err("health.cmd: the program"));
        check(r#"{"cmd": ["/bin/a\u0000b"]}"#, Err("health.cmd: word 0"));
        let long = format!(r#"{{"cmd": ["{}"]}}"#, "a".repeat(HEALTH_CMD_BYTES_MAX + 1));
        check(&long, Err("health.cmd: is 4097 bytes"));
        let many = format!(r#"{{"cmd": [{}]}}"#, vec![r#""a""#; 65].join(","));
        check(&many, Err("health.cmd: has 65 words"));
        check(
            r#"{"cmd": ["/bin/check"], "tcp": 80}"#,
            Err("health.tcp: give only one"),
        );
        check(
            r#"{"tcp": 80, "interval_ms": 100}"#,
            Err("health.interval_ms: "),
        );
        check(
            r#"{"tcp": 80, "interval_ms": 2000, "timeout_ms": 3000}"#,
            Err("health.timeout_ms: 3000 is longer than health.interval_ms"),
        );
        check(
            r#"{"tcp": 80, "timeout_ms": 10}"#,
            Err("health.timeout_ms: "),
        );
        check(r#"{"tcp": 80, "retries": 0}"#, Err("health.retries: "));
        check(
            r#"{"tcp": 80, "start_period_ms": 99999999}"#,
            Err("health.start_period_ms: "),
        );
    }

    #[test]
    fn constructors_give_valid_checks() {
        HealthCheck::http("http://127.0.0.1:80/")
            .validate()
            .unwrap();
        HealthCheck::tcp(80).validate().unwrap();
    }

    #[test]
    fn defaults_are_dockers() {
        let check: HealthCheck = serde_json::from_str(r#"{"tcp": 80}"#).unwrap();
        assert_eq!(check, HealthCheck::tcp(80));
        assert_eq!(
            (
                check.interval_ms,
                check.timeout_ms,
                check.retries,
                check.start_period_ms
            ),
            (30_000, 30_000, 3, 0)
        );
        assert!(serde_json::from_str::<HealthCheck>(r#"{"tcp": 80, "bogus": 1}"#).is_err());
    }
}
