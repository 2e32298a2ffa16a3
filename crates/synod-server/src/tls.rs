//! TLS for clients and peers, configured as etcd's flags configure it.
//!
//! A member serves clients over TLS on its `https://` client URLs with
//! `--cert-file`/`--key-file` (or a certificate of its own with
//! `--auto-tls`); with `--client-cert-auth` it also demands a client
//! certificate signed by `--trusted-ca-file`, and takes its common name as
//! the user when auth is on. The `--peer-*` flags do the same for the
//! connections between members: each side then presents its certificate and
//! checks the other's. `--client-crl-file` (`--peer-crl-file`) refuses
//! certificates that a CA has revoked since.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
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
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
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

impl TlsFiles {
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
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = if self.client_cert_auth {
            let ca = self
                .trusted_ca_file
                .as_deref()
                .ok_or("--client-cert-auth needs --trusted-ca-file")?;
            let mut verifier = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
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
            builder.with_client_cert_verifier(verifier)
        } else if self.crl_file.is_some() {
            // No certificate is asked for, so none could be checked: say so
            // rather than serve as if revocations were enforced.
            return Err("a revocation list needs certificates to check: give --client-cert-auth (--peer-client-cert-auth for peers)".into());
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
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let builder = match &self.trusted_ca_file {
            Some(ca) => builder.with_root_certificates(roots(ca)?),
            None if self.auto_tls => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyServer(provider()))),
            None => return Err("--peer-trusted-ca-file is needed to check peers".into()),
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

/// `--peer-auto-tls` without a CA: encryption without authentication, as
/// etcd's auto TLS offers (each member made its own certificate).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
