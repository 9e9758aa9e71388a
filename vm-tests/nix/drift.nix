# The module rendered offline for a sample host, with the stub nixpkgs: the
# daemon config file and services spec it generates, the typed option names
# under `settings` (dotted), and the failed assertions. scripts/nix-checks.sh
# feeds these to `shoal daemon --check-config` and compares the names with
# `shoal daemon --print-config-keys`.
{ keyFile ? "/var/lib/shoal-keys/node.key", extraSettings ? { } }:
let
  pkgs = import ../nix-stub {
    system = "x86_64-linux";
    overlays = [ (_final: prev: { shoal = prev.callPackage ../../nixos-module/package.nix { }; }) ];
  };
  inherit (pkgs) lib;

  # Every typed setting is set, so the daemon checks each one's rendering.
  host = {
    imports = [ ../../nixos-module ];
    networking.hostName = "node-a";
    services.shoal = {
      enable = true;
      openFirewall = true;
      tls = {
        caFile = "/var/lib/shoal-keys/ca.pem";
        certFile = "/var/lib/shoal-keys/node.pem";
        inherit keyFile;
      };
      settings = lib.mkMerge [
        {
          state_dir = "/var/lib/shoal";
          listen = "0.0.0.0:7443";
          advertise = "192.0.2.10:7443";
          peers = [ "192.0.2.11:7443" "192.0.2.12:7443" ];
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
          };
          api.socket = "/var/lib/shoal/api.sock";
          capacity = {
            cpu_millis = 2000;
            memory_bytes = 4294967296;
          };
        }
        extraSettings
      ];
      services.web = {
        image = "/var/lib/images/web.tar";
        command = [ "/bin/httpd" "-f" "-p" "8080" ];
        env.GREETING = "hello";
        replicas = 2;
        restart = "always";
        resources = {
          cpu_millis = 250;
          memory_bytes = 67108864;
          pids_max = 128;
        };
      };
    };
  };

  evaluated = pkgs.nixos [ host ];
  inherit (evaluated) config;

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
in
{
  assertion_failures = evaluated.assertionFailures;
  typed_keys = optionNames [ ] (evaluated.options.services.shoal.settings.type.getSubOptions [ ]);
  config_toml = configFile.text;
  services_toml = servicesFile.text;
  # The units run exactly the files rendered above.
  units_use_rendered_files =
    lib.hasInfix "${configFile}" unit.serviceConfig.ExecStart
    && lib.hasInfix "${servicesFile}" servicesUnit.serviceConfig.ExecStart;
  firewall_udp_ports = config.networking.firewall.allowedUDPPorts;
}
