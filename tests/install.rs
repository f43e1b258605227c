//! scripts/install.sh puts netev into a prefix that C builds find the usual
//! ways. This test installs into a fresh prefix under target/tmp, then builds
//! tests/install/hello.c (a listener on 127.0.0.1, a client echoing a
//! message through it) against that prefix only, and runs it:
//! - with `cc $(pkg-config --cflags --libs netev)` and an rpath;
//! - with `pkg-config`'s libdir and libnetev.a, statically;
//! - with CMake, `find_package(netev MAJOR.MINOR)` and `netev::netev`, and
//!   `netev::netev_static` (tests/install/cmake); `find_package(netev
//!   0.1)`, an older ABI, does not find it;
//! - with CMake again, from a tree staged with DESTDIR, whose netev.pc names
//!   a prefix that does not exist: the CMake package finds itself wherever
//!   it sits.
//!
//! It also checks the layout, the SONAME of the installed library
//! (`libnetev.so.0.2` for 0.2.x: the ABI version, by Cargo's rule, 0.MINOR
//! before 1.0), and that the shared programs record it as NEEDED while the
//! static one needs no libnetev at all.
//!
//! The script runs cargo itself, with its own target directory
//! (target/install), so it never waits for the lock this `cargo test` holds
//! on target/debug. Every child process has a time limit.

mod support;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::Scratch;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The ABI version the SONAME names: the major from 1.0.0 on, 0.MINOR
/// before (Cargo's rule for what is compatible).
fn abi_version() -> String {
    let mut parts = VERSION.split('.');
    let major = parts.next().expect("a major version");
    let minor = parts.next().expect("a minor version");
    match major {
        "0" => format!("0.{minor}"),
        _ => major.to_string(),
    }
}

/// MAJOR.MINOR of the crate, what tests/install/cmake asks for.
fn major_minor() -> String {
    VERSION.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

/// Runs `cmd` in its own process group, capturing its output; kills the
/// whole group (cargo and rustc under the script, say) after `limit`.
/// Panics on a non-zero exit or a timeout; returns stdout.
fn run(what: &str, cmd: Command, limit: Duration) -> String {
    let desc = format!("{cmd:?}");
    let (status, stdout, stderr) = run_status(what, cmd, limit);
    match status {
        None => panic!("{what} ran past {limit:?}: {desc}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        Some(s) if !s.success() => {
            panic!("{what} failed ({s}): {desc}\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
        Some(_) => stdout,
    }
}

/// As `run`, but returns how it ended (None: killed at `limit`), its
/// stdout and its stderr.
fn run_status(
    what: &str,
    mut cmd: Command,
    limit: Duration,
) -> (Option<std::process::ExitStatus>, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // The test harness's LD_LIBRARY_PATH names target/debug/deps, whose
        // libnetev.so is not the installed one: the programs must find
        // theirs through their rpath alone.
        .env_remove("LD_LIBRARY_PATH")
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start {cmd:?}: {e}"));
    let mut out_pipe = child.stdout.take().expect("stdout pipe");
    let mut err_pipe = child.stderr.take().expect("stderr pipe");
    let out_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut out_pipe, &mut v).ok();
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut err_pipe, &mut v).ok();
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("poll a child") {
            break Some(s);
        }
        if start.elapsed() > limit {
            // SAFETY: kill(2) on the group this child leads; no memory involved.
            unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    if std::env::var_os("NETEV_INSTALL_TEST_TIMES").is_some() {
        eprintln!("{what}: {:.1}s", start.elapsed().as_secs_f64());
    }
    (status, stdout, stderr)
}

/// Fails early, and says why, when a tool the test drives is missing.
fn require_tools() {
    let mut missing = Vec::new();
    for (tool, arg) in [
        ("cmake", "--version"),
        ("pkg-config", "--version"),
        ("readelf", "--version"),
        ("make", "--version"),
    ] {
        let ok = Command::new(tool)
            .arg(arg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            missing.push(tool);
        }
    }
    assert!(
        missing.is_empty(),
        "tests/install.rs needs {}: .ci/run installs them (apt-get install cmake pkg-config binutils make)",
        missing.join(", ")
    );
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".into())
}

/// Runs scripts/install.sh PREFIX, with DESTDIR when given.
fn install(prefix: &Path, destdir: Option<&Path>) -> String {
    let mut cmd = Command::new("bash");
    cmd.arg(root().join("scripts/install.sh")).arg(prefix);
    // The crates are already here (this test was built from them): never
    // let the inner cargo wait on the network.
    cmd.env("CARGO_NET_OFFLINE", "true");
    match destdir {
        Some(d) => cmd.env("DESTDIR", d),
        None => cmd.env_remove("DESTDIR"),
    };
    // A cold release build; a warm one takes about a second.
    run("scripts/install.sh", cmd, Duration::from_secs(900))
}

/// `readelf -d` of a file: its dynamic section.
fn dynamic_section(file: &Path) -> String {
    let mut cmd = Command::new("readelf");
    cmd.arg("-d").arg(file);
    run("readelf -d", cmd, Duration::from_secs(30))
}

/// The names a program or library records as NEEDED.
fn needed(file: &Path) -> Vec<String> {
    dynamic_section(file)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split('[').nth(1)?.trim_end_matches(']').to_string()))
        .collect()
}

/// Runs a built hello program and checks it printed the echo.
fn run_hello(what: &str, exe: &Path) {
    let out = run(what, Command::new(exe), Duration::from_secs(60));
    assert!(
        out.contains(&format!("netev {VERSION}\n"))
            && out.contains("echo: hello from an installed netev\n"),
        "{what} printed:\n{out}"
    );
}

fn pkg_config(prefix: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("pkg-config");
    cmd.args(args)
        .arg("netev")
        .env("PKG_CONFIG_PATH", prefix.join("lib/pkgconfig"));
    run("pkg-config", cmd, Duration::from_secs(30))
        .trim()
        .to_string()
}

/// Configures and builds tests/install/cmake against `prefix`; returns the
/// build directory (with `app` and `app_static`).
fn cmake_build(prefix: &Path, build: &Path) -> PathBuf {
    let mut cmd = Command::new("cmake");
    cmd.arg("-S")
        .arg(root().join("tests/install/cmake"))
        .arg("-B")
        .arg(build)
        .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
        .arg(format!("-DNETEV_FIND_VERSION={}", major_minor()));
    let out = run("cmake configure", cmd, Duration::from_secs(120));
    let found = format!(
        "netev {VERSION} found in {}",
        prefix.join("lib/cmake/netev").display()
    );
    assert!(
        out.contains(&found),
        "find_package(netev) did not use the installed package ({found}):\n{out}"
    );
    let mut cmd = Command::new("cmake");
    cmd.arg("--build").arg(build);
    run("cmake --build", cmd, Duration::from_secs(180));
    build.to_path_buf()
}

#[test]
fn install_then_build_with_pkg_config_and_cmake() {
    require_tools();
    let scratch = Scratch::new(Path::new(env!("CARGO_TARGET_TMPDIR")), "install-test");
    let prefix = scratch.0.join("prefix");
    let soname = format!("libnetev.so.{}", abi_version());
    let realname = format!("libnetev.so.{VERSION}");

    install(&prefix, None);

    // The layout.
    let lib = prefix.join("lib");
    for file in [
        lib.join(&realname),
        lib.join("libnetev.a"),
        prefix.join("include/netev.h"),
        lib.join("pkgconfig/netev.pc"),
        lib.join("cmake/netev/netevConfig.cmake"),
        lib.join("cmake/netev/netevConfigVersion.cmake"),
    ] {
        assert!(file.is_file(), "{} is not installed", file.display());
    }
    if root().join("include/netev.hpp").exists() {
        assert!(prefix.join("include/netev.hpp").is_file());
    }
    for (link, to) in [
        (soname.as_str(), realname.as_str()),
        ("libnetev.so", &soname),
    ] {
        let target = std::fs::read_link(lib.join(link))
            .unwrap_or_else(|e| panic!("{} is not a symlink: {e}", lib.join(link).display()));
        assert_eq!(target, Path::new(to), "{link} points elsewhere");
    }
    let header = std::fs::read(root().join("include/netev.h")).expect("read include/netev.h");
    let installed = std::fs::read(prefix.join("include/netev.h")).expect("read installed netev.h");
    assert!(
        header == installed,
        "the installed netev.h differs from include/netev.h"
    );

    // (d) The SONAME names the ABI version.
    let dynamic = dynamic_section(&lib.join(&realname));
    assert!(
        dynamic.contains(&format!("Library soname: [{soname}]")),
        "the installed library's SONAME is not {soname}:\n{dynamic}"
    );

    // (a) pkg-config, shared, with an rpath to the prefix.
    assert_eq!(pkg_config(&prefix, &["--modversion"]), VERSION);
    let static_libs = pkg_config(&prefix, &["--static", "--libs"]);
    for flag in ["-lnetev", "-lpthread", "-ldl", "-lm"] {
        assert!(
            static_libs.split_whitespace().any(|f| f == flag),
            "pkg-config --static --libs netev lacks {flag}: {static_libs}"
        );
    }
    // As the README shows: pkg-config's flags, an rpath to its libdir.
    let flags = pkg_config(&prefix, &["--cflags", "--libs"]);
    let libdir = pkg_config(&prefix, &["--variable=libdir"]);
    assert_eq!(Path::new(&libdir), lib, "pkg-config's libdir");
    let pc_build = scratch.0.join("pkg-config-build");
    std::fs::create_dir_all(&pc_build).expect("create the pkg-config build dir");
    let hello_c = root().join("tests/install/hello.c");
    let hello = pc_build.join("hello");
    let mut cmd = Command::new(cc());
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(&hello_c)
        .arg("-o")
        .arg(&hello)
        .args(flags.split_whitespace())
        .arg(format!("-Wl,-rpath,{libdir}"));
    run("cc with pkg-config", cmd, Duration::from_secs(120));
    assert_eq!(
        needed(&hello)
            .iter()
            .filter(|n| n.starts_with("libnetev"))
            .collect::<Vec<_>>(),
        [&soname],
        "the pkg-config program's NEEDED"
    );
    run_hello("hello (pkg-config, shared)", &hello);

    // (c) pkg-config's libdir, statically, as the README shows.
    let hello_static = pc_build.join("hello_static");
    let mut cmd = Command::new(cc());
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"])
        .arg(&hello_c)
        .arg("-o")
        .arg(&hello_static)
        .args(pkg_config(&prefix, &["--cflags"]).split_whitespace())
        .arg(format!("{libdir}/libnetev.a"))
        .args(["-lpthread", "-ldl", "-lm"]);
    run("cc with libnetev.a", cmd, Duration::from_secs(120));
    let n = needed(&hello_static);
    assert!(
        !n.iter().any(|n| n.starts_with("libnetev")),
        "the static program needs {n:?}"
    );
    run_hello("hello (pkg-config, static)", &hello_static);

    // (b) and (c) CMake: find_package(netev MAJOR.MINOR), netev::netev and
    // netev::netev_static.
    let build = cmake_build(&prefix, &scratch.0.join("cmake-build"));
    // An older ABI asked for is not found: 0.1's programs need libnetev.so.0.
    if VERSION.starts_with("0.2.") {
        let mut cmd = Command::new("cmake");
        cmd.arg("-S")
            .arg(root().join("tests/install/cmake"))
            .arg("-B")
            .arg(scratch.0.join("cmake-build-0.1"))
            .arg(format!("-DCMAKE_PREFIX_PATH={}", prefix.display()))
            .arg("-DNETEV_FIND_VERSION=0.1");
        let (status, stdout, stderr) =
            run_status("cmake configure (0.1)", cmd, Duration::from_secs(120));
        let words = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            status.is_some_and(|s| !s.success())
                && words.contains("compatible with requested version \"0.1\"")
                && words.contains(&format!("version: {VERSION}")),
            "find_package(netev 0.1) must not find netev {VERSION}, of another ABI \
             ({status:?}):\n{stdout}\n{stderr}"
        );
    }
    assert_eq!(
        needed(&build.join("app"))
            .iter()
            .filter(|n| n.starts_with("libnetev"))
            .collect::<Vec<_>>(),
        [&soname],
        "the CMake program's NEEDED"
    );
    run_hello("app (CMake, netev::netev)", &build.join("app"));
    let n = needed(&build.join("app_static"));
    assert!(
        !n.iter().any(|n| n.starts_with("libnetev")),
        "the CMake static program needs {n:?}"
    );
    run_hello(
        "app_static (CMake, netev::netev_static)",
        &build.join("app_static"),
    );

    // DESTDIR stages the tree; netev.pc names the final prefix, and the
    // CMake package, moved, still finds its files.
    let stage = scratch.0.join("stage");
    let final_prefix = Path::new("/opt/netev-install-test");
    install(final_prefix, Some(&stage));
    let staged = stage.join(final_prefix.strip_prefix("/").expect("absolute"));
    let pc = std::fs::read_to_string(staged.join("lib/pkgconfig/netev.pc")).expect("staged .pc");
    assert!(
        pc.lines()
            .any(|l| l == format!("prefix={}", final_prefix.display())),
        "the staged netev.pc does not name {}:\n{pc}",
        final_prefix.display()
    );
    assert!(
        !final_prefix.exists(),
        "DESTDIR install wrote to {}",
        final_prefix.display()
    );
    let build = cmake_build(&staged, &scratch.0.join("cmake-build-staged"));
    run_hello("app (CMake, staged tree)", &build.join("app"));
}
