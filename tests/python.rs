//! Runs the Python binding's pytest suite (bindings/python/tests) against
//! the libnetev.so that `cargo test` built beside this test's executable,
//! with a time limit. scripts/test-deps.sh installs pytest in target/test-venv.

mod support;

use std::process::Command;
use std::time::Duration;
use support::{require_lib, root, run_bounded, test_python as python};

const LIMIT: Duration = Duration::from_secs(300);

#[test]
fn pytest_suite() {
    let lib = require_lib();
    let probe = Command::new(python())
        .args(["-c", "import pytest"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (.ci/run installs python3)", python()));
    assert!(
        probe.status.success(),
        "pytest is not importable by {}: run scripts/test.sh (the README's test \
         command), which installs it in target/test-venv\n{}",
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
    let mut cmd = Command::new(python());
    cmd.args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(binding.join("tests"))
        .env("NETEV_LIB", &lib)
        .env("PYTHONPATH", pythonpath)
        // No __pycache__ or .pytest_cache left in the source tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .current_dir(root());
    print!("{}", run_bounded(&mut cmd, LIMIT).success("pytest", LIMIT));
}
