# Workload scenario secrets_stay_off_the_state (vm-tests/tests/workloads.rs):
# service reader (declared in every node's configuration) has a secret, a
# file each node makes at boot with random content (never in the store),
# which the module passes to shoal.service by LoadCredential=. The container
# reads it at /run/secrets/token, but its content is in no node's state.redb,
# journal or CLI output, while its path is replicated. Service broken, applied
# with the CLI, names a secret file that does not exist: the node that should
# run it reports an error naming the path, and reader keeps running.
{ pkgs }:
let
  common = import ./common.nix { inherit pkgs; };
  secretsDirectory = "/var/lib/test-secrets";
  cluster = common.workloadCluster [ "a" "b" ] {
    reader = {
      inherit (common) image;
      command = common.shell "cat /run/secrets/token; echo; ${common.idle}";
      secrets.token = "${secretsDirectory}/token";
    };
  };
  # Before shoal.service, which systemd does not start without the file.
  makeSecret = {
    systemd.services.test-secret = {
      description = "make this node's test secret";
      wantedBy = [ "shoal.service" ];
      before = [ "shoal.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
      };
      script = ''
        install -d -m 0700 ${secretsDirectory}
        if [ ! -e ${secretsDirectory}/token ]; then
          (umask 077; echo "shoal-secret-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" >${secretsDirectory}/token)
        fi
      '';
    };
  };
  missing = "${secretsDirectory}/missing-token";
  broken = pkgs.writeText "broken.toml" ''
    name = "broken"
    image = "${common.image}"
    command = ["/bin/sh", "-c", "${common.idle}"]
    secrets = { token = "${missing}" }
  '';
in
pkgs.testers.runNixOSTest {
  name = "shoal-secrets_stay_off_the_state";
  nodes = pkgs.lib.mapAttrs (_: node: { imports = [ node makeSecret ]; }) cluster;
  testScript = ''
    ${common.prelude}
    ${common.workloadPrelude}

    machines = [a, b]
    start_all()
    for machine in machines:
        machine.wait_for_unit("shoal.service")
    wait_converged(machines, 2)
    tokens = {machine.name: machine.succeed("cat ${secretsDirectory}/token").strip() for machine in machines}
    assert all(token.startswith("shoal-secret-") for token in tokens.values()), tokens

    with subtest("the container reads its secret"):
        reader = one_running(machines, "reader")
        node = next(machine for machine in machines if machine.name == reader["machine"])
        token = tokens[node.name]
        wait_for("the container to print its secret", lambda: True if token in node.succeed("shoal logs reader") else None)

    with subtest("a missing secret file is an error naming the path"):
        a.succeed("shoal service apply -f ${broken}")

        def error():
            for machine in machines:
                text = (json.loads(machine.succeed("shoal ps --json")).get("errors") or {}).get("broken")
                if text is not None and "${missing}" in text:
                    return machine.name, text
            return None

        print("broken: %s reports %s" % wait_for("an error naming the missing secret", error))
        assert all(c["state"] != "running" for c in own_containers(machines, "broken")), own_containers(machines, "broken")
        assert own_containers(machines, "reader") == [reader], own_containers(machines, "reader")

    with subtest("the secret's content is in no state, journal or CLI output; its path is replicated"):
        for machine in machines:
            for token in tokens.values():
                grep_status, _ = machine.execute(f"grep -a -q -F -e {token} /var/lib/shoal/state.redb")
                assert grep_status == 1, f"{machine.name}: state.redb holds a secret's content (grep status {grep_status})"
                grep_status, _ = machine.execute(f"journalctl --no-pager -u shoal.service -u shoal-services.service | grep -q -F -e {token}")
                assert grep_status == 1, f"{machine.name}: the journal holds a secret's content (grep status {grep_status})"
                for command in ["shoal service ls --json", "shoal ps --json"]:
                    assert token not in machine.succeed(command), f"`{command}` on {machine.name} shows a secret's content"
            # The search can find what is there: the path is in the state.
            machine.succeed("grep -a -q -F -e /run/credentials/shoal.service/svc-reader.token /var/lib/shoal/state.redb")
  '';
}
