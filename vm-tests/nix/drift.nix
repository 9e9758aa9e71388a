# The module evaluated for a sample host: what its config file and services
# spec hold, the typed option names under `settings` (dotted), the unit's
# settings that the checks look at, and the failed assertions of the module.
# scripts/nix-checks.sh turns the values to TOML, feeds them to
# `shoal daemon --check-config` and `shoal service apply`, and compares the
# names with `shoal daemon --print-config-keys`.
#
# It uses only what the real nixpkgs has, so it also runs against it (Nix 2.18
# or later, with a nixpkgs checkout or the nixpkgs.lib-free full tree):
#   nix-instantiate --eval --strict --json -E 'import ./vm-tests/nix/drift.nix { nixpkgs = /path/to/nixpkgs; }'
# (with the stub, the default, it runs offline). The generated files are
# derivations built by a converter at build time, so their contents cannot be
# read during evaluation; instead an overlay records the value each
# `formats.toml` generate call gets, which is what the real converter turns
# into TOML (`builtins.toJSON value`, then JSON to TOML).
{ nixpkgs ? ../nix-stub
, keyFile ? "/var/lib/shoal-keys/node.key"
, listen ? "0.0.0.0:7443"
, advertise ? "192.0.2.10:7443"
, peers ? [ "192.0.2.11:7443" "192.0.2.12:7443" ]
, extraSettings ? { }
, labels ? { zone = "eu-1"; role = "edge"; }
, metricsListen ? "127.0.0.1:9464"
  # services.shoal.drainOnStop, when given.
, drainOnStop ? null
  # Merged into the `workload` service (lists concatenate), for refusals.
, workload ? { }
  # More declared services, for refusals.
, extraServices ? { }
  # false: pkgs has no shoal and the host does not set the package, as when
  # the module file is imported without the flake.
, withPackage ? true
}:
let
  recordGenerate = _final: prev: {
    formats = prev.formats // {
      toml = args:
        let format = prev.formats.toml args; in
        format // {
          generate = name: value: format.generate name value // { shoalDriftJSON = builtins.toJSON value; };
        };
    };
  };
  addPackage = _final: prev: { shoal = prev.callPackage ../../nixos-module/package.nix { }; };

  pkgs = import nixpkgs {
    system = "x86_64-linux";
    overlays = [ recordGenerate ] ++ (if withPackage then [ addPackage ] else [ ]);
  };
  inherit (pkgs) lib;

  # Every typed setting is set, so the daemon checks each one's rendering.
  host = {
    imports = [ ../../nixos-module ];
    networking.hostName = "node-a";
    services.shoal = {
      enable = true;
      openFirewall = true;
      inherit labels;
      metrics.listen = metricsListen;
      tls = {
        caFile = "/var/lib/shoal-keys/ca.pem";
        certFile = "/var/lib/shoal-keys/node.pem";
        inherit keyFile;
      };
      settings = lib.mkMerge [
        {
          state_dir = "/var/lib/shoal";
          inherit listen advertise peers;
          log_format = "json";
          sync = {
            interval_ms = 500;
            jitter_ms = 100;
            fanout = 2;
            heartbeat_interval_ms = 500;
            down_after_ms = 3000;
            evict_after_ms = 3600000;
            max_clock_drift_ms = 2000;
            body_bytes_max = 4194304;
            request_timeout_ms = 4000;
            eager_push = false;
            push_fanout = 3;
          };
          membership = {
            probe_period_ms = 500;
            probe_timeout_ms = 250;
            suspect_to_down_ms = 2000;
          };
          api.socket = "/var/lib/shoal/api.sock";
          capacity = {
            cpu_millis = 2000;
            memory_bytes = 4294967296;
          };
          containers = {
            enabled = true;
            subnet = "10.88.1.0/24";
            bridge = "shoal1";
            firewall = true;
            reconcile_interval_ms = 500;
            stop_grace_ms = 5000;
            log_bytes_max = 1048576;
          };
        }
        extraSettings
      ];
      services = {
        # A string: a path on the node, taken as written.
        web = {
          image = "/var/lib/images/web.tar";
          command = [ "/bin/httpd" "-f" "-p" "8080" ];
          env.GREETING = "hello";
          replicas = 2;
          restart = "always";
          mode = "replicated";
          constraints = [ "zone == eu-1" "role in (edge, core)" ];
          spread = "zone";
          resources = {
            cpu_millis = 250;
            memory_bytes = 67108864;
            pids_max = 128;
          };
          health = {
            http = "http://127.0.0.1:8080/healthz";
            interval_ms = 2000;
            timeout_ms = 1000;
            retries = 3;
            start_period_ms = 5000;
          };
          update = {
            max_parallel = 2;
            order = "stop-first";
            min_healthy_ms = 1000;
            healthy_deadline_ms = 30000;
            auto_rollback = false;
          };
        };
        # A Nix path literal: must be rendered as a store path.
        local.image = ./drift-image;
        # A command health check.
        probed = {
          image = "/var/lib/images/probed.tar";
          health = {
            cmd = [ "/bin/sh" "-c" "test -e /run/ready" ];
            interval_ms = 5000;
            timeout_ms = 2000;
          };
        };
        # Every issue 11 field, each rule's every branch.
        workload = lib.mkMerge [
          {
            image = "/var/lib/images/worker.tar";
            ports = [ "8080:80" "127.0.0.1:9000:9000" "5353:53/udp" "192.0.2.10:8443:443/tcp" ];
            publish.mode = "mesh";
            health.tcp = 80;
            volumes = [ "/srv/web:/data:ro" "cache:/var/cache/web" "/srv/uploads:/uploads:rw" "scratch.1:/scratch" ];
            tmpfs = [ "/tmp:size=64m" "/run/work" ];
            envFiles = [ "/run/keys/web.env" "/var/lib/shoal-keys/common.env" ];
            secrets = {
              tls_key = "/run/keys/web.key";
              "db.password" = "/var/lib/shoal-keys/db-password";
            };
          }
          workload
        ];
      } // extraServices;
    } // lib.optionalAttrs (drainOnStop != null) { inherit drainOnStop; };
  };

  evaluated = import (nixpkgs + "/nixos/lib/eval-config.nix") {
    system = "x86_64-linux";
    inherit pkgs;
    modules = [ host ];
  };
  inherit (evaluated) config options;

  optionNames = prefix: options:
    lib.concatMap
      (name:
        let option = options.${name}; in
        if lib.isOption option then [ (lib.concatStringsSep "." (prefix ++ [ name ])) ]
        else optionNames (prefix ++ [ name ]) option)
      (lib.attrNames options);

  unit = config.systemd.services.shoal;
  configFile = builtins.head unit.restartTriggers;
  servicesUnit = config.systemd.services.shoal-services;
  servicesFile = builtins.head servicesUnit.restartTriggers;

  # This module's assertions only: every message names its option. (A real
  # NixOS evaluation has others, e.g. about the root file system.)
  shoalAssertions = builtins.filter (a: lib.hasPrefix "services.shoal." a.message) config.assertions;
in
{
  assertion_failures = map (a: a.message) (builtins.filter (a: !a.assertion) shoalAssertions);
  # `_module.*` are the module system's own options, in every submodule.
  typed_keys = builtins.filter (name: !(lib.hasPrefix "_module." name))
    (optionNames [ ] (options.services.shoal.settings.type.getSubOptions [ ]));
  config_json = configFile.shoalDriftJSON;
  services_json = servicesFile.shoalDriftJSON;
  # The units run exactly the files rendered above.
  units_use_rendered_files =
    lib.hasInfix "${configFile}" unit.serviceConfig.ExecStart
    && lib.hasInfix "${servicesFile}" servicesUnit.serviceConfig.ExecStart;
  load_credential = unit.serviceConfig.LoadCredential;
  # The tools the daemon runs, looked up in the unit's PATH.
  unit_path = map (package: package.pname or package.name) unit.path;
  # Settings that give the unit its own mount namespace or hide host paths
  # from it: none may be set (container mounts, bind-mount sources, env
  # files, volumes and credentials are all the host's).
  mount_namespace_settings = builtins.filter (name: unit.serviceConfig ? ${name}) [
    "ProtectSystem"
    "ProtectHome"
    "PrivateTmp"
    "PrivateDevices"
    "PrivateMounts"
    "ProtectProc"
    "ReadOnlyPaths"
    "InaccessiblePaths"
    "TemporaryFileSystem"
    "BindPaths"
    "BindReadOnlyPaths"
    "RootDirectory"
  ];
  # drainOnStop: what the unit runs when it stops and once it has started.
  stop_commands = {
    ExecStop = unit.serviceConfig.ExecStop or null;
    ExecStartPost = unit.serviceConfig.ExecStartPost or null;
    TimeoutStopSec = unit.serviceConfig.TimeoutStopSec or null;
  };
  start_limit = {
    startLimitBurst = unit.startLimitBurst or null;
    startLimitIntervalSec = unit.startLimitIntervalSec or null;
  };
  # (`or`: the stub NixOS declares no firewall options, so no default.)
  firewall_udp_ports = config.networking.firewall.allowedUDPPorts or [ ];
  firewall_tcp_ports = config.networking.firewall.allowedTCPPorts or [ ];
  # meta.doc's merge keeps every definition: { file, value } each.
  meta_doc = map (definition: baseNameOf (toString definition.value)) config.meta.doc;
}
