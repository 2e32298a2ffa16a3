//! One connection between members: plain TCP, or TLS with `--peer-*`
//! certificates. The peer transport ([`crate::peer`]) reads and writes
//! frames through it either way.

use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// What a member presents to its peers and checks of them.
#[derive(Debug)]
pub struct PeerTls {
    /// For connections it accepts. Sends no session tickets: the dialling
    /// side takes any byte from the acceptor as the end of the connection.
    pub server: Arc<ServerConfig>,
    /// For connections it dials.
    pub client: Arc<ClientConfig>,
    /// Whether a connecting peer's certificate must be valid for the
    /// address it connects from (etcd's default; see
    /// [`crate::tls::check_peer_address`]).
    pub check_address: bool,
}

impl PeerTls {
    pub fn new(mut server: ServerConfig, client: Arc<ClientConfig>) -> PeerTls {
        server.send_tls13_tickets = 0;
        PeerTls {
            server: Arc::new(server),
            client,
            check_address: true,
        }
    }

    /// `--experimental-peer-skip-client-san-verification`.
    pub fn skip_address_check(mut self) -> PeerTls {
        self.check_address = false;
        self
    }
}

/// A connection to or from a peer.
pub enum Conn {
    Plain(TcpStream),
    Dialled(Box<StreamOwned<ClientConnection, TcpStream>>),
    Accepted(Box<StreamOwned<ServerConnection, TcpStream>>),
}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Conn {
    /// Dials `addr`; over TLS if `tls`, checking the peer's certificate
    /// against the address dialled (a peer certificate names its IP).
    pub fn dial(addr: SocketAddr, timeout: Duration, tls: Option<&PeerTls>) -> io::Result<Conn> {
        let s = TcpStream::connect_timeout(&addr, timeout)?;
        let _ = s.set_nodelay(true);
        let Some(tls) = tls else {
            return Ok(Conn::Plain(s));
        };
        let name = rustls::pki_types::ServerName::from(addr.ip());
        let conn = ClientConnection::new(tls.client.clone(), name).map_err(tls_error)?;
        let mut c = StreamOwned::new(conn, s);
        // Finish the handshake here, so a refused certificate is an error
        // of the dial, not of some later write.
        handshake(&mut c.conn, &mut c.sock, timeout)?;
        Ok(Conn::Dialled(Box::new(c)))
    }

    /// Takes a connection a peer made; over TLS if `tls`.
    pub fn accept(s: TcpStream, tls: Option<&PeerTls>) -> io::Result<Conn> {
        let Some(tls) = tls else {
            return Ok(Conn::Plain(s));
        };
        let conn = ServerConnection::new(tls.server.clone()).map_err(tls_error)?;
        let mut c = StreamOwned::new(conn, s);
        handshake(&mut c.conn, &mut c.sock, HANDSHAKE_LIMIT)?;
        if tls.check_address {
            let from = c.sock.peer_addr()?.ip();
            let cert = c.conn.peer_certificates().and_then(|chain| chain.first());
            if let Some(cert) = cert {
                crate::tls::check_peer_address(cert, from)
                    .map_err(|e| io::Error::new(io::ErrorKind::PermissionDenied, e))?;
            }
        }
        Ok(Conn::Accepted(Box::new(c)))
    }

    /// The socket underneath.
    pub fn sock(&self) -> &TcpStream {
        match self {
            Conn::Plain(s) => s,
            Conn::Dialled(c) => &c.sock,
            Conn::Accepted(c) => &c.sock,
        }
    }

    /// Whether the peer has closed the connection (or written to it, which
    /// a peer that accepted a connection never does): a non-blocking look
    /// at what arrived.
    pub fn closed(&mut self) -> bool {
        if self.sock().set_nonblocking(true).is_err() {
            return true;
        }
        let mut byte = [0u8; 1];
        let open = match self {
            Conn::Plain(s) => {
                matches!(s.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            // Through TLS: records that carry no data (there are none
            // after the handshake) would not count.
            Conn::Dialled(c) => {
                matches!(c.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
            Conn::Accepted(c) => {
                matches!(c.read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        };
        !open || self.sock().set_nonblocking(false).is_err()
    }
}

/// How long an accepted peer may take over its handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);

/// Runs a TLS handshake to its end on a blocking socket, within `limit`.
fn handshake<C, D>(conn: &mut C, sock: &mut TcpStream, limit: Duration) -> io::Result<()>
where
    C: std::ops::DerefMut<Target = rustls::ConnectionCommon<D>>,
{
    sock.set_read_timeout(Some(limit))?;
    sock.set_write_timeout(Some(limit))?;
    while conn.is_handshaking() {
        conn.complete_io(sock)?;
    }
    sock.set_read_timeout(None)?;
    sock.set_write_timeout(None)
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Dialled(c) => c.read(buf),
            Conn::Accepted(c) => c.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Dialled(c) => c.write(buf),
            Conn::Accepted(c) => c.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Dialled(c) => c.flush(),
            Conn::Accepted(c) => c.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::TlsFiles;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    use std::net::TcpListener;
    use std::path::Path;

    /// A CA whose files live in `dir`, and the members it signs.
    struct TestCa {
        dir: std::path::PathBuf,
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl TestCa {
        fn new(dir: &Path, name: &str) -> TestCa {
            use rcgen::KeyUsagePurpose;
            std::fs::create_dir_all(dir).unwrap();
            let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            ca.distinguished_name.push(DnType::CommonName, name);
            let key = KeyPair::generate().unwrap();
            let cert = ca.self_signed(&key).unwrap();
            std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
            TestCa {
                dir: dir.to_path_buf(),
                cert,
                key,
            }
        }

        /// `--peer-*` files of a member named `name` (its common name),
        /// with a certificate for `san` and, if given, that serial number.
        fn member(&self, name: &str, san: &str, serial: Option<u64>) -> TlsFiles {
            let mut leaf = CertificateParams::new(vec![san.to_string()]).unwrap();
            leaf.distinguished_name.push(DnType::CommonName, name);
            leaf.serial_number = serial.map(rcgen::SerialNumber::from);
            let key = KeyPair::generate().unwrap();
            let leaf = leaf.signed_by(&key, &self.cert, &self.key).unwrap();
            let cert = self.dir.join(format!("{name}.pem"));
            let key_file = self.dir.join(format!("{name}-key.pem"));
            std::fs::write(&cert, leaf.pem()).unwrap();
            std::fs::write(&key_file, key.serialize_pem()).unwrap();
            TlsFiles {
                cert_file: Some(cert),
                key_file: Some(key_file),
                trusted_ca_file: Some(self.dir.join("ca.pem")),
                client_cert_auth: true,
                ..Default::default()
            }
        }
    }

    /// A CA in `dir` and a member "member" for 127.0.0.1 signed by it.
    fn member_files(dir: &Path, ca_name: &str) -> TlsFiles {
        TestCa::new(dir, ca_name).member("member", "127.0.0.1", None)
    }

    fn peer_tls(files: &TlsFiles) -> PeerTls {
        let hosts = ["127.0.0.1".to_string()];
        let server = files.server_config(Path::new("/nonexistent"), &hosts);
        let client = files.client_config(Path::new("/nonexistent"), &hosts);
        PeerTls::new((*server.unwrap()).clone(), client.unwrap())
    }

    type Served = io::Result<(Vec<u8>, Conn)>;

    /// Accepts one connection with `tls` and reads what it carries: the
    /// bytes and the still open connection, or the accepting side's error.
    fn serve_once(tls: PeerTls) -> (SocketAddr, std::thread::JoinHandle<Served>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (s, _) = listener.accept()?;
            let mut conn = Conn::accept(s, Some(&tls))?;
            let mut got = vec![0u8; 5];
            conn.read_exact(&mut got)?;
            Ok((got, conn))
        });
        (addr, handle)
    }

    #[test]
    fn peers_with_certificates_from_the_trusted_ca_talk_and_no_one_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let ours = member_files(&dir.path().join("ours"), "synod CA");
        let theirs = member_files(&dir.path().join("theirs"), "another CA");

        let (addr, server) = serve_once(peer_tls(&ours));
        let mut c = Conn::dial(addr, Duration::from_secs(5), Some(&peer_tls(&ours))).unwrap();
        c.write_all(b"hello").unwrap();
        c.flush().unwrap();
        let (got, accepted) = server.join().unwrap().unwrap();
        assert_eq!(got, b"hello");
        assert!(!c.closed(), "an idle TLS link reads as open");
        drop(accepted);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !c.closed() {
            assert!(
                std::time::Instant::now() < deadline,
                "a closed TLS link reads as open"
            );
            std::thread::yield_now();
        }

        // A peer whose certificate another CA signed: the acceptor refuses
        // the handshake (and the dialler does not trust the acceptor).
        let (addr, server) = serve_once(peer_tls(&ours));
        let stranger = Conn::dial(addr, Duration::from_secs(5), Some(&peer_tls(&theirs)));
        assert!(stranger.is_err(), "the stranger trusted our certificate");
        assert!(
            server.join().unwrap().is_err(),
            "a stranger's handshake was taken"
        );

        // A peer that speaks plain TCP to a TLS member.
        let (addr, server) = serve_once(peer_tls(&ours));
        let mut plain = Conn::dial(addr, Duration::from_secs(5), None).unwrap();
        let _ = plain.write_all(b"hello");
        drop(plain);
        assert!(server.join().unwrap().is_err(), "plain bytes were taken");
    }

    /// With `--peer-crl-file`, a peer whose certificate its CA revoked is
    /// refused at the handshake; one the list does not name still talks.
    #[test]
    fn a_revoked_certificate_is_refused() {
        use rcgen::{
            date_time_ymd, CertificateRevocationListParams, KeyIdMethod, RevokedCertParams,
            SerialNumber,
        };
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "synod CA");
        let member = |name: &str, serial: u64| ca.member(name, "127.0.0.1", Some(serial));
        let crl = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2100, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(13u64),
                revocation_time: date_time_ymd(2024, 1, 1),
                reason_code: None,
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&ca.cert, &ca.key)
        .unwrap();
        std::fs::write(dir.path().join("crl.pem"), crl.pem().unwrap()).unwrap();
        let mut acceptor = member("acceptor", 11);
        acceptor.crl_file = Some(dir.path().join("crl.pem"));
        let good = member("good", 12);
        let revoked = member("revoked", 13);

        let (addr, server) = serve_once(peer_tls(&acceptor));
        let mut c = Conn::dial(addr, Duration::from_secs(5), Some(&peer_tls(&good))).unwrap();
        c.write_all(b"hello").unwrap();
        c.flush().unwrap();
        assert_eq!(server.join().unwrap().unwrap().0, b"hello");

        let (addr, server) = serve_once(peer_tls(&acceptor));
        if let Ok(mut c) = Conn::dial(addr, Duration::from_secs(5), Some(&peer_tls(&revoked))) {
            // TLS 1.3: the client may finish before the server refuses.
            let _ = c.write_all(b"hello").and_then(|()| c.flush());
        }
        let refused = server.join().unwrap();
        assert!(refused.is_err(), "a revoked certificate was taken");

        // A list without certificates to check it against is refused.
        let mut no_auth = member("no-auth", 14);
        no_auth.client_cert_auth = false;
        no_auth.crl_file = Some(dir.path().join("crl.pem"));
        let err = no_auth
            .server_config(Path::new("/nonexistent"), &["127.0.0.1".to_string()])
            .unwrap_err();
        assert!(err.contains("needs certificates to check"), "{err}");
    }

    /// Whether a member with `dialler`'s files reaches one with
    /// `acceptor`'s: both sides must finish the handshake and the bytes
    /// arrive.
    fn talks(acceptor: &TlsFiles, dialler: &TlsFiles) -> bool {
        let (addr, server) = serve_once(peer_tls(acceptor));
        let dialled = Conn::dial(addr, Duration::from_secs(5), Some(&peer_tls(dialler)));
        let sent = dialled.and_then(|mut c| {
            // TLS 1.3: the dialler may finish before the acceptor refuses.
            c.write_all(b"hello")?;
            c.flush()?;
            Ok(c)
        });
        let accepted = server.join().unwrap();
        if sent.is_err() {
            // The dialler refused the acceptor: nothing must have arrived.
            assert!(accepted.is_err(), "bytes arrived from a refused link");
            return false;
        }
        accepted.is_ok_and(|(got, _)| got == b"hello")
    }

    /// `--peer-cert-allowed-cn` and `--peer-cert-allowed-hostname`: a
    /// certificate from the trusted CA must also name the one identity
    /// given, and each side checks the other's, as etcd does.
    #[test]
    fn an_allowed_name_admits_only_certificates_that_carry_it() {
        use crate::tls::AllowedName;
        let dir = tempfile::tempdir().unwrap();
        let plain = member_files(dir.path(), "synod CA");
        let with = |rule: AllowedName| TlsFiles {
            allowed: Some(rule),
            ..plain.clone()
        };
        let cn = |s: &str| AllowedName::CommonName(s.to_string());
        let host = |s: &str| AllowedName::Hostname(s.to_string());

        assert!(talks(&plain, &plain), "the CA's certificates alone talk");
        assert!(talks(&with(cn("member")), &with(cn("member"))));
        assert!(talks(&with(host("127.0.0.1")), &plain));
        // The acceptor refuses the dialler's certificate...
        assert!(!talks(&with(cn("someone-else")), &plain));
        assert!(!talks(&with(host("m9.example.com")), &plain));
        // ...and the dialler the acceptor's.
        assert!(!talks(&plain, &with(cn("someone-else"))));
        assert!(!talks(&plain, &with(host("10.0.0.9"))));

        // A rule needs certificates to check it against.
        let hosts = ["127.0.0.1".to_string()];
        let no_auth = TlsFiles {
            client_cert_auth: false,
            ..with(cn("member"))
        };
        let err = no_auth
            .server_config(Path::new("/nonexistent"), &hosts)
            .unwrap_err();
        assert!(err.contains("needs certificates to check"), "{err}");
        let no_ca = TlsFiles {
            trusted_ca_file: None,
            auto_tls: true,
            ..with(cn("member"))
        };
        let err = no_ca
            .client_config(Path::new("/nonexistent"), &hosts)
            .unwrap_err();
        assert!(err.contains("--peer-trusted-ca-file"), "{err}");
    }

    /// A connecting peer's certificate must be valid for the address it
    /// connects from (etcd's check), unless the check is skipped
    /// (`--experimental-peer-skip-client-san-verification`).
    #[test]
    fn a_peer_connecting_from_an_address_its_certificate_does_not_name_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(dir.path(), "synod CA");
        let member = |name: &str, san: &str| ca.member(name, san, None);
        let here = member("here", "127.0.0.1");
        let elsewhere = member("elsewhere", "10.0.0.9");
        assert!(talks(&here, &here));
        assert!(
            !talks(&here, &elsewhere),
            "a certificate for 10.0.0.9 was taken from 127.0.0.1"
        );

        let hosts = ["127.0.0.1".to_string()];
        let server = here
            .server_config(Path::new("/nonexistent"), &hosts)
            .unwrap();
        let client = here
            .client_config(Path::new("/nonexistent"), &hosts)
            .unwrap();
        let lenient = PeerTls::new((*server).clone(), client).skip_address_check();
        let (addr, accepted) = serve_once(lenient);
        let mut c = Conn::dial(addr, Duration::from_secs(5), Some(&peer_tls(&elsewhere))).unwrap();
        c.write_all(b"hello").unwrap();
        c.flush().unwrap();
        assert_eq!(accepted.join().unwrap().unwrap().0, b"hello");
    }
}
