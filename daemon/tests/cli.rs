//! The `shoal` binary's offline commands: config checks whose errors name the key and the
//! file, the config key list, CA and certificate files (0600 keys, never overwritten
//! without --force), and spec files validated before any daemon is contacted.

mod host_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use host_support::BINARY;

fn shoal(args: &[&str]) -> Output {
    Command::new(BINARY)
        .args(args)
        .env_remove("SHOAL_SOCKET")
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

const GOOD: &str = r#"node_name = "node-a"
listen = "127.0.0.1:7443"
peers = ["127.0.0.1:7444"]
[tls]
ca_file = "/etc/shoal/ca.pem"
cert_file = "/etc/shoal/node.pem"
key_file = "/etc/shoal/node.key"
[sync]
interval_ms = 500
"#;

fn check_config(dir: &Path, file: &str, body: &str) -> Output {
    let path = dir.join(file);
    std::fs::write(&path, body).unwrap();
    shoal(&["daemon", "--check-config", path.to_str().unwrap()])
}

#[test]
fn check_config_accepts_good_and_names_key_and_file_on_bad() {
    let dir = tempfile::tempdir().unwrap();
    let good = check_config(dir.path(), "good.toml", GOOD);
    assert!(good.status.success(), "{}", text(&good));
    assert!(text(&good).starts_with("OK"), "{}", text(&good));

    let cases = [
        (
            "unknown.toml",
            GOOD.replace("interval_ms", "intervall_ms"),
            "intervall_ms",
        ),
        (
            "missing-tls.toml",
            "node_name = \"node-a\"\nlisten = \"127.0.0.1:7443\"\n".to_string(),
            "tls",
        ),
        (
            "bad-address.toml",
            GOOD.replace("127.0.0.1:7443", "localhost:http"),
            "listen",
        ),
        (
            "bad-node.toml",
            GOOD.replace("node-a", "Node A"),
            "node_name",
        ),
        (
            "no-advertise.toml",
            GOOD.replace("127.0.0.1:7443", "0.0.0.0:7443"),
            "advertise",
        ),
    ];
    for (file, body, key) in cases {
        let output = check_config(dir.path(), file, &body);
        let message = text(&output);
        assert_eq!(output.status.code(), Some(1), "{file}: {message}");
        assert!(
            message.contains(key),
            "{file}: {message:?} does not name {key}"
        );
        assert!(
            message.contains(file),
            "{file}: {message:?} does not name the file"
        );
    }
    let missing = shoal(&["daemon", "--check-config", "/nonexistent/shoal.toml"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("/nonexistent/shoal.toml"));
}

/// A config for `node` whose tls files are the ones given.
fn config_with_tls(state_dir: &Path, node: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "node_name = \"{node}\"\nlisten = \"127.0.0.1:7443\"\nstate_dir = \"{}\"\n\
         [tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
         [containers]\nenabled = false\n",
        state_dir.display(),
        ca.display(),
        cert.display(),
        key.display()
    )
}

#[test]
fn check_config_refuses_the_tls_files_the_daemon_refuses() {
    use shoal::sync::pki::{self, Validity};
    use std::time::{Duration, SystemTime};
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    let out = dir.path().join("nodes");
    let ca = pki::init_ca(&ca_dir, false).unwrap();
    let node_a =
        pki::issue_node_cert(&ca_dir, &"node-a".parse().unwrap(), &[], 30, &out, false).unwrap();
    let now = SystemTime::now();
    let expired = pki::issue_node_cert_with(
        &ca_dir,
        &"node-x".parse().unwrap(),
        &[],
        Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        },
        &out,
        false,
    )
    .unwrap();
    let state = dir.path().join("state");

    let good = check_config(
        dir.path(),
        "good.toml",
        &config_with_tls(&state, "node-a", &ca.cert, &node_a.cert, &node_a.key),
    );
    assert!(good.status.success(), "{}", text(&good));
    assert!(
        text(&good).contains("tls files are valid"),
        "{}",
        text(&good)
    );

    let cases = [
        (
            "mismatch.toml",
            config_with_tls(&state, "node-b", &ca.cert, &node_a.cert, &node_a.key),
            "node_name node-b does not match the node id node-a",
        ),
        (
            "expired.toml",
            config_with_tls(&state, "node-x", &ca.cert, &expired.cert, &expired.key),
            "xpired",
        ),
    ];
    for (file, body, fragment) in cases {
        let checked = check_config(dir.path(), file, &body);
        let message = text(&checked);
        assert_eq!(checked.status.code(), Some(1), "{file}: {message}");
        assert!(
            message.contains(fragment),
            "{file}: {message:?} lacks {fragment:?}"
        );
        assert!(
            message.contains(file),
            "{file}: {message:?} does not name the file"
        );
        // The daemon refuses the same config with the same reason, before it binds anything.
        let path = dir.path().join(file);
        let daemon = shoal(&["daemon", "--config", path.to_str().unwrap()]);
        let refused = text(&daemon);
        assert_eq!(daemon.status.code(), Some(1), "{file}: {refused}");
        assert!(
            refused.contains(fragment),
            "{file}: {refused:?} lacks {fragment:?}"
        );
    }
}

#[test]
fn config_keys_are_sorted_and_the_example_checks() {
    let output = shoal(&["daemon", "--print-config-keys"]);
    assert!(output.status.success());
    let keys: Vec<String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut sorted = keys.clone();
    sorted.sort();
    assert_eq!(keys, sorted);
    for key in [
        "node_name",
        "tls.ca_file",
        "sync.interval_ms",
        "api.socket",
        "capacity.cpu_millis",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} missing from {keys:?}");
    }
    let example = shoal(&["daemon", "--print-example-config"]);
    assert!(example.status.success());
    let dir = tempfile::tempdir().unwrap();
    let checked = check_config(
        dir.path(),
        "example.toml",
        &String::from_utf8(example.stdout).unwrap(),
    );
    assert!(checked.status.success(), "{}", text(&checked));
}

#[test]
fn certificates_are_0600_and_not_overwritten_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    let out = dir.path().join("nodes");
    let (ca, out) = (ca.to_str().unwrap(), out.to_str().unwrap());
    let init = shoal(&["ca", "init", "--dir", ca]);
    assert!(init.status.success(), "{}", text(&init));
    let mode = |path: &str| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&format!("{ca}/ca.key")), 0o600);
    let ca_key = std::fs::read(format!("{ca}/ca.key")).unwrap();

    let again = shoal(&["ca", "init", "--dir", ca]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again).contains("ca.key") || text(&again).contains("ca.pem"),
        "{}",
        text(&again)
    );
    assert_eq!(
        std::fs::read(format!("{ca}/ca.key")).unwrap(),
        ca_key,
        "ca key overwritten"
    );

    let issue = |force: bool| {
        let mut args = vec![
            "cert",
            "issue",
            "--node",
            "node-a",
            "--ca-dir",
            ca,
            "--out-dir",
            out,
            "--address",
            "127.0.0.1",
            "--address",
            "node-a.example",
        ];
        if force {
            args.push("--force");
        }
        shoal(&args)
    };
    let first = issue(false);
    assert!(first.status.success(), "{}", text(&first));
    let key_path = format!("{out}/node-a.key");
    assert_eq!(mode(&key_path), 0o600);
    let key = std::fs::read(&key_path).unwrap();
    let refused = issue(false);
    assert_eq!(refused.status.code(), Some(1));
    assert!(text(&refused).contains("node-a"), "{}", text(&refused));
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        key,
        "node key overwritten without --force"
    );
    let forced = issue(true);
    assert!(forced.status.success(), "{}", text(&forced));
    assert_ne!(
        std::fs::read(&key_path).unwrap(),
        key,
        "--force did not issue a new key"
    );
    assert_eq!(mode(&key_path), 0o600);

    let forced_ca = shoal(&["ca", "init", "--dir", ca, "--force"]);
    assert!(forced_ca.status.success(), "{}", text(&forced_ca));
    assert_ne!(std::fs::read(format!("{ca}/ca.key")).unwrap(), ca_key);
}

#[test]
fn a_bad_spec_is_refused_before_contacting_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("web.toml");
    std::fs::write(
        &spec,
        "name = \"web\"\nimage = \"/i.tar\"\nreplicas = \"three\"\n",
    )
    .unwrap();
    // The socket does not exist: an error about the spec proves validation came first.
    let socket = dir.path().join("absent.sock");
    let output = shoal(&[
        "--socket",
        socket.to_str().unwrap(),
        "service",
        "apply",
        "-f",
        spec.to_str().unwrap(),
    ]);
    let message = text(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("web.toml") && message.contains("replicas"),
        "{message}"
    );

    std::fs::write(&spec, "name = \"web\"\nimage = \"/i.tar\"\n").unwrap();
    let output = shoal(&[
        "--socket",
        socket.to_str().unwrap(),
        "service",
        "apply",
        "-f",
        spec.to_str().unwrap(),
    ]);
    let message = text(&output);
    assert_eq!(output.status.code(), Some(1));
    assert!(message.contains("absent.sock"), "{message}");
}

#[test]
fn help_teaches_with_examples() {
    let output = shoal(&["--help"]);
    assert!(output.status.success());
    let help = text(&output);
    for needle in [
        "Examples:",
        "shoal demo",
        "shoal service apply -f",
        "--json",
        "--socket",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}");
    }
}

#[test]
fn the_daemon_refuses_missing_tls_files_and_a_name_that_is_not_in_the_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = GOOD.replace(
        "[tls]",
        &format!("state_dir = \"{}\"\n[tls]", state.display()),
    );
    // Files it cannot open (systemd credentials exist only inside the unit) are not checked,
    // and it says so.
    let output = check_config(dir.path(), "missing.toml", &config);
    assert!(output.status.success(), "{}", text(&output));
    assert!(
        text(&output).contains("tls files were not checked")
            && text(&output).contains("warning: cannot open /etc/shoal/node.pem"),
        "{}",
        text(&output)
    );
    let path = dir.path().join("missing.toml");
    let run = shoal(&["daemon", "--config", path.to_str().unwrap()]);
    let message = text(&run);
    assert_eq!(run.status.code(), Some(1), "{message}");
    assert!(
        message.contains("tls.cert_file") && message.contains("/etc/shoal/node.pem"),
        "{message}"
    );
    assert!(
        !state.join("state.redb").exists(),
        "nothing is created before tls loads"
    );

    let ca = dir.path().join("ca");
    shoal::sync::pki::init_ca(&ca, false).unwrap();
    let paths = shoal::sync::pki::issue_node_cert(
        &ca,
        &"node-b".parse().unwrap(),
        &["127.0.0.1".to_string()],
        1,
        dir.path(),
        false,
    )
    .unwrap();
    let config = config
        .replace("/etc/shoal/ca.pem", paths.ca_cert.to_str().unwrap())
        .replace("/etc/shoal/node.pem", paths.cert.to_str().unwrap())
        .replace("/etc/shoal/node.key", paths.key.to_str().unwrap());
    // --check-config runs the daemon's own tls check once the files can be read.
    let output = check_config(dir.path(), "mismatch.toml", &config);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    assert!(
        text(&output).contains("node_name node-a does not match the node id node-b"),
        "{}",
        text(&output)
    );
    let path = dir.path().join("mismatch.toml");
    let run = shoal(&["daemon", "--config", path.to_str().unwrap()]);
    let message = text(&run);
    assert_eq!(run.status.code(), Some(1), "{message}");
    assert!(
        message.contains("node_name node-a") && message.contains("node-b"),
        "{message}"
    );
}
