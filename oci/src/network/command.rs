//! Running iproute2's `ip` with errors that name the whole command line, and
//! decoding its `-json` output.

use serde::de::DeserializeOwned;

use super::NetworkError;
use super::spawn;

/// The iproute2 binary, looked up in `PATH`.
const IP: &str = "ip";

/// Standard error kept in an error message, so a chatty failure stays readable.
const STDERR_BYTES_MAX: usize = 2048;

/// Runs `ip args...` to completion and returns its standard output.
pub(crate) fn ip(args: &[&str]) -> Result<Vec<u8>, NetworkError> {
    let output =
        spawn::run(IP, args, STDERR_BYTES_MAX as u64).map_err(|source| NetworkError::Spawn {
            command: command_line(args),
            source,
        })?;
    if !output.status.success() {
        return Err(NetworkError::Command {
            command: command_line(args),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output.stdout)
}

/// Runs `ip -json args...` and decodes what it prints. `ip` prints nothing at
/// all for an empty result in some versions, which decodes as an empty list.
pub(crate) fn ip_json<T: DeserializeOwned + Default>(args: &[&str]) -> Result<T, NetworkError> {
    let mut full = vec!["-json"];
    full.extend_from_slice(args);
    let stdout = ip(&full)?;
    if stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&stdout).map_err(|error| NetworkError::Output {
        command: command_line(&full),
        reason: error.to_string(),
    })
}

fn command_line(args: &[&str]) -> String {
    format!("{IP} {}", args.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_command_is_named_in_the_error() {
        let error = ip(&["link", "show", "dev", "shoal-no-such-link-0"]).unwrap_err();
        let message = error.to_string();
        assert!(
            message.contains("`ip link show dev shoal-no-such-link-0` failed"),
            "{message}"
        );
    }

    #[test]
    fn json_output_decodes() {
        let links: Vec<serde_json::Value> = ip_json(&["link", "show", "dev", "lo"]).unwrap();
        assert_eq!(links.len(), 1);
        assert_eq!(links[0]["ifname"], "lo");
    }
}
