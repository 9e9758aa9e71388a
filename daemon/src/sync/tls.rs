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
//! Every handshake is a full one: TLS session resumption would skip certificate verification
//! (rustls restores the peer's chain from the saved session without checking it again), so a
//! certificate that expired or was replaced since would keep working. The server stores no
//! sessions and issues no tickets, the client keeps none, and 0-RTT is off on both sides.
//! Verification happens at the handshake only, so the sync server and client also end a
//! connection when the peer's certificate expires ([`peer_not_after`]).
//!
//! Rotation: the configs built here read the certificate, key and CA from a [`TlsHandle`] at
//! each handshake, so [`TlsHandle::reload`] (the daemon calls it on SIGHUP) swaps them for new
//! connections without rebinding the endpoint; a set of files that does not load leaves the
//! material in use untouched. [`CertificateExpiry::warnings`] says when this node's certificate
//! or the CA expires within [`CERT_EXPIRY_WARNING_DAYS`].
//!
//! *Invariant:* a peer's node id is only ever taken from its verified certificate
//! ([`node_id_from_cert`] on `quinn::Connection::peer_identity`), never from a request body.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{
    ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert,
    WebPkiClientVerifier,
};
use rustls::sign::CertifiedKey;
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
/// `shoal status` and the daemon log warn when this node's certificate or the cluster CA
/// expires within this many days.
pub const CERT_EXPIRY_WARNING_DAYS: u64 = 14;
const SECONDS_PER_DAY: u64 = 86_400;

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
    #[error("{path}: the certificate is for node {found}, this node is {expected}")]
    OtherNode {
        path: PathBuf,
        expected: NodeId,
        found: NodeId,
    },
}

/// The cluster CA certificate plus this node's certificate chain and private key, checked
/// and ready for handshakes.
#[derive(Clone)]
pub struct TlsMaterial {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    node: NodeId,
    /// The chain with its signing key, as the certificate resolvers hand it to rustls.
    certified: Arc<CertifiedKey>,
    /// rustls' WebPKI verifier for client certificates, built from `roots`.
    client_verifier: Arc<dyn ClientCertVerifier>,
    expiry: CertificateExpiry,
    /// Derived from the private key: the keys of the endpoint's QUIC stateless resets and
    /// connection ids.
    endpoint_secret: [u8; 32],
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TlsMaterial")
            .field("node", &self.node)
            .field("chain_len", &self.chain.len())
            .field("expiry", &self.expiry)
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
        let ca_not_after =
            earliest_not_after(&ca_certs).map_err(|error| bad(ca, error.to_string()))?;
        let cert_not_after =
            earliest_not_after(&chain).map_err(|error| bad(cert, error.to_string()))?;
        let mut roots = RootCertStore::empty();
        for ca_cert in ca_certs {
            roots
                .add(ca_cert)
                .map_err(|error| bad(ca, format!("not a usable ca certificate: {error}")))?;
        }
        let roots = Arc::new(roots);
        let node = node_id_from_cert(&chain[0]).map_err(|error| bad(cert, error.to_string()))?;
        // Fail at load, not at the first handshake: the chain must verify against the CA
        // now, and the key must belong to the certificate.
        verify_chain(&roots, &chain[0], &chain[1..], UnixTime::now()).map_err(|error| {
            bad(
                cert,
                format!("does not verify against {}: {error}", ca.display()),
            )
        })?;
        let endpoint_secret = {
            use sha2::Digest as _;
            let mut hasher = sha2::Sha256::new();
            hasher.update(b"shoal quic endpoint v1\0");
            hasher.update(key_der.secret_der());
            hasher.finalize().into()
        };
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(key_der)
            .map_err(|error| bad(key, error.to_string()))?;
        let certified = CertifiedKey::new(chain.clone(), signing_key);
        certified
            .keys_match()
            .map_err(|error| bad(key, format!("does not match {}: {error}", cert.display())))?;
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|error| TlsError::Config(error.to_string()))?;
        Ok(Self {
            roots,
            chain,
            node,
            certified: Arc::new(certified),
            client_verifier,
            expiry: CertificateExpiry {
                certificate: cert_not_after,
                ca: ca_not_after,
            },
            endpoint_secret,
        })
    }

    /// The QUIC endpoint configuration of this node: its stateless-reset key and the key
    /// that signs its connection ids are derived from the private key, so they are the same
    /// in every run with that key. A restarted node then recognises the connection ids its
    /// previous run handed out and answers their packets with a reset the peer accepts, and
    /// the peer drops that connection at once instead of waiting out its request deadline.
    /// Secret as the private key is.
    pub fn quic_endpoint_config(&self) -> quinn::EndpointConfig {
        use sha2::Digest as _;
        let reset_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.endpoint_secret);
        let mut config = quinn::EndpointConfig::new(Arc::new(reset_key));
        let mut cid_digest = sha2::Sha256::new();
        cid_digest.update(b"shoal quic connection ids v1\0");
        cid_digest.update(self.endpoint_secret);
        let cid_digest = cid_digest.finalize();
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&cid_digest[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        config
    }

    /// The node id in our own certificate.
    pub fn node_id(&self) -> &NodeId {
        &self.node
    }

    /// The trust anchors: the cluster CA.
    pub fn roots(&self) -> Arc<RootCertStore> {
        self.roots.clone()
    }

    /// When this node's certificate (its chain) and the cluster CA expire.
    pub fn expiry(&self) -> CertificateExpiry {
        self.expiry
    }

    /// This node's certificate chain, end entity first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// Server side: TLS 1.3, ALPN h3, a client certificate chaining to the CA is mandatory, no
    /// resumption. The material is fixed; see [`TlsHandle::server_config`] for one that follows
    /// reloads.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        TlsHandle::new(self.clone()).server_config()
    }

    /// Client side: TLS 1.3, ALPN h3, presents our certificate, verifies the server with
    /// [`ClusterServerVerifier`], no resumption. The material is fixed; see
    /// [`TlsHandle::client_config`] for one that follows reloads.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        TlsHandle::new(self.clone()).client_config()
    }
}

/// The material every handshake of an endpoint uses, replaceable while the endpoint runs.
/// Clones share it. A handshake reads it once when it needs the certificate or the roots, so
/// it sees either the old or the new material, never a mix of files.
#[derive(Clone)]
pub struct TlsHandle {
    current: Arc<Mutex<Arc<TlsMaterial>>>,
}

impl fmt::Debug for TlsHandle {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_tuple("TlsHandle")
            .field(&self.current())
            .finish()
    }
}

impl TlsHandle {
    pub fn new(material: TlsMaterial) -> Self {
        Self {
            current: Arc::new(Mutex::new(Arc::new(material))),
        }
    }

    /// The material new handshakes use now.
    pub fn current(&self) -> Arc<TlsMaterial> {
        // Only an `Arc` is swapped under the lock, so a poisoned lock still holds a whole value.
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Loads the CA, certificate and key files as [`TlsMaterial::load`] does and, only when
    /// all of them load and the certificate names the same node as the one in use, makes them
    /// the material of new handshakes. On an error nothing changes. Returns the new material.
    pub fn reload(&self, ca: &Path, cert: &Path, key: &Path) -> Result<Arc<TlsMaterial>, TlsError> {
        let material = TlsMaterial::load(ca, cert, key)?;
        let material = Arc::new(material);
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if material.node != current.node {
            return Err(TlsError::OtherNode {
                path: cert.to_owned(),
                expected: current.node.clone(),
                found: material.node.clone(),
            });
        }
        *current = material.clone();
        Ok(material)
    }

    /// Server side: TLS 1.3, ALPN h3, a client certificate chaining to the CA is mandatory.
    /// The certificate presented and the CA checked against are the handle's at each
    /// handshake. No session is stored and no ticket issued, so every handshake is a full
    /// one that verifies the client's certificate; no early data.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = Arc::new(LoggingClientVerifier { tls: self.clone() });
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentCertificate(self.clone())));
        config.alpn_protocols = vec![ALPN_H3.to_vec()];
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
        config.max_early_data_size = 0;
        Ok(config)
    }

    /// Client side: TLS 1.3, ALPN h3, presents the handle's certificate, verifies the server
    /// with [`ClusterServerVerifier`] against the handle's CA. Keeps no sessions, so it never
    /// resumes one (nor sends early data).
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|error| TlsError::Config(error.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ClusterServerVerifier {
                roots: Roots::Current(self.clone()),
                provider: provider(),
            }))
            .with_client_cert_resolver(Arc::new(CurrentCertificate(self.clone())));
        config.alpn_protocols = vec![ALPN_H3.to_vec()];
        config.resumption = Resumption::disabled();
        config.enable_early_data = false;
        Ok(config)
    }
}

/// Hands rustls the handle's certificate at each handshake, on both sides.
#[derive(Debug)]
struct CurrentCertificate(TlsHandle);

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// When this node's certificate and the cluster CA stop being valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateExpiry {
    /// The earliest notAfter of this node's certificate chain (tls.cert_file).
    pub certificate: SystemTime,
    /// The earliest notAfter of the CA certificates (tls.ca_file).
    pub ca: SystemTime,
}

impl CertificateExpiry {
    /// One sentence per file that expires within [`CERT_EXPIRY_WARNING_DAYS`] of `now` or has
    /// expired, saying what to do; empty when both are further away.
    pub fn warnings(&self, now: SystemTime) -> Vec<String> {
        let window = Duration::from_secs(CERT_EXPIRY_WARNING_DAYS * SECONDS_PER_DAY);
        let mut warnings = Vec::new();
        let files = [
            (
                "this node's certificate (tls.cert_file)",
                self.certificate,
                "peers refuse this node",
                "issue a new one from the cluster CA, replace tls.cert_file and tls.key_file \
                 and send SIGHUP to the daemon (systemctl reload shoal)",
            ),
            (
                "the cluster CA (tls.ca_file)",
                self.ca,
                "no node certificate verifies",
                "make a new CA, add it to tls.ca_file on every node, then rotate every node's \
                 certificate (README, certificate rotation)",
            ),
        ];
        for (what, not_after, consequence, remedy) in files {
            match not_after.duration_since(now) {
                Ok(left) if left > window => {}
                Ok(left) => warnings.push(format!(
                    "{what} expires in {}: {remedy}",
                    human_duration(left)
                )),
                Err(past) => warnings.push(format!(
                    "{what} expired {} ago, {consequence}: {remedy}",
                    human_duration(past.duration())
                )),
            }
        }
        warnings
    }
}

/// A duration in the largest unit that keeps it at two or more: days, hours or minutes.
fn human_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    if seconds >= 2 * SECONDS_PER_DAY {
        format!("{} days", seconds / SECONDS_PER_DAY)
    } else if seconds >= 2 * 3_600 {
        format!("{} hours", seconds / 3_600)
    } else {
        format!("{} minutes", seconds / 60)
    }
}

fn verify_chain(
    roots: &RootCertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<(), rustls::Error> {
    let parsed = ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        provider().signature_verification_algorithms.all,
    )
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

/// When a certificate stops being valid: its notAfter.
pub fn certificate_not_after(der: &[u8]) -> Result<SystemTime, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| TlsError::BadCertificate(error.to_string()))?;
    let seconds = cert.validity().not_after.timestamp();
    // A notAfter before 1970 is as expired as any.
    Ok(u64::try_from(seconds)
        .map(|seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds))
        .unwrap_or(SystemTime::UNIX_EPOCH))
}

/// The earliest notAfter of a chain: the chain is valid until then.
fn earliest_not_after(chain: &[CertificateDer<'_>]) -> Result<SystemTime, TlsError> {
    let mut earliest = None;
    for cert in chain {
        let not_after = certificate_not_after(cert)?;
        earliest = Some(earliest.map_or(not_after, |earliest: SystemTime| earliest.min(not_after)));
    }
    earliest.ok_or_else(|| TlsError::BadCertificate("empty certificate chain".to_owned()))
}

/// The certificate chain the peer of an established connection presented (and the handshake
/// verified), end entity first.
fn peer_chain(connection: &quinn::Connection) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let identity = connection
        .peer_identity()
        .ok_or_else(|| TlsError::BadCertificate("peer presented no certificate".to_owned()))?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| {
            TlsError::BadCertificate("peer identity is not a certificate chain".to_owned())
        })?;
    if chain.is_empty() {
        return Err(TlsError::BadCertificate(
            "peer certificate chain is empty".to_owned(),
        ));
    }
    Ok(*chain)
}

/// The node id of the peer of an established connection, from its verified certificate.
pub fn peer_node_id(connection: &quinn::Connection) -> Result<NodeId, TlsError> {
    node_id_from_cert(&peer_chain(connection)?[0])
}

/// Until when the peer of an established connection is authenticated: the earliest notAfter
/// of the chain it presented. Certificates are verified at the handshake only, so the sync
/// server and client end or stop using a connection at this time.
pub fn peer_not_after(connection: &quinn::Connection) -> Result<SystemTime, TlsError> {
    earliest_not_after(&peer_chain(connection)?)
}

/// Verifies a server certificate: it chains to the cluster CA, is valid now and carries a node
/// id; when the server name is a node id (the caller knows whom it dials), they must be equal.
/// DNS names in the certificate are not used: peers are addressed by IP from node metadata.
#[derive(Debug)]
pub struct ClusterServerVerifier {
    roots: Roots,
    provider: Arc<CryptoProvider>,
}

/// The trust anchors a [`ClusterServerVerifier`] checks against.
#[derive(Debug)]
enum Roots {
    Fixed(Arc<RootCertStore>),
    /// The CA of a [`TlsHandle`] at the time of each handshake.
    Current(TlsHandle),
}

impl ClusterServerVerifier {
    /// A verifier with fixed trust anchors.
    pub fn new(roots: Arc<RootCertStore>) -> Self {
        Self {
            roots: Roots::Fixed(roots),
            provider: provider(),
        }
    }

    fn roots(&self) -> Arc<RootCertStore> {
        match &self.roots {
            Roots::Fixed(roots) => roots.clone(),
            Roots::Current(tls) => tls.current().roots.clone(),
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
            &self.roots(),
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

/// rustls' WebPKI client verifier for the CA of a [`TlsHandle`] at the time of each
/// handshake, plus: a certificate must name a node id, and every refusal is logged with its
/// reason (expired, unknown issuer, ...). A client that sends no certificate at all is
/// refused by rustls before this is called; the accept loop logs that one.
#[derive(Debug)]
struct LoggingClientVerifier {
    tls: TlsHandle,
}

impl LoggingClientVerifier {
    fn inner(&self) -> Arc<dyn ClientCertVerifier> {
        self.tls.current().client_verifier.clone()
    }
}

impl ClientCertVerifier for LoggingClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: the CA may change with a reload, and our clients send their one certificate
    /// whatever the hints say.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner()
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
        self.inner().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner().supported_verify_schemes()
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
    use rustls::HandshakeKind;
    use rustls::server::ServerSessionMemoryCache;

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

    /// Moves TLS records between two in-memory connections until the handshake is over and
    /// everything sent after it (TLS 1.3 session tickets) has been read. Returns the first
    /// error either side reports.
    fn handshake(
        client: &mut rustls::Connection,
        server: &mut rustls::Connection,
    ) -> Result<(), rustls::Error> {
        fn transfer(
            from: &mut rustls::Connection,
            to: &mut rustls::Connection,
        ) -> Result<bool, rustls::Error> {
            let mut bytes = Vec::new();
            while from.wants_write() {
                from.write_tls(&mut bytes).unwrap();
            }
            let mut unread = &bytes[..];
            while !unread.is_empty() {
                to.read_tls(&mut unread).unwrap();
                to.process_new_packets()?;
            }
            Ok(!bytes.is_empty())
        }
        for _ in 0..16 {
            let sent = transfer(client, server)?;
            let answered = transfer(server, client)?;
            if !sent && !answered && !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish in 16 rounds");
    }

    fn connect(
        client: &Arc<rustls::ClientConfig>,
        server: &Arc<rustls::ServerConfig>,
        server_name: &str,
    ) -> (rustls::Connection, rustls::Connection) {
        let name = ServerName::try_from(server_name.to_owned()).unwrap();
        let mut client =
            rustls::Connection::from(rustls::ClientConnection::new(client.clone(), name).unwrap());
        let mut server =
            rustls::Connection::from(rustls::ServerConnection::new(server.clone()).unwrap());
        handshake(&mut client, &mut server).unwrap();
        (client, server)
    }

    /// A CA and two nodes, with their certificate files.
    struct Cluster {
        dir: tempfile::TempDir,
    }

    impl Cluster {
        fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            init_ca(&dir.path().join("ca"), false).unwrap();
            Self { dir }
        }

        fn ca(&self) -> PathBuf {
            self.dir.path().join("ca/ca.pem")
        }

        /// Issues (or re-issues) `name`'s certificate in `out` and returns its paths.
        fn issue(&self, name: &str, out: &str) -> crate::sync::pki::NodePaths {
            issue_node_cert(
                &self.dir.path().join("ca"),
                &node(name),
                &[],
                30,
                &self.dir.path().join(out),
                true,
            )
            .unwrap()
        }

        fn material(&self, name: &str) -> TlsMaterial {
            let paths = self.issue(name, name);
            TlsMaterial::load(&self.ca(), &paths.cert, &paths.key).unwrap()
        }
    }

    /// The handshake kind of a second connection between the same two configs, when the
    /// client keeps sessions or not and the server stores them or not; every other setting is
    /// shoal's.
    fn second_handshake(client_resumes: bool, server_resumes: bool) -> HandshakeKind {
        let cluster = Cluster::new();
        let mut client = cluster.material("node-b").client_config().unwrap();
        let mut server = cluster.material("node-a").server_config().unwrap();
        if client_resumes {
            client.resumption = Resumption::in_memory_sessions(8);
        }
        if server_resumes {
            server.session_storage = ServerSessionMemoryCache::new(8);
            server.send_tls13_tickets = 2;
        }
        let (client, server) = (Arc::new(client), Arc::new(server));
        let (first, _) = connect(&client, &server, "node-a");
        assert_eq!(first.handshake_kind(), Some(HandshakeKind::Full));
        let (second, accepted) = connect(&client, &server, "node-a");
        assert_eq!(second.handshake_kind(), accepted.handshake_kind());
        second.handshake_kind().unwrap()
    }

    #[test]
    fn neither_side_resumes_a_session() {
        // Control: with rustls' defaults on both sides the second handshake is resumed, so
        // this test can tell.
        assert_eq!(second_handshake(true, true), HandshakeKind::Resumed);
        // shoal's client against a server that would resume, shoal's server against a client
        // that would: full handshakes, the certificate verified each time.
        assert_eq!(second_handshake(false, true), HandshakeKind::Full);
        assert_eq!(second_handshake(true, false), HandshakeKind::Full);
        assert_eq!(second_handshake(false, false), HandshakeKind::Full);

        let cluster = Cluster::new();
        let material = cluster.material("node-a");
        let server = material.server_config().unwrap();
        assert_eq!(server.max_early_data_size, 0);
        assert_eq!(server.send_tls13_tickets, 0);
        assert!(!server.ticketer.enabled());
        assert!(!material.client_config().unwrap().enable_early_data);
    }

    fn end_entity(connection: &rustls::Connection) -> Vec<u8> {
        connection.peer_certificates().unwrap()[0].to_vec()
    }

    #[test]
    fn a_reload_changes_what_new_handshakes_present_and_a_bad_one_changes_nothing() {
        let cluster = Cluster::new();
        let first = cluster.issue("node-a", "node-a");
        let tls =
            TlsHandle::new(TlsMaterial::load(&cluster.ca(), &first.cert, &first.key).unwrap());
        let peer = TlsHandle::new(cluster.material("node-b"));
        let our_server = Arc::new(tls.server_config().unwrap());
        let our_client = Arc::new(tls.client_config().unwrap());
        let their_server = Arc::new(peer.server_config().unwrap());
        let their_client = Arc::new(peer.client_config().unwrap());
        // What node-a presents as a server and as a client.
        let presented = || {
            let (client, _) = connect(&their_client, &our_server, "node-a");
            let (_, server) = connect(&our_client, &their_server, "node-b");
            (end_entity(&client), end_entity(&server))
        };
        let old = tls.current().chain()[0].to_vec();
        assert_eq!(presented(), (old.clone(), old.clone()));

        let second = cluster.issue("node-a", "node-a");
        // The files changed; the configs still present the loaded material.
        assert_eq!(presented(), (old.clone(), old.clone()));
        tls.reload(&cluster.ca(), &second.cert, &second.key)
            .unwrap();
        let new = tls.current().chain()[0].to_vec();
        assert_ne!(new, old);
        assert_eq!(presented(), (new.clone(), new.clone()));

        // A key that does not match, a key that does not parse, a missing file, another
        // node's certificate: refused, nothing changes.
        let third = cluster.issue("node-a", "third");
        let error = tls
            .reload(&cluster.ca(), &third.cert, &second.key)
            .unwrap_err();
        assert!(error.to_string().contains("does not match"), "{error}");
        let garbage = cluster.dir.path().join("garbage.key");
        std::fs::write(&garbage, "not a key\n").unwrap();
        let error = tls
            .reload(&cluster.ca(), &third.cert, &garbage)
            .unwrap_err();
        assert!(error.to_string().contains("garbage.key"), "{error}");
        let missing = cluster.dir.path().join("missing.pem");
        let error = tls.reload(&cluster.ca(), &missing, &third.key).unwrap_err();
        assert!(error.to_string().contains("missing.pem"), "{error}");
        let other = cluster.issue("node-c", "node-c");
        let error = tls
            .reload(&cluster.ca(), &other.cert, &other.key)
            .unwrap_err();
        assert!(
            matches!(&error, TlsError::OtherNode { found, .. } if found.as_ref() == "node-c"),
            "{error}"
        );
        assert_eq!(presented(), (new.clone(), new));
    }

    #[test]
    fn the_ca_rotates_through_a_bundle_without_a_restart() {
        let old_ca = Cluster::new();
        let new_ca = Cluster::new();
        let a = TlsHandle::new(old_ca.material("node-a"));
        let b = TlsHandle::new(old_ca.material("node-b"));
        let b_paths = old_ca.issue("node-b", "node-b");
        let a_paths = new_ca.issue("node-a", "node-a");
        // Step 1: every node trusts both CAs.
        let bundle = old_ca.dir.path().join("bundle.pem");
        let mut pem = std::fs::read(old_ca.ca()).unwrap();
        pem.extend(std::fs::read(new_ca.ca()).unwrap());
        std::fs::write(&bundle, pem).unwrap();
        // Before b trusts the new CA, a certificate from it is refused: the check is real.
        let a_new =
            TlsHandle::new(TlsMaterial::load(&bundle, &a_paths.cert, &a_paths.key).unwrap());
        let name = ServerName::try_from("node-b".to_owned()).unwrap();
        let mut client = rustls::Connection::from(
            rustls::ClientConnection::new(Arc::new(a_new.client_config().unwrap()), name).unwrap(),
        );
        let mut server = rustls::Connection::from(
            rustls::ServerConnection::new(Arc::new(b.server_config().unwrap())).unwrap(),
        );
        let refused = handshake(&mut client, &mut server).unwrap_err();
        assert!(refused.to_string().contains("UnknownIssuer"), "{refused}");

        b.reload(&bundle, &b_paths.cert, &b_paths.key).unwrap();
        // Step 2: a node moves to a certificate from the new CA; old and new talk both ways.
        a.reload(&bundle, &a_paths.cert, &a_paths.key).unwrap();
        let (a_client, b_server) = (
            Arc::new(a.client_config().unwrap()),
            Arc::new(b.server_config().unwrap()),
        );
        let (_, accepted) = connect(&a_client, &b_server, "node-b");
        assert_eq!(end_entity(&accepted), a.current().chain()[0].to_vec());
        let (b_client, a_server) = (
            Arc::new(b.client_config().unwrap()),
            Arc::new(a.server_config().unwrap()),
        );
        let (dialed, _) = connect(&b_client, &a_server, "node-a");
        assert_eq!(end_entity(&dialed), a.current().chain()[0].to_vec());
    }

    #[test]
    fn expiry_warnings_start_inside_the_window_and_name_the_file() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let days = |days: u64| Duration::from_secs(days * SECONDS_PER_DAY);
        let check = |certificate: SystemTime, ca: SystemTime, expected: &[&str]| {
            let warnings = CertificateExpiry { certificate, ca }.warnings(now);
            assert_eq!(warnings.len(), expected.len(), "{warnings:?}");
            for (warning, needle) in warnings.iter().zip(expected) {
                assert!(warning.contains(needle), "{warning:?} lacks {needle:?}");
            }
        };
        let far = now + days(3650);
        check(
            now + days(CERT_EXPIRY_WARNING_DAYS) + Duration::from_secs(1),
            far,
            &[],
        );
        check(
            now + days(CERT_EXPIRY_WARNING_DAYS),
            far,
            &["tls.cert_file) expires in 14 days"],
        );
        check(
            now + days(3),
            far,
            &["certificate (tls.cert_file) expires in 3 days"],
        );
        check(
            now + Duration::from_secs(5 * 3_600),
            far,
            &["expires in 5 hours"],
        );
        check(
            now - days(2),
            now + days(10),
            &[
                "tls.cert_file) expired 2 days ago, peers refuse this node",
                "cluster CA (tls.ca_file) expires in 10 days",
            ],
        );
        check(
            now + days(20),
            now - Duration::from_secs(600),
            &["CA (tls.ca_file) expired 10 minutes ago"],
        );
    }

    #[test]
    fn load_reports_the_expiry_of_the_certificate_and_the_ca() {
        let cluster = Cluster::new();
        let material = cluster.material("node-a");
        let now = SystemTime::now();
        let days_left =
            |time: SystemTime| time.duration_since(now).unwrap().as_secs() / SECONDS_PER_DAY;
        assert_eq!(days_left(material.expiry().certificate), 29);
        assert!(days_left(material.expiry().ca) >= 3649);
        assert!(material.expiry().warnings(now).is_empty());
    }
}
