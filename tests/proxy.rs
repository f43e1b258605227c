//! examples-c/proxy, built with `make -C examples-c` exactly as a user
//! builds it (release library), run as its own process on loopback:
//!
//! - 1 GiB from a fast writer to a slow reader through it, every byte
//!   checked, with the proxy's resident memory sampled all along: pause and
//!   resume must keep it bounded while the writer could go far faster than
//!   the reader takes;
//! - bytes the client sends while the proxy is still connecting to the
//!   target are not lost;
//! - a refused target closes the client's connection, and a client's reset
//!   closes the target's.
//!
//! Every wait is bounded: sockets have timeouts, children are killed by a
//! guard if a test fails, and each phase has a deadline.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::thread;
use std::time::{Duration, Instant};
use support::{as_from_a_shell, root, run_bounded};

/// Builds the library (release) and the examples once for this file's
/// tests; returns examples-c/build.
fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut make = Command::new("make");
        make.arg("-C")
            .arg(root().join("examples-c"))
            .arg("build/proxy");
        as_from_a_shell(&mut make);
        let done = run_bounded(&mut make, Duration::from_secs(600));
        assert!(
            done.status.is_some_and(|s| s.success()),
            "make -C examples-c build/proxy failed or ran past 600 s:\n{}\n{}",
            done.stdout,
            done.stderr
        );
        root().join("examples-c/build")
    })
}

/// A child process killed (and reaped) when dropped, so a failing assertion
/// never leaves it behind.
struct Guard(Child);

impl Guard {
    fn wait_for(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `proxy 0 127.0.0.1 TARGET_PORT`, its port read from its first line and
/// everything it prints collected by a thread.
struct Proxy {
    child: Guard,
    port: u16,
    output: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Proxy {
    fn start(target_port: u16) -> Proxy {
        let exe = examples().join("proxy");
        let mut child = Guard(
            Command::new(&exe)
                .args(["0", "127.0.0.1", &target_port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", exe.display())),
        );
        let stdout = child.0.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (first_tx, first_rx) = mpsc::channel();
        let out = output.clone();
        let reader = thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                out.lock().unwrap().push_str(&format!("{first}\n"));
                let _ = first_tx.send(first);
            }
            for line in lines.map_while(Result::ok) {
                out.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let first = first_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("proxy printed no first line within 10 s");
        let port = first
            .strip_prefix("listening on port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("proxy: unexpected first line {first:?}"));
        Proxy {
            child,
            port,
            output,
            reader: Some(reader),
        }
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to the proxy");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the proxy has printed a line containing `what`, at most
    /// `limit`; returns that line.
    fn wait_line(&self, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.output().lines().find(|l| l.contains(what)) {
                return l.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the proxy printed no line with {what:?} within {limit:?}:\n{}",
                self.output()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then at most 10 s for a clean exit; returns what it printed.
    fn terminate(mut self) -> String {
        let pid = self.child.0.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child, not reaped yet (the guard only
        // reaps it in Drop or wait_for), so the pid is still its own.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill");
        let status = self.child.wait_for(Duration::from_secs(10));
        let status = status
            .unwrap_or_else(|| panic!("proxy still runs 10 s after SIGTERM:\n{}", self.output()));
        self.reader.take().unwrap().join().unwrap();
        let out = self.output();
        assert!(status.success(), "proxy exited {status}:\n{out}");
        out
    }
}

/// A listener on 127.0.0.1 with the given backlog and, if set, the given
/// receive buffer size (SO_RCVBUF, which accepted sockets inherit).
fn listen(backlog: i32, recv_buffer: Option<usize>) -> TcpListener {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    if let Some(size) = recv_buffer {
        s.set_recv_buffer_size(size).unwrap();
    }
    let addr: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    s.bind(&addr.into()).unwrap();
    s.listen(backlog).unwrap();
    s.into()
}

/// Accepts one connection within `limit` (the listener is made
/// non-blocking and polled); the accepted socket is blocking, with 20 s
/// read and write timeouts.
fn accept_within(listener: &TcpListener, limit: Duration, what: &str) -> TcpStream {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
                return s;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "no {what} within {limit:?}");
                thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// The proxy's resident set size in KiB, from /proc/PID/status.
fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The byte stream: byte n is TABLE[n % P] for a pseudo-random TABLE of a
/// prime length P (just under 1 MiB), so no chunk size the writer, the
/// proxy or the reader uses lines up with it: a chunk lost, repeated or
/// moved shows as a mismatch. TABLE is stored twice in a row, so the bytes
/// at any position, up to P of them, are one slice (written straight from
/// it, compared against it with memcmp): the stream itself is never stored.
const P: usize = 1_048_573;

fn pattern() -> &'static [u8] {
    static TABLE: OnceLock<Vec<u8>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15; // xorshift64*
        let mut t: Vec<u8> = (0..P)
            .map(|_| {
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect();
        t.extend_from_within(..);
        t
    })
}

const GIB: u64 = 1 << 30;

/// The RSS bound for the proxy during the 1 GiB run. The proxy holds at most
/// one send queue per direction (the 8 MiB limit plus under 200 KiB of
/// slack: only the target's fills here, the other direction carries
/// nothing), one refused chunk per direction (one read, 64 KiB), and the
/// buffers netev reads into; the rest is the runtime: the executable,
/// libnetev and libc mapped in, a stack per I/O thread, glibc's malloc
/// arenas. 2 × 8 MiB of queues + 32 MiB for everything else leaves room for
/// both directions at the limit and for allocator slack, and is still far
/// below what an unbounded forwarder would reach (the writer outruns the
/// reader by ~1 GiB's worth over the run).
const RSS_LIMIT_KIB: u64 = 64 << 10;

/// 1 GiB through the proxy from a writer as fast as the proxy lets it to a
/// reader that is slow in bursts: it reads 64 KiB at a time, and after
/// every 1 MiB it sleeps 10 ms, so it takes at most ~100 MiB/s however fast
/// the bytes come (with a reader that never sleeps, the whole GiB goes
/// through the proxy in about a second: the writer is 10× faster or more),
/// and its socket's receive buffer is fixed at 64 KiB so the kernel cannot
/// absorb the difference. The proxy must pause the writer's side again and
/// again; its VmRSS is sampled every 5 ms and must stay under
/// RSS_LIMIT_KIB. Every byte is compared as it arrives.
#[test]
fn gib_to_a_slow_reader_in_bounded_memory() {
    let table = pattern();
    let total: u64 = GIB;

    // The slow reader: the proxy's target.
    let sink = listen(8, Some(64 << 10));
    let sink_port = sink.local_addr().unwrap().port();

    let proxy = Proxy::start(sink_port);
    let pid = proxy.pid();
    let baseline_kib = vm_rss_kib(pid).expect("read the proxy's VmRSS");

    // The sampler: the peak VmRSS until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(baseline_kib));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        thread::spawn(move || {
            let mut samples = 0u64;
            while !stop.load(Ordering::Acquire) {
                if let Some(kib) = vm_rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::AcqRel);
                    samples += 1;
                }
                thread::sleep(Duration::from_millis(5));
            }
            samples
        })
    };

    let start = Instant::now();
    let reader = thread::spawn(move || {
        let mut s = accept_within(&sink, Duration::from_secs(10), "connection from the proxy");
        let mut buf = vec![0u8; 64 << 10];
        let mut got: u64 = 0;
        let mut since_pause = 0usize;
        loop {
            let n = s
                .read(&mut buf)
                .expect("the sink's read (20 s without a byte?)");
            if n == 0 {
                break;
            }
            let at = (got % P as u64) as usize;
            assert!(got + n as u64 <= total, "more than {total} bytes arrived");
            if buf[..n] != table[at..at + n] {
                let off = (0..n).find(|&i| buf[i] != table[at + i]).unwrap();
                panic!("byte {} differs from what was sent", got + off as u64);
            }
            got += n as u64;
            since_pause += n;
            if since_pause >= 1 << 20 {
                since_pause = 0;
                thread::sleep(Duration::from_millis(10));
            }
        }
        got // dropping `s` ends the target's side: the proxy ends the client's
    });

    let mut w = proxy.connect();
    w.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let chunk = 256 << 10;
    let mut sent: u64 = 0;
    while sent < total {
        let at = (sent % P as u64) as usize;
        let n = chunk.min((total - sent) as usize);
        w.write_all(&table[at..at + n])
            .expect("the writer's write (20 s without progress?)");
        sent += n as u64;
    }
    let wrote_in = start.elapsed();
    w.shutdown(Shutdown::Write).unwrap();

    let got = reader.join().expect("the reader failed");
    let elapsed = start.elapsed();
    assert_eq!(got, total, "the sink got {got} of {total} bytes");
    // Nothing came back, and the target's end reached the writer as an end.
    w.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut back = Vec::new();
    w.read_to_end(&mut back)
        .expect("the writer's side was not ended cleanly after the sink closed");
    assert!(back.is_empty(), "{} bytes came back", back.len());

    let done = proxy.wait_line(": done,", Duration::from_secs(10));
    stop.store(true, Ordering::Release);
    let samples = sampler.join().unwrap();
    let peak_kib = peak.load(Ordering::Acquire);
    eprintln!(
        "1 GiB through the proxy in {:.1} s (the writer was done after {:.1} s), \
         proxy VmRSS {:.1} MiB at the start, peak {:.1} MiB over {samples} samples; {done}",
        elapsed.as_secs_f64(),
        wrote_in.as_secs_f64(),
        baseline_kib as f64 / 1024.0,
        peak_kib as f64 / 1024.0,
    );
    assert!(
        peak_kib < RSS_LIMIT_KIB,
        "the proxy's VmRSS reached {peak_kib} KiB (limit {RSS_LIMIT_KIB} KiB)"
    );
    assert!(samples >= 100, "only {samples} VmRSS samples");
    // "done, N bytes to the target, M back, paused A+B times": all of it
    // counted, and back-pressure really was applied to the writer's side.
    assert!(
        done.contains(&format!(", {total} bytes to the target, 0 back, paused ")),
        "{done}"
    );
    let pauses: u64 = done
        .rsplit_once("paused ")
        .and_then(|(_, r)| r.split('+').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no pause count in {done:?}"));
    assert!(pauses > 0, "the writer's side was never paused: {done}");

    let out = proxy.terminate();
    assert!(out.contains("proxied 1 connection\n"), "{out}");
}

/// Bytes that reach the proxy before its connection to the target is
/// established are forwarded once it is. The target listens with a backlog
/// of 0 and one connection already waiting in it, so the kernel drops the
/// proxy's SYN; TCP retries it after about a second, once the test has
/// accepted the connection that filled the queue. Meanwhile the client has
/// sent its bytes and shut its side down.
#[test]
fn bytes_sent_while_the_target_connects_arrive() {
    let target = listen(0, None);
    let target_port = target.local_addr().unwrap().port();
    // Fills the accept queue: the next SYN is dropped.
    let filler = TcpStream::connect(("127.0.0.1", target_port)).unwrap();

    let proxy = Proxy::start(target_port);
    let mut c = proxy.connect();
    let message = b"sent before the proxy reached the target\n";
    c.write_all(message).unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    thread::sleep(Duration::from_millis(300));
    assert!(
        !proxy.output().contains("connected to"),
        "the target was reached at once: the test proves nothing\n{}",
        proxy.output()
    );

    let _queued = accept_within(&target, Duration::from_secs(10), "queued connection");
    drop(filler);
    let mut s = accept_within(
        &target,
        Duration::from_secs(10),
        "connection from the proxy",
    );
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .expect("read what the client sent, up to its end");
    assert_eq!(got, message);
    s.write_all(b"and back\n").unwrap();
    drop(s);
    let mut reply = Vec::new();
    c.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"and back\n");

    proxy.wait_line(": done,", Duration::from_secs(10));
    let out = proxy.terminate();
    assert!(out.contains("proxied 1 connection\n"), "{out}");
}

/// A target that refuses the connection: the client's connection is closed
/// (an end or a reset, within seconds), and the proxy says why.
#[test]
fn refused_target_closes_the_client() {
    // A port nothing listens on: bound, then freed.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Proxy::start(port);
    let mut c = proxy.connect();
    let _ = c.write_all(b"anyone there?\n");
    let mut rest = Vec::new();
    match c.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the client's connection was not closed: {e}"),
    }
    proxy.wait_line("NETEV_ERR_CONNECTION_REFUSED", Duration::from_secs(10));
    proxy.wait_line(": done,", Duration::from_secs(10));
    let out = proxy.terminate();
    assert!(out.contains("proxied 1 connection\n"), "{out}");
}

/// A client that resets its connection: the proxy closes the target's too.
#[test]
fn client_reset_closes_the_target() {
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = Proxy::start(target.local_addr().unwrap().port());
    let mut c = proxy.connect();
    c.write_all(b"hello\n").unwrap();
    let mut s = accept_within(
        &target,
        Duration::from_secs(10),
        "connection from the proxy",
    );
    let mut hello = [0u8; 6];
    s.read_exact(&mut hello).unwrap();
    assert_eq!(&hello, b"hello\n");

    // SO_LINGER 0: close sends a reset instead of an end.
    socket2::SockRef::from(&c)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(c);
    let mut rest = Vec::new();
    match s.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "{rest:?}"),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the target's connection was not closed: {e}"),
    }
    proxy.wait_line(": done,", Duration::from_secs(10));
    let out = proxy.terminate();
    assert!(out.contains("NETEV_ERR_CONNECTION_RESET"), "{out}");
}
