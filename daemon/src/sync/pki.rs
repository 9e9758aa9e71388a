//! The cluster's certificate authority and node certificates, made with rcgen.
//!
//! `shoal ca init` and `shoal cert issue` call [`init_ca`] and [`issue_node_cert`]. A node
//! certificate carries the node id in a URI SAN `shoal://node/<name>` (the only place the sync
//! layer reads it from), the same name as DNS SAN and common name, and the node's addresses as
//! IP/DNS SANs. It is valid for both TLS server and client authentication, because every node
//! is both.
//!
//! Files: the CA is `<dir>/ca.pem` + `<dir>/ca.key`; a node is `<out>/<name>.pem` +
//! `<out>/<name>.key`. Keys are created with mode 0600 (never chmod-ed after the fact, so they
//! are never readable by others, not even briefly). Nothing existing is overwritten unless
//! `force`; without it, an existing target is an error before anything is written.

use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use shoal_crdt::NodeId;

/// The URI SAN prefix under which a node certificate names its node id.
pub const NODE_URI_PREFIX: &str = "shoal://node/";
/// File name of the CA certificate inside the CA directory.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside the CA directory.
pub const CA_KEY_FILE: &str = "ca.key";
/// Validity of a new cluster CA.
pub const CA_VALIDITY_DAYS: u32 = 3650;
/// Upper bound on a node certificate's validity, so a typo cannot mint a forever-certificate.
pub const NODE_VALIDITY_DAYS_MAX: u32 = 3650;
/// How far `not_before` is set in the past, to tolerate small clock differences between nodes.
const BACKDATE: Duration = Duration::from_secs(300);
const SECONDS_PER_DAY: u64 = 86_400;

/// Errors of CA and certificate creation. Every variant names the path or input at fault.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: already exists (use --force to overwrite)")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable certificate or key: {reason}")]
    BadPem { path: PathBuf, reason: String },
    #[error("{key}: does not match the ca certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("address {address:?}: not an ip address or dns name: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("validity of {days} days: must be between 1 and {max}")]
    BadValidity { days: u32, max: u32 },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Where [`init_ca`] wrote the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CaPaths {
    /// The CA files inside `dir`, whether or not they exist.
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }
}

/// Where [`issue_node_cert`] wrote a node's certificate and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA certificate the node certificate chains to (inside the CA directory).
    pub ca_cert: PathBuf,
}

/// The time window in which a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// Valid from a few minutes before `now` (clock tolerance) for `days` days.
    pub fn days_from(now: SystemTime, days: u32) -> Self {
        Self {
            not_before: now - BACKDATE,
            not_after: now + Duration::from_secs(u64::from(days) * SECONDS_PER_DAY),
        }
    }
}

/// Creates a new cluster CA (key pair and self-signed certificate) in `dir`, creating `dir`
/// with mode 0700 if needed.
pub fn init_ca(dir: &Path, force: bool) -> Result<CaPaths, PkiError> {
    init_ca_with(
        dir,
        Validity::days_from(SystemTime::now(), CA_VALIDITY_DAYS),
        force,
    )
}

/// [`init_ca`] with an explicit validity window.
pub fn init_ca_with(dir: &Path, validity: Validity, force: bool) -> Result<CaPaths, PkiError> {
    let paths = CaPaths::in_dir(dir);
    ensure_dir(dir)?;
    refuse_existing(&[&paths.cert, &paths.key], force)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = ca_name();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.serial_number = Some(random_serial());
    set_validity(&mut params, validity);
    let cert = params.self_signed(&key)?;

    write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_file(&paths.cert, cert.pem().as_bytes(), 0o644, force)?;
    Ok(paths)
}

/// Issues a certificate and key for `node`, signed by the CA in `ca_dir`, valid for `days`
/// days, with `addresses` (IP addresses or DNS names) as extra SANs. Writes
/// `<out_dir>/<node>.pem` and `<out_dir>/<node>.key`.
pub fn issue_node_cert(
    ca_dir: &Path,
    node: &NodeId,
    addresses: &[String],
    days: u32,
    out_dir: &Path,
    force: bool,
) -> Result<NodePaths, PkiError> {
    if days == 0 || days > NODE_VALIDITY_DAYS_MAX {
        return Err(PkiError::BadValidity {
            days,
            max: NODE_VALIDITY_DAYS_MAX,
        });
    }
    let validity = Validity::days_from(SystemTime::now(), days);
    issue_node_cert_with(ca_dir, node, addresses, validity, out_dir, force)
}

/// [`issue_node_cert`] with an explicit validity window (tests use it to make expired ones).
pub fn issue_node_cert_with(
    ca_dir: &Path,
    node: &NodeId,
    addresses: &[String],
    validity: Validity,
    out_dir: &Path,
    force: bool,
) -> Result<NodePaths, PkiError> {
    let ca = CaPaths::in_dir(ca_dir);
    let sans = subject_alt_names(node, addresses)?;
    let paths = NodePaths {
        cert: out_dir.join(format!("{node}.pem")),
        key: out_dir.join(format!("{node}.key")),
        ca_cert: ca.cert.clone(),
    };
    ensure_dir(out_dir)?;
    refuse_existing(&[&paths.cert, &paths.key], force)?;

    let issuer = load_issuer(&ca)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "shoal");
    name.push(DnType::CommonName, node.as_ref());
    params.distinguished_name = name;
    params.subject_alt_names = sans;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    set_validity(&mut params, validity);
    let cert = params.signed_by(&key, &issuer)?;

    write_file(&paths.key, key.serialize_pem().as_bytes(), 0o600, force)?;
    write_file(&paths.cert, cert.pem().as_bytes(), 0o644, force)?;
    Ok(paths)
}

/// A CA name unique to this CA: verifiers find an issuer by name, so two clusters' CAs with
/// one name would make a foreign certificate fail as "bad signature" instead of the clearer
/// "unknown issuer".
fn ca_name() -> DistinguishedName {
    let tag: [u8; 6] = rand::random();
    let tag: String = tag.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "shoal");
    name.push(DnType::CommonName, format!("shoal cluster CA {tag}"));
    name
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    assert!(
        validity.not_before < validity.not_after,
        "certificate validity must not be empty"
    );
    params.not_before = validity.not_before.into();
    params.not_after = validity.not_after.into();
}

/// A positive 127-bit serial: random, so certificates re-issued for the same node differ.
fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // no leading zero byte, so the DER encoding keeps all 16 bytes
    SerialNumber::from_slice(&bytes)
}

fn subject_alt_names(node: &NodeId, addresses: &[String]) -> Result<Vec<SanType>, PkiError> {
    let uri = format!("{NODE_URI_PREFIX}{node}");
    let mut sans = vec![
        SanType::URI(uri.try_into()?),
        SanType::DnsName(node.as_ref().try_into()?),
    ];
    for address in addresses {
        let san = parse_address(address)?;
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

fn parse_address(address: &str) -> Result<SanType, PkiError> {
    let bad = |reason: &str| PkiError::BadAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    if let Ok(ip) = address.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if address.is_empty() || address.len() > 253 {
        return Err(bad("length must be 1..=253"));
    }
    if !address.split('.').all(valid_label) {
        return Err(bad(
            "labels must be 1..=63 of [A-Za-z0-9-], not starting or ending with '-'",
        ));
    }
    let name = address
        .try_into()
        .map_err(|error: rcgen::Error| bad(&error.to_string()))?;
    Ok(SanType::DnsName(name))
}

fn load_issuer(ca: &CaPaths) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let cert_pem = read_to_string(&ca.cert)?;
    let key_pem = read_to_string(&ca.key)?;
    let key = KeyPair::from_pem(&key_pem).map_err(|error| PkiError::BadPem {
        path: ca.key.clone(),
        reason: error.to_string(),
    })?;
    let cert_der = pem_certificates(&ca.cert, cert_pem.as_bytes())?;
    let first = cert_der.first().ok_or_else(|| PkiError::BadPem {
        path: ca.cert.clone(),
        reason: "no certificate in file".to_owned(),
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(first).map_err(|error| PkiError::BadPem {
            path: ca.cert.clone(),
            reason: error.to_string(),
        })?;
    if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch {
            cert: ca.cert.clone(),
            key: ca.key.clone(),
        });
    }
    Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|error| PkiError::BadPem {
        path: ca.cert.clone(),
        reason: error.to_string(),
    })
}

/// Every certificate in a PEM file, as DER.
pub(crate) fn pem_certificates(
    path: &Path,
    pem: &[u8],
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, PkiError> {
    rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| PkiError::BadPem {
            path: path.to_owned(),
            reason: error.to_string(),
        })
}

fn read_to_string(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn ensure_dir(dir: &Path) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io {
            path: dir.to_owned(),
            source,
        })
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), PkiError> {
    if force {
        return Ok(());
    }
    for path in paths {
        if fs::symlink_metadata(path).is_ok() {
            return Err(PkiError::Exists {
                path: path.to_path_buf(),
            });
        }
    }
    Ok(())
}

/// Writes `bytes` to a new temporary file created with `mode` next to `path`, then moves it
/// into place: with `force` by rename (replacing), without by hard link (which fails if `path`
/// appeared meanwhile), so an existing file is never clobbered and never half-written.
fn write_file(path: &Path, bytes: &[u8], mode: u32, force: bool) -> Result<(), PkiError> {
    let io_error = |source| PkiError::Io {
        path: path.to_owned(),
        source,
    };
    let file_name = path
        .file_name()
        .ok_or_else(|| io_error(std::io::Error::other("not a file path")))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(file_name);
    temporary_name.push(format!(".tmp-{}", std::process::id()));
    let temporary = path.with_file_name(temporary_name);
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        if force {
            fs::rename(&temporary, path)
        } else {
            fs::hard_link(&temporary, path)?;
            fs::remove_file(&temporary)
        }
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists && !force {
            PkiError::Exists {
                path: path.to_owned(),
            }
        } else {
            io_error(error)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn node(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn ca_and_node_files_have_the_right_modes_and_sans() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(&dir.path().join("ca"), false).unwrap();
        assert_eq!(mode(&ca.key), 0o600);
        assert_eq!(mode(&ca.cert), 0o644);
        let addresses = vec!["127.0.0.1".to_owned(), "node-a.example".to_owned()];
        let issued = issue_node_cert(
            &dir.path().join("ca"),
            &node("node-a"),
            &addresses,
            30,
            &dir.path().join("out"),
            false,
        )
        .unwrap();
        assert_eq!(mode(&issued.key), 0o600);
        assert_eq!(issued.cert, dir.path().join("out/node-a.pem"));

        let pem = fs::read(&issued.cert).unwrap();
        let der = pem_certificates(&issued.cert, &pem).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&der[0]).unwrap();
        let sans: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(
            sans,
            [
                "URI(shoal://node/node-a)",
                "DNSName(node-a)",
                "IPAddress(7f:00:00:01)",
                "DNSName(node-a.example)"
            ]
        );
        let lifetime = cert.validity().time_to_expiration().unwrap();
        assert!(lifetime.whole_days() >= 29 && lifetime.whole_days() <= 30);
    }

    #[test]
    fn existing_files_are_not_overwritten_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), false).unwrap();
        let before = fs::read(&ca.cert).unwrap();
        let error = init_ca(dir.path(), false).unwrap_err();
        assert!(matches!(&error, PkiError::Exists { path } if path == &ca.cert));
        assert!(
            error
                .to_string()
                .ends_with("ca.pem: already exists (use --force to overwrite)")
        );
        assert_eq!(fs::read(&ca.cert).unwrap(), before);

        init_ca(dir.path(), true).unwrap();
        assert_ne!(fs::read(&ca.cert).unwrap(), before);
        assert_eq!(mode(&ca.key), 0o600);

        let out = dir.path().join("out");
        issue_node_cert(dir.path(), &node("b"), &[], 1, &out, false).unwrap();
        let key_before = fs::read(out.join("b.key")).unwrap();
        let error = issue_node_cert(dir.path(), &node("b"), &[], 1, &out, false).unwrap_err();
        assert!(matches!(error, PkiError::Exists { .. }));
        assert_eq!(fs::read(out.join("b.key")).unwrap(), key_before);
        issue_node_cert(dir.path(), &node("b"), &[], 1, &out, true).unwrap();
        assert_ne!(fs::read(out.join("b.key")).unwrap(), key_before);
        // No temporary files are left behind.
        assert_eq!(fs::read_dir(&out).unwrap().count(), 2);
    }

    #[test]
    fn bad_inputs_are_refused_and_write_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let error = issue_node_cert(dir.path(), &node("c"), &[], 1, &out, false).unwrap_err();
        assert!(error.to_string().contains("ca.pem"), "{error}");

        init_ca(dir.path(), false).unwrap();
        for address in ["", "bad_name", "-x.example", "a..b"] {
            let error = issue_node_cert(
                dir.path(),
                &node("c"),
                &[address.to_owned()],
                1,
                &out,
                false,
            )
            .unwrap_err();
            assert!(
                matches!(error, PkiError::BadAddress { .. }),
                "{address}: {error}"
            );
        }
        for days in [0, NODE_VALIDITY_DAYS_MAX + 1] {
            let error =
                issue_node_cert(dir.path(), &node("c"), &[], days, &out, false).unwrap_err();
            assert!(matches!(error, PkiError::BadValidity { .. }));
        }
        assert!(!out.join("c.pem").exists() && !out.join("c.key").exists());
    }

    #[test]
    fn a_ca_key_that_does_not_match_its_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_ca(&dir.path().join("one"), false).unwrap();
        let second = init_ca(&dir.path().join("two"), false).unwrap();
        fs::copy(&second.key, &first.key).unwrap();
        let error = issue_node_cert(
            &dir.path().join("one"),
            &node("d"),
            &[],
            1,
            &dir.path().join("out"),
            false,
        )
        .unwrap_err();
        assert!(matches!(error, PkiError::KeyMismatch { .. }), "{error}");
    }
}
