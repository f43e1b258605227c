//! The API reference: docs/Doxyfile has Doxygen build HTML from
//! include/netev.h and include/netev.hpp, and fail on any warning, so an
//! undocumented public item (function, struct, field, macro, typedef, C++
//! class or member) or a doc comment Doxygen misreads fails this test.
//! The reference is built into target/tmp/api-docs (left there to look
//! at), and its main pages are checked to be there. scripts/test-deps.sh
//! installs doxygen.
//!
//! Doxygen before 1.9.7 does not warn about undocumented enum values:
//! `every_enum_value_is_documented` checks those in the header itself.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{root, run_bounded};

const LIMIT: Duration = Duration::from_secs(120);

/// The page Doxygen wrote for an item, by its file name (Doxygen's
/// scheme: `_` doubled, `::` as `_1_1`).
fn page(html: &Path, file: &str, item: &str) -> String {
    std::fs::read_to_string(html.join(file)).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: Doxygen made no page for {item}",
            html.join(file).display()
        )
    })
}

/// Whether `page`'s summary lists `name`: linked to its detailed entry,
/// or in bold when its doc is one sentence (the brief, shown right there).
fn lists(page: &str, name: &str) -> bool {
    page.contains(&format!("\">{name}</a>")) || page.contains(&format!("<b>{name}</b>"))
}

#[test]
fn reference_builds_without_a_warning() {
    let version = Command::new("doxygen")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run doxygen: {e}: run scripts/test.sh (the README's test command), \
                 which installs it"
            )
        });
    assert!(version.status.success(), "doxygen --version failed");
    println!(
        "doxygen {}",
        String::from_utf8_lossy(&version.stdout).trim()
    );

    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("api-docs");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).expect("create target/tmp/api-docs");
    // docs/Doxyfile as it is, but for where the HTML goes: a later
    // assignment replaces an earlier one.
    let mut config =
        std::fs::read_to_string(root().join("docs/Doxyfile")).expect("read docs/Doxyfile");
    config.push_str(&format!("\nOUTPUT_DIRECTORY = \"{}\"\n", out.display()));
    let config_path = out.join("Doxyfile");
    std::fs::write(&config_path, config).expect("write the test's Doxyfile");

    // INPUT's paths are relative to the repository root.
    let mut cmd = Command::new("doxygen");
    cmd.arg(&config_path).current_dir(root());
    let run = run_bounded(&mut cmd, LIMIT);
    println!("doxygen ran {:?}", run.elapsed);
    // QUIET: anything on stderr is a warning or an error (with
    // WARN_AS_ERROR, Doxygen 1.9 reports warnings as "error:").
    let complaints: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.contains("warning:") || l.contains("error:"))
        .collect();
    assert!(
        complaints.is_empty(),
        "doxygen docs/Doxyfile warns: document every public item (Rust doc \
         comments for netev.h, cbindgen.toml's trailer for its macros, \
         netev.hpp's /// comments), and mind what Doxygen reads as a command \
         (\\x, @x, <tag>, #name, ::name):\n{}",
        complaints.join("\n")
    );
    run.success("doxygen docs/Doxyfile", LIMIT);

    let html = out.join("html");
    let index = page(&html, "index.html", "the main page (docs/mainpage.md)");
    assert!(
        index.contains("netev API reference"),
        "index.html is not docs/mainpage.md"
    );

    let header = page(&html, "netev_8h.html", "netev.h");
    for name in [
        "netev_connection_open",
        "netev_listener_open",
        "netev_udp_open",
        "netev_runtime_shutdown",
        "NETEV_OPTIONS_HAS",
        "netev_connection_stats_get",
    ] {
        assert!(lists(&header, name), "netev.h's page lacks {name}");
    }
    let event = page(&html, "structnetev__event.html", "struct netev_event");
    for field in ["data_len", "os_error", "message"] {
        assert!(event.contains(field), "netev_event's page lacks {field}");
    }

    let connection = page(
        &html,
        "classnetev_1_1Connection.html",
        "class netev::Connection",
    );
    // send_frame() comes from the CRTP base: INLINE_INHERITED_MEMB.
    for name in ["open", "reset", "send_frame", "stats"] {
        assert!(
            lists(&connection, name),
            "netev::Connection's page lacks {name}"
        );
    }
    page(&html, "classnetev_1_1Event.html", "class netev::Event");
    page(&html, "namespacenetev.html", "namespace netev");

    // netev::detail's plumbing stays out (`\cond INTERNAL` in netev.hpp).
    let leaked: Vec<String> = std::fs::read_dir(&html)
        .expect("list the HTML")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("Block") || n.contains("LogState") || n.contains("OwnedBuffer"))
        .collect();
    assert!(
        leaked.is_empty(),
        "netev::detail internals in the reference: {leaked:?}"
    );
}

/// Every enumerator in netev.h comes right after its doc comment (which
/// cbindgen copies from the Rust variant's `///`).
#[test]
fn every_enum_value_is_documented() {
    let header =
        std::fs::read_to_string(root().join("include/netev.h")).expect("read include/netev.h");
    let mut in_enum = false;
    let mut previous = "";
    let mut undocumented = Vec::new();
    let mut seen = 0;
    for line in header.lines().map(str::trim) {
        if line.starts_with("typedef enum ") || line.starts_with("enum ") && line.ends_with('{') {
            in_enum = true;
        } else if in_enum && line.starts_with('}') {
            in_enum = false;
        } else if in_enum && line.starts_with("NETEV_") {
            seen += 1;
            if !previous.ends_with("*/") {
                undocumented.push(line.to_owned());
            }
        }
        previous = line;
    }
    assert!(seen > 20, "parsed too few enum values ({seen})");
    assert!(
        undocumented.is_empty(),
        "enum values without a doc comment (give the Rust variant a ///): {undocumented:?}"
    );
}
