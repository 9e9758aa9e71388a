# Workload scenario ports_conflict_unplaced (vm-tests/tests/workloads.rs): on
# a one-node cluster, services alpha and beta (declared in the node's
# configuration) both publish host port 8080: one runs and answers, the other
# is unplaced with a reason naming the port and has no container.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
  service = name: {
    inherit (common) image;
    command = common.httpd name;
    tmpfs = [ "/tmp" ];
    ports = [ "8080:80" ];
  };
in
pkgs.testers.runNixOSTest {
  name = "shoal-ports_conflict_unplaced";
  nodes = common.workloadCluster [ "a" ]
    {
      alpha = service "alpha";
      beta = service "beta";
    } // { inherit (common) outside; };
  testScript = { nodes, ... }: ''
    ${common.prelude}
    ${common.workloadPrelude}

    start_all()
    a.wait_for_unit("shoal.service")
    a.wait_for_unit("shoal-services.service")
    outside.wait_for_unit("multi-user.target")

    with subtest("one of alpha and beta runs, the other is unplaced with a reason"):
        def placed():
            ps = json.loads(a.succeed("shoal ps --json"))

            def running(name):
                return any(c["service"] == name and c["state"] == "running" for c in ps["containers"])

            if running("alpha") and not running("beta"):
                winner, loser = "alpha", "beta"
            elif running("beta") and not running("alpha"):
                winner, loser = "beta", "alpha"
            else:
                return None
            reason = (ps.get("unplaced_reasons") or {}).get(loser)
            if (ps.get("unplaced") or {}).get(loser) != 1 or reason is None:
                return None
            return winner, loser, reason

        winner, loser, reason = wait_for("one service running and the other unplaced", placed)
        assert "8080" in reason, f"the reason {loser} is unplaced does not name port 8080: {reason!r}"

    with subtest("the port answers for the running service; the other has no container"):
        wait_answers(outside, "${nodes.a.networking.primaryIPAddress}", 8080, winner)
        assert own_containers([a], loser) == [], own_containers([a], loser)
  '';
}
