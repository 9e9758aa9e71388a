# Update scenario failed_update_rolls_back_by_itself (vm-tests/tests/updates.rs):
# three healthy replicas of an httpd behind a mesh-mode port; a version whose
# health check never passes is applied with the CLI on node c. Its first new
# replica misses healthy_deadline_ms, the cluster writes v1 back on its own
# (`shoal service history` shows the rollback and the failure), the new replica
# goes, and the outside client gets v1 for every request throughout.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
  web = { body, healthy }: common.checkedWeb {
    inherit body healthy;
    update = {
      min_healthy_ms = 1000;
      healthy_deadline_ms = 10000;
    };
  };
in
pkgs.testers.runNixOSTest {
  name = "shoal-failed_update_rolls_back_by_itself";
  nodes = common.workloadCluster [ "a" "b" "c" ] { web = web { body = "v1"; healthy = true; }; }
    // { inherit (common) outside; };
  testScript = { nodes, ... }: ''
    ${common.prelude}
    ${common.workloadPrelude}

    ${common.startThreeWithOutside nodes}
    for machine in machines:
        wait_answers(outside, address[machine.name], 8080, "v1")
    before = sorted(r["id"] for r in own_containers(machines, "web"))

    with subtest("the broken version is rolled back by the cluster; v1 serves throughout"):
        start_polling(outside, [address[m.name] for m in machines])
        c.succeed("shoal service apply -f ${common.specFile "web" (web { body = "broken"; healthy = false; })}")

        def rolled_back():
            versions = json.loads(a.succeed("shoal service history web --json"))["versions"]
            if len(versions) < 2 or "rollback_of" not in versions[0] or "failed" not in versions[1]:
                return None
            return versions

        versions = wait_for("the broken version to be rolled back", rolled_back)
        assert "not ready within 10000 ms" in versions[1]["failed"], versions[1]
        wait_for(
            "only the three v1 replicas to be left",
            lambda: True if sorted(r["id"] for r in own_containers(machines, "web")) == before else None,
        )
        answers = stop_polling(outside)
        assert answers and all(line == "v1" for line in answers), \
            f"not every request got v1: {[line for line in answers if line != 'v1'][:10]} of {len(answers)}"
  '';
}
