//! Mutual TLS for the sync endpoint: the node's certificate material and the rustls configs.
//!
//! Both sides of every connection present a certificate that must chain to the cluster CA.
//! The server requires a client certificate (rustls' `WebPkiClientVerifier`, wrapped so that
//! every refusal is logged with its reason and a certificate without a node id is refused);
//! the client verifies the server chain to the same CA with [`ClusterServerVerifier`], which
//! ignores DNS names and instead checks the node id in the URI SAN `shoal://node/<name>`
//! against the expected one, passed as the TLS server name. A connection whose certificate
//! fails verification never completes its handshake, so it never reaches a request handler.
//!
//! *Invariant:* a peer's node id is only ever taken from its verified certificate
//! ([`node_id_from_cert`] on `quinn::Connection::peer_identity`), never from a request body.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use shoal_crdt::NodeId;

use super::pki::NODE_URI_PREFIX;

/// The ALPN protocol both sides require.
pub const ALPN_H3: &[u8] = b"h3";
/// The TLS server name used when dialing a peer whose node id is not known yet (a seed). It
/// contains a dot, so it can never be a node id, and [`ClusterServerVerifier`] then accepts any
/// node certificate from the cluster CA.
pub const ANY_NODE_SERVER_NAME: &str = "any-node.shoal.invalid";
/// Upper bound on a PEM file we read (a CA, a chain or a key is a few KiB).
const PEM_BYTES_MAX: u64 = 1 << 20;

/// Errors loading certificate material or reading a node id from a certificate.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    #[error("certificate: {0}")]
    BadCertificate(String),
    #[error("certificate has no node id (expected one URI SAN {NODE_URI_PREFIX}<name>)")]
    NoNodeId,
    #[error("certificate has several node ids ({0} URI SANs {NODE_URI_PREFIX}...)")]
    SeveralNodeIds(usize),
    #[error("tls configuration: {0}")]
    Config(String),
}

/// The cluster CA certificate plus this node's certificate chain and private key.
#[derive(Clone)]
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    node: NodeId,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TlsMaterial")
            .field("node", &self.node)
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Loads PEM files: the CA certificate, this node's certificate (chain) and its key. Checks
    /// that the certificate chains to the CA, is currently valid and names a node id.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let ca_pem = read_bounded(ca)?;
        let cert_pem = read_bounded(cert)?;
        let key_pem = read_bounded(key)?;
        let bad = |path: &Path, reason: String| TlsError::BadFile {
            path: path.to_owned(),
            reason,
        };
        let ca_certs = super::pki::pem_certificates(ca, &ca_pem)
            .map_err(|error| bad(ca, error.to_string()))?;
        let chain = super::pki::pem_certificates(cert, &cert_pem)
            .map_err(|error| bad(cert, error.to_string()))?;
        let key_der = rustls_pemfile::private_key(&mut &key_pem[..])
            .map_err(|error| bad(key, error.to_string()))?
            .ok_or_else(|| bad(key, "no private key in file".to_owned()))?;
        if ca_certs.is_empty() {
            return Err(bad(ca, "no certificate in file".to_owned()));
        }
        if chain.is_empty() {
            return Err(bad(cert, "no certificate in file".to_owned()));
        }
        let mut roots = RootCertStore::empty();
        for ca_cert in ca_certs {
            roots
                .add(ca_cert)
                .map_err(|error| bad(ca, format!("not a usable ca certificate: {error}")))?;
        }
        let node = node_id_from_cert(&chain[0]).map_err(|error| bad(cert, error.to_string()))?;
        let material = Self {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key_der),
            node,
        };
        // Fail at startup, not at the first handshake: the chain must verify against the CA
        // now, and the key must belong to the certificate.
        material
            .verify_chain(&material.chain[0], &material.chain[1..], UnixTime::now())
            .map_err(|error| {
                bad(
                    cert,
                    format!("does not verify against {}: {error}", ca.display()),
                )
            })?;
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(material.key.clone_key())
            .map_err(|error| bad(key, error.to_string()))?;
        let certified = rustls::sign::CertifiedKey::new(material.chain.clone(), signing_key);
        certified
            .keys_match()
            .map_err(|error| bad(key, format!("does not match {}: {error}", cert.display())))?;
        Ok(material)
    }

    /// The node id in our own certificate.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// The trust anchors: the cluster CA.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// Server side: TLS 1.3, ALPN h3, a client certificate chaining to the CA is mandatory.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let inner =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider.clone())
                .build()
                .map_err(|error| TlsError::Config(error.to_string()))?;
        let verifier = Arc::new(LoggingClientVerifier { inner });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|error| TlsError::Config(error.to_string()))?;
        config.alpn_protocols = vec![ALPN_H3.to_vec()];
        Ok(config)
    }

    /// Client side: TLS 1.3, ALPN h3, presents our certificate, verifies the server with
    /// [`ClusterServerVerifier`].
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| TlsError::Config(error.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier::new(
                self.roots.clone(),
            )))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|error| TlsError::Config(error.to_string()))?;
        config.alpn_protocols = vec![ALPN_H3.to_vec()];
        Ok(config)
    }

    fn verify_chain(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )
    }
}

/// The crypto provider of the whole daemon: ring (the workspace pins rustls and quinn to it).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server name to dial a peer with: its node id when known, else
/// [`ANY_NODE_SERVER_NAME`].
pub fn server_name_for(expected: Option<&NodeId>) -> String {
    expected.map_or_else(|| ANY_NODE_SERVER_NAME.to_owned(), |node| node.to_string())
}

/// The node id in a certificate: the single URI SAN `shoal://node/<name>`.
pub fn node_id_from_cert(der: &[u8]) -> Result<NodeId, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| TlsError::BadCertificate(error.to_string()))?;
    let names = cert
        .subject_alternative_name()
        .map_err(|error| TlsError::BadCertificate(error.to_string()))?
        .map(|extension| extension.value.general_names.clone())
        .unwrap_or_default();
    let ids: Vec<&str> = names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX),
            _ => None,
        })
        .collect();
    match ids.as_slice() {
        [] => Err(TlsError::NoNodeId),
        [id] => id
            .parse()
            .map_err(|error| TlsError::BadCertificate(format!("node id {id:?}: {error}"))),
        several => Err(TlsError::SeveralNodeIds(several.len())),
    }
}

/// The node id of the peer of an established connection, from its verified certificate.
pub fn peer_node_id(connection: &quinn::Connection) -> Result<NodeId, TlsError> {
    let identity = connection
        .peer_identity()
        .ok_or_else(|| TlsError::BadCertificate("peer presented no certificate".to_owned()))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| {
            TlsError::BadCertificate("peer identity is not a certificate chain".to_owned())
        })?;
    let end_entity = chain
        .first()
        .ok_or_else(|| TlsError::BadCertificate("peer certificate chain is empty".to_owned()))?;
    node_id_from_cert(end_entity)
}

/// Verifies a server certificate: it chains to the cluster CA, is valid now and carries a node
/// id; when the server name is a node id (the caller knows whom it dials), they must be equal.
/// DNS names in the certificate are not used: peers are addressed by IP from node metadata.
#[derive(Debug)]
pub struct ClusterServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
}

impl ClusterServerVerifier {
    pub fn new(roots: Arc<RootCertStore>) -> Self {
        Self {
            roots,
            provider: provider(),
        }
    }
}

impl ServerCertVerifier for ClusterServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refuse = |reason: String| {
            tracing::warn!(server = %server_name.to_str(), %reason, "refused server certificate");
        };
        let parsed = ParsedCertificate::try_from(end_entity)
            .inspect_err(|error| refuse(error.to_string()))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
        .inspect_err(|error| refuse(error.to_string()))?;
        let node = node_id_from_cert(end_entity).map_err(|error| {
            refuse(error.to_string());
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(error),
            )))
        })?;
        if let Ok(expected) = server_name.to_str().parse::<NodeId>()
            && expected != node
        {
            refuse(format!(
                "certificate is for node {node}, expected {expected}"
            ));
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// rustls' WebPKI client verifier, plus: a certificate must name a node id, and every refusal
/// is logged with its reason (expired, unknown issuer, ...). A client that sends no certificate
/// at all is refused by rustls before this is called; the accept loop logs that one.
#[derive(Debug)]
struct LoggingClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for LoggingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
            .inspect_err(|error| {
                tracing::warn!(reason = %error, "refused client certificate");
            })?;
        node_id_from_cert(end_entity).map_err(|error| {
            tracing::warn!(reason = %error, "refused client certificate");
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(error),
            )))
        })?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let io_error = |source| TlsError::Io {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io_error)?;
    let mut bytes = Vec::new();
    file.take(PEM_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error)?;
    if bytes.len() as u64 > PEM_BYTES_MAX {
        return Err(TlsError::BadFile {
            path: path.to_owned(),
            reason: format!("larger than {PEM_BYTES_MAX} bytes"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::pki::{Validity, init_ca, issue_node_cert, issue_node_cert_with};
    use std::time::{Duration, SystemTime};

    fn node(name: &str) -> NodeId {
        name.parse().unwrap()
    }

    #[test]
    fn load_reads_the_node_id_and_builds_both_configs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path(), false).unwrap();
        let issued =
            issue_node_cert(dir.path(), &node("node-a"), &[], 5, dir.path(), false).unwrap();
        let material = TlsMaterial::load(&ca.cert, &issued.cert, &issued.key).unwrap();
        assert_eq!(material.node_id(), &node("node-a"));
        assert_eq!(
            material.server_config().unwrap().alpn_protocols,
            [b"h3".to_vec()]
        );
        assert_eq!(
            material.client_config().unwrap().alpn_protocols,
            [b"h3".to_vec()]
        );
        let der =
            crate::sync::pki::pem_certificates(&issued.cert, &std::fs::read(&issued.cert).unwrap())
                .unwrap();
        assert_eq!(node_id_from_cert(&der[0]).unwrap(), node("node-a"));
    }

    #[test]
    fn load_refuses_foreign_ca_expired_certificate_and_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(&dir.path().join("ca"), false).unwrap();
        let other = init_ca(&dir.path().join("other"), false).unwrap();
        let out = dir.path().join("out");
        let issued =
            issue_node_cert(&dir.path().join("ca"), &node("a"), &[], 5, &out, false).unwrap();

        let error = TlsMaterial::load(&other.cert, &issued.cert, &issued.key).unwrap_err();
        assert!(
            error.to_string().contains("a.pem: does not verify"),
            "{error}"
        );

        let now = SystemTime::now();
        let expired = Validity {
            not_before: now - Duration::from_secs(7200),
            not_after: now - Duration::from_secs(3600),
        };
        let old = issue_node_cert_with(
            &dir.path().join("ca"),
            &node("b"),
            &[],
            expired,
            &out,
            false,
        )
        .unwrap();
        let error = TlsMaterial::load(&ca.cert, &old.cert, &old.key).unwrap_err();
        assert!(
            error.to_string().contains("b.pem: does not verify"),
            "{error}"
        );
        assert!(error.to_string().contains("xpired"), "{error}");

        let error = TlsMaterial::load(&ca.cert, &issued.cert, &old.key).unwrap_err();
        assert!(
            error.to_string().contains("b.key: does not match"),
            "{error}"
        );

        let error =
            TlsMaterial::load(&ca.cert, &dir.path().join("missing.pem"), &issued.key).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
    }

    #[test]
    fn node_id_from_cert_refuses_certificates_without_one() {
        let plain = rcgen::generate_simple_self_signed(vec!["example.com".to_owned()]).unwrap();
        assert!(matches!(
            node_id_from_cert(plain.cert.der()),
            Err(TlsError::NoNodeId)
        ));
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = vec![
            rcgen::SanType::URI("shoal://node/a".try_into().unwrap()),
            rcgen::SanType::URI("shoal://node/b".try_into().unwrap()),
        ];
        let key = rcgen::KeyPair::generate().unwrap();
        let two = params.self_signed(&key).unwrap();
        assert!(matches!(
            node_id_from_cert(two.der()),
            Err(TlsError::SeveralNodeIds(2))
        ));
        params.subject_alt_names = vec![rcgen::SanType::URI(
            "shoal://node/Not_Valid".try_into().unwrap(),
        )];
        let bad = params.self_signed(&key).unwrap();
        assert!(matches!(
            node_id_from_cert(bad.der()),
            Err(TlsError::BadCertificate(_))
        ));
        assert!(matches!(
            node_id_from_cert(b"garbage"),
            Err(TlsError::BadCertificate(_))
        ));
    }
}
