//! TLS through rustls (sans-I/O), with ring as the crypto provider:
//! configuration handles (built once, shared by any number of connections
//! through an `Arc`) and the per-connection session the driver runs.
//!
//! The driver owns the I/O: it feeds received ciphertext to the session
//! (`read_tls`, `process_new_packets`), takes plaintext out of it, hands
//! plaintext to it and writes what it produces (`write_tls`). Nothing here
//! touches a socket except through the non-blocking writer given to it.

use crate::error::{Error, Result, Status};
use crate::registry::{self, Registered};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use std::ffi::c_char;
use std::io::{self, Read};
use std::sync::Arc;
use std::time::Instant;

/// A TLS configuration handle. 0 is never valid.
#[allow(non_camel_case_types)]
pub type netev_tls_config = u64;

/// What a TLS configuration holds. Fill it with `netev_tls_options_init`,
/// then set what you need; netev reads it (its first `size` bytes) and
/// every file and PEM string it names during the create call, so none of
/// them need outlive it. Paths and PEM strings are NUL-terminated UTF-8.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct netev_tls_options {
    /// sizeof(netev_tls_options) as the host's header declares it, set by
    /// netev_tls_options_init: which fields the host has.
    pub size: u32,
    /// Trusted root certificates (PEM), from a file: the CAs a client
    /// verifies servers against, or a server its clients' certificates.
    /// A client with neither `ca_file` nor `ca_pem` trusts the system's
    /// store (rustls-native-certs: the OS's CA bundle, SSL_CERT_FILE and
    /// SSL_CERT_DIR honoured). Both may be given: their union is trusted.
    pub ca_file: *const c_char,
    /// Trusted root certificates as PEM text in memory.
    pub ca_pem: *const c_char,
    /// Certificate chain (PEM, leaf first): the server's, or the client's
    /// for mutual TLS. At most one of `cert_file` and `cert_pem`.
    pub cert_file: *const c_char,
    /// The certificate chain as PEM text in memory.
    pub cert_pem: *const c_char,
    /// The private key of the chain's leaf (PEM: PKCS#8, PKCS#1 or SEC1).
    /// It never appears in a log or a message. At most one of `key_file`
    /// and `key_pem`.
    pub key_file: *const c_char,
    /// The private key as PEM text in memory.
    pub key_pem: *const c_char,
    /// ALPN protocols, comma-separated in order of preference, for example
    /// "h2,http/1.1"; NULL or "" = none. A server with ALPN set refuses a
    /// client that offers ALPN but none of these protocols.
    pub alpn: *const c_char,
    /// Client only: do not verify the server's certificate or name (tests
    /// only: anyone in the path can read and change the traffic).
    /// Signatures are still checked.
    pub insecure_skip_verify: bool,
    /// Server only: ask every client for a certificate and verify it
    /// against `ca_file`/`ca_pem` (required then); a client without one,
    /// or with one those CAs did not sign, fails the handshake. Without
    /// it, a server given CAs verifies a certificate a client offers but
    /// accepts clients without one. Under TLS 1.3 the client's side of the
    /// handshake completes before the server checks its certificate: a
    /// refused client gets CONNECTION, then ERROR NETEV_ERR_TLS ("client
    /// certificate missing" / "peer refused our certificate"), then
    /// TERMINATE; what it sent meanwhile is lost.
    pub require_client_cert: bool,
    /// Only TLS 1.3; otherwise TLS 1.2 and 1.3.
    pub tls13_only: bool,
}

impl Default for netev_tls_options {
    fn default() -> Self {
        netev_tls_options {
            size: std::mem::size_of::<Self>() as u32,
            ca_file: std::ptr::null(),
            ca_pem: std::ptr::null(),
            cert_file: std::ptr::null(),
            cert_pem: std::ptr::null(),
            key_file: std::ptr::null(),
            key_pem: std::ptr::null(),
            alpn: std::ptr::null(),
            insecure_skip_verify: false,
            require_client_cert: false,
            tls13_only: false,
        }
    }
}

// SAFETY: #[repr(C)], `size: u32` first, Default is zeros and the size;
// its fields are pointers and three bools.
unsafe impl crate::abi::Versioned for netev_tls_options {
    const NAME: &'static str = "netev_tls_options";
    const FIRST_SIZE: usize =
        std::mem::offset_of!(netev_tls_options, tls13_only) + std::mem::size_of::<bool>();
    const BOOLS: &'static [(&'static str, usize)] = &[
        (
            "insecure_skip_verify",
            std::mem::offset_of!(netev_tls_options, insecure_skip_verify),
        ),
        (
            "require_client_cert",
            std::mem::offset_of!(netev_tls_options, require_client_cert),
        ),
        (
            "tls13_only",
            std::mem::offset_of!(netev_tls_options, tls13_only),
        ),
    ];
}

/// The options with their strings converted (the C ABI does that).
#[derive(Default)]
pub struct TlsInput<'a> {
    pub ca_file: Option<&'a str>,
    pub ca_pem: Option<&'a str>,
    pub cert_file: Option<&'a str>,
    pub cert_pem: Option<&'a str>,
    pub key_file: Option<&'a str>,
    pub key_pem: Option<&'a str>,
    pub alpn: Option<&'a str>,
    pub insecure_skip_verify: bool,
    pub require_client_cert: bool,
    pub tls13_only: bool,
}

/// Bytes of ciphertext (and of plaintext before the handshake) a session
/// buffers for sending: the socket's writes are bounded by it, on top of
/// the plaintext queue the send limit bounds.
pub(crate) const SEND_BUFFER: usize = 64 << 10;

fn tls_error(message: impl Into<String>) -> Error {
    Error::new(Status::NETEV_ERR_TLS, message).component("tls")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

static TLS13_ONLY: [&rustls::SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS13_AND_12: [&rustls::SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(tls13_only: bool) -> &'static [&'static rustls::SupportedProtocolVersion] {
    if tls13_only {
        &TLS13_ONLY
    } else {
        &TLS13_AND_12
    }
}

/// A file given or PEM text, never both; `what` names the pair.
enum Source<'a> {
    File(&'a str),
    Pem(&'a str),
}

fn source<'a>(
    file: Option<&'a str>,
    pem: Option<&'a str>,
    what: &str,
) -> Result<Option<Source<'a>>> {
    match (file, pem) {
        (Some(_), Some(_)) => Err(Error::invalid(format!(
            "both {what}_file and {what}_pem are set: give one of them"
        ))),
        (Some(f), None) => Ok(Some(Source::File(f))),
        (None, Some(p)) => Ok(Some(Source::Pem(p))),
        (None, None) => Ok(None),
    }
}

/// The certificates of a PEM file or text (at least one).
fn certificates(src: &Source<'_>, what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let found: std::result::Result<Vec<_>, _> = match src {
        Source::File(path) => CertificateDer::pem_file_iter(path)
            .map_err(|e| tls_error(format!("{what}_file {path}: {e}")))?
            .collect(),
        Source::Pem(text) => CertificateDer::pem_slice_iter(text.as_bytes()).collect(),
    };
    let where_ = match src {
        Source::File(path) => format!("{what}_file {path}"),
        Source::Pem(_) => format!("{what}_pem"),
    };
    let certs = found.map_err(|e| tls_error(format!("{where_}: bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(format!("{where_}: no certificate in it")));
    }
    Ok(certs)
}

/// The private key of a PEM file or text. Its bytes never reach a message.
fn private_key(src: &Source<'_>) -> Result<PrivateKeyDer<'static>> {
    let (found, where_) = match src {
        Source::File(path) => (
            PrivateKeyDer::from_pem_file(path),
            format!("key_file {path}"),
        ),
        Source::Pem(text) => (
            PrivateKeyDer::from_pem_slice(text.as_bytes()),
            "key_pem".to_owned(),
        ),
    };
    found.map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            tls_error(format!("{where_}: no private key in it"))
        }
        rustls::pki_types::pem::Error::Io(e) => tls_error(format!("{where_}: {e}")),
        // Other PEM errors could quote a line of the key: never shown.
        _ => tls_error(format!(
            "{where_}: bad PEM (not a private key netev can read)"
        )),
    })
}

/// The trusted roots from ca_file/ca_pem; None when neither is given.
fn roots(input: &TlsInput<'_>) -> Result<Option<rustls::RootCertStore>> {
    let mut store = rustls::RootCertStore::empty();
    let mut any = false;
    for (src, what) in [
        (input.ca_file.map(Source::File), "ca_file"),
        (input.ca_pem.map(Source::Pem), "ca_pem"),
    ] {
        let Some(src) = src else { continue };
        any = true;
        for cert in certificates(&src, "ca")? {
            store
                .add(cert)
                .map_err(|e| tls_error(format!("{what}: a certificate rustls cannot use: {e}")))?;
        }
    }
    Ok(any.then_some(store))
}

/// The system's trust store.
fn native_roots() -> Result<rustls::RootCertStore> {
    let found = rustls_native_certs::load_native_certs();
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map_or_else(|| "none found".to_owned(), |e| e.to_string());
        return Err(tls_error(format!(
            "no trusted root certificate in the system's store ({why}): give ca_file or ca_pem"
        )));
    }
    Ok(store)
}

fn alpn(list: Option<&str>) -> Result<Vec<Vec<u8>>> {
    let Some(list) = list.filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(|p| {
            let p = p.trim();
            if p.is_empty() || p.len() > 255 {
                return Err(Error::invalid(format!(
                    "alpn {list:?}: each protocol is 1 to 255 bytes, separated by commas"
                )));
            }
            Ok(p.as_bytes().to_vec())
        })
        .collect()
}

fn builder_error(e: rustls::Error) -> Error {
    match e {
        rustls::Error::InconsistentKeys(_) => tls_error(
            "the private key does not match the certificate (the chain's first certificate)",
        ),
        e => tls_error(format!("the certificate or its private key: {e}")),
    }
}

/// A client verifier that accepts any server certificate (still checking
/// the handshake's signatures), for `insecure_skip_verify`.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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

enum Kind {
    Client(Arc<rustls::ClientConfig>),
    Server(Arc<rustls::ServerConfig>),
}

/// A TLS configuration: a rustls client or server config, built once.
pub struct TlsConfig {
    pub id: netev_tls_config,
    kind: Kind,
}

impl Registered for TlsConfig {
    /// Configurations are not running objects: a runtime shutdown leaves
    /// them (like dispatchers) for the host to release.
    fn shutdown_round(&self) {}
}

impl TlsConfig {
    /// Builds a client configuration and registers its handle.
    pub fn client(input: &TlsInput<'_>) -> Result<Arc<TlsConfig>> {
        registry::usable()?;
        if input.require_client_cert {
            return Err(Error::invalid(
                "require_client_cert is for server configurations",
            ));
        }
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(input.tls13_only))
            .map_err(builder_error)?;
        let builder = if input.insecure_skip_verify {
            // Roots are ignored, but still checked, so a typo shows.
            roots(input)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let store = match roots(input)? {
                Some(s) => s,
                None => native_roots()?,
            };
            builder.with_root_certificates(store)
        };
        let cert = source(input.cert_file, input.cert_pem, "cert")?;
        let key = source(input.key_file, input.key_pem, "key")?;
        let mut config = match (cert, key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(c), Some(k)) => builder
                .with_client_auth_cert(certificates(&c, "cert")?, private_key(&k)?)
                .map_err(builder_error)?,
            (Some(_), None) => {
                return Err(Error::invalid(
                    "a client certificate needs its private key (key_file or key_pem)",
                ));
            }
            (None, Some(_)) => {
                return Err(Error::invalid(
                    "a private key without its certificate (cert_file or cert_pem)",
                ));
            }
        };
        config.alpn_protocols = alpn(input.alpn)?;
        Ok(Self::register(Kind::Client(Arc::new(config))))
    }

    /// Builds a server configuration and registers its handle.
    pub fn server(input: &TlsInput<'_>) -> Result<Arc<TlsConfig>> {
        registry::usable()?;
        if input.insecure_skip_verify {
            return Err(Error::invalid(
                "insecure_skip_verify is for client configurations",
            ));
        }
        let cert = source(input.cert_file, input.cert_pem, "cert")?.ok_or_else(|| {
            Error::invalid("a server needs a certificate (cert_file or cert_pem)")
        })?;
        let key = source(input.key_file, input.key_pem, "key")?
            .ok_or_else(|| Error::invalid("a server needs a private key (key_file or key_pem)"))?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions(input.tls13_only))
            .map_err(builder_error)?;
        let builder = match (roots(input)?, input.require_client_cert) {
            (None, true) => {
                return Err(Error::invalid(
                    "require_client_cert needs the CAs to verify clients against \
                     (ca_file or ca_pem)",
                ));
            }
            (None, false) => builder.with_no_client_auth(),
            (Some(store), required) => {
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(store),
                    provider,
                );
                let v = if required {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                let v = v.build().map_err(|e| tls_error(e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut config = builder
            .with_single_cert(certificates(&cert, "cert")?, private_key(&key)?)
            .map_err(builder_error)?;
        config.alpn_protocols = alpn(input.alpn)?;
        Ok(Self::register(Kind::Server(Arc::new(config))))
    }

    fn register(kind: Kind) -> Arc<TlsConfig> {
        let c = Arc::new(TlsConfig {
            id: registry::reserve(),
            kind,
        });
        registry::insert(c.id, c.clone());
        c
    }

    /// The configuration `id` names.
    pub fn get(id: netev_tls_config) -> Result<Arc<TlsConfig>> {
        registry::get(id, "TLS configuration")
    }

    /// Gives back the host's handle; connections using it keep it alive.
    pub fn release(&self) {
        registry::remove(self.id);
    }

    pub fn is_client(&self) -> bool {
        matches!(self.kind, Kind::Client(_))
    }

    /// A new session: a client one sending `name` as SNI (and verifying
    /// the server against it), or a server one.
    pub(crate) fn session(&self, name: Option<&ServerName<'static>>) -> Result<Session> {
        let mut conn: rustls::Connection = match (&self.kind, name) {
            (Kind::Client(c), Some(name)) => rustls::ClientConnection::new(c.clone(), name.clone())
                .map_err(|e| tls_error(e.to_string()))?
                .into(),
            (Kind::Server(c), _) => rustls::ServerConnection::new(c.clone())
                .map_err(|e| tls_error(e.to_string()))?
                .into(),
            (Kind::Client(_), None) => {
                return Err(Error::invalid("a TLS client needs a server name"));
            }
        };
        conn.set_buffer_limit(Some(SEND_BUFFER));
        Ok(Session {
            conn: Some(conn),
            established: false,
            close_notify_sent: false,
            peer_closed: false,
            handshake_deadline: None,
            info: Info::default(),
        })
    }
}

/// The name a client sends and verifies: a DNS name or an IP literal.
pub fn server_name(name: &str) -> Result<ServerName<'static>> {
    ServerName::try_from(name.to_owned()).map_err(|_| {
        Error::invalid(format!(
            "{name:?} is not a valid TLS server name (a DNS name or an IP address)"
        ))
    })
}

/// What a completed handshake settled, kept after the session ends.
#[derive(Default)]
pub(crate) struct Info {
    pub version: &'static str,
    pub cipher: String,
    pub alpn: Option<Box<str>>,
    pub sni: Option<Box<str>>,
    pub peer_certificate: Option<Box<[u8]>>,
}

/// One connection's TLS state, in its state lock.
pub(crate) struct Session {
    /// rustls' connection; None once the connection ended (its buffers freed).
    pub conn: Option<rustls::Connection>,
    /// The handshake completed (CONNECTION is delivered at that moment).
    pub established: bool,
    pub close_notify_sent: bool,
    /// The peer's close_notify arrived: its END.
    pub peer_closed: bool,
    /// Until the handshake completes, it must by then.
    pub handshake_deadline: Option<Instant>,
    pub info: Info,
}

/// What feeding received bytes to a session gave.
#[derive(Default)]
pub(crate) struct Fed {
    /// The handshake completed during this call.
    pub established: bool,
    /// The peer's close_notify arrived.
    pub closed: bool,
    pub error: Option<Error>,
}

impl Session {
    /// Whether ciphertext waits to be written.
    pub fn wants_write(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| c.wants_write())
    }

    /// Feeds received ciphertext; writes the plaintext it held into
    /// `plain` from `*filled` on, advancing `*filled`. `plain` only grows
    /// (its bytes past `*filled` are old plaintext, overwritten): a reused
    /// buffer is not zeroed again for every read.
    pub fn feed(&mut self, mut input: &[u8], plain: &mut Vec<u8>, filled: &mut usize) -> Fed {
        let mut fed = Fed::default();
        let Some(conn) = self.conn.as_mut() else {
            return fed;
        };
        while !input.is_empty() {
            match conn.read_tls(&mut input) {
                // close_notify received: nothing more is read.
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    fed.error = Some(tls_error(format!("TLS record layer: {e}")));
                    break;
                }
            }
            match conn.process_new_packets() {
                Ok(state) => {
                    let n = state.plaintext_bytes_to_read();
                    if n > 0 {
                        let at = *filled;
                        if plain.len() < at + n {
                            plain.resize(at + n, 0);
                        }
                        if conn.reader().read_exact(&mut plain[at..at + n]).is_ok() {
                            *filled = at + n;
                        }
                    }
                    if state.peer_has_closed() {
                        fed.closed = true;
                        self.peer_closed = true;
                    }
                }
                Err(e) => {
                    fed.error = Some(describe(&e, !self.established));
                    break;
                }
            }
        }
        if !self.established && !conn.is_handshaking() && fed.error.is_none() {
            self.established = true;
            self.handshake_deadline = None;
            self.info = info(conn);
            fed.established = true;
        }
        fed
    }

    /// Hands plaintext to rustls (up to its buffer limit); returns how
    /// much it took. Nothing before the handshake or after close_notify.
    pub fn take_plaintext(&mut self, slices: &[io::IoSlice<'_>]) -> usize {
        if !self.established || self.close_notify_sent {
            return 0;
        }
        let Some(conn) = self.conn.as_mut() else {
            return 0;
        };
        io::Write::write_vectored(&mut conn.writer(), slices).unwrap_or(0)
    }

    /// Writes pending ciphertext through `wr` until it is all out or `wr`
    /// would block (Ok then, with `wants_write` still true).
    pub fn write_out(&mut self, wr: &mut dyn io::Write) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(());
        };
        while conn.wants_write() {
            match conn.write_tls(wr) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Queues close_notify (once).
    pub fn close_notify(&mut self) {
        if let Some(conn) = self.conn.as_mut()
            && !self.close_notify_sent
        {
            conn.send_close_notify();
            self.close_notify_sent = true;
        }
    }

    /// Frees rustls' buffers; what the handshake settled stays.
    pub fn end(&mut self) {
        self.conn = None;
    }
}

fn info(conn: &rustls::Connection) -> Info {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map_or_else(String::new, |s| format!("{:?}", s.suite()));
    let alpn = conn
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned().into_boxed_str());
    let sni = match conn {
        rustls::Connection::Server(s) => s.server_name().map(Into::into),
        rustls::Connection::Client(_) => None,
    };
    let peer_certificate = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec().into_boxed_slice());
    Info {
        version,
        cipher,
        alpn,
        sni,
        peer_certificate,
    }
}

/// A rustls failure in words: which failure first, then rustls' reason.
pub(crate) fn describe(e: &rustls::Error, handshaking: bool) -> Error {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    let what = match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                "unknown issuer: the peer's certificate is not signed by a trusted CA"
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "name mismatch: the server's certificate is not valid for the name it was asked for"
            }
            C::Expired | C::ExpiredContext { .. } => "the peer's certificate has expired",
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "the peer's certificate is not valid yet"
            }
            C::Revoked => "the peer's certificate is revoked",
            C::BadSignature | C::BadEncoding => "the peer's certificate is malformed",
            _ => "the peer's certificate was refused",
        },
        E::NoCertificatesPresented => {
            "client certificate missing: the client sent none and this server requires one"
        }
        E::NoApplicationProtocol => "no common ALPN protocol with the peer",
        E::AlertReceived(a) => match a {
            A::NoApplicationProtocol => "no common ALPN protocol: the peer refused ours",
            A::CertificateRequired => {
                "client certificate missing: the server requires one (give cert_* and key_*)"
            }
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown => {
                "the peer refused our certificate (untrusted)"
            }
            A::CertificateExpired => "the peer refused our certificate (expired)",
            A::ProtocolVersion | A::HandshakeFailure => {
                "no common protocol version or cipher suite with the peer"
            }
            A::CloseNotify => "the peer closed the TLS session",
            _ => "the peer sent a fatal alert",
        },
        E::PeerIncompatible(_) => "no common protocol version or cipher suite with the peer",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } if handshaking => {
            "not TLS: the peer does not speak TLS here (a plaintext peer?)"
        }
        E::DecryptError => "a record failed to decrypt",
        _ if handshaking => "the TLS handshake failed",
        _ => "TLS failure",
    };
    tls_error(format!("{what} ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpn_lists_are_split_and_checked() {
        assert_eq!(
            alpn(Some("h2, http/1.1")).unwrap(),
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        assert!(alpn(None).unwrap().is_empty());
        assert!(alpn(Some("")).unwrap().is_empty());
        assert!(alpn(Some("h2,,x")).is_err());
    }

    #[test]
    fn a_server_needs_its_certificate_and_key() {
        let e = TlsConfig::server(&TlsInput::default()).err().unwrap();
        assert_eq!(e.code, Status::NETEV_ERR_INVALID_ARGUMENT);
        let e = TlsConfig::server(&TlsInput {
            cert_pem: Some("junk"),
            key_pem: Some("junk"),
            ..TlsInput::default()
        })
        .err()
        .unwrap();
        assert_eq!(e.code, Status::NETEV_ERR_TLS);
        assert_eq!(e.component, "tls");
    }
}
