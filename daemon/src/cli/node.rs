//! `shoal node drain|undrain|evict`: one API call each (the daemon writes this node's drain,
//! asks another node to write its own, or evicts a node that is down), and `drain --wait`,
//! which then polls `shoal nodes` on this daemon until the drained node's status reports no
//! running container or its deadline passes.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use shoal_crdt::NodeId;

use super::commands::{client, print_json};
use super::{Cli, DrainArgs, NodeCommand, output};
use crate::api::{NodeChangeView, NodeView, Request};

/// How often `drain --wait` asks for the nodes.
const WAIT_POLL_MS: u64 = 1_000;
/// A progress line is printed when something changed, and at least this often.
const PROGRESS_EVERY_MS: u64 = 10_000;
/// How long `drain --wait` waits beyond the deadline for the drain to show in this node's
/// view at all (it is written by the drained node and reaches this one by sync).
const WAIT_SLACK_MS: u64 = 30_000;

/// `shoal node ...`.
pub fn run(cli: &Cli, command: &NodeCommand) -> Result<()> {
    let (request, wait) = match command {
        NodeCommand::Drain(DrainArgs {
            node,
            deadline_ms,
            wait,
        }) => (
            Request::NodeDrain {
                node: node.clone(),
                deadline_ms: *deadline_ms,
            },
            wait.then_some((node, *deadline_ms)),
        ),
        NodeCommand::Undrain { node } => (Request::NodeUndrain { node: node.clone() }, None),
        NodeCommand::Evict { node } => (Request::NodeEvict { node: node.clone() }, None),
    };
    let view: NodeChangeView = client(&cli.socket)?.call(request)?;
    if cli.json {
        print_json(&view)?;
    } else {
        println!("{}", change_line(&view));
    }
    match wait {
        Some((node, deadline_ms)) => wait_drained(cli, node, deadline_ms),
        None => Ok(()),
    }
}

fn change_line(view: &NodeChangeView) -> String {
    let mut line = format!("{} {}", view.change, view.node);
    if let Some(deadline_ms) = view.deadline_ms {
        line.push_str(&format!(" (deadline {deadline_ms} ms)"));
    }
    if let Some(address) = &view.asked {
        line.push_str(&format!(", written by the node itself at {address}"));
    }
    line
}

/// Polls this daemon's view of `node` until its status reports no running container (Ok)
/// or its drain deadline passed (an error saying how many still run).
fn wait_drained(cli: &Cli, node: &NodeId, deadline_ms: u64) -> Result<()> {
    let mut client = client(&cli.socket)?;
    let started = Instant::now();
    let give_up = Duration::from_millis(deadline_ms.saturating_add(WAIT_SLACK_MS));
    let mut seen_drained = false;
    let mut last: Option<(u64, Instant)> = None;
    loop {
        let views: Vec<NodeView> = client.call(Request::Nodes)?;
        let Some(view) = views.iter().find(|view| &view.id == node && view.member) else {
            bail!("node {node} is no longer a member of the cluster (evicted?)");
        };
        match (view.drain, view.drain_left_ms) {
            (Some(_), left) => {
                seen_drained = true;
                let running = view.containers_running;
                if running == 0 {
                    progress(
                        cli,
                        &format!("node {node} is drained: no container runs on it"),
                    );
                    return Ok(());
                }
                let left = left.unwrap_or(0);
                if left == 0 {
                    bail!(
                        "node {node}: the drain deadline of {deadline_ms} ms passed with \
                         {running} container(s) still running on it (see `shoal ps`)"
                    );
                }
                let due = last.is_none_or(|(count, at)| {
                    count != running || at.elapsed() >= Duration::from_millis(PROGRESS_EVERY_MS)
                });
                if due {
                    progress(
                        cli,
                        &format!(
                            "waiting for node {node}: {running} container(s) running, {} of \
                             the deadline left",
                            output::age(Some(left))
                        ),
                    );
                    last = Some((running, Instant::now()));
                }
            }
            (None, _) if seen_drained => bail!("node {node} was undrained while waiting"),
            (None, _) => {
                if started.elapsed() >= give_up {
                    bail!(
                        "node {node}'s drain did not reach this node within {} ms",
                        give_up.as_millis()
                    );
                }
                if last.is_none() {
                    progress(
                        cli,
                        &format!("waiting for node {node}'s drain to reach this node"),
                    );
                    last = Some((u64::MAX, Instant::now()));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(WAIT_POLL_MS));
    }
}

/// A progress line: on stdout, or on stderr under `--json` (stdout holds the JSON).
fn progress(cli: &Cli, line: &str) {
    if cli.json {
        eprintln!("{line}");
    } else {
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_says_what_changed_and_who_wrote_it() {
        let view = |change: &str, deadline_ms, asked: Option<&str>| NodeChangeView {
            node: "n2".parse().unwrap(),
            change: change.to_owned(),
            deadline_ms,
            asked: asked.map(str::to_owned),
        };
        assert_eq!(
            change_line(&view("drained", Some(60_000), Some("127.0.0.1:7444"))),
            "drained n2 (deadline 60000 ms), written by the node itself at 127.0.0.1:7444"
        );
        assert_eq!(change_line(&view("undrained", None, None)), "undrained n2");
        assert_eq!(change_line(&view("evicted", None, None)), "evicted n2");
    }
}
