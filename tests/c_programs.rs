//! Builds each C test program under tests/c against include/netev.h and
//! libnetev.so, exactly as a host would, and runs it in its own process
//! with a time limit. A program passes when it exits 0.
//!
//! `NETEV_C_TEST_MODE` picks how the programs are built and run:
//! - `plain` (the default): as above.
//! - `asan`: built with `-fsanitize=address,undefined` (the C side is
//!   instrumented; libnetev itself is not, but every allocation it makes goes
//!   through ASan's malloc, so LeakSanitizer sees its leaks too). Any ASan or
//!   UBSan report, or a leak at exit, fails the program.
//! - `valgrind`: run under `valgrind --leak-check=full` with definite,
//!   indirect and possible leaks counted as errors. "Still reachable" blocks
//!   (process-lifetime statics of the Rust runtime and glibc) are not: netev
//!   promises nothing leaks once `netev_runtime_shutdown` returned, and a
//!   "possible" leak (a pointer into the middle of a block) would be a real
//!   one after shutdown since no netev thread is left to own it.
//!
//! Under valgrind the programs see `NETEV_TEST_SCALE=small` (heavy tests run
//! a smaller version) and `NETEV_TEST_VALGRIND=1`; every mode but plain gets `NETEV_TEST_TIME_FACTOR`
//! (the watchdog and the harness limit stretch by it). `NETEV_LIB_PATH`
//! always names the libnetev.so under test (for the dlopen test).

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use support::{
    Mode, SANITIZE_FLAGS, lib_dir, mode, program_command, require_lib, root, run_bounded,
    time_factor,
};

/// How a program is linked against netev.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    /// `-lnetev`, as a host would.
    Shared,
    /// Not linked: the program loads the library with dlopen/dlsym.
    Dlopen,
}

fn compile(name: &str, link: Link) -> PathBuf {
    require_lib();
    let lib = lib_dir();
    let dir = match mode() {
        Mode::Asan => "c-tests-asan",
        _ => "c-tests",
    };
    let out_dir = lib.join("..").join(dir);
    std::fs::create_dir_all(&out_dir).expect("create c-tests dir");
    let exe = out_dir.join(name);
    let src = root().join("tests/c").join(format!("{name}.c"));
    let mut cmd = Command::new(std::env::var("CC").unwrap_or_else(|_| "gcc".into()));
    cmd.args([
        "-std=c11",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-pedantic",
        "-g",
        "-O1",
        "-pthread",
    ]);
    if mode() == Mode::Asan {
        cmd.args(SANITIZE_FLAGS);
    }
    cmd.arg("-I")
        .arg(root().join("include"))
        .arg("-I")
        .arg(root().join("tests/c"))
        .arg(&src)
        .arg("-o")
        .arg(&exe);
    match link {
        Link::Shared => {
            cmd.arg("-L")
                .arg(&lib)
                .arg(format!("-Wl,-rpath,{}", lib.display()))
                .arg("-lnetev");
        }
        Link::Dlopen => {
            cmd.arg("-ldl");
        }
    }
    let output = cmd.output().expect("run the C compiler");
    assert!(
        output.status.success(),
        "compiling {}:\n{}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    exe
}

/// How one program runs, beyond the mode.
#[derive(Clone, Copy)]
struct Run {
    link: Link,
    /// The program deliberately exits without netev_runtime_shutdown:
    /// leak checking would only report what it chose not to free.
    no_leak_check: bool,
}

const DEFAULT_RUN: Run = Run {
    link: Link::Shared,
    no_leak_check: false,
};

/// Compiles and runs tests/c/<name>.c; fails on a non-zero exit or after `limit`.
pub fn run_c(name: &str, limit: Duration) -> String {
    run_c_with(name, limit, DEFAULT_RUN)
}

fn run_c_with(name: &str, limit: Duration, run: Run) -> String {
    let exe = compile(name, run.link);
    let limit = limit * time_factor();
    let mut cmd = program_command(&exe, !run.no_leak_check);
    if mode() != Mode::Valgrind
        && let Ok(scale) = std::env::var("NETEV_TEST_SCALE")
    {
        cmd.env("NETEV_TEST_SCALE", scale);
    }
    cmd.env("NETEV_LIB_PATH", lib_dir().join("libnetev.so"));
    let done = run_bounded(&mut cmd, limit);
    if std::env::var_os("NETEV_C_TEST_TIMES").is_some() {
        eprintln!("{name}: {:.1}s ({:?})", done.elapsed.as_secs_f64(), mode());
    }
    done.success(name, limit)
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
    listener_bad_options,
    shutdown_pending_accept,
    // reliability: faults, load, fuzzing, process hygiene
    fault_reset,
    fault_half_close_while_sending,
    fault_fd_exhaustion_client,
    fault_backlog_full,
    fault_shutdown_1000,
    load_10k,
    load_1gib,
    fuzz_api,
    hygiene_sigpipe,
    hygiene_fork,
    // promises under adversarial use: memory bounded whatever the pattern,
    // callbacks (the log callback included) calling back in, misuse from
    // netev's own threads, close/wait/shutdown keeping their word
    mem_send_streaming,
    mem_slow_reader,
    mem_trickle_dispatcher,
    log_callback_reentry,
    dispatcher_release_in_callback,
    accept_live_handle,
    io_thread_rules,
    close_after_reset,
    wait_deadline_under_flood,
    shutdown_waits_terminate,
    shutdown_races,
    review_findings,
    // an ABI that can grow: options structs read and written by their size
    abi_sizes,
    abi_guard_page,
    // opt-in length: NETEV_SOAK_SECONDS=60 (the CI default is 6 s)
    soak,
);

/// dlopen → use → netev_runtime_shutdown → dlclose, five times: the
/// program is not linked with netev and finds it through NETEV_LIB_PATH.
#[test]
fn hygiene_dlopen() {
    run_c_with(
        "hygiene_dlopen",
        Duration::from_secs(120),
        Run {
            link: Link::Dlopen,
            no_leak_check: false,
        },
    );
}

/// A host that exits without netev_runtime_shutdown exits 0 promptly. It
/// keeps connections open on purpose, so leak checking is off for it.
#[test]
fn hygiene_atexit() {
    let start = Instant::now();
    let out = run_c_with(
        "hygiene_atexit",
        Duration::from_secs(30),
        Run {
            link: Link::Shared,
            no_leak_check: true,
        },
    );
    assert!(
        out.contains("exiting without netev_runtime_shutdown\natexit handler ran\n"),
        "the program did not reach its own atexit handler:\n{out}"
    );
    let limit = Duration::from_secs(10) * time_factor();
    assert!(
        start.elapsed() < limit,
        "exit took {:?} (limit {limit:?})",
        start.elapsed()
    );
}

/// Only netev_ functions are exported from libnetev.so. `nm -D
/// --defined-only` lists the dynamic symbols the library defines; with
/// Rust's cdylib version script that is the `#[no_mangle]` functions and
/// nothing else (no Rust std, no `rust_eh_personality`, no `_init`/`_fini`
/// entries, which are not dynamic symbols). Nothing besides `netev_`
/// functions is allowed: a data symbol or another name would be a leak of
/// internals into the host's namespace.
#[test]
fn hygiene_symbols() {
    let lib = lib_dir().join("libnetev.so");
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&lib)
        .output()
        .expect("run nm (binutils)");
    assert!(
        out.status.success(),
        "nm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let mut functions = 0;
    let mut bad = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // "<address> <type> <name>"; versioned names look like name@@VERS.
        let mut parts = line.split_whitespace();
        let (Some(_addr), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            bad.push(line.to_string());
            continue;
        };
        let name = name.split('@').next().unwrap_or(name);
        if kind == "T" && name.starts_with("netev_") {
            functions += 1;
        } else {
            bad.push(line.to_string());
        }
    }
    assert!(
        bad.is_empty(),
        "libnetev.so exports more than netev_ functions:\n{}",
        bad.join("\n")
    );
    assert!(
        functions >= 30,
        "only {functions} netev_ functions exported:\n{text}"
    );
}

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
