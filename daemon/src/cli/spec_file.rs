//! Service spec files for `shoal service apply -f FILE`: either one service (`name = ...`
//! next to the spec fields) or several as `[[service]]` tables. Parsed and validated on the
//! client, so a mistake is reported with the file, the service and the field before anything
//! is sent to the daemon.

use std::path::{Path, PathBuf};

use shoal_crdt::{ServiceName, ServiceSpec};

use crate::api::{NamedSpec, SERVICES_PER_REQUEST_MAX};

/// Largest spec file read.
pub const SPEC_FILE_BYTES_MAX: u64 = 1 << 20;

/// Most services in one file: as many as one apply request takes.
pub const SERVICES_PER_FILE_MAX: usize = SERVICES_PER_REQUEST_MAX;

/// Why a spec file was refused; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    #[error("cannot read spec file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spec file {path} is {size} bytes, more than the {max} allowed")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("spec file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: SpecTextError,
    },
}

/// Why spec text was refused: a message naming the service and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SpecTextError(String);

impl From<String> for SpecTextError {
    fn from(message: String) -> Self {
        SpecTextError(message)
    }
}

/// Reads and validates the spec file at `path`.
pub fn load(path: &Path) -> Result<Vec<NamedSpec>, SpecFileError> {
    let read_error = |source| SpecFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > SPEC_FILE_BYTES_MAX {
        return Err(SpecFileError::TooLarge {
            path: path.to_path_buf(),
            size,
            max: SPEC_FILE_BYTES_MAX,
        });
    }
    let text = std::fs::read_to_string(path).map_err(read_error)?;
    parse(&text).map_err(|source| SpecFileError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

/// Parses and validates spec text; the error names the service and field, not the file.
pub fn parse(text: &str) -> Result<Vec<NamedSpec>, SpecTextError> {
    let table: toml::Table =
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
    let tables = match table.get("service") {
        Some(toml::Value::Array(items)) => {
            if table.len() != 1 {
                let extra: Vec<&str> = table
                    .keys()
                    .filter(|k| k.as_str() != "service")
                    .map(String::as_str)
                    .collect();
                return Err(SpecTextError(format!(
                    "keys {extra:?} are not allowed next to [[service]] tables"
                )));
            }
            let mut tables = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                match item {
                    toml::Value::Table(t) => tables.push(t.clone()),
                    _ => return Err(SpecTextError(format!("service[{index}] is not a table"))),
                }
            }
            tables
        }
        _ => vec![table],
    };
    if tables.is_empty() {
        return Err(SpecTextError("no service in the file".to_string()));
    }
    if tables.len() > SERVICES_PER_FILE_MAX {
        return Err(SpecTextError(format!(
            "{} services, more than the {SERVICES_PER_FILE_MAX} allowed in one file",
            tables.len()
        )));
    }
    let mut services: Vec<NamedSpec> = Vec::with_capacity(tables.len());
    for (index, mut table) in tables.into_iter().enumerate() {
        let name_value = table
            .remove("name")
            .ok_or_else(|| format!("service #{}: missing field `name`", index + 1))?;
        let name_text = name_value
            .as_str()
            .ok_or_else(|| format!("service #{}: field `name` must be a string", index + 1))?;
        let name: ServiceName = name_text
            .parse()
            .map_err(|e| format!("service #{}: field `name`: {e}", index + 1))?;
        let spec: ServiceSpec =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    format!("service {name}: {}", e.to_string().trim_end())
                })?;
        spec.validate()
            .map_err(|e| format!("service {name}: {e}"))?;
        if services.iter().any(|s| s.name == name) {
            return Err(SpecTextError(format!("service {name} is defined twice")));
        }
        services.push(NamedSpec { name, spec });
    }
    Ok(services)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_error(text: &str, fragments: &[&str]) {
        let message = parse(text).expect_err("spec must be refused").to_string();
        for fragment in fragments {
            assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
        }
    }

    #[test]
    fn a_single_service_parses_with_defaults() {
        let services = parse(
            r#"
name = "web"
image = "/var/lib/images/web.tar"
command = ["/bin/httpd", "-f"]
env = { GREETING = "hello" }
"#,
        )
        .unwrap();
        assert_eq!(services.len(), 1);
        assert_eq!(services[0].name.as_ref(), "web");
        assert_eq!(services[0].spec.replicas, 1);
        assert_eq!(services[0].spec.env["GREETING"], "hello");
    }

    #[test]
    fn several_services_parse_in_order() {
        let services = parse(
            r#"
[[service]]
name = "web"
image = "/img/web.tar"
replicas = 2
[service.resources]
cpu_millis = 250

[[service]]
name = "db"
image = "/img/db.tar"
restart = "always"
"#,
        )
        .unwrap();
        let names: Vec<&str> = services.iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(names, ["web", "db"]);
        assert_eq!(services[0].spec.resources.cpu_millis, 250);
        assert_eq!(services[0].spec.replicas, 2);
    }

    #[test]
    fn mistakes_name_the_service_and_the_field() {
        check_error("image = \"/i\"\n", &["name"]);
        check_error("name = \"Bad Name\"\nimage = \"/i\"\n", &["name"]);
        check_error(
            "name = \"web\"\nimage = \"/i\"\nreplica = 3\n",
            &["web", "replica"],
        );
        check_error(
            "name = \"web\"\nimage = \"/i\"\nrestart = \"sometimes\"\n",
            &["web", "sometimes"],
        );
        check_error(
            "[[service]]\nname = \"a\"\nimage = \"/i\"\n[[service]]\nname = \"a\"\nimage = \"/i\"\n",
            &["a", "twice"],
        );
        check_error(
            "name = \"web\"\nimage = \"/i\"\nreplicas = -1\n",
            &["web", "replicas"],
        );
        check_error(
            "name = \"web\"\nimage = \"/i\"\nports = [\"80:0\"]\n",
            &["web", "ports[0]", "container port"],
        );
        check_error(
            "name = \"web\"\nimage = \"/i\"\nvolumes = [\"cache:/proc\"]\n",
            &["web", "volumes[0]", "/proc"],
        );
        check_error(
            "name = \"web\"\nimage = \"/i\"\n[publish]\nmode = \"everywhere\"\n",
            &["web", "everywhere"],
        );
        check_error(
            "name = \"web\"\nimage = \"/i\"\nsecrets = { k = \"k.pem\" }\n",
            &["web", "secrets.k", "absolute"],
        );
    }

    #[test]
    fn health_checks_parse_and_mistakes_name_the_field() {
        let services = parse(
            r#"
name = "web"
image = "/i"
[health]
http = "http://127.0.0.1:80/healthz"
interval_ms = 2000
timeout_ms = 1000
retries = 3
start_period_ms = 5000
"#,
        )
        .unwrap();
        let health = services[0].spec.health.clone().unwrap();
        assert_eq!(health.http.as_deref(), Some("http://127.0.0.1:80/healthz"));
        assert_eq!(
            (
                health.interval_ms,
                health.timeout_ms,
                health.retries,
                health.start_period_ms
            ),
            (2000, 1000, 3, 5000)
        );
        let base = "name = \"web\"\nimage = \"/i\"\n[health]\n";
        check_error(
            &format!("{base}http = \"http://example.com:80/\"\n"),
            &["web", "health.http", "127.0.0.1"],
        );
        check_error(
            &format!("{base}tcp = 80\ninterval_ms = 1000\ntimeout_ms = 2000\n"),
            &["web", "health.timeout_ms", "interval_ms"],
        );
        check_error(
            &format!("{base}cmd = []\n"),
            &["web", "health.cmd", "empty"],
        );
        check_error(
            &format!("{base}cmd = [\"/bin/check\"]\ntcp = 80\n"),
            &["web", "health.tcp", "only one"],
        );
        check_error(&format!("{base}tcp = 80\nretry = 3\n"), &["web", "retry"]);
    }

    #[test]
    fn load_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.toml");
        std::fs::write(&path, "name = \"web\"\nimage = \"/i\"\nbogus = 1\n").unwrap();
        let message = load(&path).unwrap_err().to_string();
        assert!(
            message.contains("spec.toml") && message.contains("bogus"),
            "{message}"
        );
    }
}
