//! tokio_echo: a plain tokio echo server, netev's own floor without the C ABI.
//!
//! Usage: tokio_echo PORT   (0 picks a free port; first line "port N")
//!
//! The default multi-thread runtime (one worker per core), one task per
//! connection with a 64 KiB buffer: read, write all of it, repeat. netev
//! enables tokio's `net` feature but not `io-util`, so the loop uses
//! `readable().await` + `try_read` and `writable().await` + `try_write`: the
//! same readiness machinery `AsyncReadExt::read`/`write_all` sit on. SIGTERM or
//! SIGINT: exit 0 (a thread blocked in sigwait; tokio's signal feature is not
//! among netev's dependencies).

use std::io::Write;
use tokio::net::TcpListener;

fn main() {
    let port: u16 = match std::env::args().nth(1).map(|a| a.parse()) {
        Some(Ok(p)) => p,
        _ => {
            eprintln!("usage: tokio_echo PORT");
            std::process::exit(2);
        }
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
