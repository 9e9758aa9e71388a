//! Tests of the planner: plain values in, a plan out; no runtime, no root, no clock.

use super::*;
use proptest::prelude::*;
use shoal_crdt::{Capacity, NTP64};

use crate::schedule::restarts::spec_digest;

use crate::schedule::placement::NodeInput;
use crate::schedule::rollout::Replica;

const SETTINGS: PlannerSettings = PlannerSettings {
    starts_per_pass_max: STARTS_PER_PASS_MAX,
    retry_after_failure_ms: 1_000,
};

fn node(name: &str) -> NodeId {
    name.parse().unwrap()
}

fn version(at: u64, writer: &str) -> Timestamp {
    Timestamp::new(NTP64(at), node(writer).hlc_id())
}

fn spec(replicas: u32, cpu_millis: u32) -> ServiceSpec {
    let mut spec = ServiceSpec::new("/images/web");
    spec.replicas = replicas;
    spec.resources.cpu_millis = cpu_millis;
    spec.restart = shoal_crdt::RestartPolicy::Always;
    spec
}

/// A view of node `me` in a cluster of `nodes` (1000 millicpu each) running `services`.
fn view(me: &str, nodes: &[&str], services: &[(&str, ServiceSpec, Timestamp)]) -> ClusterView {
    ClusterView {
        me: node(me),
        services: services
            .iter()
            .map(|(name, spec, version)| {
                (
                    name.parse().unwrap(),
                    ServiceVersion::new(spec.clone(), *version),
                )
            })
            .collect(),
        live_nodes: nodes
            .iter()
            .map(|name| NodeInput {
                id: node(name),
                sync_port: None,
                labels: Default::default(),
                drained: false,
                capacity: Capacity {
                    cpu_millis: 1000,
                    memory_bytes: 1 << 30,
                },
            })
            .collect(),
        own_records: Vec::new(),
        own_written: BTreeMap::new(),
        fleet: Default::default(),
        subnet: None,
        peer_subnets: Vec::new(),
        mesh_backends: Default::default(),
        drained: Default::default(),
    }
}

/// Marks `service` in `view` as having an earlier version in its record (so its outdated
/// replicas are replaced by a paced rollout).
fn with_earlier(mut view: ClusterView, service: &str) -> ClusterView {
    if let Some(current) = view
        .services
        .get_mut(&service.parse::<ServiceName>().unwrap())
    {
        current.has_earlier = true;
    }
    view
}

fn record(id: &str, service: &str, owner: &str, version: Timestamp) -> ContainerRecord {
    ContainerRecord {
        id: id.parse().unwrap(),
        service: service.parse().unwrap(),
        node: node(owner),
        spec_version: version,
        ip: None,
    }
}

fn observed(containers: &[(&str, ObservedState)]) -> Observed {
    Observed {
        containers: containers
            .iter()
            .map(|(id, state)| (id.to_string(), state.clone()))
            .collect(),
        spec_digests: BTreeMap::new(),
        attachments: None,
    }
}

fn removed_ids(plan: &Plan) -> Vec<&str> {
    plan.removals.iter().map(|r| r.id.as_str()).collect()
}

#[test]
fn nothing_to_do_is_an_idle_plan() {
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let plan = planner.plan(&view("a", &["a"], &[]), &Observed::default(), 0);
    assert!(plan.is_idle(), "{plan:?}");
    assert_eq!(plan, Plan::default());
}

#[test]
fn each_node_starts_its_share_and_ids_come_from_the_seed() {
    let v1 = version(10, "a");
    let services = [("web", spec(3, 100), v1)];
    let mut total = 0;
    for me in ["a", "b", "c"] {
        let mut planner = Planner::new(node(me), SETTINGS, 7);
        let plan = planner.plan(
            &view(me, &["a", "b", "c"], &services),
            &Observed::default(),
            0,
        );
        assert_eq!(plan.starts.len(), 1, "{me}: {plan:?}");
        assert!(plan.starts[0].id.as_str().starts_with("web-"));
        assert_eq!(plan.starts[0].version, v1);
        total += plan.starts.len();
        let again = Planner::new(node(me), SETTINGS, 7).plan(
            &view(me, &["a", "b", "c"], &services),
            &Observed::default(),
            0,
        );
        assert_eq!(again.starts[0].id, plan.starts[0].id, "same seed, same id");
    }
    assert_eq!(total, 3);
}

#[test]
fn orphans_and_surplus_are_removed_and_a_running_replica_is_kept() {
    let v1 = version(10, "a");
    let mut view = view("a", &["a"], &[("web", spec(1, 100), v1)]);
    view.own_records = vec![
        record("web-00000001", "web", "a", v1),
        record("web-00000002", "web", "a", v1),
    ];
    let observed = observed(&[
        ("web-00000001", ObservedState::Exited(ExitStatus::Code(1))),
        ("web-00000002", ObservedState::Running),
        ("stray-1", ObservedState::Running),
    ]);
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let plan = planner.plan(&view, &observed, 0);
    assert_eq!(removed_ids(&plan), ["stray-1", "web-00000001"]);
    assert!(plan.removals[0].record.is_none(), "an orphan has no record");
    assert!(plan.removals[1].record.is_some());
    assert!(
        plan.starts.is_empty() && plan.restarts.is_empty(),
        "{plan:?}"
    );
}

/// A member was down and this node started a stand-in for its replica; the member came
/// back and placement gives this node one replica again. The stand-in goes, whatever the
/// ids say: the replica that served all along keeps running.
#[test]
fn of_a_surplus_the_replica_placed_first_is_kept() {
    let v1 = version(10, "a");
    let mut view = view("a", &["a", "b"], &[("web", spec(2, 100), v1)]);
    let (serving, stand_in) = ("web-ffffffff", "web-00000001");
    view.own_records = vec![
        record(stand_in, "web", "a", v1),
        record(serving, "web", "a", v1),
    ];
    view.own_written = [
        (serving.parse().unwrap(), version(20, "a")),
        (stand_in.parse().unwrap(), version(500, "a")),
    ]
    .into();
    let observed = observed(&[
        (serving, ObservedState::Running),
        (stand_in, ObservedState::Running),
    ]);
    let plan = Planner::new(node("a"), SETTINGS, 1).plan(&view, &observed, 0);
    assert_eq!(removed_ids(&plan), [stand_in], "{plan:?}");
    assert!(plan.starts.is_empty(), "{plan:?}");
}

#[test]
fn a_removed_service_removes_its_containers() {
    let v1 = version(10, "a");
    let mut view = view("a", &["a"], &[]);
    view.own_records = vec![record("web-00000001", "web", "a", v1)];
    let plan = Planner::new(node("a"), SETTINGS, 1).plan(
        &view,
        &observed(&[("web-00000001", ObservedState::Running)]),
        0,
    );
    assert_eq!(removed_ids(&plan), ["web-00000001"]);
}

#[test]
fn a_new_spec_replaces_containers_but_a_new_replica_count_does_not_even_after_a_restart() {
    let v1 = version(10, "a");
    let id = "web-00000001";
    let own = vec![record(id, "web", "a", v1)];
    // The container carries the digest of the spec it was created from; a fresh planner
    // (a restarted daemon) has no bookkeeping of it.
    let mut running = observed(&[(id, ObservedState::Running)]);
    running
        .spec_digests
        .insert(id.to_string(), spec_digest(&spec(1, 100)));

    // Replicas 1 -> 2: the running container stays, one more starts.
    let v2 = version(20, "a");
    let mut scaled = view("a", &["a"], &[("web", spec(2, 100), v2)]);
    scaled.own_records = own.clone();
    let plan = Planner::new(node("a"), SETTINGS, 1).plan(&scaled, &running, 10);
    assert!(plan.removals.is_empty(), "{plan:?}");
    assert_eq!(plan.starts.len(), 1);

    // A changed command: replaced, start-first by default: the new one starts beside the
    // old, which stops once the new one has run `min_healthy_ms`.
    let v3 = version(30, "a");
    let mut changed_spec = spec(1, 100);
    changed_spec.command = vec!["/bin/other".into()];
    let mut changed = with_earlier(
        view("a", &["a"], &[("web", changed_spec.clone(), v3)]),
        "web",
    );
    changed.own_records = own.clone();
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let plan = planner.plan(&changed, &running, 20);
    assert!(plan.removals.is_empty(), "{plan:?}");
    assert!(plan.rolling);
    assert_eq!(plan.starts.len(), 1);
    assert_eq!(plan.starts[0].version, v3);
    let new_id = plan.starts[0].id.as_str().to_string();
    changed.own_records.push(record(&new_id, "web", "a", v3));
    let mut both = running.clone();
    both.containers
        .insert(new_id.clone(), ObservedState::Running);
    both.spec_digests
        .insert(new_id.clone(), spec_digest(&changed_spec));
    let min_healthy_ms = changed_spec.update.min_healthy_ms;
    let plan = planner.plan(&changed, &both, 30);
    assert!(
        plan.removals.is_empty() && plan.starts.is_empty(),
        "{plan:?}"
    );
    let plan = planner.plan(&changed, &both, 30 + min_healthy_ms);
    assert_eq!(
        removed_ids(&plan),
        [id],
        "the new one counts: the old one stops"
    );
    assert!(plan.starts.is_empty());

    // Stop-first: the old one stops first, its place is filled next pass.
    let mut stop_first = changed_spec.clone();
    stop_first.update.order = shoal_crdt::UpdateOrder::StopFirst;
    let mut changed = with_earlier(view("a", &["a"], &[("web", stop_first, v3)]), "web");
    changed.own_records = own.clone();
    let plan = Planner::new(node("a"), SETTINGS, 1).plan(&changed, &running, 20);
    assert_eq!(removed_ids(&plan), [id]);
    assert!(plan.starts.is_empty());

    // A container without a digest (made before digests were written) of an older version
    // counts as outdated: it keeps running while both replicas of the new version start.
    let bare = observed(&[(id, ObservedState::Running)]);
    let scaled = with_earlier(scaled, "web");
    let plan = Planner::new(node("a"), SETTINGS, 1).plan(&scaled, &bare, 10);
    assert!(plan.removals.is_empty(), "{plan:?}");
    assert_eq!(
        plan.starts.len(),
        1,
        "the hole starts at once, the slot waits"
    );
}

#[test]
fn without_an_earlier_version_outdated_replicas_go_at_once() {
    // The service was removed and written anew: its record has no history, so a replica
    // of whatever ran before is not paced, it is replaced.
    let v1 = version(10, "a");
    let v2 = version(20, "a");
    let mut new_spec = spec(1, 100);
    new_spec.command = vec!["/bin/new".into()];
    let mut view = view("a", &["a"], &[("web", new_spec, v2)]);
    view.own_records = vec![record("web-00000001", "web", "a", v1)];
    let mut runtime = observed(&[("web-00000001", ObservedState::Running)]);
    runtime
        .spec_digests
        .insert("web-00000001".into(), spec_digest(&spec(1, 100)));
    let plan = Planner::new(node("a"), SETTINGS, 1).plan(&view, &runtime, 0);
    assert_eq!(removed_ids(&plan), ["web-00000001"]);
    assert_eq!(plan.starts.len(), 1);
    assert!(!plan.rolling);
}

#[test]
fn a_new_replica_not_ready_by_its_deadline_fails_the_update_once() {
    let v1 = version(10, "a");
    let v2 = version(20, "a");
    let mut old_spec = spec(1, 100);
    old_spec.command = vec!["/bin/v1".into()];
    let mut new_spec = spec(1, 100);
    new_spec.command = vec!["/bin/v2".into()];
    new_spec.update.healthy_deadline_ms = 10_000;
    let mut view = view("a", &["a"], &[("web", new_spec.clone(), v2)]);
    view.services
        .get_mut(&"web".parse::<ServiceName>().unwrap())
        .unwrap()
        .has_earlier = true;
    view.own_records = vec![
        record("web-00000001", "web", "a", v1),
        record("web-00000002", "web", "a", v2),
    ];
    // The new one keeps exiting: never ready.
    let mut runtime = observed(&[
        ("web-00000001", ObservedState::Running),
        ("web-00000002", ObservedState::Exited(ExitStatus::Code(1))),
    ]);
    runtime
        .spec_digests
        .insert("web-00000001".into(), spec_digest(&old_spec));
    runtime
        .spec_digests
        .insert("web-00000002".into(), spec_digest(&new_spec));
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let plan = planner.plan(&view, &runtime, 1_000);
    assert!(plan.update_failures.is_empty());
    assert!(plan.rolling);
    assert!(
        !removed_ids(&plan).contains(&"web-00000001"),
        "the old one serves on: {plan:?}"
    );
    let plan = planner.plan(&view, &runtime, 11_000);
    assert_eq!(plan.update_failures.len(), 1, "{plan:?}");
    let failure = &plan.update_failures[0];
    assert_eq!(failure.version, v2);
    assert!(
        failure.reason.contains("web-00000002")
            && failure.reason.contains("not ready within 10000 ms"),
        "{}",
        failure.reason
    );
    assert!(
        planner
            .plan(&view, &runtime, 12_000)
            .update_failures
            .is_empty(),
        "one failure is reported once"
    );

    // Without an earlier version (a first deploy) there is nothing to fail.
    view.services
        .get_mut(&"web".parse::<ServiceName>().unwrap())
        .unwrap()
        .has_earlier = false;
    let mut fresh = Planner::new(node("a"), SETTINGS, 1);
    fresh.plan(&view, &runtime, 0);
    assert!(
        fresh
            .plan(&view, &runtime, 50_000)
            .update_failures
            .is_empty()
    );
}

#[test]
fn a_rollback_makes_the_old_replicas_current_and_ready_at_once() {
    let v1 = version(10, "a");
    let v2 = version(20, "a");
    let v3 = version(30, "a");
    let old_spec = spec(1, 100);
    let mut new_spec = spec(1, 100);
    new_spec.command = vec!["/bin/broken".into()];
    let mut runtime = observed(&[
        ("web-00000001", ObservedState::Running),
        ("web-00000002", ObservedState::Running),
    ]);
    runtime
        .spec_digests
        .insert("web-00000001".into(), spec_digest(&old_spec));
    runtime
        .spec_digests
        .insert("web-00000002".into(), spec_digest(&new_spec));
    let records = vec![
        record("web-00000001", "web", "a", v1),
        record("web-00000002", "web", "a", v2),
    ];
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let mut during = with_earlier(view("a", &["a"], &[("web", new_spec, v2)]), "web");
    during.own_records = records.clone();
    planner.plan(&during, &runtime, 0);
    // v1 written back as v3: the v1 replica, running all along, counts at once and the
    // broken one goes; no deadline failure, however long it has run.
    let mut back = view("a", &["a"], &[("web", old_spec, v3)]);
    // (has_earlier is set below, as the rollback's record has it.)
    back.own_records = records;
    back.services
        .get_mut(&"web".parse::<ServiceName>().unwrap())
        .unwrap()
        .has_earlier = true;
    let plan = planner.plan(&back, &runtime, 100_000);
    assert_eq!(removed_ids(&plan), ["web-00000002"], "{plan:?}");
    assert!(plan.update_failures.is_empty(), "{plan:?}");
    assert!(plan.starts.is_empty());
}

#[test]
fn a_drained_node_keeps_its_replica_until_one_elsewhere_counts_or_the_deadline() {
    let v1 = version(10, "a");
    let web = spec(1, 100);
    let drain = shoal_crdt::Drain {
        since_unix_ms: 1_000,
        deadline_ms: 60_000,
    };
    let mut view = view("a", &["a", "b"], &[("web", web.clone(), v1)]);
    view.drained.insert(node("a"), drain);
    for input in &mut view.live_nodes {
        input.drained = input.id == node("a");
    }
    view.own_records = vec![record("web-00000001", "web", "a", v1)];
    let mut runtime = observed(&[("web-00000001", ObservedState::Running)]);
    runtime
        .spec_digests
        .insert("web-00000001".into(), spec_digest(&web));
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let plan = planner.plan(&view, &runtime, 2_000);
    assert!(
        plan.removals.is_empty(),
        "nothing runs elsewhere yet: {plan:?}"
    );
    assert!(plan.starts.is_empty());

    // b's replacement runs but does not count yet: a keeps its own.
    let pending = Replica {
        node: node("b"),
        id: "web-000000b1".parse().unwrap(),
        current: true,
        ready: false,
    };
    view.fleet
        .insert("web".parse().unwrap(), vec![pending.clone()]);
    assert!(planner.plan(&view, &runtime, 3_000).removals.is_empty());

    // It counts: a stops its replica.
    view.fleet.insert(
        "web".parse().unwrap(),
        vec![Replica {
            ready: true,
            ..pending.clone()
        }],
    );
    assert_eq!(
        removed_ids(&planner.plan(&view, &runtime, 4_000)),
        ["web-00000001"]
    );

    // Past the deadline a drained node stops its replicas, replaced or not.
    view.fleet.insert("web".parse().unwrap(), vec![pending]);
    let mut late = Planner::new(node("a"), SETTINGS, 1);
    assert_eq!(
        removed_ids(&late.plan(&view, &runtime, 61_000)),
        ["web-00000001"]
    );
}

#[test]
fn a_record_the_runtime_never_held_is_started_whatever_its_policy() {
    let v1 = version(10, "a");
    let mut never = spec(1, 100);
    never.restart = shoal_crdt::RestartPolicy::Never;
    let mut view = view("a", &["a"], &[("web", never, v1)]);
    view.own_records = vec![record("web-00000001", "web", "a", v1)];
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let plan = planner.plan(&view, &Observed::default(), 0);
    assert_eq!(plan.restarts.len(), 1, "{plan:?}");
    assert!(plan.starts.is_empty());
    // Its start failed: the next try waits the interval.
    planner.handle_outcomes(
        [Outcome::RestartFailed {
            id: "web-00000001".into(),
            service: "web".parse().unwrap(),
            message: "disk full".into(),
        }],
        0,
    );
    assert!(
        planner
            .plan(&view, &Observed::default(), 500)
            .restarts
            .is_empty()
    );
    assert_eq!(
        planner
            .plan(&view, &Observed::default(), 1_000)
            .restarts
            .len(),
        1
    );
    // Once it ran and ended, the policy decides: never means it stays stopped.
    let ended = observed(&[("web-00000001", ObservedState::Exited(ExitStatus::Unknown))]);
    assert!(planner.plan(&view, &ended, 2_000).is_idle());
}

#[test]
fn an_ended_container_restarts_when_its_policy_says() {
    let v1 = version(10, "a");
    let mut view = view("a", &["a"], &[("web", spec(1, 100), v1)]);
    view.own_records = vec![record("web-00000001", "web", "a", v1)];
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let running = observed(&[("web-00000001", ObservedState::Running)]);
    assert!(planner.plan(&view, &running, 1_000).is_idle());
    let ended = observed(&[("web-00000001", ObservedState::Exited(ExitStatus::Code(1)))]);
    // A quick failure backs off first: not due at once.
    let plan = planner.plan(&view, &ended, 1_100);
    assert!(plan.restarts.is_empty(), "{plan:?}");
    let mut due = None;
    for now_ms in (1_100..120_000).step_by(100) {
        let plan = planner.plan(&view, &ended, now_ms);
        if !plan.restarts.is_empty() {
            due = Some(plan);
            break;
        }
    }
    let plan = due.expect("restarted within two minutes");
    assert_eq!(plan.restarts[0].record.id.as_str(), "web-00000001");
    assert!(plan.starts.is_empty(), "a restart is not a new replica");

    // Policy never: left stopped, and not replaced either.
    let mut never = spec(1, 100);
    never.restart = shoal_crdt::RestartPolicy::Never;
    let mut never_view = view.clone();
    never_view
        .services
        .get_mut(&"web".parse().unwrap())
        .unwrap()
        .spec = never;
    never_view
        .services
        .get_mut(&"web".parse().unwrap())
        .unwrap()
        .version = v1;
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    for now_ms in [0, 60_000, 600_000] {
        let plan = planner.plan(&never_view, &ended, now_ms);
        assert!(plan.is_idle(), "{plan:?}");
    }
}

#[test]
fn an_unhealthy_running_container_restarts_per_its_policy_with_backoff() {
    let v1 = version(10, "a");
    let mut checked = spec(1, 100);
    checked.health = Some(Box::new(shoal_crdt::HealthCheck::tcp(80)));
    let mut view = view("a", &["a"], &[("web", checked.clone(), v1)]);
    view.own_records = vec![record("web-00000001", "web", "a", v1)];
    let running = observed(&[("web-00000001", ObservedState::Running)]);
    let unhealthy = |since_ms: u64| {
        BTreeMap::from([(
            "web-00000001".to_owned(),
            (
                since_ms,
                Health::Unhealthy {
                    reason: "refused".into(),
                },
            ),
        )])
    };

    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    assert!(planner.plan(&view, &running, 1_000).is_idle());
    let since_ms = planner.restarts().since_ms("web-00000001").unwrap();
    assert_eq!(planner.health_of("web-00000001", true), Health::Starting);
    // A verdict about an earlier run is stale: nothing happens.
    planner.set_health(unhealthy(since_ms - 1));
    assert!(planner.plan(&view, &running, 1_050).is_idle());
    assert_eq!(
        planner
            .status(&view, &running)
            .containers
            .values()
            .next()
            .unwrap()
            .health,
        Health::Starting
    );

    planner.set_health(unhealthy(since_ms));
    let status = planner.status(&view, &running);
    assert!(matches!(
        status.containers.values().next().unwrap().health,
        Health::Unhealthy { .. }
    ));
    // Counted as a failed exit: the policy's backoff first, then a restart.
    assert!(planner.plan(&view, &running, 1_100).restarts.is_empty());
    let plan = planner.plan(&view, &running, 1_300);
    assert_eq!(plan.restarts.len(), 1, "{plan:?}");
    assert_eq!(plan.restarts[0].record.id.as_str(), "web-00000001");
    planner.handle_outcomes(
        [Outcome::Restarted {
            id: "web-00000001".into(),
            service: "web".parse().unwrap(),
            spec: checked.clone(),
        }],
        1_400,
    );
    assert_eq!(planner.restarts().consecutive_restarts("web-00000001"), 1);
    // The new run starts over: the old verdict is about the earlier run.
    assert_eq!(planner.health_of("web-00000001", true), Health::Starting);
    assert!(planner.plan(&view, &running, 1_500).is_idle());

    // Healthy again before the restart was due: the restart is dropped.
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    planner.plan(&view, &running, 1_000);
    planner.set_health(unhealthy(since_ms));
    assert!(planner.plan(&view, &running, 1_010).restarts.is_empty());
    planner.set_health(BTreeMap::from([(
        "web-00000001".to_owned(),
        (since_ms, Health::Healthy),
    )]));
    for now_ms in (1_100..5_000).step_by(100) {
        assert!(planner.plan(&view, &running, now_ms).is_idle());
    }

    // Policy never: an unhealthy container keeps running.
    let mut never = checked;
    never.restart = shoal_crdt::RestartPolicy::Never;
    let never_view = {
        let mut view = view.clone();
        view.services.get_mut(&"web".parse().unwrap()).unwrap().spec = never;
        view
    };
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    planner.plan(&never_view, &running, 1_000);
    planner.set_health(unhealthy(since_ms));
    for now_ms in [1_100, 60_000, 600_000] {
        assert!(planner.plan(&never_view, &running, now_ms).is_idle());
    }
}

#[test]
fn what_fits_nowhere_is_unplaced_and_a_failed_start_waits_the_interval() {
    let v1 = version(10, "a");
    let view = view(
        "a",
        &["a"],
        &[("big", spec(2, 900), v1), ("small", spec(1, 200), v1)],
    );
    let mut planner = Planner::new(node("a"), SETTINGS, 1);
    let plan = planner.plan(&view, &Observed::default(), 0);
    // One big replica fits the node's 1000 millicpu; the other and small do not.
    let started: Vec<&str> = plan.starts.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(started, ["big"]);
    assert_eq!(
        planner.unplaced()[&"big".parse::<ServiceName>().unwrap()],
        1
    );
    assert_eq!(
        planner.unplaced()[&"small".parse::<ServiceName>().unwrap()],
        1
    );
    // The start failed (a bad image, say): an error, and no new try before the interval.
    planner.handle_outcomes(
        [Outcome::StartFailed {
            service: "big".parse().unwrap(),
            message: "image broken".into(),
        }],
        0,
    );
    assert_eq!(
        planner.errors()[&"big".parse::<ServiceName>().unwrap()],
        "image broken"
    );
    assert!(
        planner
            .plan(&view, &Observed::default(), 999)
            .starts
            .is_empty()
    );
    let plan = planner.plan(&view, &Observed::default(), 1_000);
    assert_eq!(plan.starts.len(), 1);
    // A success clears the error.
    let start = plan.starts[0].clone();
    planner.handle_outcomes(
        [Outcome::Started {
            id: start.id.as_str().to_string(),
            service: start.service,
            spec: start.spec,
        }],
        1_000,
    );
    assert!(planner.errors().is_empty());
}

#[test]
fn starts_per_pass_are_bounded() {
    let v1 = version(10, "a");
    let settings = PlannerSettings {
        starts_per_pass_max: 2,
        ..SETTINGS
    };
    let mut planner = Planner::new(node("a"), settings, 1);
    let plan = planner.plan(
        &view("a", &["a"], &[("web", spec(5, 10), v1)]),
        &Observed::default(),
        0,
    );
    assert_eq!(plan.starts.len(), 2);
    assert!(plan.more_to_start);
}

#[test]
fn routes_and_leftover_namespaces_come_with_a_network() {
    let mut view = view("a", &["a", "b"], &[]);
    view.subnet = Some("10.1.1.0/24".parse().unwrap());
    view.peer_subnets = vec![("10.1.2.0/24".parse().unwrap(), "192.0.2.2".parse().unwrap())];
    let observed = Observed {
        containers: [("busy-1".to_string(), ObservedState::Running)].into(),
        spec_digests: BTreeMap::new(),
        attachments: Some(["busy-1".to_string(), "gone-1".to_string()].into()),
    };
    let plan = Planner::new(node("a"), SETTINGS, 1).plan(&view, &observed, 0);
    assert_eq!(plan.routes, Some(view.peer_subnets.clone()));
    assert_eq!(plan.leftover_attachments, ["gone-1"]);
    assert!(plan.with_ip);
    let without = Planner::new(node("a"), SETTINGS, 1).plan(&view, &Observed::default(), 0);
    assert_eq!(without.routes, None);
}

#[test]
fn container_ids_are_valid_and_bounded() {
    let long: ServiceName = "a".repeat(63).parse().unwrap();
    let mut planner = Planner::new(node("a"), SETTINGS, 3);
    for service in [long, "web".parse().unwrap(), "x-y".parse().unwrap()] {
        let id = planner.new_container_id(&service);
        shoal_oci::bundle::validate_id(id.as_str()).unwrap();
        assert!(id.as_str().len() <= shoal_oci::bundle::CONTAINER_ID_BYTES_MAX);
        assert!(id.as_str().starts_with(&service.as_str()[..3]));
    }
}

/// Services (name, replicas, millicpu), records (service, owner, running) and a seed.
type Case = (Vec<(String, u32, u32)>, Vec<(String, String, bool)>, u64);

fn arbitrary_case() -> impl Strategy<Value = Case> {
    let services = proptest::collection::vec(("[a-c]", 0u32..5, 1u32..600), 0..4);
    let records = proptest::collection::vec(("[a-c]", "[abc]", any::<bool>()), 0..8);
    (services, records, any::<u64>())
}

proptest! {
    /// Whatever the view, a plan names only this node's records and containers.
    #[test]
    fn a_plan_only_touches_this_node((services, records, seed) in arbitrary_case()) {
        let v1 = version(10, "a");
        let specs: Vec<(String, ServiceSpec)> = services
            .iter()
            .map(|(name, replicas, cpu)| (format!("svc-{name}"), spec(*replicas, *cpu)))
            .collect();
        let named: Vec<(&str, ServiceSpec, Timestamp)> =
            specs.iter().map(|(n, s)| (n.as_str(), s.clone(), v1)).collect();
        let mut view = view("a", &["a", "b", "c"], &named);
        let mut running = Vec::new();
        for (index, (service, owner, is_running)) in records.iter().enumerate() {
            let id = format!("svc-{service}-{index:08x}");
            if owner == "a" {
                view.own_records.push(record(&id, &format!("svc-{service}"), "a", v1));
                if *is_running {
                    running.push(id);
                }
            }
        }
        let observed = Observed {
            containers: running.iter().map(|id| (id.clone(), ObservedState::Running)).collect(),
            spec_digests: BTreeMap::new(),
            attachments: None,
        };
        let plan = Planner::new(node("a"), SETTINGS, seed).plan(&view, &observed, 0);
        for removal in &plan.removals {
            if let Some(record) = &removal.record {
                prop_assert_eq!(&record.node, &node("a"));
            } else {
                prop_assert!(observed.containers.contains_key(&removal.id));
            }
        }
        let mut ids = BTreeSet::new();
        for start in &plan.starts {
            prop_assert!(ids.insert(start.id.clone()), "ids are unique");
            prop_assert!(view.services.contains_key(&start.service));
        }
        // Kept plus started never exceeds what placement gives this node.
        let placement = view.placement();
        for service in view.services.keys() {
            let kept = view
                .own_records
                .iter()
                .filter(|r| &r.service == service)
                .filter(|r| !plan.removals.iter().any(|m| m.id == r.id.as_str()))
                .count();
            let started = plan.starts.iter().filter(|s| &s.service == service).count();
            prop_assert!(kept + started <= placement.on(service, &node("a")) as usize);
        }
        // And what runs after the plan fits the node: the planner's room is placement's.
        let mut reserved = Reserved::default();
        for record in &view.own_records {
            if !plan.removals.iter().any(|m| m.id == record.id.as_str()) {
                reserved.add(&view.services[&record.service].spec.resources);
            }
        }
        for start in &plan.starts {
            reserved.add(&start.spec.resources);
        }
        prop_assert!(reserved.cpu_millis <= 1000, "{:?}", reserved);
    }
}
