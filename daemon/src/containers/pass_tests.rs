//! Tests of one pass against a real `Node` (redb in a temp dir) with the fake runtime,
//! network and images: what gets committed, how often, and what happens on failures.

use std::sync::{Arc, Mutex};

use shoal_crdt::{Resource, ServiceSpec};
use shoal_oci::network::FakeNetwork;
use shoal_oci::{ExitStatus, FakeRuntime, Runtime};

use super::*;
use crate::containers::images::FakeImages;
use crate::schedule::plan::STARTS_PER_PASS_MAX;
use crate::schedule::{Planner, PlannerSettings};
use crate::state::{ManualClock, NodeOptions};

const START_MS: u64 = 1_767_225_600_000;
const SUBNET: &str = "10.77.1.0/24";

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    node: Arc<Node>,
    runtime: Arc<FakeRuntime>,
    network: Arc<FakeNetwork>,
    planner: Mutex<Planner>,
    executor: Executor,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::at_ms(START_MS));
        let mut options = NodeOptions::new(
            "node-a".parse().unwrap(),
            dir.path().join("state.redb"),
            "127.0.0.1:7443".parse().unwrap(),
        );
        options.subnet = Some(SUBNET.parse().unwrap());
        let node = Arc::new(Node::open(options, clock.clone()).unwrap());
        node.heartbeat().unwrap();
        let runtime = Arc::new(FakeRuntime::new());
        let network = Arc::new(FakeNetwork::new(SUBNET.parse().unwrap(), "shoal.node-a."));
        let executor = Executor::new(
            runtime.clone(),
            Some(network.clone()),
            Arc::new(FakeImages::new("/missing")),
            0,
        );
        let planner = Mutex::new(Planner::new(
            node.node_id().clone(),
            PlannerSettings {
                starts_per_pass_max: STARTS_PER_PASS_MAX,
                retry_after_failure_ms: 1_000,
            },
            5,
        ));
        Fixture {
            _dir: dir,
            clock,
            node,
            runtime,
            network,
            planner,
            executor,
        }
    }

    fn apply(&self, name: &str, image: &str, replicas: u32) {
        let mut spec = ServiceSpec::new(image);
        spec.replicas = replicas;
        self.node
            .apply_services(vec![(name.parse().unwrap(), spec)])
            .unwrap();
    }

    fn pass(&self) -> PassReport {
        run_pass(
            self.node.as_ref(),
            &self.planner,
            &self.executor,
            self.clock.as_ref(),
            &|| false,
        )
    }

    fn running(&self) -> usize {
        self.runtime
            .list()
            .iter()
            .filter(|id| {
                matches!(
                    self.runtime.state(id).map(|s| s.status),
                    Ok(shoal_oci::ContainerStatus::Running)
                )
            })
            .count()
    }
}

#[test]
fn a_pass_that_starts_three_containers_is_one_record_commit_and_one_status_report() {
    let fixture = Fixture::new();
    fixture.apply("web", "/images/web", 3);
    let mut pushes = fixture.node.subscribe_changes();
    let before = fixture.node.commit_counts();
    let report = fixture.pass();
    assert_eq!(report.plan.starts.len(), 3);
    assert_eq!(fixture.running(), 3);
    let after = fixture.node.commit_counts();
    assert_eq!(
        after.durable - before.durable,
        2,
        "records, addresses, counters: one commit; then the status report: one"
    );
    assert_eq!(after.broadcast - before.broadcast, 2, "and one push each");
    let delta = pushes.try_recv().unwrap();
    // Three records, three addresses, three counters.
    assert_eq!(delta.entry_count(), 9);
    let report = pushes.try_recv().unwrap();
    assert_eq!(report.entry_count(), 1, "one status entry for the node");
    let me = fixture.node.node_id().clone();
    fixture.node.read_state(|state| {
        assert_eq!(state.containers().count(), 3);
        assert_eq!(state.ip_allocations().len(), 3);
        assert_eq!(state.resource_used(&me, Resource::Containers), 3);
        let status = state.node_status(&me).expect("a status report");
        assert_eq!(status.containers.len(), 3);
        assert!(
            status
                .containers
                .values()
                .all(|c| c.state == shoal_crdt::RunState::Running),
            "{status:?}"
        );
    });
    assert_eq!(
        fixture
            .network
            .calls()
            .iter()
            .filter(|call| matches!(call, shoal_oci::network::FakeNetworkCall::Attach(..)))
            .count(),
        3
    );
    // Nothing left to do: the next pass commits nothing.
    let idle = fixture.pass();
    assert!(idle.plan.is_idle(), "{:?}", idle.plan);
    assert_eq!(fixture.node.commit_counts(), after);
    // One more service of one replica: its pass is again records plus a report.
    fixture.apply("db", "/images/db", 1);
    let before = fixture.node.commit_counts();
    fixture.pass();
    let after = fixture.node.commit_counts();
    assert_eq!(after.durable - before.durable, 2);
    assert_eq!(after.broadcast - before.broadcast, 2);
    assert_eq!(fixture.running(), 4);
}

#[test]
fn a_bad_image_records_nothing_and_is_an_error_on_its_service() {
    let fixture = Fixture::new();
    fixture.apply("web", "/missing/web", 2);
    let before = fixture.node.commit_counts();
    let report = fixture.pass();
    assert!(
        report
            .outcomes
            .iter()
            .all(|o| matches!(o, Outcome::StartFailed { .. }))
    );
    assert_eq!(fixture.running(), 0);
    let after = fixture.node.commit_counts();
    assert_eq!(
        after.durable - before.durable,
        1,
        "no record: only the status report with the error"
    );
    let me = fixture.node.node_id().clone();
    fixture.node.read_state(|state| {
        assert_eq!(state.containers().count(), 0);
        let status = state.node_status(&me).expect("a status report");
        assert!(status.errors[&"web".parse().unwrap()].contains("/missing/web"));
    });
    let errors = fixture.planner.lock().unwrap().errors();
    assert!(
        errors[&"web".parse().unwrap()].contains("/missing/web"),
        "{errors:?}"
    );
}

#[test]
fn a_failed_start_is_undone_by_a_second_commit() {
    let fixture = Fixture::new();
    fixture.apply("web", "/images/web", 1);
    fixture.runtime.fail_next("disk full");
    let before = fixture.node.commit_counts();
    fixture.pass();
    let after = fixture.node.commit_counts();
    assert_eq!(
        after.durable - before.durable,
        3,
        "the record, then its undo, then the status report with the error"
    );
    fixture.node.read_state(|state| {
        assert_eq!(state.containers().count(), 0);
        assert!(state.ip_allocations().is_empty());
    });
    assert!(
        fixture
            .network
            .calls()
            .iter()
            .any(|call| matches!(call, shoal_oci::network::FakeNetworkCall::Detach(_)))
    );
    // The next try waits the retry interval, then succeeds.
    assert!(fixture.pass().plan.starts.is_empty());
    fixture.clock.advance_ms(1_000);
    fixture.pass();
    assert_eq!(fixture.running(), 1);
}

#[test]
fn an_exited_container_is_restarted_in_place_and_removal_forgets_its_record() {
    let fixture = Fixture::new();
    let mut spec = ServiceSpec::new("/images/web");
    spec.restart = shoal_crdt::RestartPolicy::Always;
    fixture
        .node
        .apply_services(vec![("web".parse().unwrap(), spec)])
        .unwrap();
    fixture.pass();
    let id = fixture.runtime.list().remove(0);
    fixture.runtime.finish(&id, ExitStatus::Code(1)).unwrap();
    let mut restarted = false;
    for _ in 0..200 {
        fixture.clock.advance_ms(100);
        let report = fixture.pass();
        if report
            .outcomes
            .iter()
            .any(|o| matches!(o, Outcome::Restarted { .. }))
        {
            restarted = true;
            break;
        }
    }
    assert!(restarted, "restarted within 20 s of backoff");
    assert_eq!(
        fixture.runtime.list(),
        std::slice::from_ref(&id),
        "the same container, in place"
    );
    assert_eq!(fixture.running(), 1);

    fixture
        .node
        .remove_service(&"web".parse().unwrap())
        .unwrap();
    fixture.pass();
    assert!(fixture.runtime.list().is_empty());
    let me = fixture.node.node_id().clone();
    fixture.node.read_state(|state| {
        assert_eq!(state.containers().count(), 0);
        assert!(state.ip_allocations().is_empty());
        assert_eq!(state.resource_used(&me, Resource::Containers), 0);
    });
}
