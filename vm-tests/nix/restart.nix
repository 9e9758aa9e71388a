# Scenarios 4 and 5: a rolling restart of every daemon restarts no container
# and loses no state; a daemon killed with SIGKILL is restarted by systemd
# (Restart=on-failure) and re-converges; a daemon away long enough for its
# replica to move comes back to its own container, and the node that stood
# in stops the stand-in, not the replica it ran all along.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-restart";
  nodes = common.cluster [ "a" "b" "c" ];
  testScript = ''
    ${common.prelude}

    machines = [a, b, c]
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 3)
    a.succeed("shoal service apply -f ${common.spec { replicas = 3; }}")
    wait_replicas(machines, "web", 3)
    before = containers(a, "web")
    # The digest moves with every heartbeat; the services and their
    # versions must not.
    versions = {name: view["version"] for name, view in services(a).items()}

    with subtest("rolling restart, one daemon at a time"):
        for machine in machines:
            machine.succeed("systemctl restart shoal.service")
            machine.wait_for_unit("shoal.service")
            wait_converged(machines, 3)
        for machine in machines:
            after = {name: view["version"] for name, view in services(machine).items()}
            assert after == versions, f"services changed across restarts: {after} != {versions}"
        for machine in machines:
            assert containers(machine, "web") == before, "a container was restarted"

    with subtest("kill -9 one daemon: systemd restarts it and it re-converges"):
        # Only the daemon: its containers must survive it.
        b.succeed("kill -9 $(systemctl show -P MainPID shoal.service)")
        b.wait_until_succeeds("systemctl show -P NRestarts shoal.service | grep -qx 1")
        b.wait_for_unit("shoal.service")
        wait_converged(machines, 3)
        assert "web" in services(b)
        wait_replicas(machines, "web", 3)

    with subtest("a daemon away until its replica moves: the stand-in goes"):
        before = containers(a, "web")
        b.succeed("systemctl stop shoal.service")

        def moved(last_try):
            records = json.loads(a.succeed("shoal ps --json"))["containers"]
            elsewhere = [r for r in records if r["service"] == "web" and r["node"] != "b"]
            if last_try:
                print(f"web off b: {elsewhere}")
            return len(elsewhere) == 3

        retry(moved, 120)
        b.succeed("systemctl start shoal.service")
        b.wait_for_unit("shoal.service")
        wait_converged(machines, 3)
        wait_replicas(machines, "web", 3)
        for machine in machines:
            assert containers(machine, "web") == before, "the stand-in stayed, or an original went"
  '';
}
