//! Runs the Python binding's pytest suite (bindings/python/tests) against
//! the libnetev.so that `cargo test` built beside this test's executable,
//! with a time limit. `.ci/run` installs pytest when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(300);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>/deps: where `cargo test` builds libnetev.so beside
/// this test's own executable.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().map(Path::to_path_buf).expect("deps directory")
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".into())
}

#[test]
fn pytest_suite() {
    let lib = lib_dir().join("libnetev.so");
    assert!(
        lib.exists(),
        "{} is missing: cargo test builds it with the library",
        lib.display()
    );
    let probe = Command::new(python())
        .args(["-c", "import pytest"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (.ci/run installs python3)", python()));
    assert!(
        probe.status.success(),
        "pytest is not importable by {}: run .ci/run, which installs it, or \
         `python3 -m pip install pytest`\n{}",
        python(),
        String::from_utf8_lossy(&probe.stderr)
    );

    let binding = root().join("bindings/python");
    let pythonpath = match std::env::var_os("PYTHONPATH") {
        Some(old) if !old.is_empty() => {
            let mut paths = vec![binding.clone()];
            paths.extend(std::env::split_paths(&old));
            std::env::join_paths(paths).expect("PYTHONPATH")
        }
        _ => binding.clone().into_os_string(),
    };
    let mut child = Command::new(python())
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(binding.join("tests"))
        .env("NETEV_LIB", &lib)
        .env("PYTHONPATH", pythonpath)
        // No __pycache__ or .pytest_cache left in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(root())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pytest");
    // Drain the pipes while it runs, so a chatty failure cannot block it.
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
        if let Some(s) = child.try_wait().expect("poll pytest") {
            break Some(s);
        }
        if start.elapsed() > LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    match status {
        None => panic!("pytest ran past {LIMIT:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        Some(s) if !s.success() => {
            panic!("pytest failed ({s})\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
        Some(_) => print!("{stdout}"),
    }
}
