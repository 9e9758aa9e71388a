# Update scenario partition_during_update_ends_on_one_version
# (vm-tests/tests/updates.rs): three replicas of an httpd with a health check
# behind a mesh-mode port. v2 is applied on a and c is cut off from a and b at
# once; each side rolls on its own view and c's side takes a v3. After the heal
# the cluster ends on one version (v3) with exactly three replicas.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
  web = body: common.checkedWeb { inherit body; };
  file = body: common.specFile "web" (web body);
in
pkgs.testers.runNixOSTest {
  name = "shoal-partition_during_update_ends_on_one_version";
  nodes = common.workloadCluster [ "a" "b" "c" ] { web = web "v1"; } // { inherit (common) outside; };
  testScript = { nodes, ... }: ''
    ${common.prelude}
    ${common.workloadPrelude}

    ${common.startThreeWithOutside nodes}
    for machine in machines:
        wait_answers(outside, address[machine.name], 8080, "v1")

    with subtest("v2 on a, c cut off at once, v3 on c's side"):
        a.succeed("shoal service apply -f ${file "v2"}")
        cut(c, address["a"])
        cut(c, address["b"])
        wait_for(
            "c to run three replicas of its own",
            lambda: True if len([r for r in own_containers([c], "web") if r["state"] == "running"]) == 3 else None,
        )
        c.succeed("shoal service apply -f ${file "v3"}")

    with subtest("after the heal: one version, exactly three replicas"):
        heal(c)

        def one_version():
            replicas = own_containers(machines, "web")
            if len(replicas) != 3 or any(r["state"] != "running" for r in replicas):
                return None
            for machine in machines:
                for _ in range(5):
                    status, body = get(outside, address[machine.name], 8080)
                    if status != 0 or body.strip() != "v3":
                        return None
            return True

        wait_for("one version (v3) with three replicas", one_version)
        for machine in machines:
            current = json.loads(machine.succeed("shoal service history web --json"))["versions"][0]
            assert "echo v3" in current["spec"]["command"][2], f"{machine.name}: {current}"
  '';
}
