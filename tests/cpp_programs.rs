//! Builds each C++ test program under tests/cpp against include/netev.hpp
//! and the libnetev.so that `cargo test` built, with
//! `c++ -std=c++17 -Wall -Wextra -Werror -pedantic -pthread`, and runs it in
//! its own process with a time limit. A program passes when it exits 0.
//!
//! As for tests/c_programs.rs, `NETEV_C_TEST_MODE=asan` builds them with
//! `-fsanitize=address,undefined` (any report or leak fails) and
//! `NETEV_C_TEST_MODE=valgrind` runs them under `valgrind --leak-check=full`.
//! `CXX` picks the compiler (default `c++`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// target/<profile>/deps: where `cargo test` builds libnetev.so beside
/// this test's own executable.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().map(Path::to_path_buf).expect("deps directory")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Plain,
    Asan,
    Valgrind,
}

fn mode() -> Mode {
    match std::env::var("NETEV_C_TEST_MODE").as_deref() {
        Err(_) | Ok("") | Ok("plain") => Mode::Plain,
        Ok("asan") => Mode::Asan,
        Ok("valgrind") => Mode::Valgrind,
        Ok(other) => panic!("NETEV_C_TEST_MODE={other}: expected plain, asan or valgrind"),
    }
}

/// How much slower than plain a mode runs: stretches the time limit.
fn time_factor() -> u32 {
    match mode() {
        Mode::Plain => 1,
        Mode::Asan => 3,
        Mode::Valgrind => 10,
    }
}

fn compile(name: &str) -> PathBuf {
    let lib = lib_dir();
    assert!(
        lib.join("libnetev.so").exists(),
        "{} is missing: cargo test builds it with the library",
        lib.join("libnetev.so").display()
    );
    let out_dir = lib.join("..").join(match mode() {
        Mode::Asan => "cpp-tests-asan",
        _ => "cpp-tests",
    });
    std::fs::create_dir_all(&out_dir).expect("create cpp-tests dir");
    let exe = out_dir.join(name);
    let src = root().join("tests/cpp").join(format!("{name}.cpp"));
    let mut cmd = Command::new(std::env::var("CXX").unwrap_or_else(|_| "c++".into()));
    cmd.args([
        "-std=c++17",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-pthread",
        "-g",
        "-O1",
    ]);
    if mode() == Mode::Asan {
        cmd.args([
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer",
        ]);
    }
    cmd.arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("tests/cpp"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lnetev");
    let output = cmd.output().expect("run the C++ compiler");
    assert!(
        output.status.success(),
        "compiling {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// Compiles and runs tests/cpp/<name>.cpp; fails on a non-zero exit or
/// after `limit`. Returns its stdout.
fn run_cpp(name: &str, limit: Duration) -> String {
    let exe = compile(name);
    let limit = limit * time_factor();
    let mut cmd = match mode() {
        Mode::Valgrind => {
            let mut c = Command::new("valgrind");
            c.args([
                "-q",
                "--error-exitcode=99",
                "--leak-check=full",
                "--show-leak-kinds=definite,indirect,possible",
                "--errors-for-leak-kinds=definite,indirect,possible",
            ]);
            c.arg(&exe);
            c
        }
        _ => Command::new(&exe),
    };
    if mode() == Mode::Asan {
        cmd.env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=98",
        )
        .env(
            "UBSAN_OPTIONS",
            "print_stacktrace=1:halt_on_error=1:exitcode=97",
        )
        .env("LSAN_OPTIONS", "exitcode=96");
    }
    // cargo's LD_LIBRARY_PATH also names target/<profile>, where a stale
    // libnetev.so from an earlier `cargo build` may sit and would win over
    // the program's rpath: point it at this build's library only.
    let mut child = cmd
        .env("LD_LIBRARY_PATH", lib_dir())
        .current_dir(lib_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the C++ test");
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
        if let Some(s) = child.try_wait().expect("poll the C++ test") {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out_reader.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err_reader.join().unwrap_or_default()).into_owned();
    match status {
        None => panic!("{name} ran past {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        Some(s) if !s.success() => {
            panic!("{name} failed ({s})\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
        Some(_) => {
            assert!(
                stdout.ends_with("ok\n"),
                "{name} exited 0 without finishing:\nstdout:\n{stdout}\nstderr:\n{stderr}"
            );
            stdout
        }
    }
}

macro_rules! cpp_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_cpp(stringify!($name), Duration::from_secs(120));
            }
        )*
    };
}

cpp_tests!(connection_test, listener_test, dispatcher_test);
