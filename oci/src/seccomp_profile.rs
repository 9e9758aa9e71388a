//! The default seccomp profile: allow everything except a deny-list of system calls that a
//! service container has no business making (kernel modules, kexec, reboot, clock setting,
//! namespace and mount manipulation, tracing other processes, keyrings, bpf, perf). Denied
//! calls fail with EPERM, as in Docker's profile, so programs see an ordinary permission error.

use serde_json::{Value, json};

pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// The `linux.seccomp` object of a runtime spec.
pub fn default_profile() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{
            "names": DENIED_SYSCALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::EPERM,
        }],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_parses_as_oci_seccomp_and_denies_the_list() {
        let seccomp: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(default_profile()).unwrap();
        assert_eq!(
            seccomp.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
        );
        let rules = seccomp.syscalls().as_ref().unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(
            rules[0].action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        assert_eq!(rules[0].errno_ret(), Some(libc::EPERM as u32));
        for name in [
            "kexec_load",
            "init_module",
            "reboot",
            "unshare",
            "mount",
            "ptrace",
            "bpf",
        ] {
            assert!(
                rules[0].names().iter().any(|denied| denied == name),
                "{name} not denied"
            );
        }
        for name in ["read", "write", "execve", "clone", "exit_group"] {
            assert!(
                !rules[0].names().iter().any(|denied| denied == name),
                "{name} denied"
            );
        }
    }
}
