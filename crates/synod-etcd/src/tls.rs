//! Client connections over TLS: who the verified client certificate names.
//!
//! With `--client-cert-auth`, etcd takes the common name of a verified client
//! certificate as the user of a request that carries no token. The member
//! accepts the TLS connection itself (so that a slow handshake stalls no
//! other client) and hands the stream here; [`ClientIdentity`] travels with
//! every request made on it.

use crate::AuthorityFix;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// What a TLS connection says about its client, in each request's
/// extensions.
#[derive(Clone, Debug, Default)]
pub struct ClientIdentity {
    /// The subject common name of the client's verified certificate.
    pub common_name: Option<String>,
}

/// The subject common name of a certificate in DER; with several, the last,
/// as Go reads it into `Subject.CommonName`.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().last()?;
    cn.as_str().ok().map(str::to_string)
}

impl tonic::transport::server::Connected for AuthorityFix<TlsStream<TcpStream>> {
    type ConnectInfo = ClientIdentity;

    fn connect_info(&self) -> ClientIdentity {
        // The handshake is over: whatever certificate the client gave was
        // verified against the trusted CA (rustls refuses the connection
        // otherwise).
        let (_, session) = self.get_ref().get_ref();
        ClientIdentity {
            common_name: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| common_name(leaf)),
        }
    }
}
