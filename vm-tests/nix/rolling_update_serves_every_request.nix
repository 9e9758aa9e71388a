# Update scenario rolling_update_serves_every_request (vm-tests/tests/updates.rs):
# three replicas of an httpd with a health check behind a mesh-mode port
# (declared in every node's configuration). While a client outside the cluster
# polls port 8080 of every node, version v2 is applied with the CLI on node b;
# the update rolls one replica at a time (start-first) and no request fails.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
  web = body: common.checkedWeb {
    inherit body;
    update = {
      max_parallel = 1;
      order = "start-first";
      min_healthy_ms = 1000;
      healthy_deadline_ms = 30000;
    };
  };
in
pkgs.testers.runNixOSTest {
  name = "shoal-rolling_update_serves_every_request";
  nodes = common.workloadCluster [ "a" "b" "c" ] { web = web "v1"; } // { inherit (common) outside; };
  testScript = { nodes, ... }: ''
    ${common.prelude}
    ${common.workloadPrelude}

    ${common.startThreeWithOutside nodes}

    with subtest("v1 answers on every node"):
        for machine in machines:
            wait_answers(outside, address[machine.name], 8080, "v1")

    with subtest("v2 rolls through while the outside client polls: no request fails"):
        start_polling(outside, [address[m.name] for m in machines])
        b.succeed("shoal service apply -f ${common.specFile "web" (web "v2")}")

        def rolled():
            replicas = own_containers(machines, "web")
            if len(replicas) != 3 or any(r["state"] != "running" for r in replicas):
                return None
            for machine in machines:
                status, body = get(outside, address[machine.name], 8080)
                if status != 0 or body.strip() != "v2":
                    return None
            return True

        wait_for("every node to answer v2 from three replicas", rolled)
        answers = stop_polling(outside)
        failed = [line for line in answers if line not in ("v1", "v2")]
        assert not failed, f"{len(failed)} of {len(answers)} requests failed: {failed[:10]}"
        assert "v1" in answers and "v2" in answers, f"the client saw {set(answers)}"
  '';
}
