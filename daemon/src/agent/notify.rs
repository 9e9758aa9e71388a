//! systemd service notifications (`Type=notify`) through the `sd-notify` crate: READY=1
//! once state is loaded and every listener is bound, STATUS= lines, WATCHDOG=1 pings at half
//! of `WATCHDOG_USEC`, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around a certificate
//! reload, STOPPING=1 at shutdown. Without `NOTIFY_SOCKET` every call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;

/// Sends notifications to the service manager; failures are logged, never fatal, because
/// the daemon's work does not depend on systemd hearing about it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Notifier;

impl Notifier {
    fn send(&self, state: &[NotifyState]) {
        // sd_notify reads NOTIFY_SOCKET on every call; that is safe here because containers
        // are cloned in the zygote, never in this process (ARCHITECTURE.md).
        let sent = sd_notify::notify(false, state);
        if let Err(error) = sent {
            tracing::warn!(%error, "cannot send a notification to the service manager");
        }
    }

    /// State is loaded and the listeners are bound.
    pub fn ready(&self) {
        self.send(&[NotifyState::Ready]);
    }

    /// A one-line human status for `systemctl status`.
    pub fn status(&self, line: &str) {
        // A newline would end the STATUS= field early and start a bogus assignment.
        let line = line.replace('\n', " ");
        self.send(&[NotifyState::Status(&line)]);
    }

    /// Watchdog keep-alive.
    pub fn watchdog(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// A reload (SIGHUP) has begun; [`Notifier::ready`] ends it. systemd wants the monotonic
    /// time with it; without one, nothing is sent.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(error) => tracing::warn!(%error, "cannot read the monotonic clock for RELOADING=1"),
        }
    }

    /// Shutdown has begun.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }
}

/// How often to ping the watchdog: half of `WATCHDOG_USEC`, when the watchdog applies to
/// this process (`WATCHDOG_PID` unset or equal to our pid, as in `sd_watchdog_enabled`).
pub fn watchdog_interval() -> Option<Duration> {
    watchdog_interval_from(
        std::env::var("WATCHDOG_USEC").ok().as_deref(),
        std::env::var("WATCHDOG_PID").ok().as_deref(),
        std::process::id(),
    )
}

fn watchdog_interval_from(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok()? != own_pid
    {
        return None;
    }
    Some(Duration::from_micros(usec / 2).max(Duration::from_millis(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(usec: Option<&str>, pid: Option<&str>, expected: Option<Duration>) {
        assert_eq!(
            watchdog_interval_from(usec, pid, 42),
            expected,
            "{usec:?} {pid:?}"
        );
    }

    #[test]
    fn watchdog_interval_is_half_of_usec_for_this_process() {
        check(Some("2000000"), None, Some(Duration::from_secs(1)));
        check(Some("2000000"), Some("42"), Some(Duration::from_secs(1)));
        check(Some("2000000"), Some("41"), None);
        check(Some("0"), None, None);
        check(Some("soon"), None, None);
        check(None, Some("42"), None);
        check(Some("1"), None, Some(Duration::from_millis(1)));
    }
}
