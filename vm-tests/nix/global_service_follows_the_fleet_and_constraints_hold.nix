# Update scenario global_service_follows_the_fleet_and_constraints_hold
# (vm-tests/tests/updates.rs): a and b are in zone a, c (the only node of
# zone b) is stopped. A global service runs on a and b; a service constrained
# to zone b is unplaced with a reason naming the constraint. When c comes back
# the global service gets a replica there and the constrained one runs there
# only.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
  lib = pkgs.lib;
  specs = {
    agent = {
      inherit (common) image;
      command = common.shell common.idle;
      mode = "global";
    };
    edge = {
      inherit (common) image;
      command = common.shell common.idle;
      replicas = 2;
      constraints = [ "zone == b" ];
    };
  };
  cluster = common.workloadCluster [ "a" "b" "c" ] { };
  zone = name: if name == "c" then "b" else "a";
  files = lib.mapAttrs common.specFile specs;
in
pkgs.testers.runNixOSTest {
  name = "shoal-global_service_follows_the_fleet_and_constraints_hold";
  nodes = lib.mapAttrs
    (name: machine: { ... }: {
      imports = [ machine ];
      services.shoal.labels.zone = zone name;
    })
    cluster;
  testScript = ''
    ${common.prelude}
    ${common.workloadPrelude}

    machines = [a, b, c]
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 3)

    def running_on(service):
        return sorted(r["machine"] for r in own_containers(machines, service) if r["state"] == "running")

    with subtest("c is stopped: the global service on a and b, the zone b one unplaced"):
        c.succeed("systemctl stop shoal.service")
        a.succeed("shoal service apply -f ${files.agent}")
        a.succeed("shoal service apply -f ${files.edge}")
        wait_for("agent on a and b", lambda: True if running_on("agent") == ["a", "b"] else None)
        ps = json.loads(a.succeed("shoal ps --json"))
        assert "zone == b" in ps["unplaced_reasons"].get("edge", ""), ps["unplaced_reasons"]
        assert running_on("edge") == [], running_on("edge")

    with subtest("c comes back: agent there too, edge only there"):
        c.succeed("systemctl start shoal.service")
        c.wait_for_unit("shoal.service")
        wait_for(
            "agent everywhere and edge only on c",
            lambda: True if running_on("agent") == ["a", "b", "c"] and running_on("edge") == ["c", "c"] else None,
        )
  '';
}
