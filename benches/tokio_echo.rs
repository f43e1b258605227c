//! tokio_echo: a plain tokio echo server, netev's own floor without the C ABI;
//! with `--cert`/`--key`, a tokio + tokio-rustls one, the floor of netev's TLS.
//!
//! Usage: tokio_echo [--cert FILE --key FILE] PORT
//! (0 picks a free port; first line "port N")
//!
//! The default multi-thread runtime (one worker per core), one task per
//! connection with a 64 KiB buffer: read, write all of it, repeat. netev
//! enables tokio's `net` feature but not `io-util`, so the plain loop uses
//! `readable().await` + `try_read` and `writable().await` + `try_write`: the
//! same readiness machinery `AsyncReadExt::read`/`write_all` sit on. SIGTERM or
//! SIGINT: exit 0 (a thread blocked in sigwait; tokio's signal feature is not
//! among netev's dependencies).
//!
//! TLS: a `TlsAcceptor` over a rustls `ServerConfig` built as netev builds its
//! own (src/tls.rs: the ring provider, TLS 1.3 and 1.2, no client
//! authentication, a single certificate, every other setting rustls' default,
//! session tickets included), and `AsyncReadExt::read` / `write_all` + `flush`,
//! the way a tokio-rustls server is written. At the client's close_notify it
//! sends its own and the FIN, as netev does when the peer ends.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

fn usage() -> ! {
    eprintln!("usage: tokio_echo [--cert FILE --key FILE] PORT");
    std::process::exit(2);
}

fn fail(msg: String) -> ! {
    eprintln!("tokio_echo: {msg}");
    std::process::exit(1);
}

/// The server configuration netev's `TlsConfig::server` builds for a
/// certificate and key and nothing else set.
fn tls_acceptor(cert: &str, key: &str) -> TlsAcceptor {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect())
        .unwrap_or_else(|e| fail(format!("--cert {cert}: {e}")));
    let key =
        PrivateKeyDer::from_pem_file(key).unwrap_or_else(|e| fail(format!("--key {key}: {e}")));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
    .unwrap_or_else(|e| fail(format!("TLS versions: {e}")))
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .unwrap_or_else(|e| fail(format!("certificate and key: {e}")));
    TlsAcceptor::from(Arc::new(config))
}

fn main() {
    let (mut port, mut cert, mut key) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--cert" => cert = Some(args.next().unwrap_or_else(|| usage())),
            "--key" => key = Some(args.next().unwrap_or_else(|| usage())),
            _ if port.is_none() => port = Some(a.parse::<u16>().unwrap_or_else(|_| usage())),
            _ => usage(),
        }
    }
    let port = port.unwrap_or_else(|| usage());
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some(tls_acceptor(&c, &k)),
        (None, None) => None,
        _ => usage(),
    };
    // Raise the descriptor limit to the hard limit, like the C servers.
    // SAFETY: plain libc calls on a local struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
    // Block the stop signals before any thread starts (threads inherit the
    // mask); one thread takes them with sigwait.
    // SAFETY: sigset manipulation on a local, then pthread_sigmask/sigwait.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    std::thread::spawn(move || {
        let mut sig = 0;
        // SAFETY: the set is a valid, initialised sigset_t.
        unsafe { libc::sigwait(&set, &mut sig) };
        std::process::exit(0);
    });

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let listener = TcpListener::bind(("0.0.0.0", port)).await.expect("bind");
        let port = listener.local_addr().expect("local_addr").port();
        let mut out = std::io::stdout();
        writeln!(out, "port {port}").ok();
        out.flush().ok();
        if let Some(acceptor) = tls {
            return serve_tls(&listener, acceptor).await;
        }
        loop {
            let (s, _) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    eprintln!("tokio_echo: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match s.try_read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            if s.readable().await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Err(_) => return,
                    };
                    let mut off = 0;
                    while off < n {
                        match s.try_write(&buf[off..n]) {
                            Ok(w) => off += w,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                                if s.writable().await.is_err() {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                }
            });
        }
    });
}

async fn serve_tls(listener: &TcpListener, acceptor: TlsAcceptor) {
    loop {
        let (s, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                eprintln!("tokio_echo: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = s.set_nodelay(true);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let Ok(mut tls) = acceptor.accept(s).await else {
                return;
            };
            let mut buf = vec![0u8; 65536];
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        // write_all can leave ciphertext inside rustls when the
                        // socket is full, and reading never sends it: flush.
                        if tls.write_all(&buf[..n]).await.is_err() || tls.flush().await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            let _ = tls.shutdown().await;
        });
    }
}
