//! Builds each C++ test program under tests/cpp against include/netev.hpp
//! and the libnetev.so that `cargo test` built, with
//! `c++ -std=c++17 -Wall -Wextra -Werror -pedantic -pthread`, and runs it in
//! its own process with a time limit. A program passes when it exits 0.
//!
//! As for tests/c_programs.rs, `NETEV_C_TEST_MODE=asan` builds them with
//! `-fsanitize=address,undefined` (any report or leak fails) and
//! `NETEV_C_TEST_MODE=valgrind` runs them under `valgrind --leak-check=full`.
//! `CXX` picks the compiler (default `c++`).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use support::{
    Mode, SANITIZE_FLAGS, lib_dir, mode, program_command, require_lib, root, run_bounded,
    time_factor,
};

fn compile(name: &str) -> PathBuf {
    require_lib();
    let lib = lib_dir();
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
        cmd.args(SANITIZE_FLAGS);
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
    let mut cmd = program_command(&exe, true);
    // tls_test makes its certificates with it (the openssl command).
    cmd.env(
        "NETEV_TLS_CERTS_SCRIPT",
        root().join("tests/c/tls_certs.sh"),
    );
    let stdout = run_bounded(&mut cmd, limit).success(name, limit);
    assert!(
        stdout.ends_with("ok\n"),
        "{name} exited 0 without finishing:\n{stdout}"
    );
    stdout
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

cpp_tests!(
    connection_test,
    listener_test,
    dispatcher_test,
    tls_test,
    additions_test,
    udp_test,
    log_test,
    exit_test,
);
