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
//! Most programs are built against include/netev.h. The `abi_released_*`
//! tests build programs against the header as released at the start of
//! this ABI (tests/abi/netev-<ABI>.h, ABI as in the SONAME: 0.2 for
//! 0.2.x), as a host compiled then would be, and run them on the current
//! library: what compiled against that header must keep working, with its
//! smaller structs, for as long as the SONAME stays.
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
    Mode, SANITIZE_FLAGS, abi_version, lib_dir, mode, program_command, require_lib, root,
    run_bounded, time_factor,
};

/// How a program is linked against netev.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Link {
    /// `-lnetev`, as a host would.
    Shared,
    /// Not linked: the program loads the library with dlopen/dlsym.
    Dlopen,
}

/// Which netev.h a program is built against.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Header {
    /// include/netev.h, generated from today's sources.
    Current,
    /// tests/abi/netev-<ABI>.h: the header released at the start of the
    /// ABI this library's SONAME names.
    Released,
}

/// A directory holding the released header as `netev.h`, for `-I`.
fn released_include_dir(out_dir: &std::path::Path) -> PathBuf {
    let abi = abi_version();
    let header = root().join(format!("tests/abi/netev-{abi}.h"));
    let text = std::fs::read(&header).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: no header was kept for ABI {abi}; a new SONAME starts a new ABI: \
             run scripts/abi-baseline.sh and commit tests/abi/",
            header.display()
        )
    });
    let dir = out_dir.join(format!("released-{abi}-include"));
    std::fs::create_dir_all(&dir).expect("create the released header's dir");
    let dst = dir.join("netev.h");
    // Written only when it differs: parallel tests may read it meanwhile.
    if std::fs::read(&dst).ok().as_deref() != Some(&text[..]) {
        let tmp = dir.join(format!("netev.h.{}", std::process::id()));
        std::fs::write(&tmp, &text).expect("write the released header");
        std::fs::rename(&tmp, &dst).expect("move the released header in place");
    }
    dir
}

fn compile(name: &str, link: Link, header: Header) -> PathBuf {
    require_lib();
    let lib = lib_dir();
    let dir = match mode() {
        Mode::Asan => "c-tests-asan",
        _ => "c-tests",
    };
    let out_dir = lib.join("..").join(dir);
    std::fs::create_dir_all(&out_dir).expect("create c-tests dir");
    let (include, exe) = match header {
        Header::Current => (root().join("include"), out_dir.join(name)),
        Header::Released => (
            released_include_dir(&out_dir),
            out_dir.join(format!("released-{}-{name}", abi_version())),
        ),
    };
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
    if header == Header::Released {
        // For what a program may only assume of the library's own header.
        cmd.arg("-DNETEV_TEST_RELEASED_HEADER=1");
    }
    cmd.arg("-I")
        .arg(&include)
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
    header: Header,
    /// The program uses the TLS test certificates (NETEV_TLS_DIR).
    tls_certs: bool,
}

const DEFAULT_RUN: Run = Run {
    link: Link::Shared,
    no_leak_check: false,
    header: Header::Current,
    tls_certs: false,
};

/// The certificates the TLS tests use, made once per test process by
/// tests/c/tls_certs.sh with the openssl command (a CA, a server
/// certificate for localhost and 127.0.0.1, one for another name, an
/// expired one, a self-signed one, client certificates), in a directory of
/// its own: made aside and renamed into place, so parallel runs never see
/// half of it.
fn tls_certs_dir() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let base = lib_dir().join("..").join("tls-certs");
        std::fs::create_dir_all(&base).expect("create the certificates' dir");
        let dir = base.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let tmp = base.join(format!("tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let out = Command::new("sh")
            .arg(root().join("tests/c/tls_certs.sh"))
            .arg(&tmp)
            .output()
            .expect("run tests/c/tls_certs.sh (needs the openssl command)");
        assert!(
            out.status.success(),
            "tests/c/tls_certs.sh failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::rename(&tmp, &dir).expect("move the certificates in place");
        dir
    })
    .clone()
}

/// Built against the released header, linked as a host would be.
const RELEASED_RUN: Run = Run {
    header: Header::Released,
    ..DEFAULT_RUN
};

/// Compiles and runs tests/c/<name>.c; fails on a non-zero exit or after `limit`.
pub fn run_c(name: &str, limit: Duration) -> String {
    run_c_with(name, limit, DEFAULT_RUN)
}

fn run_c_with(name: &str, limit: Duration, run: Run) -> String {
    let exe = compile(name, run.link, run.header);
    let limit = limit * time_factor();
    let mut cmd = program_command(&exe, !run.no_leak_check);
    if mode() != Mode::Valgrind
        && let Ok(scale) = std::env::var("NETEV_TEST_SCALE")
    {
        cmd.env("NETEV_TEST_SCALE", scale);
    }
    cmd.env("NETEV_LIB_PATH", lib_dir().join("libnetev.so"));
    if run.tls_certs {
        cmd.env("NETEV_TLS_DIR", tls_certs_dir());
    }
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
    exit_handler_calls,
    // promises under adversarial use: memory bounded whatever the pattern,
    // callbacks (the log callback included) calling back in, misuse from
    // netev's own threads, close/wait/shutdown keeping their word
    mem_send_streaming,
    mem_slow_reader,
    mem_trickle_dispatcher,
    mem_tiny_frames_dispatcher,
    log_callback_reentry,
    dispatcher_release_in_callback,
    dispatcher_wake_rules,
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
    // connection additions (issue 12): flow control, addresses, counters,
    // zero-copy sends, framing, binding, racing connects
    conn_pause,
    conn_local_stats_owned,
    conn_framing,
    // needs the debug library's NETEV_TEST_HOSTS seam (cargo test builds it)
    conn_eyeballs,
    // UDP (issue 13)
    udp_basic,
    udp_dispatcher,
    // opt-in length: NETEV_SOAK_SECONDS=60 (the CI default is 6 s)
    soak,
);

/// TLS (rustls): programs that use the certificates tests/c/tls_certs.sh
/// makes, and the openssl command as a peer nobody here wrote.
macro_rules! tls_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_c_with(
                    stringify!($name),
                    Duration::from_secs(120),
                    Run {
                        tls_certs: true,
                        ..DEFAULT_RUN
                    },
                );
            }
        )*
    };
}

tls_tests!(
    tls_basic,
    tls_failures,
    tls_interop,
    tls_bad_input,
    tls_backpressure,
    tls_framing,
);

/// Programs built against the released header (see the top of this file),
/// run on the current library: the core, listeners, dispatch, bad input,
/// the size rules and the guard page. A program that uses something the
/// released header lacks no longer applies: take it off this list.
macro_rules! released_header_tests {
    ($($test:ident => $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $test() {
                run_c_with(stringify!($name), Duration::from_secs(120), RELEASED_RUN);
            }
        )*
    };
}

released_header_tests!(
    abi_released_smoke => smoke,
    abi_released_event_sequence => event_sequence,
    abi_released_echo_bulk => echo_bulk,
    abi_released_connect_errors => connect_errors,
    abi_released_bad_input => bad_input,
    abi_released_reentry => reentry,
    abi_released_dispatcher => dispatcher,
    abi_released_send_backpressure => send_backpressure,
    abi_released_end_half_open => end_half_open,
    abi_released_runtime_shutdown => runtime_shutdown,
    abi_released_listener_basic => listener_basic,
    abi_released_listener_reject => listener_reject,
    abi_released_listener_terminate => listener_terminate,
    abi_released_listener_dispatcher => listener_dispatcher,
    abi_released_review_findings => review_findings,
    abi_released_abi_sizes => abi_sizes,
    abi_released_abi_guard_page => abi_guard_page,
);

/// The dlopen host built against the released header: it looks up the
/// `_sized` initialisers by name and passes its own struct sizes.
#[test]
fn abi_released_hygiene_dlopen() {
    run_c_with(
        "hygiene_dlopen",
        Duration::from_secs(120),
        Run {
            link: Link::Dlopen,
            ..RELEASED_RUN
        },
    );
}

/// dlopen → use → netev_runtime_shutdown → dlclose, five times: the
/// program is not linked with netev and finds it through NETEV_LIB_PATH.
#[test]
fn hygiene_dlopen() {
    run_c_with(
        "hygiene_dlopen",
        Duration::from_secs(120),
        Run {
            link: Link::Dlopen,
            ..DEFAULT_RUN
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
            no_leak_check: true,
            ..DEFAULT_RUN
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

/// Every public struct's size and every field's offset, as Rust lays them
/// out, in the order tests/c/layout.c prints them: ("size S", n) and
/// ("offset S.f", n) lines.
fn rust_layout() -> Vec<(String, usize)> {
    use netev::connection::netev_connection_options as O;
    use netev::error::netev_error_info as I;
    use netev::event::netev_event as E;
    use netev::listener::netev_listener_options as L;
    use netev::runtime::netev_runtime_options as R;
    use std::mem::{offset_of, size_of};
    macro_rules! layout {
        ($($t:ident as $name:literal { $($f:ident),* $(,)? })*) => {{
            let mut v = Vec::new();
            $(
                v.push((format!("size {}", $name), size_of::<$t>()));
                $(v.push((
                    format!("offset {}.{}", $name, stringify!($f).trim_start_matches("r#")),
                    offset_of!($t, $f),
                ));)*
            )*
            v
        }};
    }
    let mut v = layout! {
        E as "netev_event" {
            r#type, connection, data, data_len, ip, port, error, os_error, message,
        }
        O as "netev_connection_options" {
            size, on_connection, on_data, on_shutdown, on_error, on_terminate, on_drain,
            on_end, user_data, user_data_free, no_delay, allow_half_open, keepalive,
            idle_timeout, connection_timeout, send_buffer_limit, dispatcher,
            bind_address, bind_port, framing, length_prefix_bytes, delimiter, delimiter_len,
            max_frame, tls, server_name,
        }
        L as "netev_listener_options" {
            size, on_connection, on_error, on_terminate, user_data, bind_address, backlog,
            reuse_port, connection_defaults, dispatcher,
        }
        I as "netev_error_info" { code, os_error, message, component }
        R as "netev_runtime_options" { size, worker_threads }
    };
    v.push((
        "size netev_status".into(),
        size_of::<netev::error::netev_status>(),
    ));
    v.push((
        "size netev_event_type".into(),
        size_of::<netev::event::netev_event_type>(),
    ));
    use netev::tls::netev_tls_options as T;
    v.extend(layout! {
        T as "netev_tls_options" {
            size, ca_file, ca_pem, cert_file, cert_pem, key_file, key_pem, alpn,
            insecure_skip_verify, require_client_cert, tls13_only,
        }
    });
    v
}

/// Struct sizes and field offsets seen by a C compiler equal Rust's.
#[test]
fn layout() {
    let out = run_c("layout", Duration::from_secs(60));
    let want = rust_layout();
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), want.len(), "C printed:\n{out}");
    for ((name, value), line) in want.iter().zip(&got) {
        assert_eq!(*line, format!("{name} {value}"), "C and Rust disagree");
    }
}

/// The structs as the header released at the start of this ABI lays them
/// out (tests/abi/netev-<ABI>.h), against today's: fields were only ever
/// appended. Every field the old header has is at the same offset; every
/// struct is at least as large; every field added since lies at or past
/// the old struct's end (never in its trailing padding, which an old host
/// may leave as garbage); and the structs the library writes into a
/// host's memory (netev_error_info) and the enums keep their size.
#[test]
fn abi_released_layout() {
    let out = run_c_with("layout", Duration::from_secs(60), RELEASED_RUN);
    let old: std::collections::HashMap<&str, usize> = out
        .lines()
        .filter_map(|l| {
            let (name, n) = l.rsplit_once(' ')?;
            Some((name, n.parse().ok()?))
        })
        .collect();
    let now = rust_layout();
    let mut problems = Vec::new();
    for (name, value) in &now {
        let strukt = name
            .split_once(' ')
            .map_or("", |(_, s)| s.split('.').next().unwrap_or(s));
        let old_size = old.get(format!("size {strukt}").as_str()).copied();
        match (old.get(name.as_str()), name.starts_with("size ")) {
            (Some(&was), true) => {
                let fixed = matches!(
                    strukt,
                    "netev_error_info" | "netev_status" | "netev_event_type"
                );
                if *value < was || (fixed && *value != was) {
                    problems.push(format!("{name}: {was} in the released header, {value} now"));
                }
            }
            (Some(&was), false) if was != *value => {
                problems.push(format!("{name}: {was} in the released header, {value} now"))
            }
            (Some(_), false) => {}
            (None, true) => {} // a struct added since
            (None, false) => match old_size {
                Some(end) if *value < end => problems.push(format!(
                    "{name} is {value}, inside the released struct (size {end}): \
                     fields are only appended"
                )),
                _ => {}
            },
        }
    }
    for name in old.keys() {
        if !now.iter().any(|(n, _)| n == name) {
            problems.push(format!("{name} is in the released header and gone now"));
        }
    }
    assert!(
        problems.is_empty(),
        "layout changes that are not appends (a new SONAME, tests/abi/ for it):\n{}\n\
         the released header's layout:\n{out}",
        problems.join("\n")
    );
}
