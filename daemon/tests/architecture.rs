//! The daemon's boundaries, checked: every source file opens with a `//!` comment saying
//! what it is for; the rooms of `daemon/src` import each other only downwards (no cycle);
//! the pure rooms import no other room; the CLI talks to a daemon only through the API
//! client; the durable state and the scheduler know nothing of the API's views.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn source_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every file of `daemon/src` with its text, by path relative to `src`.
fn files() -> BTreeMap<String, String> {
    let mut found = Vec::new();
    source_files(&src(), &mut found);
    found
        .into_iter()
        .map(|path| {
            let relative = path.strip_prefix(src()).unwrap().display().to_string();
            (relative, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}

/// The room a file is in: its top folder (`lib.rs` and `main.rs` are the root). The API's
/// server (with its submodules under `api/server/`) is apart from its types and client, which
/// are a leaf everyone may import.
fn room(relative: &str) -> &str {
    if relative == "api/server.rs" || relative.starts_with("api/server/") {
        return "api::server";
    }
    relative.split_once('/').map_or("", |(room, _)| room)
}

/// The room an import reaches.
fn room_of_use(used: &str) -> &str {
    if used.starts_with("api::server") {
        return "api::server";
    }
    used.split("::").next().unwrap_or("")
}

/// The `crate::<module>::<item>` paths a file names in code (comments left out).
fn crate_paths(text: &str) -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let tail = &rest[at + "crate::".len()..];
            let path: String = tail
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            paths.insert(path.trim_end_matches(':').to_string());
            rest = tail;
        }
    }
    paths
}

#[test]
fn every_file_says_what_it_is_for() {
    for (path, text) in files() {
        assert!(
            text.trim_start().starts_with("//!"),
            "daemon/src/{path} does not open with a //! comment"
        );
    }
}

#[test]
fn rooms_import_only_downwards() {
    // Each room and the rooms it may import; the order is the layering of lib.rs.
    let allowed: BTreeMap<&str, &[&str]> = [
        // A leaf: every room may record into the daemon's metrics.
        ("metrics", &[][..]),
        ("schedule", &[][..]),
        ("state", &["metrics"][..]),
        ("api", &[][..]),
        ("swim", &["state"][..]),
        ("sync", &["state", "swim"][..]),
        ("containers", &["schedule", "state", "api"][..]),
        // `shoal logs` reads other nodes' containers through them over sync (the client and
        // the wire types of `GET /v1/logs`).
        ("api::server", &["api", "state", "containers", "sync"][..]),
        ("sim", &["schedule", "state", "containers"][..]),
        (
            "agent",
            &[
                "api",
                "api::server",
                "containers",
                "metrics",
                "schedule",
                "state",
                "swim",
                "sync",
            ][..],
        ),
        ("cli", &["api", "agent", "sync"][..]),
    ]
    .into_iter()
    .collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in files() {
        let from = room(&path);
        if from.is_empty() {
            continue;
        }
        let may = allowed
            .get(from)
            .unwrap_or_else(|| panic!("daemon/src/{path}: room {from} is not in this test"));
        for used in crate_paths(&text) {
            let to = room_of_use(&used);
            if to == from {
                continue;
            }
            assert!(
                may.contains(&to),
                "daemon/src/{path} imports crate::{used}, but {from} may import only {may:?}"
            );
            graph
                .entry(from.to_string())
                .or_default()
                .insert(to.to_string());
        }
    }
    // No cycle between rooms.
    fn visit(
        room: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(room) {
            return;
        }
        assert!(
            !stack.iter().any(|r| r == room),
            "import cycle: {} -> {room}",
            stack.join(" -> ")
        );
        stack.push(room.to_string());
        for next in graph.get(room).into_iter().flatten() {
            visit(next, graph, stack, done);
        }
        stack.pop();
        done.insert(room.to_string());
    }
    let mut done = BTreeSet::new();
    for room in graph.keys() {
        visit(room, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn the_cli_reaches_a_daemon_only_through_the_api_client() {
    for (path, text) in files() {
        if room(&path) != "cli" {
            continue;
        }
        for used in crate_paths(&text) {
            let allowed = used.starts_with("api") && !used.starts_with("api::server")
                || used.starts_with("sync::pki")
                || used.starts_with("agent::config")
                || used.starts_with("cli");
            assert!(
                allowed,
                "daemon/src/{path} imports crate::{used}: the CLI may use the API (types and \
                 client), certificates and the config file, never the node, the scheduler, \
                 the executor or the daemon's wiring"
            );
        }
    }
}

#[test]
fn the_api_types_are_a_leaf() {
    let files = files();
    for path in ["api/mod.rs", "api/client.rs"] {
        let used = crate_paths(&files[path]);
        assert!(
            used.iter().all(|u| u.starts_with("api")),
            "daemon/src/{path} must import nothing of the daemon's rooms: {used:?}"
        );
    }
}
