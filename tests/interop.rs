//! netev's example servers (examples-c) against ordinary tools: curl,
//! socat and a python3 client; for UDP (issue 13), udp_echo and
//! statsd_sink against socat's UDP4-DATAGRAM / UDP6-DATAGRAM and python3's
//! socket module. The examples are built once, with
//! `make -C examples-c`, exactly as a user builds them; each test then starts
//! its own server on a free port, so the tests may run in parallel.
//!
//! Every child process is owned by a guard that kills it if the test fails,
//! and every wait is bounded. curl, socat and python3 must be installed:
//! .ci/run installs them when missing.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the library (release) and the examples, once for all the tests
/// of this file; returns examples-c/build.
fn examples() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = run_bounded(
            support::as_from_a_shell(
                Command::new("make")
                    .arg("-C")
                    .arg(root().join("examples-c")),
            ),
            Duration::from_secs(600),
        );
        assert!(
            out.status.success(),
            "make -C examples-c failed:\n{}\n{}",
            out.stdout,
            out.stderr
        );
        root().join("examples-c/build")
    })
}

/// Fails with a clear message when a tool the tests use is missing.
fn require(tool: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{tool}` is not installed: these tests need curl, socat and python3 \
         (.ci/run installs them, or: apt-get install -y curl socat python3)"
    );
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs a command to the end, at most `limit`, killing it past that.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    run_bounded_with(cmd.stdout(Stdio::piped()).stderr(Stdio::piped()), limit)
}

/// As `run_bounded`, for a command whose stdin/stdout the caller has set
/// (unset ones are piped and collected).
fn run_bounded_with(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = Guard(cmd.spawn().unwrap_or_else(|e| panic!("start {what}: {e}")));
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let mut bytes = Vec::new();
                let _ = p.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let stdout = collect(child.0.stdout.take().map(|p| Box::new(p) as _));
    let stderr = collect(child.0.stderr.take().map(|p| Box::new(p) as _));
    let status = child
        .wait_for(limit)
        .unwrap_or_else(|| panic!("{what} still ran after {limit:?}: killed"));
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// A child process that is killed (and reaped) when dropped, so a failing
/// assertion never leaves a server behind.
struct Guard(Child);

impl Guard {
    /// Waits for the exit, at most `limit`; None if it still runs.
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

/// One of the example servers, started with port 0.
struct Server {
    name: &'static str,
    child: Guard,
    port: u16,
    /// Everything it printed, collected by a thread so that a full pipe
    /// never blocks it.
    output: Arc<Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

impl Server {
    /// Starts build/NAME 0 and reads its port from the first line,
    /// "listening on port N", within 10 s.
    fn start(name: &'static str) -> Server {
        Server::start_with(name, &[])
    }

    /// Starts build/NAME ARGS... 0, as `start` does.
    fn start_with(name: &'static str, args: &[&str]) -> Server {
        let exe = examples().join(name);
        let mut child = Guard(
            Command::new(&exe)
                .args(args)
                .arg("0")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", exe.display())),
        );
        let stdout = child.0.stdout.take().unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let out = output.clone();
        let reader = thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = port_tx.send(first.clone());
                out.lock().unwrap().push_str(&(first + "\n"));
            }
            for line in lines.map_while(Result::ok) {
                out.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let first = port_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{name} printed no first line within 10 s"));
        let port = first
            .strip_prefix("listening on port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{name}: unexpected first line {first:?}"));
        Server {
            name,
            child,
            port,
            output,
            reader: Some(reader),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    /// Sends SIGTERM and waits at most 10 s: returns the exit status and
    /// everything the server printed.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.0.id() as libc::pid_t;
        // SAFETY: plain kill(2) on our own child, which is not reaped yet
        // (the guard only reaps it in Drop), so the pid is still its own.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill");
        let status = self.child.wait_for(Duration::from_secs(10));
        let status = status.unwrap_or_else(|| {
            panic!(
                "{} still runs 10 s after SIGTERM; it printed:\n{}",
                self.name,
                self.output()
            )
        });
        // The process is gone, so its stdout is closed: the reader ends.
        self.reader.take().unwrap().join().unwrap();
        (status, self.output())
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }
}

/// A directory of its own under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("netev-interop-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BODY: &str = "hello from netev\n";

/// curl fetches three URLs in one invocation: all three answered, over one
/// connection kept alive.
#[test]
fn curl_keep_alive_against_http_hello() {
    require("curl");
    let server = Server::start("http_hello");
    let out = run_bounded(
        Command::new("curl")
            .args(["-sS", "-v", "--http1.1", "--max-time", "20"])
            .args(["-w", "[connects=%{num_connects} code=%{http_code}]\\n"])
            .args([server.url("/a"), server.url("/b"), server.url("/c")]),
        Duration::from_secs(30),
    );
    assert!(out.status.success(), "curl failed:\n{}", out.stderr);
    // num_connects: new connections made for that transfer.
    let expected = format!(
        "{BODY}[connects=1 code=200]\n{BODY}[connects=0 code=200]\n{BODY}[connects=0 code=200]\n"
    );
    assert_eq!(out.stdout, expected, "curl -v said:\n{}", out.stderr);
    assert!(
        out.stderr.contains("Re-using existing connection")
            || out.stderr.contains("Reusing existing"),
        "curl did not reuse the connection:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("Content-Length: 17"), "{}", out.stderr);

    let (status, printed) = server.terminate();
    assert!(status.success(), "http_hello exited {status}:\n{printed}");
    // The server saw the three requests on one connection: one peer address.
    let peers: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains(": GET /"))
        .map(|l| l.split(": GET").next().unwrap())
        .collect();
    assert_eq!(peers.len(), 3, "{printed}");
    assert!(peers.iter().all(|p| *p == peers[0]), "{printed}");
}

/// 8 MiB of random bytes through echo_server with socat, back intact.
#[test]
fn socat_bulk_echo_against_echo_server() {
    require("socat");
    let server = Server::start("echo_server");
    let dir = TempDir::new("socat");
    let (input, output) = (dir.0.join("in"), dir.0.join("out"));

    let mut data = vec![0u8; 8 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut data))
        .expect("read /dev/urandom");
    std::fs::write(&input, &data).expect("write the input file");

    // At the end of stdin socat shuts down its write side, and -t 30 makes
    // it keep reading for up to 30 s until the server's side ends too (the
    // default, 0.5 s, could cut a slow echo short). echo_server shuts its
    // side once the whole echo is out, so socat ends as soon as it has all.
    let out = run_bounded_with(
        Command::new("socat")
            .args(["-t", "30", "-"])
            .arg(format!("TCP:127.0.0.1:{}", server.port))
            .stdin(std::fs::File::open(&input).unwrap())
            .stdout(std::fs::File::create(&output).unwrap())
            .stderr(Stdio::piped()),
        Duration::from_secs(60),
    );
    assert!(out.status.success(), "socat failed: {}", out.stderr);
    let echoed = std::fs::read(&output).expect("read the output file");
    assert_eq!(echoed.len(), data.len(), "echo length");
    assert_eq!(checksum(&echoed), checksum(&data), "echo checksum");
    assert!(echoed == data, "same checksum, different bytes");

    let (status, printed) = server.terminate();
    assert!(status.success(), "echo_server exited {status}:\n{printed}");
    assert!(
        printed.contains("served 1 connection, 8388608 bytes echoed"),
        "{printed}"
    );
}

/// FNV-1a, 64 bits: enough to tell two files apart in a failure message.
fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs `python3 -c SCRIPT PORT` and returns what it printed.
fn python(script: &str, port: u16) -> String {
    require("python3");
    let out = run_bounded(
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(port.to_string()),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "python3 client failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    out.stdout
}

/// A python3 client: a round trip through echo_server.
#[test]
fn python_round_trip_against_echo_server() {
    let server = Server::start("echo_server");
    let printed = python(
        r#"
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
msg = bytes(range(256)) * 400
s.sendall(msg)
s.shutdown(socket.SHUT_WR)   # the server shuts its side once all is echoed
got = b""
while True:
    d = s.recv(65536)
    if not d:
        break
    got += d
assert got == msg, (len(got), len(msg))
print("echoed", len(got))
"#,
        server.port,
    );
    assert_eq!(printed, "echoed 102400\n");
    let (status, printed) = server.terminate();
    assert!(status.success(), "echo_server exited {status}:\n{printed}");
}

/// A python3 client sends two pipelined requests in two halves, cut in the
/// middle of the first one's headers: two DATA events that are each neither
/// a whole request nor whole requests. Both answers come back, in order, and
/// the connection stays open for a third request that asks to close.
#[test]
fn python_split_pipelined_requests_against_http_hello() {
    let server = Server::start("http_hello");
    let printed = python(
        r#"
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
reqs = b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n"
cut = reqs.index(b"Host") + 2
s.sendall(reqs[:cut])
# The pause only makes separate deliveries likely; the result must not
# depend on it (the server answers nothing before the rest arrives).
time.sleep(0.2)
s.sendall(reqs[cut:])
f = s.makefile("rb")
def response():
    status = f.readline()
    headers = {}
    while True:
        line = f.readline()
        if line in (b"\r\n", b""):
            break
        k, v = line.decode().split(":", 1)
        headers[k.strip().lower()] = v.strip()
    body = f.read(int(headers["content-length"]))
    return status.decode().strip(), headers, body.decode()
for _ in range(2):
    status, headers, body = response()
    assert status == "HTTP/1.1 200 OK", status
    assert "connection" not in headers, headers
    print(status, repr(body))
s.sendall(b"GET /three HTTP/1.1\r\nConnection: close\r\n\r\n")
status, headers, body = response()
assert headers.get("connection") == "close", headers
print(status, repr(body), "close")
assert f.read() == b""   # the server shut its side after the response
"#,
        server.port,
    );
    let ok = "HTTP/1.1 200 OK 'hello from netev\\n'";
    assert_eq!(printed, format!("{ok}\n{ok}\n{ok} close\n"));

    let (status, printed) = server.terminate();
    assert!(status.success(), "http_hello exited {status}:\n{printed}");
    let paths: Vec<&str> = printed.lines().filter(|l| l.contains("GET /")).collect();
    assert_eq!(paths.len(), 3, "{printed}");
    assert!(paths[0].ends_with("GET /one -> 200"), "{printed}");
    assert!(paths[1].ends_with("GET /two -> 200"), "{printed}");
    assert!(paths[2].ends_with("GET /three -> 200 (close)"), "{printed}");
}

/// SIGTERM stops echo_server with exit status 0 within 10 s, even with a
/// client still connected: the client then sees the connection end.
#[test]
fn sigterm_stops_echo_server_cleanly() {
    let server = Server::start("echo_server");
    let mut client = server.connect();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    let start = Instant::now();
    let (status, printed) = server.terminate();
    assert!(
        status.success(),
        "echo_server exited {status} after SIGTERM:\n{printed}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(printed.contains("SIGTERM: stopping"), "{printed}");
    assert!(
        printed.contains("served 1 connection, 4 bytes echoed"),
        "{printed}"
    );
    // runtime_shutdown closed the open connection: EOF (or a reset).
    let mut rest = Vec::new();
    match client.read_to_end(&mut rest) {
        Ok(_) => assert!(rest.is_empty(), "unexpected bytes {rest:?}"),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    let _ = client.shutdown(Shutdown::Both);
}

// ---- UDP (issue 13): udp_echo and statsd_sink ----

/// Whether this machine has an IPv6 loopback (a UDP socket binds ::1).
fn ipv6_loopback() -> bool {
    std::net::UdpSocket::bind("[::1]:0").is_ok()
}

/// A UDP port free on `ip` right now (the kernel's pick, given back at
/// once): for a peer that must send from a port the test knows.
fn free_udp_port(ip: &str) -> u16 {
    let s = std::net::UdpSocket::bind((ip, 0)).expect("bind a UDP socket");
    s.local_addr().expect("local address").port()
}

/// `n` pseudo-random bytes (xorshift), different for each `seed`.
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// udp_echo's last line: what it echoed, from how many senders.
fn udp_echo_totals(datagrams: usize, bytes: usize, senders: usize) -> String {
    format!(
        "echoed {}, {bytes} bytes, from {}; 0 replies dropped, 0 errors",
        plural(datagrams, "datagram", "datagrams"),
        plural(senders, "sender", "senders")
    )
}

/// One socat process as udp_echo's peer: `socat -b 65536 - ADDRESS,bind=BIND`
/// sends each write to its stdin as one datagram (the test writes one,
/// then waits for its echo, so socat reads each whole) from BIND, and writes
/// each datagram that comes back to its stdout. Every echo must come back
/// within 10 s, byte-exact.
fn socat_udp_round_trips(address: &str, bind: &str, sizes: &[usize]) {
    require("socat");
    let peer = format!("{address},bind={bind}");
    let mut child = Guard(
        Command::new("socat")
            // -t 0.5: after the end of stdin, 0.5 s for anything still to
            // come back (everything has by then), then exit.
            .args(["-b", "65536", "-t", "0.5", "-", &peer])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start socat"),
    );
    let mut stdin = child.0.stdin.take().unwrap();
    let mut stdout = child.0.stdout.take().unwrap();
    let mut stderr = child.0.stderr.take().unwrap();
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let reader = thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    for (i, &n) in sizes.iter().enumerate() {
        let msg = random_bytes(n, i as u64 + 1);
        stdin.write_all(&msg).expect("write to socat");
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(chunk) => got.extend(chunk),
                Err(_) => panic!(
                    "{peer}: {} of the {n}-byte datagram's echo came back within 10 s",
                    got.len()
                ),
            }
        }
        assert_eq!(got.len(), n, "{peer}: the echo of a {n}-byte datagram");
        assert!(
            got == msg,
            "{peer}: the echo of a {n}-byte datagram differs"
        );
    }
    drop(stdin);
    let status = child
        .wait_for(Duration::from_secs(10))
        .unwrap_or_else(|| panic!("socat {peer} still ran 10 s after the end of its stdin"));
    reader.join().unwrap();
    let errors = errors.join().unwrap();
    assert!(status.success(), "socat {peer} exited {status}: {errors}");
    assert!(
        rx.try_recv().is_err(),
        "{peer}: more came back than was sent"
    );
}

/// socat over UDP4-DATAGRAM and UDP6-DATAGRAM: datagrams of 1 byte to the
/// largest each family carries, echoed byte-exact by udp_echo; udp_echo names
/// each socat's address and port, and counts exactly what was sent (one
/// datagram per write: none merged or split).
#[test]
fn socat_udp4_and_udp6_against_udp_echo() {
    let server = Server::start("udp_echo");
    let v4_sizes = [1, 2, 100, 1400, 1472, 8192, 65000, 65507];
    let v4_port = free_udp_port("127.0.0.1");
    socat_udp_round_trips(
        &format!("UDP4-DATAGRAM:127.0.0.1:{}", server.port),
        &format!("127.0.0.1:{v4_port}"),
        &v4_sizes,
    );
    let mut datagrams = v4_sizes.len();
    let mut bytes: usize = v4_sizes.iter().sum();
    let mut senders = vec![format!("datagram from 127.0.0.1:{v4_port}")];
    if ipv6_loopback() {
        // 65 527: an IPv6 payload's most, which netev_udp_send takes to an
        // IPv6 literal.
        let v6_sizes = [1, 1232, 1452, 9000, 65527];
        let v6_port = free_udp_port("::1");
        socat_udp_round_trips(
            &format!("UDP6-DATAGRAM:[::1]:{}", server.port),
            &format!("[::1]:{v6_port}"),
            &v6_sizes,
        );
        datagrams += v6_sizes.len();
        bytes += v6_sizes.iter().sum::<usize>();
        senders.push(format!("datagram from [::1]:{v6_port}"));
    } else {
        eprintln!("no IPv6 loopback here: UDP6-DATAGRAM skipped");
    }
    let (status, printed) = server.terminate();
    assert!(status.success(), "udp_echo exited {status}:\n{printed}");
    for line in &senders {
        assert!(
            printed.lines().any(|l| l == line),
            "udp_echo did not print {line:?}:\n{printed}"
        );
    }
    let totals = udp_echo_totals(datagrams, bytes, senders.len());
    assert!(
        printed.contains(&totals),
        "expected {totals:?} in:\n{printed}"
    );
}

/// python3's socket module against udp_echo, over IPv4 and IPv6: datagrams
/// of 0 bytes to each family's most, one at a time and then 32 in flight,
/// each echoed whole and byte-exact from the server's own address and port;
/// udp_echo names python's sockets and counts every datagram.
#[test]
fn python_udp_against_udp_echo() {
    let server = Server::start("udp_echo");
    let printed = python(
        r#"
import os, socket, sys
port = int(sys.argv[1])
families = [(socket.AF_INET, "127.0.0.1", 65507)]
try:
    socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).bind(("::1", 0))
    families.append((socket.AF_INET6, "::1", 65527))
except OSError:
    pass
count = total = 0
for family, ip, biggest in families:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((ip, 0))
    s.settimeout(10)
    server = (ip, port)
    for size in (0, 1, 2, 100, 1400, 1472, 8192, 65000, biggest):
        msg = os.urandom(size)
        s.sendto(msg, server)
        got, sender = s.recvfrom(65536)
        assert got == msg, (ip, size, len(got))
        assert sender[:2] == server, (sender, server)
        count += 1
        total += size
    # 32 at once: each comes back whole (the order is not checked)
    burst = [b"%d:" % i + os.urandom(500) for i in range(32)]
    for m in burst:
        s.sendto(m, server)
    back = set()
    for _ in burst:
        got, sender = s.recvfrom(65536)
        assert sender[:2] == server, (sender, server)
        back.add(got)
    assert back == set(burst)
    count += len(burst)
    total += sum(map(len, burst))
    print("sender", ip, s.getsockname()[1])
print("total", count, total)
"#,
        server.port,
    );
    let mut senders = Vec::new();
    let mut totals = None;
    for line in printed.lines() {
        let words: Vec<&str> = line.split(' ').collect();
        match words[..] {
            ["sender", "::1", port] => senders.push(format!("datagram from [::1]:{port}")),
            ["sender", ip, port] => senders.push(format!("datagram from {ip}:{port}")),
            ["total", n, bytes] => totals = Some((n.parse().unwrap(), bytes.parse().unwrap())),
            _ => panic!("python printed {line:?}"),
        }
    }
    let (datagrams, bytes) = totals.expect("python's totals");
    let (status, output) = server.terminate();
    assert!(status.success(), "udp_echo exited {status}:\n{output}");
    for line in &senders {
        assert!(
            output.lines().any(|l| l == line),
            "udp_echo did not print {line:?}:\n{output}"
        );
    }
    let want = udp_echo_totals(datagrams, bytes, senders.len());
    assert!(output.contains(&want), "expected {want:?} in:\n{output}");
}

/// statsd_sink fed by python3 (1000 lines in one datagram, sampled counters,
/// gauge changes, timers, ten bad lines, an empty datagram) and by socat
/// over IPv4 and IPv6: the final summary's totals are exact.
#[test]
fn statsd_sink_totals_from_python_and_socat() {
    require("socat");
    let server = Server::start_with("statsd_sink", &["--interval", "0.2"]);
    python(
        r#"
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink = ("127.0.0.1", int(sys.argv[1]))
for d in (b"req:1|c\n" * 1000,
          b"req:5|c|@0.25\nload:0.5|g\nload:+0.25|g\nload:-1|g\nlat:12.5|ms\r\nlat:7.5|ms",
          b"bad line\nreq:1|x\nreq:|c\nreq:1\n|c\nlat:-1|ms\nreq:1|c|@0\nreq:1|c|@1.5\nreq:nan|c\nreq:1e999|c\n",
          b""):
    s.sendto(d, sink)
"#,
        server.port,
    );
    let v6 = ipv6_loopback();
    let sends = [
        (
            "req:1|c",
            format!("UDP4-DATAGRAM:127.0.0.1:{}", server.port),
        ),
        (
            "lat:20|ms",
            if v6 {
                format!("UDP6-DATAGRAM:[::1]:{}", server.port)
            } else {
                format!("UDP4-DATAGRAM:127.0.0.1:{}", server.port)
            },
        ),
    ];
    let dir = TempDir::new("statsd");
    for (i, (line, peer)) in sends.iter().enumerate() {
        let input = dir.0.join(format!("line{i}"));
        std::fs::write(&input, line).unwrap();
        let out = run_bounded_with(
            Command::new("socat")
                .args(["-u", "-", peer])
                .stdin(std::fs::File::open(&input).unwrap()),
            Duration::from_secs(30),
        );
        assert!(out.status.success(), "socat {peer} failed: {}", out.stderr);
    }
    // UDP has no end: wait until a summary counted all six datagrams.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .output()
        .lines()
        .any(|l| l.starts_with("summary after ") && l.contains(": 6 datagrams,"))
    {
        assert!(
            Instant::now() < deadline,
            "statsd_sink did not count 6 datagrams within 10 s:\n{}",
            server.output()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let (status, printed) = server.terminate();
    assert!(status.success(), "statsd_sink exited {status}:\n{printed}");
    let at = printed
        .find("final summary after ")
        .unwrap_or_else(|| panic!("no final summary in:\n{printed}"));
    let final_summary: Vec<&str> = printed[at..].lines().collect();
    let head = final_summary[0];
    let head = &head[head.find(" s: ").map_or(0, |i| i + 4)..];
    // req: 1000 + 5 / 0.25 + 1; load: 0.5 + 0.25 - 1; lat: 12.5, 7.5, 20.
    assert_eq!(
        head, "6 datagrams, 1018 lines, 10 bad, 0 dropped, 3 metrics",
        "{printed}"
    );
    assert_eq!(
        final_summary[1..],
        [
            "  timer lat count=3 min=7.5 max=20 mean=13.3333333333333 sum=40",
            "  gauge load -0.25",
            "  counter req 1021",
        ],
        "{printed}"
    );
    assert_eq!(
        printed
            .lines()
            .filter(|l| l.starts_with("bad line from 127.0.0.1 port "))
            .count(),
        10,
        "{printed}"
    );
}
