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

/// What one look at the nodes says of a `drain --wait`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WaitStep {
    /// The node is drained and its status reports no running container.
    Done(String),
    /// It cannot end well: the deadline passed, the node was undrained or evicted.
    Failed(String),
    /// Not yet; the line to print when something changed (or a while passed).
    Waiting { running: Option<u64>, line: String },
}

/// Decides from this daemon's `views` whether the drain of `node` is over. `seen_drained`:
/// an earlier look showed it drained; `waited_ms`: how long the wait has run.
fn wait_step(
    views: &[NodeView],
    node: &NodeId,
    deadline_ms: u64,
    seen_drained: bool,
    waited_ms: u64,
) -> WaitStep {
    let Some(view) = views.iter().find(|view| &view.id == node && view.member) else {
        return WaitStep::Failed(format!(
            "node {node} is no longer a member of the cluster (evicted?)"
        ));
    };
    if view.drain.is_none() {
        if seen_drained {
            return WaitStep::Failed(format!("node {node} was undrained while waiting"));
        }
        let give_up_ms = deadline_ms.saturating_add(WAIT_SLACK_MS);
        if waited_ms >= give_up_ms {
            return WaitStep::Failed(format!(
                "node {node}'s drain did not reach this node within {give_up_ms} ms"
            ));
        }
        return WaitStep::Waiting {
            running: None,
            line: format!("waiting for node {node}'s drain to reach this node"),
        };
    }
    let running = view.containers_running;
    if running == 0 {
        return WaitStep::Done(format!("node {node} is drained: no container runs on it"));
    }
    match view.drain_left_ms.unwrap_or(0) {
        0 => WaitStep::Failed(format!(
            "node {node}: the drain deadline of {deadline_ms} ms passed with {running} \
             container(s) still running on it (see `shoal ps`)"
        )),
        left => WaitStep::Waiting {
            running: Some(running),
            line: format!(
                "waiting for node {node}: {running} container(s) running, {} of the deadline \
                 left",
                output::age(Some(left))
            ),
        },
    }
}

/// Polls this daemon's view of `node` until its status reports no running container (Ok)
/// or its drain deadline passed (an error saying how many still run).
fn wait_drained(cli: &Cli, node: &NodeId, deadline_ms: u64) -> Result<()> {
    let mut client = client(&cli.socket)?;
    let started = Instant::now();
    let mut seen_drained = false;
    // The running count last printed, and when.
    let mut printed: Option<(Option<u64>, Instant)> = None;
    loop {
        let views: Vec<NodeView> = client.call(Request::Nodes)?;
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        match wait_step(&views, node, deadline_ms, seen_drained, waited_ms) {
            WaitStep::Done(line) => {
                progress(cli, &line);
                return Ok(());
            }
            WaitStep::Failed(message) => bail!(message),
            WaitStep::Waiting { running, line } => {
                seen_drained |= running.is_some();
                let due = printed.is_none_or(|(count, at)| {
                    count != running || at.elapsed() >= Duration::from_millis(PROGRESS_EVERY_MS)
                });
                if due {
                    progress(cli, &line);
                    printed = Some((running, Instant::now()));
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

    fn node_view(name: &str, drain_left_ms: Option<u64>, running: u64) -> NodeView {
        NodeView {
            drain: drain_left_ms.map(|_| shoal_crdt::Drain {
                since_unix_ms: 1,
                deadline_ms: 60_000,
            }),
            drain_left_ms,
            containers_running: running,
            swim: None,
            ..NodeView::sample(name)
        }
    }

    fn check(views: &[NodeView], seen_drained: bool, waited_ms: u64, expected: &str) {
        let n2: NodeId = "n2".parse().unwrap();
        let step = wait_step(views, &n2, 60_000, seen_drained, waited_ms);
        let text = match &step {
            WaitStep::Done(line) => format!("done: {line}"),
            WaitStep::Failed(message) => format!("failed: {message}"),
            WaitStep::Waiting { line, .. } => format!("waiting: {line}"),
        };
        assert!(
            text.starts_with(expected),
            "{text:?} is not {expected:?}..."
        );
    }

    #[test]
    fn waiting_for_a_drain_ends_when_nothing_runs_or_the_deadline_passed() {
        let drained =
            |left, running| vec![node_view("n1", None, 3), node_view("n2", left, running)];
        check(
            &drained(Some(30_000), 0),
            false,
            0,
            "done: node n2 is drained",
        );
        check(
            &drained(Some(30_000), 2),
            true,
            1_000,
            "waiting: waiting for node n2: 2 container(s) running, 30.0s of the deadline left",
        );
        check(
            &drained(Some(0), 2),
            true,
            61_000,
            "failed: node n2: the drain deadline of 60000 ms passed with 2 container(s) still running",
        );
        // Not drained yet in this node's view: wait for it, up to the deadline and the slack.
        check(
            &drained(None, 2),
            false,
            0,
            "waiting: waiting for node n2's drain to reach",
        );
        check(
            &drained(None, 2),
            false,
            90_000,
            "failed: node n2's drain did not reach",
        );
        check(
            &drained(None, 2),
            true,
            1_000,
            "failed: node n2 was undrained while waiting",
        );
        check(
            &drained(None, 2)[..1],
            true,
            1_000,
            "failed: node n2 is no longer a member",
        );
    }

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
