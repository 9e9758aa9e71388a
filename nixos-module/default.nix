# services.shoal: a shoal node on NixOS. The daemon's config file is
# rendered from `settings` (freeform TOML; the keys the module knows are
# typed), the TLS files reach the daemon through systemd credentials, and
# the services declared in `services.shoal.services` are applied once the
# daemon reports ready. See README.md next to this file.
{ config, options, lib, pkgs, ... }:
let
  inherit (lib) mkEnableOption mkIf mkOption literalExpression types;

  cfg = config.services.shoal;
  settingsFormat = pkgs.formats.toml { };

  # The credential names of LoadCredential=. The config file names them
  # relative: the daemon resolves a relative tls.* path against
  # $CREDENTIALS_DIRECTORY, which systemd sets for the unit, so a renamed
  # unit or a second instance finds its own files.
  credentials = {
    ca = "ca.pem";
    cert = "node.pem";
    key = "node.key";
  };

  # Unset typed options are null: leaving them out lets the daemon use its
  # own default, so the module never repeats (and never drifts from) them.
  withoutNulls = lib.filterAttrsRecursive (_: value: value != null);

  configFile = settingsFormat.generate "shoal.toml" (withoutNulls cfg.settings);

  socketPath =
    if cfg.settings.api.socket != null then cfg.settings.api.socket
    else "${cfg.settings.state_dir}/shoal.sock";

  # The port of a socket address as the daemon reads it ("IPv4:port" or
  # "[IPv6]:port"), or null when `address` is not one: a host name, no
  # port, a port out of 1-65535 or with leading zeros. Never an evaluation
  # error, so the assertions below can name the option.
  octet = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
  ipPattern = "(${octet}\\.${octet}\\.${octet}\\.${octet}|\\[[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*])";
  portOf = address:
    let parsed = builtins.match "${ipPattern}:([1-9][0-9]{0,4})" address; in
    if parsed == null then null
    else
      let port = lib.toInt (lib.last parsed); in
      if port <= 65535 then port else null;
  addressRule = "IP:port (an IPv4 address or a bracketed IPv6 address, no host name, and a port from 1 to 65535 without leading zeros)";

  listenPort = portOf cfg.settings.listen;
  badPeers = builtins.filter (peer: portOf peer == null) cfg.settings.peers;

  listenIsUnspecified = builtins.match "(0\\.0\\.0\\.0|\\[::]):[0-9]+" cfg.settings.listen != null;

  serviceSpec = name: service: withoutNulls {
    inherit name;
    # A Nix path literal is copied to the store (so it exists on a node
    # deployed from another machine); a derivation gives its store path; a
    # string is a path on the node, taken as written.
    image = "${service.image}";
    image_digest = service.imageDigest;
    inherit (service) command replicas restart resources;
    env = if service.env == { } then null else service.env;
  };
  servicesFile = settingsFormat.generate "shoal-services.toml" {
    service = lib.mapAttrsToList serviceSpec cfg.services;
  };

  optionalPositive = description: mkOption {
    type = types.nullOr types.ints.positive;
    default = null;
    description = "${description} `null` leaves the daemon's default.";
  };

  serviceModule = { name, ... }: {
    options = {
      image = mkOption {
        type = types.path;
        example = literalExpression "pkgs.callPackage ./examples/image.nix { }";
        description = ''
          The image: an OCI image layout directory, an oci-archive or a
          docker-archive tar (for instance a `dockerTools.buildImage` result
          with `compressor = "none"`). It must exist on every node that may
          run a replica: a derivation or a Nix path literal (`./web.tar`) is
          in the store and in the host's closure; a string
          (`"/var/lib/images/web.tar"`) is a path on the node, which you
          put there.
        '';
      };
      imageDigest = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        description = "If set, the image's manifest must have this digest.";
      };
      command = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        example = [ "/bin/httpd" "-f" "-p" "8080" ];
        description = "The command; `null` runs the image's own entry point and command.";
      };
      env = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = { GREETING = "hello"; };
        description = "Environment variables of the service's containers.";
      };
      replicas = mkOption {
        type = types.ints.unsigned;
        default = 1;
        description = "How many containers of ${name} run across the cluster.";
      };
      restart = mkOption {
        type = types.enum [ "never" "on-failure" "always" ];
        default = "on-failure";
        description = "When a stopped container is started again.";
      };
      resources = {
        cpu_millis = optionalPositive "CPU per container, in thousandths of a core.";
        memory_bytes = optionalPositive "Memory limit per container, in bytes.";
        pids_max = optionalPositive "Process limit per container.";
      };
    };
  };
in
{
  options.services.shoal = {
    enable = mkEnableOption "the shoal container orchestrator node";

    # shoal is not in nixpkgs: the flake's nixosModules.default sets this
    # (mkDefault), and so does its overlay through pkgs.shoal. Without
    # either, an assertion below says so before the default is needed.
    package = lib.mkPackageOption pkgs "shoal" {
      extraDescription = ''
        shoal is not in nixpkgs: the flake's `nixosModules.default` sets this
        to the flake's package; a module imported from the file needs the
        flake's `overlays.default` (for `pkgs.shoal`) or this option set.
      '';
    };

    nodeName = mkOption {
      type = types.str;
      default = config.networking.hostName;
      defaultText = literalExpression "config.networking.hostName";
      description = ''
        This node's id in the cluster. It must equal the node name in the
        node's certificate (`shoal cert issue --node NAME`).
      '';
    };

    settings = mkOption {
      default = { };
      description = ''
        The daemon's configuration file (TOML), see
        `shoal daemon --print-example-config`. Keys without a typed option
        here are passed through as written. `node_name` and `tls.*` are set
        from `nodeName` and `tls`.
      '';
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          state_dir = mkOption {
            type = types.str;
            default = "/var/lib/shoal";
            description = ''
              The daemon's database, API socket and container state. It must
              be below /var/lib: the unit creates it with StateDirectory.
            '';
          };
          listen = mkOption {
            type = types.str;
            default = "0.0.0.0:7443";
            example = "[::]:7443";
            description = "The UDP address of the HTTP/3 sync endpoint: ${addressRule}.";
          };
          advertise = mkOption {
            type = types.nullOr types.str;
            default = null;
            example = "192.0.2.10:7443";
            description = ''
              The address peers use to reach this node (${addressRule});
              required when `listen` is an unspecified address (0.0.0.0 or [::]).
            '';
          };
          peers = mkOption {
            type = types.listOf types.str;
            default = [ ];
            example = [ "192.0.2.11:7443" "192.0.2.12:7443" ];
            description = "Seed peers, each ${addressRule}; the rest are learned from the cluster state.";
          };
          log_format = mkOption {
            type = types.nullOr (types.enum [ "text" "json" ]);
            default = null;
            description = "Log format on the journal; `null` leaves the daemon's default (text).";
          };
          sync = {
            interval_ms = optionalPositive "Anti-entropy period.";
            jitter_ms = mkOption {
              type = types.nullOr types.ints.unsigned;
              default = null;
              description = "Random delay added to each anti-entropy round. `null` leaves the daemon's default.";
            };
            fanout = optionalPositive "Random live peers per anti-entropy round.";
            heartbeat_interval_ms = optionalPositive "Period of this node's heartbeat.";
            down_after_ms = optionalPositive "Silence after which a peer counts as down.";
            evict_after_ms = optionalPositive "Silence after which a member is evicted (unblocks tombstone collection).";
            max_clock_drift_ms = optionalPositive "A peer whose clock is further ahead is refused.";
            body_bytes_max = optionalPositive "Largest sync body accepted.";
            request_timeout_ms = optionalPositive "Timeout of one sync request.";
            eager_push = mkOption {
              type = types.nullOr types.bool;
              default = null;
              description = "Push local changes at once instead of waiting for the next round. `null` leaves the daemon's default.";
            };
          };
          api.socket = mkOption {
            type = types.nullOr types.str;
            default = null;
            description = "The local API socket; `null` is `<state_dir>/shoal.sock`.";
          };
          capacity = {
            cpu_millis = optionalPositive "CPU this node offers to containers; `null` detects it.";
            memory_bytes = optionalPositive "Memory this node offers to containers; `null` detects it.";
          };
        };
      };
    };

    # Certificates are public: a path literal or a store path is fine (it
    # reaches the node in the closure). The key is not: see keyFile.
    tls = {
      caFile = mkOption {
        type = types.path;
        example = "/var/lib/shoal-keys/ca.pem";
        description = "The cluster CA certificate (`shoal ca init`), an absolute path; public, so it may be in the store.";
      };
      certFile = mkOption {
        type = types.path;
        example = "/var/lib/shoal-keys/node.pem";
        description = "This node's certificate (`shoal cert issue`), an absolute path; public, so it may be in the store.";
      };
      keyFile = mkOption {
        type = types.externalPath;
        example = "/var/lib/shoal-keys/node.key";
        description = ''
          This node's private key: an absolute path on the node, as a string
          outside the Nix store (every local user can read the store). The
          type refuses a Nix path literal (`./node.key`) before anything
          copies it. It cannot undo `"''${./node.key}"`: evaluating that
          string copies the key into the store, world-readable, before the
          type refuses it; delete that store path and replace the key.
        '';
      };
    };

    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the UDP port of `settings.listen` in the firewall.";
    };

    services = mkOption {
      type = types.attrsOf (types.submodule serviceModule);
      default = { };
      example = literalExpression ''
        {
          web = {
            image = pkgs.callPackage ./examples/image.nix { };
            command = [ "/bin/httpd" "-f" "-p" "8080" ];
            replicas = 3;
            resources.memory_bytes = 67108864;
          };
        }
      '';
      description = ''
        Services applied (`shoal service apply`) when the node starts and
        whenever this set changes. An applied spec replaces the cluster's
        current one for that name (last writer wins across the cluster), so
        declare a service on every host alike or on one host only. Removing
        a declaration does not remove the service: use `shoal service rm`.
      '';
    };
  };

  meta = {
    # Only people in nixpkgs' maintainer list can be named here; shoal's
    # maintainers are this repository's.
    maintainers = [ ];
    doc = ./README.md;
  };

  config = mkIf cfg.enable {
    assertions = [
      {
        # Only the default is left (priority 1500) and pkgs has no shoal.
        assertion = pkgs ? shoal || options.services.shoal.package.highestPrio < 1500;
        message = "services.shoal.package is not set and pkgs.shoal does not exist (shoal is not in nixpkgs): import the flake's nixosModules.default, add its overlays.default, or set services.shoal.package";
      }
      {
        assertion = builtins.match "[a-z0-9]([a-z0-9-]*[a-z0-9])?" cfg.nodeName != null
          && builtins.stringLength cfg.nodeName <= 63;
        message = "services.shoal.nodeName (${cfg.nodeName}) must be a DNS label: lowercase letters, digits and inner dashes, at most 63 characters";
      }
      {
        assertion = listenPort != null;
        message = "services.shoal.settings.listen (\"${cfg.settings.listen}\") must be ${addressRule}";
      }
      {
        assertion = cfg.settings.advertise == null || portOf cfg.settings.advertise != null;
        message = "services.shoal.settings.advertise (\"${toString cfg.settings.advertise}\") must be ${addressRule}";
      }
      {
        assertion = badPeers == [ ];
        message = "services.shoal.settings.peers: ${lib.concatMapStringsSep ", " (peer: "\"${peer}\"") badPeers} must each be ${addressRule}";
      }
      {
        assertion = !listenIsUnspecified || cfg.settings.advertise != null;
        message = "services.shoal.settings.advertise must be set when settings.listen (${cfg.settings.listen}) is an unspecified address";
      }
      {
        assertion = builtins.match "/var/lib/[^/].*" cfg.settings.state_dir != null;
        message = "services.shoal.settings.state_dir (${cfg.settings.state_dir}) must be below /var/lib (the unit's StateDirectory)";
      }
    ];

    services.shoal.settings = {
      node_name = cfg.nodeName;
      # Relative: resolved against $CREDENTIALS_DIRECTORY by the daemon.
      tls = {
        ca_file = credentials.ca;
        cert_file = credentials.cert;
        key_file = credentials.key;
      };
    };

    environment.systemPackages = [ cfg.package ];
    # The CLI finds the daemon when state_dir or api.socket is not the default.
    environment.variables.SHOAL_SOCKET = socketPath;

    networking.firewall.allowedUDPPorts = mkIf (cfg.openFirewall && listenPort != null) [ listenPort ];

    systemd.services.shoal = {
      description = "shoal container orchestrator node";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # Restart=on-failure, but a daemon that fails 5 times within 2 minutes
      # (a bad key, a port in use) stays failed instead of looping.
      startLimitBurst = 5;
      startLimitIntervalSec = 120;
      # The unit file names the config file, so a change restarts the
      # daemon anyway; the trigger says so explicitly.
      restartTriggers = [ configFile ];
      environment.SHOAL_SOCKET = socketPath;
      # Container networking (node bridge, veths, routes) runs `ip`.
      path = [ pkgs.iproute2 ];

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        # The daemon pings at half this period.
        WatchdogSec = "30s";
        ExecStart = "${cfg.package}/bin/shoal daemon --config ${configFile}";
        Restart = "on-failure";
        RestartSec = "2s";
        TimeoutStopSec = "30s";
        User = "root";

        StateDirectory = lib.removePrefix "/var/lib/" cfg.settings.state_dir;
        StateDirectoryMode = "0700";
        LoadCredential = [
          "${credentials.ca}:${cfg.tls.caFile}"
          "${credentials.cert}:${cfg.tls.certFile}"
          "${credentials.key}:${cfg.tls.keyFile}"
        ];

        # Containers get their own cgroups below the unit's.
        Delegate = true;
        # Containers outlive a daemon restart and are adopted by the next
        # daemon; stopping or restarting the unit signals the daemon only.
        KillMode = "process";
        LimitNOFILE = 1048576;
        TasksMax = "infinity";
        OOMScoreAdjust = -500;

        # Hardening. Everything a unit sets here is inherited by every
        # container the daemon starts, and the daemon must share the host's
        # mount namespace (container root filesystems are mounted there and
        # found again after a restart), so only these hold:
        UMask = "0077";
        LockPersonality = true;
        RestrictRealtime = true;
        SystemCallArchitectures = "native";
        # Left out, on purpose:
        # - ProtectSystem, ProtectHome, PrivateTmp, PrivateDevices, ProtectProc,
        #   ProtectKernelTunables/Modules/Logs: each gives the unit a private
        #   mount namespace, so container mounts would be invisible to the host
        #   and lost to the next daemon after a restart (no adoption).
        # - ProtectControlGroups: the daemon writes cgroups for containers.
        # - RestrictNamespaces, PrivateNetwork, ProtectHostname: containers are
        #   namespaces; ProtectHostname also forbids sethostname inside them.
        # - NoNewPrivileges, RestrictSUIDSGID, CapabilityBoundingSet,
        #   SystemCallFilter, RestrictAddressFamilies, MemoryDenyWriteExecute:
        #   inherited by every container, they would break images with setuid
        #   programs, layer unpacking, raw sockets or JITs; the runtime applies
        #   each container's own limits from its spec instead.
        # - DynamicUser/User: creating namespaces, cgroups and veths needs root.
      };
    };

    systemd.services.shoal-services = mkIf (cfg.services != { }) {
      description = "apply the shoal services declared in the NixOS configuration";
      wantedBy = [ "multi-user.target" ];
      # shoal.service is Type=notify: `after` waits until it is ready.
      wants = [ "shoal.service" ];
      after = [ "shoal.service" ];
      restartTriggers = [ servicesFile ];
      environment.SHOAL_SOCKET = socketPath;
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${cfg.package}/bin/shoal service apply -f ${servicesFile}";
      };
    };
  };
}
