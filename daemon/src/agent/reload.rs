//! Certificate rotation without a restart, and warnings before certificates expire.
//!
//! On SIGHUP (`systemctl reload`, through the unit's `ExecReload=`) the daemon loads
//! `tls.ca_file`, `tls.cert_file` and `tls.key_file` again ([`CertificateReloader::reload`]).
//! Only a set that loads whole — every file parses, the key matches the certificate, the
//! certificate verifies against the CA now and names this node — replaces the material in use,
//! in one swap, for every new connection in both directions; otherwise the daemon logs why and
//! keeps what it had. Open connections keep the certificate they were made with until they
//! end (sync connections last one exchange).
//!
//! The reload loop also logs the expiry warnings of [`crate::sync::CertificateExpiry`] at
//! startup, after each reload and every `CERT_EXPIRY_LOG_INTERVAL_MS`; `shoal status` shows
//! the same warnings.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::Signal;

use super::config::TlsFiles;
use super::notify::Notifier;
use crate::sync::{TlsError, TlsHandle, TlsMaterial};

/// How often the daemon log repeats a certificate expiry warning.
pub const CERT_EXPIRY_LOG_INTERVAL_MS: u64 = 24 * 3_600 * 1_000;

/// Reloads a [`TlsHandle`] from the configured files.
#[derive(Debug, Clone)]
pub struct CertificateReloader {
    tls: TlsHandle,
    files: TlsFiles,
}

impl CertificateReloader {
    pub fn new(tls: TlsHandle, files: TlsFiles) -> Self {
        Self { tls, files }
    }

    /// Loads the files and, if they load whole, makes them the material of new handshakes.
    /// Logs the outcome either way; on an error the material in use stays.
    pub fn reload(&self) -> Result<Arc<TlsMaterial>, TlsError> {
        match self.tls.reload(
            &self.files.ca_file,
            &self.files.cert_file,
            &self.files.key_file,
        ) {
            Ok(material) => {
                tracing::info!(
                    node = %material.node_id(),
                    cert = %self.files.cert_file.display(),
                    cert_expires_in = %expires_in(material.expiry().certificate),
                    ca_expires_in = %expires_in(material.expiry().ca),
                    "tls certificates reloaded; new connections use them"
                );
                log_expiry_warnings(&material);
                Ok(material)
            }
            Err(error) => {
                tracing::error!(
                    %error,
                    "tls certificate reload failed; keeping the certificates in use"
                );
                Err(error)
            }
        }
    }
}

/// Logs a warning for each certificate that expires soon or has expired.
pub fn log_expiry_warnings(material: &TlsMaterial) {
    for warning in material.expiry().warnings(SystemTime::now()) {
        tracing::warn!("{warning}");
    }
}

fn expires_in(not_after: SystemTime) -> String {
    match not_after.duration_since(SystemTime::now()) {
        Ok(left) => format!("{}s", left.as_secs()),
        Err(_) => "expired".to_owned(),
    }
}

/// Reloads on every signal `hangups` delivers (telling systemd RELOADING=1, then READY=1) and
/// logs expiry warnings now and every `CERT_EXPIRY_LOG_INTERVAL_MS`, until `stop`.
pub async fn reload_loop(
    reloader: CertificateReloader,
    mut hangups: Signal,
    notifier: Notifier,
    stop: impl Future<Output = ()>,
) {
    tokio::pin!(stop);
    let mut warnings = tokio::time::interval(Duration::from_millis(CERT_EXPIRY_LOG_INTERVAL_MS));
    warnings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut listening = true;
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = warnings.tick() => log_expiry_warnings(&reloader.tls.current()),
            signal = hangups.recv(), if listening => {
                if signal.is_none() {
                    listening = false;
                    continue;
                }
                tracing::info!("SIGHUP received: reloading the tls certificates");
                notifier.reloading();
                let reloading = reloader.clone();
                if let Err(error) = tokio::task::spawn_blocking(move || reloading.reload()).await {
                    tracing::error!(%error, "tls certificate reload panicked; keeping the certificates in use");
                }
                notifier.ready();
            }
        }
    }
}
