//! TLS for clients and peers, configured as etcd's flags configure it.
//!
//! A member serves clients over TLS on its `https://` client URLs with
//! `--cert-file`/`--key-file` (or a certificate of its own with
//! `--auto-tls`); with `--client-cert-auth` it also demands a client
//! certificate signed by `--trusted-ca-file`, and takes its common name as
//! the user when auth is on. The `--peer-*` flags do the same for the
//! connections between members: each side then presents its certificate and
//! checks the other's. `--client-crl-file` (`--peer-crl-file`) refuses
//! certificates that a CA has revoked since; `--peer-cert-allowed-cn`,
//! `--peer-cert-allowed-hostname` and `--client-cert-allowed-hostname`
//! admit only the certificates that name one given identity; and
//! `--cipher-suites` narrows the TLS 1.2 suites offered.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
/// A TLS cipher suite as rustls offers it (what `--cipher-suites` selects).
pub use rustls::SupportedCipherSuite;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One side's TLS settings: etcd's `--cert-file`, `--key-file`,
/// `--trusted-ca-file`, `--client-cert-auth` and `--auto-tls` (or their
/// `--peer-` versions).
#[derive(Clone, Debug, Default)]
pub struct TlsFiles {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub trusted_ca_file: Option<PathBuf>,
    pub client_cert_auth: bool,
    pub auto_tls: bool,
    /// Revoked certificates (`--client-crl-file`, `--peer-crl-file`), in
    /// PEM or DER, checked against the certificates demanded.
    pub crl_file: Option<PathBuf>,
    /// The one identity the other side's certificate must name, beyond
    /// being signed by the trusted CA.
    pub allowed: Option<AllowedName>,
    /// The TLS 1.2 suites to offer (`--cipher-suites`); `None`: rustls's
    /// own. TLS 1.3's suites are always offered, as Go offers them.
    pub cipher_suites: Option<Vec<SupportedCipherSuite>>,
}

/// What a certificate must name for its holder to be let in: etcd's
/// `--peer-cert-allowed-cn`, `--peer-cert-allowed-hostname` and
/// `--client-cert-allowed-hostname`. etcd checks it on every certificate it
/// verifies on that side: a member checks its peers' whether it accepts or
/// dials the connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedName {
    /// The subject's common name, exactly.
    CommonName(String),
    /// A host name or IP address the certificate is valid for, by its
    /// subject alternative names.
    Hostname(String),
}

impl AllowedName {
    /// The rule the flags ask for, if any. etcd takes one or the other:
    /// a certificate cannot be asked to pass both.
    pub fn from_flags(cn: &str, hostname: &str) -> Result<Option<AllowedName>, String> {
        match (cn.trim(), hostname.trim()) {
            ("", "") => Ok(None),
            (cn, "") => Ok(Some(AllowedName::CommonName(cn.to_string()))),
            ("", host) => ServerName::try_from(host.to_string())
                .map(|_| Some(AllowedName::Hostname(host.to_string())))
                .map_err(|e| format!("{host:?} is not a host name or IP address: {e}")),
            (cn, host) => Err(format!(
                "the allowed common name ({cn:?}) and host name ({host:?}) are mutually exclusive"
            )),
        }
    }

    /// Whether `cert` (already verified against the CA) names what is
    /// asked for; if not, the reason, for the log.
    fn admit(&self, cert: &CertificateDer<'_>) -> Result<(), String> {
        match self {
            AllowedName::CommonName(want) => match synod_etcd::tls::common_name(cert) {
                Some(cn) if cn == *want => Ok(()),
                Some(cn) => Err(format!("its common name is {cn:?}, not {want:?}")),
                None => Err(format!("it has no common name; {want:?} is required")),
            },
            AllowedName::Hostname(host) => {
                let name = ServerName::try_from(host.as_str()).map_err(|e| e.to_string())?;
                let parsed = ParsedCertificate::try_from(cert).map_err(|e| e.to_string())?;
                rustls::client::verify_server_name(&parsed, &name).map_err(|e| match e {
                    rustls::Error::InvalidCertificate(why) => why.to_string(),
                    e => e.to_string(),
                })
            }
        }
    }

    /// [`Self::admit`] as a handshake error. The reason is logged here:
    /// the error that reaches the connection's log only says that the
    /// application refused the certificate.
    fn check(&self, cert: &CertificateDer<'_>, side: &str) -> Result<(), rustls::Error> {
        self.admit(cert).map_err(|why| {
            tracing::info!("{side} certificate authentication failed: {why}");
            rustls::Error::InvalidCertificate(CertificateError::ApplicationVerificationFailure)
        })
    }
}

/// Go's names of the cipher suites etcd's `--cipher-suites` takes, with
/// the suite rustls offers under each (`None`: one rustls does not
/// implement: CBC, RC4, 3DES and RSA key exchange).
const GO_CIPHER_SUITES: &[(&str, Option<&SupportedCipherSuite>)] = {
    use rustls::crypto::ring::cipher_suite as cs;
    &[
        (
            "TLS_AES_128_GCM_SHA256",
            Some(&cs::TLS13_AES_128_GCM_SHA256),
        ),
        (
            "TLS_AES_256_GCM_SHA384",
            Some(&cs::TLS13_AES_256_GCM_SHA384),
        ),
        (
            "TLS_CHACHA20_POLY1305_SHA256",
            Some(&cs::TLS13_CHACHA20_POLY1305_SHA256),
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
            Some(&cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256),
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
            Some(&cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            Some(&cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ),
        (
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
            Some(&cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
            Some(&cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256),
        ),
        (
            "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
            Some(&cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384),
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
            Some(&cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
        ),
        (
            "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
            Some(&cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
        ),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA", None),
        ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA", None),
        ("TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256", None),
        ("TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256", None),
        ("TLS_RSA_WITH_RC4_128_SHA", None),
        ("TLS_RSA_WITH_3DES_EDE_CBC_SHA", None),
        ("TLS_RSA_WITH_AES_128_CBC_SHA", None),
        ("TLS_RSA_WITH_AES_256_CBC_SHA", None),
        ("TLS_RSA_WITH_AES_128_CBC_SHA256", None),
        ("TLS_RSA_WITH_AES_128_GCM_SHA256", None),
        ("TLS_RSA_WITH_AES_256_GCM_SHA384", None),
        ("TLS_ECDHE_ECDSA_WITH_RC4_128_SHA", None),
        ("TLS_ECDHE_RSA_WITH_RC4_128_SHA", None),
        ("TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA", None),
    ]
};

/// The TLS 1.2 suites etcd's `--cipher-suites` list asks for (comma
/// separated, Go's names). As in etcd, an unknown name stops the member;
/// TLS 1.3 names are accepted and change nothing, since TLS 1.3 always
/// offers all its suites. A list whose TLS 1.2 suites are all ones rustls
/// lacks is refused: the clients that asked for them could not connect.
pub fn cipher_suites(list: &str) -> Result<CipherChoice, String> {
    let (mut offered, mut missing) = (Vec::new(), Vec::new());
    let mut any_tls12 = false;
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        let Some((_, suite)) = GO_CIPHER_SUITES.iter().find(|(n, _)| *n == name) else {
            return Err(format!("unexpected TLS cipher suite {name:?}"));
        };
        match suite {
            Some(s) if s.tls13().is_some() => {}
            Some(s) => {
                any_tls12 = true;
                if !offered.contains(*s) {
                    offered.push(**s);
                }
            }
            None => {
                any_tls12 = true;
                missing.push(format!("--cipher-suites: {name} is not offered: synod's TLS (rustls) has AEAD suites with ECDHE key exchange only"));
            }
        }
    }
    if any_tls12 && offered.is_empty() {
        return Err(format!(
            "none of the TLS 1.2 suites listed is one synod offers (rustls has AEAD suites with ECDHE key exchange only): {list}"
        ));
    }
    Ok(CipherChoice {
        tls12: offered,
        not_offered: missing,
    })
}

/// What `--cipher-suites` comes to: the TLS 1.2 suites to offer, and a
/// line for each listed suite synod cannot offer.
#[derive(Clone, Debug)]
pub struct CipherChoice {
    pub tls12: Vec<SupportedCipherSuite>,
    pub not_offered: Vec<String>,
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("{}: cannot read a private key: {e}", path.display()))
}

/// The revocation lists in `path`: PEM blocks, or one list in DER, as
/// etcd reads them.
fn crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let pem: Vec<_> = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: cannot read revocation lists: {e}", path.display()))?;
    if !pem.is_empty() {
        return Ok(pem);
    }
    let der = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if der.is_empty() {
        return Err(format!("{}: no revocation list in it", path.display()));
    }
    Ok(vec![CertificateRevocationListDer::from(der)])
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for c in certs(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: not a CA certificate: {e}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

/// A self-signed certificate for `hosts`, kept in `dir` so that a restarted
/// member presents the same one (etcd's `--auto-tls`).
fn auto_cert(dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    let made = rcgen::generate_simple_self_signed(hosts.to_vec())
        .map_err(|e| format!("--auto-tls: cannot make a certificate: {e}"))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(&cert, made.cert.pem()).map_err(|e| format!("{}: {e}", cert.display()))?;
    std::fs::write(&key, made.key_pair.serialize_pem())
        .map_err(|e| format!("{}: {e}", key.display()))?;
    Ok((cert, key))
}

/// etcd's check of a peer that connects over TLS: a certificate that names
/// addresses or host names must be valid for the address the connection
/// comes from, so that a certificate copied off one member cannot be used
/// from another host. An IP address named matches directly; a host name
/// matches when the address resolves back to it (or under its `*.`
/// wildcard), or when the name resolves to the address. A certificate that
/// names neither passes. `--experimental-peer-skip-client-san-verification`
/// turns the check off.
pub fn check_peer_address(cert: &CertificateDer<'_>, from: IpAddr) -> Result<(), String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("the peer's certificate cannot be read: {e}"))?;
    let (mut ips, mut names) = (Vec::new(), Vec::new());
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::IPAddress(b) => ips.extend(ip_of(b)),
                GeneralName::DNSName(d) => names.push(d.to_string()),
                _ => {}
            }
        }
    }
    let from = from.to_canonical();
    if (ips.is_empty() && names.is_empty()) || ips.contains(&from) {
        return Ok(());
    }
    if names.is_empty() {
        let ips: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
        return Err(format!(
            "x509: certificate is valid for {}, not {from}",
            ips.join(", ")
        ));
    }
    if host_in_dns(from, &names) {
        return Ok(());
    }
    Err(format!(
        "tls: {:?} does not match any of DNSNames {names:?}",
        from.to_string()
    ))
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::from(b).to_canonical()),
        _ => None,
    }
}

/// Whether `ip` is one of `names`: by its reverse name, or by looking the
/// names up. Blocks on the resolver; the caller is a peer's own thread.
fn host_in_dns(ip: IpAddr, names: &[String]) -> bool {
    use std::net::ToSocketAddrs;
    if let Some(reverse) = reverse_name(ip) {
        let reverse = reverse.trim_end_matches('.');
        let matches = |n: &String| match n.strip_prefix('*') {
            Some(suffix) => suffix.starts_with('.') && reverse.ends_with(suffix),
            None => n.eq_ignore_ascii_case(reverse),
        };
        if names.iter().any(matches) {
            return true;
        }
    }
    names
        .iter()
        .filter(|n| !n.starts_with("*."))
        .filter_map(|n| (n.as_str(), 0).to_socket_addrs().ok())
        .flatten()
        .any(|a| a.ip().to_canonical() == ip)
}

/// The name `ip` resolves back to (hosts file or PTR record), if any.
fn reverse_name(ip: IpAddr) -> Option<String> {
    // SAFETY: both socket addresses are plain C structs, zeroed and then
    // filled in; getnameinfo reads `len` bytes of the one given and writes
    // at most `host.len()` bytes, NUL included, into `host`.
    unsafe {
        let mut storage: libc::sockaddr_storage = std::mem::zeroed();
        let len = match ip {
            IpAddr::V4(v4) => {
                let sa = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in);
                sa.sin_family = libc::AF_INET as libc::sa_family_t;
                sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                std::mem::size_of::<libc::sockaddr_in>()
            }
            IpAddr::V6(v6) => {
                let sa = &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6);
                sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sa.sin6_addr.s6_addr = v6.octets();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        let mut host = [0 as libc::c_char; 1025];
        let rc = libc::getnameinfo(
            &storage as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        );
        if rc != 0 {
            return None;
        }
        std::ffi::CStr::from_ptr(host.as_ptr())
            .to_str()
            .ok()
            .map(String::from)
    }
}

/// HTTP/2 over TLS 1.2 must be able to use an ECDHE AES-128-GCM suite
/// (RFC 7540, 9.2.2). etcd's client listener, through Go's HTTP/2 server,
/// refuses a `--cipher-suites` list without one; so does synod's.
pub fn check_http2_suites(tls12: &[SupportedCipherSuite]) -> Result<(), String> {
    use rustls::CipherSuite as C;
    let required = [
        C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    match tls12.iter().any(|s| required.contains(&s.suite())) {
        true => Ok(()),
        false => Err("--cipher-suites is missing an HTTP/2-required AES_128_GCM_SHA256 cipher (need at least one of TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 or TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)".into()),
    }
}

impl TlsFiles {
    /// ring's primitives, offering the TLS 1.2 suites asked for.
    fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(tls12) = &self.cipher_suites {
            provider
                .cipher_suites
                .retain(|s| s.tls13().is_some() || tls12.contains(s));
        }
        Arc::new(provider)
    }

    /// Whether any TLS is configured.
    pub fn is_set(&self) -> bool {
        self.cert_file.is_some() || self.auto_tls
    }

    /// The certificate and key to present: the files given, or with
    /// `--auto-tls` a self-signed pair kept in `auto_dir`.
    fn identity(&self, auto_dir: &Path, hosts: &[String]) -> Result<(PathBuf, PathBuf), String> {
        match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Ok((c.clone(), k.clone())),
            (Some(_), None) | (None, Some(_)) => {
                Err("a certificate needs its key: give both --cert-file and --key-file".into())
            }
            (None, None) if self.auto_tls => auto_cert(auto_dir, hosts),
            (None, None) => Err("TLS needs --cert-file and --key-file (or --auto-tls)".into()),
        }
    }

    /// The server side: what a member presents, and whose certificates it
    /// demands (with `--client-cert-auth`: the trusted CA's).
    pub fn server_config(
        &self,
        auto_dir: &Path,
        hosts: &[String],
    ) -> Result<Arc<ServerConfig>, String> {
        let (cert, key_path) = self.identity(auto_dir, hosts)?;
        let provider = self.provider();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = if self.client_cert_auth {
            let ca = self
                .trusted_ca_file
                .as_deref()
                .ok_or("--client-cert-auth needs --trusted-ca-file")?;
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider);
            if let Some(crl) = &self.crl_file {
                // As etcd checks them: a presented certificate whose serial
                // its issuer's list revokes is refused, and a certificate
                // that no list speaks of passes.
                verifier = verifier
                    .with_crls(crls(crl)?)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let verifier = verifier
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            match &self.allowed {
                Some(allowed) => builder.with_client_cert_verifier(Arc::new(NamedClient {
                    inner: verifier,
                    allowed: allowed.clone(),
                })),
                None => builder.with_client_cert_verifier(verifier),
            }
        } else if self.crl_file.is_some() || self.allowed.is_some() {
            // No certificate is asked for, so none could be checked: say so
            // rather than serve as if the restriction were enforced.
            return Err("a revocation list or an allowed name needs certificates to check: give --client-cert-auth (--peer-client-cert-auth for peers)".into());
        } else {
            builder.with_no_client_auth()
        };
        let mut cfg = builder
            .with_single_cert(certs(&cert)?, key(&key_path)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        // gRPC speaks HTTP/2; /health and /metrics may come as HTTP/1.1.
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The client side, for a member dialling its peers: trusts the CA
    /// given (or, with `--peer-auto-tls` and no CA, any certificate, as
    /// etcd's auto TLS does) and presents its own certificate.
    pub fn client_config(
        &self,
        auto_dir: &Path,
        hosts: &[String],
    ) -> Result<Arc<ClientConfig>, String> {
        let (cert, key_path) = self.identity(auto_dir, hosts)?;
        let provider = self.provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match (&self.trusted_ca_file, &self.allowed) {
            (Some(ca), None) => builder.with_root_certificates(roots(ca)?),
            (Some(ca), Some(allowed)) => {
                let inner = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider)
                    .build()
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(NamedServer {
                        inner,
                        allowed: allowed.clone(),
                    }))
            }
            (None, Some(_)) => {
                // etcd would check the name on no verified chain and so
                // refuse every peer; say why instead.
                return Err(
                    "an allowed peer name needs --peer-trusted-ca-file to verify certificates against"
                        .into(),
                );
            }
            (None, None) if self.auto_tls => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider))),
            (None, None) => return Err("--peer-trusted-ca-file is needed to check peers".into()),
        };
        let cfg = builder
            .with_client_auth_cert(certs(&cert)?, key(&key_path)?)
            .map_err(|e| format!("{}: {e}", cert.display()))?;
        Ok(Arc::new(cfg))
    }
}

/// The name a member checks its peer's certificate against: the host of
/// the peer URL it dials.
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))
}

/// The signature checks of a verifier that wraps another (`self.inner`):
/// the wrapper adds a rule on the certificate and changes nothing else.
macro_rules! signatures_checked_by_inner {
    () => {
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
    };
}

/// The trusted CA's verdict on a client certificate, and then the name
/// rule's.
#[derive(Debug)]
struct NamedClient {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: AllowedName,
}

impl ClientCertVerifier for NamedClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.allowed.check(end_entity, "client")?;
        Ok(verified)
    }

    signatures_checked_by_inner!();
}

/// The same for the certificate a dialled peer presents: the CA and the
/// URL's host first, then the name rule.
#[derive(Debug)]
struct NamedServer {
    inner: Arc<WebPkiServerVerifier>,
    allowed: AllowedName,
}

impl ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified =
            self.inner
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        self.allowed.check(end_entity, "peer")?;
        Ok(verified)
    }

    signatures_checked_by_inner!();
}

/// `--peer-auto-tls` without a CA: encryption without authentication, as
/// etcd's auto TLS offers (each member made its own certificate).
#[derive(Debug)]
struct AnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(suites: &[SupportedCipherSuite]) -> Vec<String> {
        suites.iter().map(|s| format!("{:?}", s.suite())).collect()
    }

    #[test]
    fn cipher_suites_read_go_names_as_etcd_does() {
        let err = cipher_suites("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,FOO").unwrap_err();
        assert_eq!(err, r#"unexpected TLS cipher suite "FOO""#);

        let CipherChoice {
            tls12: offered,
            not_offered: missing,
        } = cipher_suites(
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305,TLS_RSA_WITH_AES_128_CBC_SHA",
        )
        .unwrap();
        assert_eq!(
            names(&offered),
            [
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].contains("TLS_RSA_WITH_AES_128_CBC_SHA"),
            "{missing:?}"
        );

        // TLS 1.3's names are taken and change nothing: Go offers all of
        // TLS 1.3's suites whatever the list says.
        let choice = cipher_suites("TLS_AES_128_GCM_SHA256").unwrap();
        assert!(choice.tls12.is_empty() && choice.not_offered.is_empty());
        let offered = choice.tls12;
        // But gRPC's HTTP/2 needs an AES-128-GCM suite, as Go's server
        // insists on the client listener.
        let err = check_http2_suites(&offered).unwrap_err();
        assert!(err.contains("HTTP/2-required"), "{err}");
        let choice = cipher_suites("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256").unwrap();
        assert_eq!(check_http2_suites(&choice.tls12), Ok(()));

        // Only suites rustls lacks: the clients that want them could never
        // connect, so the member does not start.
        let err = cipher_suites("TLS_RSA_WITH_AES_128_CBC_SHA,TLS_AES_128_GCM_SHA256").unwrap_err();
        assert!(err.contains("none of the TLS 1.2 suites"), "{err}");
    }

    #[test]
    fn the_suites_asked_for_are_the_only_tls12_ones_offered() {
        let choice = cipher_suites("TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384").unwrap();
        let files = TlsFiles {
            cipher_suites: Some(choice.tls12),
            ..Default::default()
        };
        let provider = files.provider();
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_none())
            .copied()
            .collect();
        assert_eq!(names(&tls12), ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"]);
        let tls13 = provider
            .cipher_suites
            .iter()
            .filter(|s| s.tls13().is_some());
        assert_eq!(tls13.count(), 3, "TLS 1.3 keeps all its suites");
        let all = TlsFiles::default().provider().cipher_suites.len();
        assert!(all > 4, "without the flag, rustls's own set");
    }

    /// A certificate for `sans` (IP addresses and DNS names), in DER.
    fn cert_for(sans: &[&str]) -> CertificateDer<'static> {
        let sans = sans.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let params = rcgen::CertificateParams::new(sans).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn a_connecting_peer_must_hold_a_certificate_for_its_address() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let check = |sans: &[&str]| check_peer_address(&cert_for(sans), local);
        assert_eq!(check(&[]), Ok(()), "a certificate naming nothing passes");
        assert_eq!(check(&["127.0.0.1"]), Ok(()));
        assert_eq!(check(&["10.0.0.9", "127.0.0.1"]), Ok(()));
        assert_eq!(
            check(&["10.0.0.9"]),
            Err("x509: certificate is valid for 10.0.0.9, not 127.0.0.1".into())
        );
        // By name: localhost resolves to the loopback address.
        assert_eq!(check(&["10.0.0.9", "localhost"]), Ok(()));
        let err = check(&["peer.invalid"]).unwrap_err();
        assert!(err.contains("does not match any of DNSNames"), "{err}");
        // An IPv4 peer seen through an IPv6 socket is the same address.
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        assert_eq!(
            check_peer_address(&cert_for(&["127.0.0.1"]), mapped),
            Ok(())
        );
    }

    #[test]
    fn an_allowed_name_is_one_or_the_other() {
        assert_eq!(AllowedName::from_flags("", "").unwrap(), None);
        assert_eq!(
            AllowedName::from_flags("etcd-peer", "").unwrap(),
            Some(AllowedName::CommonName("etcd-peer".into()))
        );
        assert_eq!(
            AllowedName::from_flags(" ", "10.0.0.1").unwrap(),
            Some(AllowedName::Hostname("10.0.0.1".into()))
        );
        let err = AllowedName::from_flags("a", "b.example.com").unwrap_err();
        assert!(err.contains("mutually exclusive"), "{err}");
        assert!(AllowedName::from_flags("", "not a host").is_err());
    }
}
