//! Human output of the CLI: aligned tables, the status summary and error messages. `--json`
//! bypasses this module and prints the API's view types as they are.

use std::fmt::Write as _;

use crate::api::{HistoryView, NodeView, PsView, ServiceView, StatusView, VolumeView};

/// An error and its causes on one line, each message once. The daemon's error messages
/// name their cause's message (so a log line or an API reply is whole on its own) and also
/// return it as `source()`; anyhow's `{:#}` would print such a cause twice. A cause whose
/// message the line already holds adds nothing and is left out.
pub fn error_text(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let message = cause.to_string();
        if message.is_empty() || text.contains(&message) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&message);
    }
    text
}

/// A text table with a header row; columns are padded to their widest cell.
#[derive(Debug, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        assert_eq!(
            cells.len(),
            self.headers.len(),
            "a row has one cell per column"
        );
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut text = String::new();
        for line in std::iter::once(&self.headers).chain(&self.rows) {
            let mut rendered = String::new();
            for (index, (cell, width)) in line.iter().zip(&widths).enumerate() {
                if index + 1 == line.len() {
                    rendered.push_str(cell);
                } else {
                    let _ = write!(rendered, "{cell:<width$}  ");
                }
            }
            text.push_str(rendered.trim_end());
            text.push('\n');
        }
        text
    }
}

/// An HLC timestamp (`time/id`) as RFC 3339 time plus the first 8 hex digits of the node's
/// clock id; the exact value stays available through `--json`.
pub fn hlc(version: &str) -> String {
    match version.parse::<shoal_crdt::Timestamp>() {
        Ok(timestamp) => {
            let id = timestamp.get_id().to_string();
            let short: String = id.chars().take(8).collect();
            format!("{}/{short}", timestamp.get_time().to_string_rfc3339_lossy())
        }
        Err(_) => version.to_string(),
    }
}

/// `shoal service ls`.
pub fn services(services: &[ServiceView]) -> String {
    let mut table = Table::new(&["NAME", "REPLICAS", "IMAGE", "VERSION"]);
    for service in services {
        table.row(vec![
            service.name.to_string(),
            service.spec.replicas.to_string(),
            service.spec.image.clone(),
            hlc(&service.version),
        ]);
    }
    table.render()
}

/// `shoal service history`.
pub fn history(view: &HistoryView) -> String {
    let mut table = Table::new(&["VERSION", "IMAGE", "REPLICAS", "STATE"]);
    for version in &view.versions {
        let mut state = Vec::new();
        if version.current {
            state.push("current".to_owned());
        }
        if let Some(of) = &version.rollback_of {
            state.push(format!("rollback of {}", hlc(of)));
        }
        if let Some(reason) = &version.failed {
            state.push(format!("failed: {reason}"));
        }
        table.row(vec![
            hlc(&version.version),
            version.spec.image.clone(),
            version.spec.replicas.to_string(),
            if state.is_empty() {
                "replaced".to_owned()
            } else {
                state.join("; ")
            },
        ]);
    }
    table.render()
}

/// A duration in ms as a short human age.
pub fn age(milliseconds: Option<u64>) -> String {
    match milliseconds {
        None => "never".to_string(),
        Some(ms) if ms < 1000 => format!("{ms}ms"),
        Some(ms) if ms < 120_000 => format!("{:.1}s", ms as f64 / 1000.0),
        Some(ms) if ms < 7_200_000 => format!("{}m", ms / 60_000),
        Some(ms) => format!("{}h", ms / 3_600_000),
    }
}

/// `shoal nodes`.
pub fn nodes(nodes: &[NodeView]) -> String {
    let mut table = Table::new(&[
        "ID",
        "ADDRESS",
        "LIVE",
        "SWIM",
        "STATE",
        "HEARTBEAT",
        "SUBNET",
        "CPU",
        "MEMORY",
        "LABELS",
    ]);
    for node in nodes {
        let id = if node.is_self {
            format!("{} (self)", node.id)
        } else {
            node.id.to_string()
        };
        table.row(vec![
            id,
            node.address.clone(),
            if node.live { "yes" } else { "no" }.to_string(),
            node.swim.as_ref().map_or_else(
                || "-".to_string(),
                |swim| format!("{} #{}", swim.state, swim.incarnation),
            ),
            node_state(node),
            age(node.heartbeat_age_ms),
            node.subnet.clone().unwrap_or_else(|| "-".to_string()),
            format!("{}m", node.cpu_millis),
            format!("{}MiB", node.memory_bytes / (1024 * 1024)),
            if node.labels.is_empty() {
                "-".to_string()
            } else {
                node.labels
                    .iter()
                    .map(|(name, value)| format!("{name}={value}"))
                    .collect::<Vec<_>>()
                    .join(",")
            },
        ]);
    }
    let mut text = table.render();
    // Refusals and duplicates are long sentences: said under the table, one node per line.
    for node in nodes {
        if let Some(evidence) = &node.duplicated {
            let _ = writeln!(
                text,
                "DUPLICATED: two daemons write as node {}, {} ago: {evidence}; stop one of them \
                 and give it its own node name and certificate",
                node.id,
                age(node.duplicated_ms_ago)
            );
        }
    }
    for node in nodes {
        if let Some(reason) = &node.writes_refused {
            let what = if node.member { "" } else { " (not a member)" };
            let _ = writeln!(
                text,
                "refused: {}{what} from {}, {} ago: {reason}",
                node.id,
                node.address,
                age(node.writes_refused_ms_ago)
            );
        }
    }
    text
}

/// A node's STATE in `shoal nodes`: `DRAINED` with what is left of its deadline, or `active`.
fn node_state(node: &NodeView) -> String {
    match (node.drain, node.drain_left_ms) {
        (Some(_), Some(0)) => "DRAINED (deadline passed)".to_string(),
        (Some(_), Some(left)) => format!("DRAINED ({} left)", age(Some(left))),
        (Some(drain), None) => format!("DRAINED ({} ms deadline)", drain.deadline_ms),
        (None, _) if node.member => "active".to_string(),
        (None, _) => "-".to_string(),
    }
}

/// `shoal status`.
pub fn status(status: &StatusView) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "node:        {} (shoal {})",
        status.node, status.version
    );
    let _ = writeln!(text, "uptime:      {}", age(Some(status.uptime_ms)));
    let _ = writeln!(
        text,
        "state:       {} services, {} nodes, {} tombstones",
        status.services, status.nodes, status.tombstones
    );
    let _ = writeln!(text, "digest:      {}", status.digest);
    let vector: Vec<String> = status
        .version_vector
        .iter()
        .map(|(node, counter)| format!("{node}={counter}"))
        .collect();
    let _ = writeln!(text, "seen:        {}", vector.join(" "));
    let _ = writeln!(text, "clock:       {}", hlc(&status.hlc_last));
    let converged = if status.live_peers == 0 && status.peers.is_empty() {
        "unknown: no peer known yet, nothing to compare with"
    } else if status.live_peers == 0 {
        "unknown: no live peer, nothing to compare with"
    } else if status.converged {
        "yes, every live peer's last summary equals ours"
    } else {
        "not yet, as far as this node knows"
    };
    let _ = writeln!(text, "converged:   {converged}");
    if let Some(incarnation) = &status.incarnation {
        let _ = writeln!(text, "incarnation: {incarnation}");
    }
    if let Some(contest) = &status.identity_contested {
        let _ = writeln!(text, "identity:    CONTESTED: {contest}");
    }
    if let Some(reason) = &status.writes_refused {
        let _ = writeln!(text, "writes:      refused: {reason}");
    }
    if status.evicted {
        text.push_str(
            "warning:     this node was evicted by a peer; empty its state_dir and restart it\n",
        );
    }
    if let Some(certificates) = &status.certificates {
        let _ = writeln!(
            text,
            "certificate: until {}; cluster CA until {}",
            unix_time(certificates.cert_not_after_unix_ms),
            unix_time(certificates.ca_not_after_unix_ms)
        );
        for warning in &certificates.warnings {
            let _ = writeln!(text, "warning:     {warning}");
        }
    }
    for (service, error) in &status.service_errors {
        let _ = writeln!(text, "error:       service {service}: {error}");
    }
    if status.peers.is_empty() {
        text.push_str("peers:       none known yet\n");
        return text;
    }
    text.push('\n');
    let mut table = Table::new(&[
        "PEER",
        "ADDRESS",
        "LIVE",
        "LAST SYNC",
        "SAME STATE",
        "LAST ERROR",
    ]);
    for peer in &status.peers {
        table.row(vec![
            peer.id.to_string(),
            peer.address.clone(),
            if peer.live { "yes" } else { "no" }.to_string(),
            age(peer.last_sync_ms_ago),
            if peer.same_summary { "yes" } else { "no" }.to_string(),
            peer.last_error.clone().unwrap_or_else(|| "-".to_string()),
        ]);
    }
    text.push_str(&table.render());
    for peer in &status.peers {
        if let Some(reason) = &peer.writes_refused {
            let _ = writeln!(text, "refused: writes of {}: {reason}", peer.id);
        }
    }
    text
}

/// Unix milliseconds as an RFC 3339 time (UTC, seconds).
fn unix_time(unix_ms: u64) -> String {
    let time = shoal_crdt::NTP64::from(std::time::Duration::from_millis(unix_ms));
    time.to_string_rfc3339_lossy()
}

/// `shoal ps`.
pub fn volumes(views: &[VolumeView]) -> String {
    let mut table = Table::new(&["VOLUME", "PATH", "USED BY"]);
    for view in views {
        let used_by = if view.used_by.is_empty() {
            "-".to_string()
        } else {
            view.used_by.join(",")
        };
        table.row(vec![view.name.clone(), view.path.clone(), used_by]);
    }
    table.render()
}

pub fn ps(view: &PsView) -> String {
    let mut table = Table::new(&[
        "NODE",
        "SERVICE",
        "CONTAINER",
        "STATE",
        "HEALTH",
        "IP",
        "PORTS",
        "SINCE",
    ]);
    for container in &view.containers {
        let node = if container.node == view.node {
            format!("{} (self)", container.node)
        } else {
            container.node.clone()
        };
        let state = if container.restarts > 0 {
            format!("{} ({} restarts)", container.state, container.restarts)
        } else {
            container.state.clone()
        };
        table.row(vec![
            node,
            container.service.clone(),
            container.id.clone(),
            state,
            container.health.clone(),
            container.ip.clone().unwrap_or_else(|| "-".to_string()),
            if container.ports.is_empty() {
                "-".to_string()
            } else {
                container.ports.join(",")
            },
            container
                .since_unix_ms
                .map_or_else(|| "-".to_string(), unix_time),
        ]);
    }
    let mut text = table.render();
    for container in &view.containers {
        if let Some(reason) = &container.health_reason {
            let _ = writeln!(text, "unhealthy: container {}: {reason}", container.id);
        }
    }
    for (service, error) in &view.errors {
        let _ = writeln!(text, "error: service {service} on {}: {error}", view.node);
    }
    for (node, errors) in view
        .node_errors
        .iter()
        .filter(|(node, _)| **node != view.node)
    {
        for (service, error) in errors {
            let _ = writeln!(text, "error: service {service} on {node}: {error}");
        }
    }
    for (service, count) in &view.unplaced {
        let reason = view
            .unplaced_reasons
            .get(service)
            .map_or("no live node has room", String::as_str);
        let _ = writeln!(
            text,
            "unplaced: service {service}: {count} replicas: {reason}"
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_shows_each_containers_health_and_why_it_is_unhealthy() {
        let container = |id: &str, health: &str, reason: Option<&str>| crate::api::ContainerView {
            id: id.to_owned(),
            service: "web".to_owned(),
            node: "node-a".to_owned(),
            state: "running".to_owned(),
            ip: None,
            since_unix_ms: None,
            pid: None,
            restarts: 0,
            ports: Vec::new(),
            health: health.to_owned(),
            health_reason: reason.map(str::to_owned),
        };
        let view = PsView {
            node: "node-a".to_owned(),
            containers: vec![
                container("web-1", "healthy", None),
                container("web-2", "unhealthy", Some("cannot connect to 10.0.0.3:80")),
                container("web-3", "-", None),
            ],
            ..PsView::default()
        };
        let text = ps(&view);
        let header = text.lines().next().unwrap();
        assert!(
            header.contains("STATE") && header.contains("HEALTH"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l.contains("web-1") && l.contains("healthy"))
        );
        assert!(text.contains("unhealthy: container web-2: cannot connect to 10.0.0.3:80"));
        // A view from a daemon without health checks reads as no check.
        let old: crate::api::ContainerView = serde_json::from_str(
            r#"{"id":"x","service":"s","node":"n","state":"running","ip":null,"since_unix_ms":null,"pid":null,"restarts":0}"#,
        )
        .unwrap();
        assert_eq!((old.health.as_str(), old.health_reason), ("-", None));
    }

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("storage: {0}")]
        Storage(#[from] Inner),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("database state.redb: {source}")]
    struct Inner {
        source: std::io::Error,
    }

    #[test]
    fn an_error_line_says_each_cause_once() {
        let inner = || Inner {
            source: std::io::Error::other("Database already open. Cannot acquire lock."),
        };
        let error = anyhow::Error::from(Outer::from(inner()));
        assert_eq!(
            format!("{error:#}"),
            "storage: database state.redb: Database already open. Cannot acquire lock.: \
             database state.redb: Database already open. Cannot acquire lock.: \
             Database already open. Cannot acquire lock.",
            "anyhow repeats what the messages already say"
        );
        assert_eq!(
            error_text(&error),
            "storage: database state.redb: Database already open. Cannot acquire lock."
        );
        // A context that does not say its cause gets it appended, once.
        let error = anyhow::Error::from(inner()).context("cannot open the state");
        assert_eq!(
            error_text(&error),
            "cannot open the state: database state.redb: Database already open. Cannot acquire lock."
        );
    }

    fn status_view(peers: Vec<(&str, bool)>) -> StatusView {
        StatusView {
            node: "node-a".parse().unwrap(),
            version: "0.0.0".to_string(),
            uptime_ms: 1_000,
            version_vector: Default::default(),
            digest: "00".to_string(),
            services: 0,
            nodes: 1 + peers.len(),
            tombstones: 0,
            hlc_last: "0/1".to_string(),
            live_peers: peers.iter().filter(|(_, live)| *live).count(),
            certificates: None,
            peers: peers
                .into_iter()
                .map(|(id, live)| crate::api::PeerView {
                    id: id.parse().unwrap(),
                    address: "127.0.0.1:7444".to_string(),
                    live,
                    last_sync_ms_ago: None,
                    last_error: None,
                    same_summary: true,
                    writes_refused: None,
                })
                .collect(),
            converged: false,
            writes_refused: None,
            clock_ahead_ms: None,
            identity_contested: None,
            incarnation: None,
            evicted: false,
            service_errors: Default::default(),
        }
    }

    fn converged_line(view: &StatusView) -> String {
        status(view)
            .lines()
            .find(|line| line.starts_with("converged:"))
            .unwrap()
            .to_string()
    }

    #[test]
    fn an_isolated_node_says_it_has_no_live_peer() {
        let alone = status_view(vec![]);
        assert_eq!(
            converged_line(&alone),
            "converged:   unknown: no peer known yet, nothing to compare with"
        );
        let isolated = status_view(vec![("node-b", false), ("node-c", false)]);
        assert_eq!(
            converged_line(&isolated),
            "converged:   unknown: no live peer, nothing to compare with"
        );
        let mut together = status_view(vec![("node-b", true), ("node-c", false)]);
        together.converged = true;
        assert_eq!(
            converged_line(&together),
            "converged:   yes, every live peer's last summary equals ours"
        );
    }

    #[test]
    fn refused_writes_are_shown_by_status_and_nodes() {
        let mut view = status_view(vec![("node-b", true)]);
        view.writes_refused = Some("this node's clock is 5000 ms ahead".to_string());
        view.peers[0].writes_refused = Some("422 delta from node-b refused".to_string());
        let text = status(&view);
        assert!(
            text.contains("writes:      refused: this node's clock is 5000 ms ahead"),
            "{text}"
        );
        assert!(
            text.contains("refused: writes of node-b: 422 delta from node-b refused"),
            "{text}"
        );
        let node = |id: &str, member: bool, refused: Option<&str>| NodeView {
            live: member,
            heartbeat_age_ms: member.then_some(100),
            member,
            writes_refused: refused.map(str::to_string),
            writes_refused_ms_ago: refused.map(|_| 1_500),
            ..NodeView::sample(id)
        };
        let text = nodes(&[
            node(
                "node-b",
                true,
                Some("422 delta from node-b refused: timestamp"),
            ),
            node("node-c", true, None),
            node("node-x", false, Some("422 delta from node-x refused")),
        ]);
        assert!(
            text.contains(
                "refused: node-b from 127.0.0.1:7444, 1.5s ago: 422 delta from node-b refused: timestamp"
            ),
            "{text}"
        );
        assert!(
            text.contains("refused: node-x (not a member) from 127.0.0.1:7444, 1.5s ago"),
            "{text}"
        );
        assert!(!text.contains("refused: node-c"), "{text}");
    }

    #[test]
    fn a_contested_identity_is_shown_by_status_and_a_duplicated_node_by_nodes() {
        let mut view = status_view(vec![("node-b", true)]);
        view.incarnation = Some("00000000000000aa".to_string());
        view.identity_contested = Some("another daemon runs as node node-a".to_string());
        view.writes_refused = view.identity_contested.clone();
        let text = status(&view);
        assert!(text.contains("incarnation: 00000000000000aa"), "{text}");
        assert!(
            text.contains("identity:    CONTESTED: another daemon runs as node node-a"),
            "{text}"
        );
        assert!(
            text.contains("writes:      refused: another daemon runs as node node-a"),
            "{text}"
        );
        let duplicated = NodeView {
            id: "node-a".parse().unwrap(),
            address: "127.0.0.1:7444".to_string(),
            live: true,
            is_self: false,
            heartbeat_age_ms: Some(100),
            subnet: None,
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
            labels: Default::default(),
            member: true,
            writes_refused: None,
            writes_refused_ms_ago: None,
            incarnation: Some("00000000000000bb".to_string()),
            duplicated: Some("two different writes claiming its write number 7".to_string()),
            duplicated_ms_ago: Some(2_000),
            drain: None,
            drain_left_ms: None,
            containers_running: 0,
            swim: None,
        };
        let text = nodes(&[duplicated]);
        assert!(
            text.contains(
                "DUPLICATED: two daemons write as node node-a, 2.0s ago: two different writes \
                 claiming its write number 7"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_drained_node_shows_drained_with_the_deadline_left() {
        let node = |id: &str, drain_left_ms: Option<u64>| NodeView {
            drain: drain_left_ms.map(|_| shoal_crdt::Drain {
                since_unix_ms: 1,
                deadline_ms: 300_000,
            }),
            drain_left_ms,
            ..NodeView::sample(id)
        };
        let text = nodes(&[
            node("n1", None),
            node("n2", Some(240_000)),
            node("n3", Some(0)),
        ]);
        let line = |id: &str| {
            text.lines()
                .find(|line| line.starts_with(id))
                .unwrap_or_default()
                .to_string()
        };
        assert!(text.lines().next().unwrap().contains("STATE"), "{text}");
        assert!(line("n1").contains("active"), "{text}");
        assert!(line("n2").contains("DRAINED (4m left)"), "{text}");
        assert!(line("n3").contains("DRAINED (deadline passed)"), "{text}");
    }

    #[test]
    fn tables_align_columns_and_trim_lines() {
        let mut table = Table::new(&["A", "LONG HEADER", "C"]);
        table.row(vec!["wide cell".into(), "x".into(), "".into()]);
        assert_eq!(table.render(), "A          LONG HEADER  C\nwide cell  x\n");
    }

    #[test]
    fn hlc_versions_read_as_times() {
        let version = "7712156301874424501/48e0420efe8255894a02bbe9e61b9735";
        let shown = hlc(version);
        assert!(shown.starts_with("2026-"), "{shown}");
        assert!(shown.ends_with("/48e0420e"), "{shown}");
        assert_eq!(hlc("not-a-timestamp"), "not-a-timestamp");
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(age(None), "never");
        assert_eq!(age(Some(15)), "15ms");
        assert_eq!(age(Some(1500)), "1.5s");
        assert_eq!(age(Some(600_000)), "10m");
        assert_eq!(age(Some(36_000_000)), "10h");
    }
}
