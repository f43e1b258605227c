//! The Python package as a user gets it, used from outside the repository:
//! - `pip wheel ./bindings/python` makes a `py3-none-linux_<arch>` wheel with
//!   netev/__init__.py and netev/libnetev.so in it. NETEV_PREBUILT_LIB names
//!   the libnetev.so `cargo test` built for this test, so this build runs no
//!   cargo, and the packaged library must be that very file;
//! - `pip install ./bindings/python` (the README's form) runs cargo, with
//!   this test's target directory as CARGO_TARGET_DIR (an incremental
//!   release build when target/release is warm); the packaged library must
//!   be the target/release/libnetev.so that cargo built.
//!
//! Each lands in a fresh virtual environment, where a script run from a
//! temporary directory, without NETEV_LIB, PYTHONPATH or LD_LIBRARY_PATH,
//! imports netev from that environment, checks that the packaged library is
//! the one loaded, and echoes 1 MiB through a Listener. The source tree is
//! left as it was found: pip builds in it, and setup.py sends setuptools'
//! build/ and egg-info elsewhere.
//!
//! pip builds with build isolation, fetching setuptools from PyPI, as any
//! user's `pip install` does: that is the newest setuptools, where moves and
//! deprecations (bdist_wheel into setuptools in 70.1, say) break builds
//! first, not the older one in target/test-venv. scripts/test-deps.sh needs
//! PyPI too. Every child has a time limit, all of them 600 s together.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{
    Scratch, as_from_a_shell, require_lib, root, run_bounded_group, test_python as python,
};

const LIMIT: Duration = Duration::from_secs(600);

/// The target directory this test was built in, whatever CARGO_TARGET_DIR
/// or `--target` made it: target/tmp's parent.
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR has a parent")
        .to_path_buf()
}

/// A directory under the system's temporary directory, outside the
/// repository, removed when dropped.
fn scratch() -> Scratch {
    let mut scratch = Scratch::new(&std::env::temp_dir(), "netev-wheel-test");
    scratch.0 = scratch
        .0
        .canonicalize()
        .expect("canonical scratch directory");
    assert!(
        !scratch
            .0
            .starts_with(root().canonicalize().expect("canonical root")),
        "{} is inside the repository: point TMPDIR elsewhere",
        scratch.0.display()
    );
    scratch
}

struct Budget(Instant);

impl Budget {
    fn left(&self) -> Duration {
        LIMIT.saturating_sub(self.0.elapsed())
    }

    /// Runs `cmd` (in `dir`, as from a shell that has neither netev's nor
    /// cargo test's variables) within what is left of the limit; returns
    /// its stdout, or panics with everything it printed.
    fn run(&self, what: &str, cmd: &mut Command, dir: &Path) -> String {
        as_from_a_shell(cmd)
            .env_remove("NETEV_LIB")
            .env_remove("PYTHONPATH")
            .env_remove("LD_LIBRARY_PATH")
            .current_dir(dir);
        let left = self.left();
        let done = run_bounded_group(cmd, left);
        println!("{what}: {:.1}s", done.elapsed.as_secs_f64());
        done.success(&format!("{what} (within the test's {LIMIT:?})"), left)
    }
}

/// Imports netev, proves it and its library come from the environment it
/// runs in, and echoes 1 MiB of random bytes through a Listener. Prints
/// `packaged=<path of the loaded libnetev.so>`.
const ECHO_SCRIPT: &str = r#"
import os, sys, threading
import netev

venv = os.path.realpath(sys.prefix)
package = os.path.realpath(os.path.dirname(netev.__file__))
assert package.startswith(venv + os.sep), (netev.__file__, venv)
packaged = os.path.join(package, "libnetev.so")
assert os.path.realpath(netev.lib._name) == packaged, (netev.lib._name, packaged)
with open("/proc/self/maps") as maps:
    mapped = {line.split()[-1] for line in maps if "libnetev" in line}
assert mapped == {packaged}, mapped

LIMIT = 60.0
payload = os.urandom(1 << 20)
echoed = bytearray()
ended = threading.Event()

def on_connection(listener, event):
    return {"on_data": lambda conn, ev: conn.send(ev.data)}

def on_data(conn, event):
    echoed.extend(event.data)

with netev.Listener.open(0, bind_address="127.0.0.1", on_connection=on_connection) as listener:
    with netev.Connection.open(
        "127.0.0.1", listener.port, on_data=on_data, on_terminate=lambda c, e: ended.set()
    ) as conn:
        conn.send(payload)
        # The server closes once its echo is out, after our end.
        conn.shutdown()
        assert ended.wait(LIMIT), f"no TERMINATE within {LIMIT}s ({len(echoed)} bytes back)"
        assert conn.errors == [], conn.errors
assert bytes(echoed) == payload, (len(echoed), len(payload))
netev.shutdown_runtime(10)
print(f"packaged={packaged}")
"#;

/// Makes a fresh virtual environment `name` in `scratch`, lets `install`
/// add netev to it, runs ECHO_SCRIPT with it, and returns the path of the
/// libnetev.so it loaded.
fn install_and_echo(
    budget: &Budget,
    scratch: &Path,
    name: &str,
    install: impl FnOnce(&Path) -> Command,
) -> PathBuf {
    let venv = scratch.join(name);
    budget.run(
        &format!("{name}: python -m venv"),
        Command::new(python()).args(["-m", "venv"]).arg(&venv),
        scratch,
    );
    let venv_python = venv.join("bin/python");
    budget.run(
        &format!("{name}: pip install"),
        &mut install(&venv_python),
        scratch,
    );
    let out = budget.run(
        &format!("{name}: echo script"),
        Command::new(&venv_python).args(["-c", ECHO_SCRIPT]),
        scratch,
    );
    let packaged = out
        .lines()
        .find_map(|l| l.strip_prefix("packaged="))
        .unwrap_or_else(|| panic!("{name}: the script printed no packaged= line:\n{out}"));
    let packaged = PathBuf::from(packaged);
    assert!(
        packaged.starts_with(&venv),
        "{name}: loaded {} from outside {}",
        packaged.display(),
        venv.display()
    );
    packaged
}

fn assert_same_file(what: &str, got: &Path, expected: &Path) {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    assert!(
        read(got) == read(expected),
        "{what}: {} is not a copy of {}",
        got.display(),
        expected.display()
    );
}

/// `git status` of bindings/python, ignored files included (build/ and
/// *.egg-info are ignored, yet a build must not leave them); None without
/// git or outside a work tree.
fn tree_status() -> Option<String> {
    let out = Command::new("git")
        .arg("-C")
        .arg(root())
        .args([
            "status",
            "--porcelain",
            "--ignored",
            "--",
            "bindings/python",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn wheel_and_pip_install_work_outside_the_repository() {
    let budget = Budget(Instant::now());
    let test_lib = require_lib();
    let binding = root().join("bindings/python");
    let scratch = scratch();
    let before = tree_status();
    let probe = Command::new(python())
        .args(["-m", "pip", "--version"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e} (.ci/run installs python3)", python()));
    assert!(
        probe.status.success(),
        "pip is not usable by {}: run scripts/test-deps.sh\n{}",
        python(),
        String::from_utf8_lossy(&probe.stderr)
    );

    // The wheel, from this test's library.
    let wheels = scratch.0.join("wheels");
    budget.run(
        "pip wheel",
        Command::new(python())
            .args(["-m", "pip", "wheel", "--no-deps", "-w"])
            .arg(&wheels)
            .arg(&binding)
            .env("NETEV_PREBUILT_LIB", &test_lib),
        &scratch.0,
    );
    let built: Vec<PathBuf> = std::fs::read_dir(&wheels)
        .expect("the wheel directory")
        .map(|e| e.expect("a wheel directory entry").path())
        .collect();
    assert_eq!(built.len(), 1, "one wheel expected: {built:?}");
    let wheel = &built[0];
    let file_name = wheel.file_name().unwrap().to_string_lossy().into_owned();
    // The package's version is the crate's (pyproject.toml says it again).
    let expected = format!(
        "netev-{}-py3-none-linux_{}.whl",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH
    );
    assert_eq!(file_name, expected, "the wheel's name");
    let listing = budget.run(
        "list the wheel",
        Command::new(python())
            .args([
                "-c",
                "import sys, zipfile; print('\\n'.join(zipfile.ZipFile(sys.argv[1]).namelist()))",
            ])
            .arg(wheel),
        &scratch.0,
    );
    for member in ["netev/__init__.py", "netev/libnetev.so"] {
        assert!(
            listing.lines().any(|l| l == member),
            "{file_name} lacks {member}:\n{listing}"
        );
    }
    let packaged = install_and_echo(&budget, &scratch.0, "venv-wheel", |py| {
        let mut cmd = Command::new(py);
        cmd.args(["-m", "pip", "install", "--no-index", "--no-deps"])
            .arg(wheel);
        cmd
    });
    assert_same_file("the wheel's library", &packaged, &test_lib);

    // The README's form: cargo builds the library into this test's target
    // directory, where the release build of earlier runs is reused.
    let target = target_dir();
    let packaged = install_and_echo(&budget, &scratch.0, "venv-source", |py| {
        let mut cmd = Command::new(py);
        cmd.args(["-m", "pip", "install"])
            .arg(&binding)
            .env("CARGO_TARGET_DIR", &target);
        cmd
    });
    assert_same_file(
        "pip install's library",
        &packaged,
        &target.join("release/libnetev.so"),
    );

    assert_eq!(
        tree_status(),
        before,
        "building the package changed bindings/python (git status --ignored)"
    );
}
