//! What the test programs' runners share: where this build's libnetev.so
//! is, the instrumentation mode, and running a child with a time limit.
//! Each test crate uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>/deps: where `cargo test` builds libnetev.so beside
/// the test's own executable.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().map(Path::to_path_buf).expect("deps directory")
}

/// Fails with a clear message when the library under test is missing.
pub fn require_lib() -> PathBuf {
    let lib = lib_dir().join("libnetev.so");
    assert!(
        lib.exists(),
        "{} is missing: cargo test builds it with the library",
        lib.display()
    );
    lib
}

/// The ABI version the SONAME names (`libnetev.so.<ABI>`): the major from
/// 1.0.0 on, 0.MINOR before (Cargo's rule of what is compatible), as
/// scripts/install.sh and build.rs derive it.
pub fn abi_version() -> String {
    let mut parts = env!("CARGO_PKG_VERSION").split('.');
    match (parts.next(), parts.next()) {
        (Some("0"), Some(minor)) => format!("0.{minor}"),
        (Some(major), _) => major.to_string(),
        (None, _) => panic!("CARGO_PKG_VERSION is empty"),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Mode {
    Plain,
    Asan,
    Valgrind,
}

/// `NETEV_C_TEST_MODE`: plain (default), asan or valgrind.
pub fn mode() -> Mode {
    match std::env::var("NETEV_C_TEST_MODE").as_deref() {
        Err(_) | Ok("") | Ok("plain") => Mode::Plain,
        Ok("asan") => Mode::Asan,
        Ok("valgrind") => Mode::Valgrind,
        Ok(other) => panic!("NETEV_C_TEST_MODE={other}: expected plain, asan or valgrind"),
    }
}

/// How much slower than plain a mode runs: stretches every time limit.
pub fn time_factor() -> u32 {
    match mode() {
        Mode::Plain => 1,
        Mode::Asan => 3,
        Mode::Valgrind => 10,
    }
}

/// Compiler flags of the asan mode.
pub const SANITIZE_FLAGS: [&str; 3] = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
];

/// The command that runs a test program in the current mode: under
/// valgrind (leaks as errors unless `leak_check` is false), or directly
/// with the sanitizers' options set; in every mode against this build's
/// library only (cargo's LD_LIBRARY_PATH also names target/<profile>, where
/// a stale libnetev.so may sit and would win over the program's rpath).
pub fn program_command(exe: &Path, leak_check: bool) -> Command {
    let mut cmd = match mode() {
        Mode::Valgrind => {
            let mut c = Command::new("valgrind");
            // A forked child (hygiene_fork, load_10k) inherits the parent's
            // heap without the threads that own it: its leak report would
            // be noise. It is judged by its exit status instead.
            c.args([
                "-q",
                "--error-exitcode=99",
                "--trace-children=no",
                "--child-silent-after-fork=yes",
            ]);
            // ring's AES-GCM tag, which memcheck cannot follow (see the file).
            c.arg(format!(
                "--suppressions={}",
                root().join("tests/valgrind.supp").display()
            ));
            if leak_check {
                c.args([
                    "--leak-check=full",
                    "--show-leak-kinds=definite,indirect,possible",
                    "--errors-for-leak-kinds=definite,indirect,possible",
                ]);
            } else {
                c.arg("--leak-check=no");
            }
            c.arg(exe);
            c.env("NETEV_TEST_SCALE", "small");
            c.env("NETEV_TEST_VALGRIND", "1");
            c
        }
        _ => Command::new(exe),
    };
    if mode() == Mode::Asan {
        let leaks = u8::from(leak_check);
        cmd.env(
            "ASAN_OPTIONS",
            format!(
                "detect_leaks={leaks}:abort_on_error=0:exitcode=98:allocator_may_return_null=1"
            ),
        )
        .env(
            "UBSAN_OPTIONS",
            "print_stacktrace=1:halt_on_error=1:exitcode=97",
        )
        .env("LSAN_OPTIONS", "exitcode=96");
    }
    cmd.env("LD_LIBRARY_PATH", lib_dir())
        .env("NETEV_TEST_TIME_FACTOR", time_factor().to_string())
        .current_dir(lib_dir());
    cmd
}

/// A child's end: None when it ran past its limit and was killed.
pub struct Finished {
    pub status: Option<ExitStatus>,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// Its stdout, or a panic that shows everything when it failed.
    pub fn success(self, name: &str, limit: Duration) -> String {
        let (stdout, stderr) = (&self.stdout, &self.stderr);
        match self.status {
            None => panic!("{name} ran past {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
            Some(s) if !s.success() => {
                panic!("{name} failed ({s})\nstdout:\n{stdout}\nstderr:\n{stderr}")
            }
            Some(_) => self.stdout,
        }
    }
}

/// Runs `cmd` to its end or `limit`, whichever comes first. Its output is
/// drained while it runs, so a chatty child (valgrind, a sanitizer report)
/// never blocks on a full pipe.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Finished {
    run_bounded_as(cmd, limit, false)
}

/// As `run_bounded`, for a child that starts others (pip, which runs cargo,
/// which runs rustc): it leads a process group, and the limit kills the
/// whole group, so nothing outlives the test or holds its pipes open.
pub fn run_bounded_group(cmd: &mut Command, limit: Duration) -> Finished {
    std::os::unix::process::CommandExt::process_group(cmd, 0);
    run_bounded_as(cmd, limit, true)
}

fn run_bounded_as(cmd: &mut Command, limit: Duration, group: bool) -> Finished {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the test program");
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
        if let Some(s) = child.try_wait().expect("poll the test program") {
            break Some(s);
        }
        if start.elapsed() > limit {
            if group {
                // SAFETY: kill(2) on the group this child leads; no memory involved.
                unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
            } else {
                let _ = child.kill();
            }
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let elapsed = start.elapsed();
    Finished {
        status,
        elapsed,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned(),
    }
}

/// Removes from `cmd`'s environment what cargo sets for a test and a shell
/// does not have, for a command that runs cargo again (`make -C
/// examples-c` builds the release library): the nested build would see
/// those variables as a change (ring's build script reads
/// CARGO_MANIFEST_DIR and OUT_DIR), rebuild the library, and the next build
/// from a shell would rebuild it once more.
pub fn as_from_a_shell(cmd: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || matches!(
                &*name,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "CARGO_RUSTC_CURRENT_DIR"
                    | "OUT_DIR"
            )
        {
            cmd.env_remove(&*name);
        }
    }
    cmd
}

/// `PYTHON` if set; else the virtual environment scripts/test-deps.sh
/// makes (with pytest in it) when it exists; else python3.
pub fn test_python() -> String {
    if let Ok(p) = std::env::var("PYTHON") {
        return p;
    }
    let venv = root().join("target/test-venv/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    "python3".into()
}

/// A fresh directory `<parent>/<prefix>-<pid>-<nanos>`, removed with
/// everything in it when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(parent: &Path, prefix: &str) -> Scratch {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
