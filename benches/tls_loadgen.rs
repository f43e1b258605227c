//! tls_loadgen: the benchmark's TLS load generator (benches/README.md), the
//! TLS counterpart of loadgen.c, with the same command line and result line.
//!
//! Usage: tls_loadgen MODE --port P --ca FILE [options]
//!
//! Modes
//!   bulk       --conns N         each connection streams its own
//!                                pseudo-random bytes and reads the echo back
//!                                at once, at most --window bytes in flight.
//!                                MiB/s echoed.
//!   handshake  --concurrency K   connect, full TLS handshake, 1 byte each
//!                                way, close_notify and close; again; K at a
//!                                time. Handshakes/s.
//!
//! Common: --host A (127.0.0.1), --duration SEC (5), --warmup SEC (0.5),
//! --server-pid PID: the server's utime+stime from /proc/PID/stat at the start
//! and the end of the measured window, reported per unit of work.
//!
//! The client is tokio (current-thread runtime: the load generator gets one
//! core) + tokio-rustls with the ring provider, trusting only --ca, verifying
//! the name "localhost". Client-side resumption is disabled, so every
//! handshake is a full one (tickets the server sends are ignored).
//!
//! Every echoed byte is compared with what was sent; a mismatch, an early
//! close, an error or a stall of 10 s exits 1 with a message on stderr. The
//! last line on stdout is "result key=value ...", for scripts; it also names
//! what the handshake negotiated (version, suite, key exchange).

use rustls::pki_types::ServerName;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Notify;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Prime, as in loadgen.c: streams never line up with power-of-two sizes.
const PERIOD: usize = 65521;
const MAXIO: usize = 65536;
/// Longest a single step (connect, handshake, one echo, the drain at the
/// end) may take before the run counts as stalled.
const STALL: Duration = Duration::from_secs(10);

/// loadgen.c's pattern (the same xorshift from the same seed), with its
/// first MAXIO bytes repeated after the period, so that any slice of up to
/// MAXIO bytes from an offset below PERIOD is contiguous.
static PATTERN: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut p = Vec::with_capacity(PERIOD + MAXIO);
    let mut x: u32 = 2463534242;
    for _ in 0..PERIOD {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p.push(x as u8);
    }
    for i in PERIOD..PERIOD + MAXIO {
        p.push(p[i - PERIOD]);
    }
    p
});

fn pat(off: u64, seed: u32) -> &'static [u8] {
    let start = ((off + u64::from(seed)) % PERIOD as u64) as usize;
    &PATTERN[start..start + MAXIO]
}

static MODE: OnceLock<String> = OnceLock::new();

fn die(msg: impl std::fmt::Display) -> ! {
    eprintln!(
        "tls_loadgen {}: {msg}",
        MODE.get().map(String::as_str).unwrap_or("")
    );
    std::process::exit(1);
}

struct Opts {
    mode: String,
    target: SocketAddrV4,
    ca: String,
    conns: usize,
    concurrency: usize,
    duration: f64,
    warmup: f64,
    window: u64,
    server_pid: Option<u32>,
}

fn usage() -> ! {
    eprintln!(
        "usage: tls_loadgen bulk|handshake --port P --ca FILE [--host A] [--conns N] \
         [--concurrency K] [--duration SEC] [--warmup SEC] [--window BYTES] [--server-pid PID]"
    );
    std::process::exit(2);
}

fn num<T: std::str::FromStr>(opt: &str, v: &str) -> T {
    v.parse()
        .unwrap_or_else(|_| die(format!("{opt}: bad value {v:?}")))
}

fn parse_args() -> Opts {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    MODE.set(mode.clone()).ok();
    let (mut host, mut port, mut ca) = (Ipv4Addr::LOCALHOST, 0u16, None);
    let (mut conns, mut concurrency, mut window) = (1usize, 16usize, 256 * 1024u64);
    let (mut duration, mut warmup, mut server_pid) = (5.0f64, 0.5f64, None);
    while let Some(a) = args.next() {
        let v = args
            .next()
            .unwrap_or_else(|| die(format!("{a} needs a value")));
        match a.as_str() {
            "--port" => port = num(&a, &v),
            "--host" => {
                host = v
                    .parse()
                    .unwrap_or_else(|_| die("--host must be an IPv4 address"))
            }
            "--ca" => ca = Some(v),
            "--conns" => conns = num(&a, &v),
            "--concurrency" => concurrency = num(&a, &v),
            "--window" => window = num(&a, &v),
            "--duration" => duration = num(&a, &v),
            "--warmup" => warmup = num(&a, &v),
            "--server-pid" => server_pid = Some(num(&a, &v)),
            _ => die(format!("unknown option {a}")),
        }
    }
    if port == 0 {
        die("--port is required");
    }
    if conns == 0 || concurrency == 0 || window == 0 {
        die("bad count");
    }
    if !(duration > 0.0 && warmup >= 0.0 && duration.is_finite() && warmup.is_finite()) {
        die("bad --duration or --warmup");
    }
    let ca = ca.unwrap_or_else(|| die("--ca is required"));
    Opts {
        mode,
        target: SocketAddrV4::new(host, port),
        ca,
        conns,
        concurrency,
        duration,
        warmup,
        window,
        server_pid,
    }
}

/// The client side of what the servers are compared on: rustls with ring,
/// rustls' default versions (1.3 and 1.2) and suites, and no resumption, so
/// each connection costs the server a full handshake.
fn connector(ca: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| die(format!("--ca {ca}: {e}")));
    for c in certs {
        roots
            .add(c)
            .unwrap_or_else(|e| die(format!("--ca {ca}: {e}")));
    }
    if roots.is_empty() {
        die(format!("--ca {ca}: no certificate in it"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap_or_else(|e| die(format!("TLS versions: {e}")))
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    TlsConnector::from(Arc::new(config))
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from("localhost").unwrap_or_else(|e| die(format!("server name: {e}")))
}

/// The server's user+system CPU time in microseconds (all its threads).
fn server_cpu_us(pid: Option<u32>) -> f64 {
    let Some(pid) = pid else { return 0.0 };
    let path = format!("/proc/{pid}/stat");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| die(format!("cannot read {path}: {e}")));
    // After the ")" that ends the command name: state ppid pgrp session tty
    // tpgid flags minflt cminflt majflt cmajflt utime stime.
    let fields: Vec<&str> = text
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let tick = |i: usize| -> u64 {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .unwrap_or_else(|| die(format!("cannot parse {path}")))
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (tick(11) + tick(12)) as f64 * 1e6 / hz
}

/// Loopback connections from one source address soon fill the ephemeral
/// port range with TIME_WAIT sockets (the client closes first, so they are
/// ours), and connect then spends its time searching for a free port.
/// Spreading the source over 127.0.0.2-201, as loadgen.c does, keeps that
/// search short; IP_BIND_ADDRESS_NO_PORT leaves the port to connect.
fn spread_source(sock: &TcpSocket, target: SocketAddrV4, n: u64) -> std::io::Result<()> {
    if target.ip().octets()[0] != 127 {
        return Ok(());
    }
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option value of the size given.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    sock.bind(SocketAddr::from((
        Ipv4Addr::new(127, 0, 0, 2 + (n % 200) as u8),
        0,
    )))
}

/// TCP connect (the `n`th of the run picks its source address) and a full
/// TLS handshake.
async fn open(
    target: SocketAddrV4,
    n: u64,
    tls: &TlsConnector,
) -> Result<TlsStream<TcpStream>, String> {
    let sock = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    spread_source(&sock, target, n).map_err(|e| format!("bind 127.0.0.x: {e}"))?;
    let tcp = sock
        .connect(target.into())
        .await
        .map_err(|e| format!("connect {target}: {e}"))?;
    tcp.set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    tls.connect(server_name(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// A clean TLS end: close_notify and the FIN, then the server's
/// close_notify (an echo server answers ours with its own), then the close.
/// Waiting for it leaves the server a clean close, not a reset.
async fn close(mut s: TlsStream<TcpStream>) -> Result<(), String> {
    s.shutdown()
        .await
        .map_err(|e| format!("sending close_notify: {e}"))?;
    let mut b = [0u8; 1];
    match s.read(&mut b).await {
        Ok(0) => Ok(()),
        Ok(_) => Err("the server sent bytes after everything was echoed".into()),
        Err(e) => Err(format!("waiting for the server's close_notify: {e}")),
    }
}

fn describe(s: &TlsStream<TcpStream>) -> String {
    let c = s.get_ref().1;
    let version = c
        .protocol_version()
        .map_or("none".into(), |v| format!("{v:?}"));
    let suite = c
        .negotiated_cipher_suite()
        .map_or("none".into(), |s| format!("{:?}", s.suite()));
    let kx = c
        .negotiated_key_exchange_group()
        .map_or("none".into(), |g| format!("{:?}", g.name()));
    format!("version={version} suite={suite} kx={kx}")
}

// ---- bulk: N long-lived connections, each streaming both ways at once ----

/// One bulk connection's progress, shared by its writer and its reader.
#[derive(Default)]
struct Flow {
    /// Bytes handed to the TLS stream (before the write completes: the
    /// echo of a write's first bytes can come back before it returns).
    sent: AtomicU64,
    recvd: AtomicU64,
    writer_done: AtomicBool,
    /// The reader made room in the window, or the run stopped.
    room: Notify,
    /// The writer is done: the reader stops once everything is back.
    ended: Notify,
}

async fn bulk_writer(
    mut w: WriteHalf<TlsStream<TcpStream>>,
    flow: &Flow,
    seed: u32,
    window: u64,
    active: &AtomicBool,
) -> WriteHalf<TlsStream<TcpStream>> {
    while active.load(Relaxed) {
        let sent = flow.sent.load(Relaxed);
        let goal = flow.recvd.load(Relaxed) + window;
        if sent >= goal {
            flow.room.notified().await;
            continue;
        }
        let n = (goal - sent).min(MAXIO as u64) as usize;
        flow.sent.store(sent + n as u64, Relaxed);
        // write_all may leave the last ciphertext inside rustls when the
        // socket is full; the flush puts it on the wire, or the window
        // could wait for an echo of bytes the server never got.
        if let Err(e) = w.write_all(&pat(sent, seed)[..n]).await {
            die(format!("write: {e}"));
        }
        if let Err(e) = w.flush().await {
            die(format!("write: {e}"));
        }
    }
    flow.writer_done.store(true, Relaxed);
    flow.ended.notify_one();
    w
}

async fn bulk_reader(
    mut r: ReadHalf<TlsStream<TcpStream>>,
    flow: &Flow,
    seed: u32,
) -> ReadHalf<TlsStream<TcpStream>> {
    let mut buf = vec![0u8; MAXIO];
    loop {
        let recvd = flow.recvd.load(Relaxed);
        if flow.writer_done.load(Relaxed) && recvd == flow.sent.load(Relaxed) {
            return r;
        }
        // read is cancel-safe: a read the select drops took no bytes.
        let n = tokio::select! {
            res = r.read(&mut buf) => match res {
                Ok(n) => n,
                Err(e) => die(format!("read: {e}")),
            },
            _ = flow.ended.notified() => continue,
        };
        let sent = flow.sent.load(Relaxed);
        if n == 0 {
            die(format!(
                "the server closed a connection ({recvd} of {sent} bytes back)"
            ));
        }
        if recvd + n as u64 > sent {
            die("the server sent back more than it was sent");
        }
        if buf[..n] != pat(recvd, seed)[..n] {
            die(format!(
                "echoed bytes differ from those sent (connection offset {recvd})"
            ));
        }
        flow.recvd.store(recvd + n as u64, Relaxed);
        flow.room.notify_one();
    }
}

async fn run_bulk(o: &Opts, tls: TlsConnector) {
    let mut streams = Vec::with_capacity(o.conns);
    for i in 0..o.conns {
        match timeout(STALL, open(o.target, i as u64, &tls)).await {
            Ok(Ok(s)) => streams.push(s),
            Ok(Err(e)) => die(e),
            Err(_) => die(format!("connection {i}: no handshake within {STALL:?}")),
        }
    }
    let info = describe(&streams[0]);
    let active = Arc::new(AtomicBool::new(true));
    let flows: Vec<Arc<Flow>> = (0..o.conns).map(|_| Arc::default()).collect();
    let t0 = Instant::now();
    let t_go = t0 + Duration::from_secs_f64(o.warmup);
    let t_stop = t_go + Duration::from_secs_f64(o.duration);
    let mut tasks = Vec::with_capacity(o.conns);
    for (i, s) in streams.into_iter().enumerate() {
        let (flow, active, window) = (flows[i].clone(), active.clone(), o.window);
        let seed = (i as u32).wrapping_mul(4099).wrapping_add(17);
        tasks.push(tokio::spawn(async move {
            let (r, w) = tokio::io::split(s);
            let (r, w) = tokio::join!(
                bulk_reader(r, &flow, seed),
                bulk_writer(w, &flow, seed, window, &active)
            );
            r.unsplit(w)
        }));
    }
    let total = || flows.iter().map(|f| f.recvd.load(Relaxed)).sum::<u64>();
    sleep_until(t_go).await;
    let (cpu0, bytes0, m0) = (server_cpu_us(o.server_pid), total(), Instant::now());
    sleep_until(t_stop).await;
    let (cpu1, bytes1) = (server_cpu_us(o.server_pid), total());
    let secs = (Instant::now() - m0).as_secs_f64();
    active.store(false, Relaxed);
    for f in &flows {
        f.room.notify_one();
    }
    // Every echo back, then a clean close, all within one bound.
    let deadline = Instant::now() + STALL;
    for t in tasks {
        let s = match timeout_at(deadline, t).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => die(format!("connection task: {e}")),
            Err(_) => die(format!("echoes still missing {STALL:?} after the end")),
        };
        match timeout_at(deadline, close(s)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => die(e),
            Err(_) => die(format!("no close_notify back within {STALL:?}")),
        }
    }
    let (bytes, cpu) = ((bytes1 - bytes0) as f64, cpu1 - cpu0);
    let mib = bytes / 1048576.0;
    let per_gib = if bytes > 0.0 {
        cpu / 1000.0 / (bytes / 1073741824.0)
    } else {
        0.0
    };
    println!(
        "bulk: {} TLS connections, {:.1} MiB/s echoed; server CPU {per_gib:.1} ms/GiB",
        o.conns,
        mib / secs
    );
    println!(
        "result mode=bulk conns={} seconds={secs:.3} bytes={bytes:.0} mib_per_s={:.3} \
         server_cpu_us={cpu:.0} cpu_ms_per_gib={per_gib:.4} {info}",
        o.conns,
        mib / secs
    );
}

// ---- handshake: connect, handshake, 1 byte each way, close; K at a time ----

async fn handshake_once(
    target: SocketAddrV4,
    n: u64,
    tls: &TlsConnector,
) -> Result<String, String> {
    let mut s = open(target, n, tls).await?;
    let byte = (n.wrapping_mul(131).wrapping_add(7)) as u8;
    s.write_all(&[byte])
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| format!("write: {e}"))?;
    let mut b = [0u8; 1];
    match s.read(&mut b).await {
        Ok(1) if b[0] == byte => {}
        Ok(1) => return Err("echoed byte differs from the one sent".into()),
        Ok(_) => return Err("the server closed before echoing".into()),
        Err(e) => return Err(format!("read: {e}")),
    }
    let info = if n == 0 { describe(&s) } else { String::new() };
    close(s).await?;
    Ok(info)
}

async fn run_handshake(o: &Opts, tls: TlsConnector) {
    let tls = Arc::new(tls);
    let active = Arc::new(AtomicBool::new(true));
    let started = Arc::new(AtomicU64::new(0));
    let count = Arc::new(AtomicU64::new(0));
    let info = Arc::new(OnceLock::<String>::new());
    let t0 = Instant::now();
    let t_go = t0 + Duration::from_secs_f64(o.warmup);
    let t_stop = t_go + Duration::from_secs_f64(o.duration);
    let mut tasks = Vec::with_capacity(o.concurrency);
    for _ in 0..o.concurrency {
        let (tls, active, started, count, info) = (
            tls.clone(),
            active.clone(),
            started.clone(),
            count.clone(),
            info.clone(),
        );
        let target = o.target;
        tasks.push(tokio::spawn(async move {
            while active.load(Relaxed) {
                let n = started.fetch_add(1, Relaxed);
                match timeout(STALL, handshake_once(target, n, &tls)).await {
                    Ok(Ok(i)) => {
                        if n == 0 {
                            info.set(i).ok();
                        }
                    }
                    Ok(Err(e)) => die(e),
                    Err(_) => die(format!("connection {n}: not through within {STALL:?}")),
                }
                count.fetch_add(1, Relaxed);
            }
        }));
    }
    sleep_until(t_go).await;
    let (cpu0, n0, m0) = (
        server_cpu_us(o.server_pid),
        count.load(Relaxed),
        Instant::now(),
    );
    sleep_until(t_stop).await;
    let (cpu1, n1) = (server_cpu_us(o.server_pid), count.load(Relaxed));
    let secs = (Instant::now() - m0).as_secs_f64();
    active.store(false, Relaxed);
    // Each task is at most one bounded cycle from its end.
    let deadline = Instant::now() + STALL + Duration::from_secs(1);
    for t in tasks {
        match timeout_at(deadline, t).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => die(format!("connection task: {e}")),
            Err(_) => die("connections still open after the end"),
        }
    }
    let (done, cpu) = (n1 - n0, cpu1 - cpu0);
    let per = if done > 0 { cpu / done as f64 } else { 0.0 };
    println!(
        "handshake: {} at a time: {:.0} handshakes/s; server CPU {per:.2} us/handshake",
        o.concurrency,
        done as f64 / secs
    );
    println!(
        "result mode=handshake concurrency={} seconds={secs:.3} handshakes={done} \
         handshakes_per_s={:.1} server_cpu_us={cpu:.0} cpu_us_per_handshake={per:.4} {}",
        o.concurrency,
        done as f64 / secs,
        info.get().map_or("", String::as_str)
    );
}

fn main() {
    let o = parse_args();
    let tls = connector(&o.ca);
    LazyLock::force(&PATTERN);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(format!("tokio runtime: {e}")));
    rt.block_on(async {
        match o.mode.as_str() {
            "bulk" => run_bulk(&o, tls).await,
            "handshake" => run_handshake(&o, tls).await,
            _ => die("unknown mode (bulk, handshake)"),
        }
    });
}
