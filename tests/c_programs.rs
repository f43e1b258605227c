//! Builds each C test program under tests/c against include/netev.h and
//! libnetev.so, exactly as a host would, and runs it in its own process
//! with a time limit. A program passes when it exits 0.

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

fn compile(name: &str) -> PathBuf {
    let lib = lib_dir();
    assert!(
        lib.join("libnetev.so").exists(),
        "{} is missing: cargo test builds it with the library",
        lib.join("libnetev.so").display()
    );
    let out_dir = lib.join("..").join("c-tests");
    std::fs::create_dir_all(&out_dir).expect("create c-tests dir");
    let exe = out_dir.join(name);
    let src = root().join("tests/c").join(format!("{name}.c"));
    let output = Command::new(std::env::var("CC").unwrap_or_else(|_| "gcc".into()))
        .args([
            "-std=c11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-g",
            "-O1",
            "-pthread",
        ])
        .arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("tests/c"))
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lnetev")
        .output()
        .expect("run the C compiler");
    assert!(
        output.status.success(),
        "compiling {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// Compiles and runs tests/c/<name>.c; fails on a non-zero exit or after `limit`.
pub fn run_c(name: &str, limit: Duration) -> String {
    let exe = compile(name);
    // cargo's LD_LIBRARY_PATH also names target/<profile>, where a stale
    // libnetev.so from an earlier `cargo build` may sit and would win over
    // the program's rpath: point it at this build's library only.
    let mut child = Command::new(&exe)
        .env("LD_LIBRARY_PATH", lib_dir())
        .current_dir(lib_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the C test");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("poll the C test") {
            break Some(s);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child
        .wait_with_output()
        .expect("collect the C test's output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    match status {
        None => panic!("{name} ran past {limit:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"),
        Some(s) if !s.success() => {
            panic!("{name} failed ({s})\nstdout:\n{stdout}\nstderr:\n{stderr}")
        }
        Some(_) => stdout,
    }
}

macro_rules! c_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_c(stringify!($name), Duration::from_secs(120));
            }
        )*
    };
}

c_tests!(
    smoke,
    // the core: events, data, errors, bad input, re-entry, log
    event_sequence,
    echo_bulk,
    connect_errors,
    bad_input,
    reentry,
    log_lines,
    // dispatch, flow control, END rules, shutdown, timeouts
    dispatcher,
    send_backpressure,
    receive_backpressure,
    end_half_open,
    runtime_shutdown,
    idle_timeout,
    concurrent_senders,
    // listeners
    listener_basic,
    listener_many_clients,
    listener_reject,
    listener_terminate,
    listener_reuse_port,
    listener_ipv6,
    listener_ownership,
    listener_dispatcher,
    listener_accept_errors,
);

/// Struct sizes and field offsets seen by a C compiler equal Rust's.
#[test]
fn layout() {
    use netev::connection::netev_connection_options as O;
    use netev::error::netev_error_info as I;
    use netev::event::netev_event as E;
    use netev::runtime::netev_runtime_options as R;
    use std::mem::{offset_of, size_of};
    let out = run_c("layout", Duration::from_secs(60));
    let want = [
        ("size netev_event", size_of::<E>()),
        ("offset netev_event.type", offset_of!(E, r#type)),
        ("offset netev_event.connection", offset_of!(E, connection)),
        ("offset netev_event.data", offset_of!(E, data)),
        ("offset netev_event.data_len", offset_of!(E, data_len)),
        ("offset netev_event.ip", offset_of!(E, ip)),
        ("offset netev_event.port", offset_of!(E, port)),
        ("offset netev_event.error", offset_of!(E, error)),
        ("offset netev_event.os_error", offset_of!(E, os_error)),
        ("offset netev_event.message", offset_of!(E, message)),
        ("size netev_connection_options", size_of::<O>()),
        ("offset netev_connection_options.size", offset_of!(O, size)),
        (
            "offset netev_connection_options.on_connection",
            offset_of!(O, on_connection),
        ),
        (
            "offset netev_connection_options.on_end",
            offset_of!(O, on_end),
        ),
        (
            "offset netev_connection_options.user_data",
            offset_of!(O, user_data),
        ),
        (
            "offset netev_connection_options.user_data_free",
            offset_of!(O, user_data_free),
        ),
        (
            "offset netev_connection_options.no_delay",
            offset_of!(O, no_delay),
        ),
        (
            "offset netev_connection_options.allow_half_open",
            offset_of!(O, allow_half_open),
        ),
        (
            "offset netev_connection_options.keepalive",
            offset_of!(O, keepalive),
        ),
        (
            "offset netev_connection_options.idle_timeout",
            offset_of!(O, idle_timeout),
        ),
        (
            "offset netev_connection_options.connection_timeout",
            offset_of!(O, connection_timeout),
        ),
        (
            "offset netev_connection_options.send_buffer_limit",
            offset_of!(O, send_buffer_limit),
        ),
        (
            "offset netev_connection_options.dispatcher",
            offset_of!(O, dispatcher),
        ),
        ("size netev_error_info", size_of::<I>()),
        ("offset netev_error_info.code", offset_of!(I, code)),
        ("offset netev_error_info.os_error", offset_of!(I, os_error)),
        ("offset netev_error_info.message", offset_of!(I, message)),
        (
            "offset netev_error_info.component",
            offset_of!(I, component),
        ),
        ("size netev_runtime_options", size_of::<R>()),
        ("offset netev_runtime_options.size", offset_of!(R, size)),
        (
            "offset netev_runtime_options.worker_threads",
            offset_of!(R, worker_threads),
        ),
        ("size netev_status", size_of::<netev::error::netev_status>()),
        (
            "size netev_event_type",
            size_of::<netev::event::netev_event_type>(),
        ),
    ];
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), want.len(), "C printed:\n{out}");
    for ((name, value), line) in want.iter().zip(&got) {
        assert_eq!(*line, format!("{name} {value}"), "C and Rust disagree");
    }
}
