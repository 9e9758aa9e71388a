# Update scenario drain_moves_replicas_with_no_failed_request
# (vm-tests/tests/updates.rs): three replicas of an httpd with a health check
# behind a mesh-mode port. While a client outside the cluster polls port 8080
# of every node, node b is drained from node a; b's replica is replaced on
# another node before b stops it, and no request fails.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
in
pkgs.testers.runNixOSTest {
  name = "shoal-drain_moves_replicas_with_no_failed_request";
  nodes = common.workloadCluster [ "a" "b" "c" ]
    { web = common.checkedWeb { body = "v1"; }; }
  // { inherit (common) outside; };
  testScript = { nodes, ... }: ''
    ${common.prelude}
    ${common.workloadPrelude}

    ${common.startThreeWithOutside nodes}
    for machine in machines:
        wait_answers(outside, address[machine.name], 8080, "v1")

    with subtest("b is drained from a: its replica moves and no request fails"):
        start_polling(outside, [address[m.name] for m in machines])
        a.succeed("shoal node drain b --deadline-ms 60000")

        def moved():
            replicas = own_containers(machines, "web")
            if len(replicas) != 3 or any(r["state"] != "running" or r["machine"] == "b" for r in replicas):
                return None
            return True

        wait_for("b's replica to move off b", moved)
        answers = stop_polling(outside)
        failed = [line for line in answers if line != "v1"]
        assert answers and not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:10]}"
        listed = json.loads(c.succeed("shoal nodes --json"))
        assert any(node["id"] == "b" and node.get("drain") for node in listed), listed
  '';
}
