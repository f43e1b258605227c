//! Smoke test of the benchmark suite (benches/): builds every echo server
//! and the load generator, and runs `benches/run.sh --quick` — each server
//! through each mode for a fraction of a second, every echoed byte (and, in
//! the UDP modes, every echoed datagram) checked.
//! No timed assertions: it only checks that the programs build, that every
//! run succeeds and that the tables are printed.
//!
//! It uses the libnetev.so that `cargo test` just built and the tokio_echo
//! and tls_loadgen examples from the same build (cargo test builds
//! examples), so it never starts a nested cargo on the build directory it
//! runs from. The TLS modes need the openssl command (for the certificates).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn benchmark_suite_quick_run() {
    let libuv = Command::new("pkg-config")
        .args(["--exists", "libuv"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        libuv,
        "libuv was not found by pkg-config: the benchmark suite needs libuv1-dev and pkg-config \
         (.ci/run installs them; by hand: apt-get install libuv1-dev pkg-config)"
    );

    // target/<profile>/deps holds this test and the libnetev.so built with it;
    // the examples are in target/<profile>/examples.
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("deps directory").to_path_buf();
    assert!(
        deps.join("libnetev.so").exists(),
        "{} is missing: cargo test builds it with the library",
        deps.join("libnetev.so").display()
    );
    let mut examples = deps.parent().expect("profile directory").join("examples");
    if !examples.join("tokio_echo").exists() || !examples.join("tls_loadgen").exists() {
        // `cargo test --test benches_smoke` builds no examples: build them in
        // a target directory of its own (the outer cargo holds this one).
        let target = root().join("target").join("benches-smoke-cargo");
        let st = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "--example",
                "tokio_echo",
                "--example",
                "tls_loadgen",
                "--target-dir",
            ])
            .arg(&target)
            .current_dir(root())
            .status()
            .expect("run cargo");
        assert!(
            st.success(),
            "cargo build --example tokio_echo --example tls_loadgen failed"
        );
        examples = target.join("debug").join("examples");
    }

    let build_dir = root().join("target").join("benches-smoke");
    let start = Instant::now();
    let child = Command::new(root().join("benches").join("run.sh"))
        .arg("--quick")
        .arg("--lib-dir")
        .arg(&deps)
        .arg("--tokio-bin")
        .arg(examples.join("tokio_echo"))
        .arg("--tls-loadgen-bin")
        .arg(examples.join("tls_loadgen"))
        .arg("--build-dir")
        .arg(&build_dir)
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start benches/run.sh");
    // A watchdog: the quick run takes about 25 s.
    let limit = Duration::from_secs(300);
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(200));
            // SAFETY: kill with signal 0 only probes whether our child lives.
            if unsafe { libc::kill(pid as i32, 0) } != 0 {
                return false;
            }
        }
        // SAFETY: our own child, by pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        true
    });
    let out = child.wait_with_output().expect("wait for benches/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let killed = watchdog.join().unwrap_or(false);
    assert!(
        !killed,
        "benches/run.sh --quick did not finish within {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(
        out.status.success(),
        "benches/run.sh --quick failed ({}) after {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status,
        start.elapsed()
    );
    for heading in [
        "### ping-pong",
        "### bulk: 1 connection",
        "### bulk: 8 connections",
        "### connect",
        "### idle",
    ] {
        assert!(
            stdout.contains(heading),
            "no {heading:?} table in:\n{stdout}"
        );
    }
    for server in [
        "| netev ",
        "| netev-dispatcher ",
        "| libuv ",
        "| epoll ",
        "| tokio ",
    ] {
        assert!(stdout.contains(server), "no {server:?} row in:\n{stdout}");
    }
    // Each TLS table has its rows for netev and for the tokio-rustls floor
    // (the plain tables above have a netev row too, so look inside each).
    for heading in [
        "### TLS bulk: 1 connection",
        "### TLS bulk: 8 connections",
        "### TLS handshakes",
    ] {
        let at = stdout
            .find(heading)
            .unwrap_or_else(|| panic!("no {heading:?} table in:\n{stdout}"));
        let table = &stdout[at..];
        let table = &table[..table[4..].find("\n###").map_or(table.len(), |e| e + 4)];
        for server in ["| netev ", "| tokio-rustls "] {
            assert!(
                table.contains(server),
                "no {server:?} row in the {heading:?} table:\n{table}"
            );
        }
    }
    // UDP (issue 13): a table per datagram size, each with a row for every
    // UDP server (raw: the recvmmsg/sendmmsg floor), and the targets.
    for heading in [
        "### UDP echo: 64-byte datagrams",
        "### UDP echo: 1400-byte datagrams",
    ] {
        let at = stdout
            .find(heading)
            .unwrap_or_else(|| panic!("no {heading:?} table in:\n{stdout}"));
        let table = &stdout[at..];
        let table = &table[..table[4..].find("\n###").map_or(table.len(), |e| e + 4)];
        for server in ["| netev ", "| netev-dispatcher ", "| libuv ", "| raw "] {
            assert!(
                table.contains(server),
                "no {server:?} row in the {heading:?} table:\n{table}"
            );
        }
        assert!(
            table.contains("server CPU µs/datagram") && table.contains("| lost |"),
            "the {heading:?} table lacks its columns:\n{table}"
        );
    }
    for target in [
        "netev CPU µs/datagram (udp64) ≤ libuv",
        "netev CPU µs/datagram (udp1400) ≤ 1.3 × raw",
    ] {
        assert!(
            stdout.contains(target),
            "no target {target:?} in:\n{stdout}"
        );
    }
    // Framing: netev framed against netev echoing the same stream unframed.
    let at = stdout
        .find("### framing")
        .unwrap_or_else(|| panic!("no framing table in:\n{stdout}"));
    for server in ["| netev ", "| netev-framed "] {
        assert!(
            stdout[at..].contains(server),
            "no {server:?} row in the framing table"
        );
    }
}
