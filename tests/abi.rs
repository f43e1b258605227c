//! The library's ABI against the one released at the start of its SONAME.
//!
//! tests/abi/libnetev-<ABI>.abi is `abidw`'s description of libnetev.so as
//! released (scripts/abi-baseline.sh wrote it; ABI as in the SONAME, 0.2
//! for 0.2.x). `abidiff --leaf-changes-only --no-added-syms` compares it
//! with the library `cargo test` built now, and this test fails on every
//! change it reports but one: an options struct
//! (netev_{connection,listener,runtime,tls,udp}_options) that grew by
//! fields appended past its old end, which the header's "Versions" rules
//! make compatible. Added functions are compatible too (not reported).
//! Removed functions, changed signatures, a field inserted, moved, resized,
//! retyped or removed, any other struct grown (netev_error_info is written
//! into a host's memory): each needs a new SONAME, and a new baseline.
//!
//! The append rule is applied here, on abidiff's report, rather than with
//! a suppression file: libabigail 2.2's `has_data_member_inserted_at = end`
//! also hides a field that moved with nothing inserted (the check below of
//! a moved field caught it). An unknown line in the report fails the test.
//!
//! abidw on a Rust cdylib sees every crate's types; the baseline keeps
//! only the exported `netev_` functions (the rest are dropped by a
//! suppression when it is written) and the types they reach, which is
//! what abidiff compares.
//!
//! So that a passing run means something, the test also edits copies of
//! the baseline: one whose netev_connection_options has a field at another
//! offset must fail, one whose netev_error_info is smaller must fail, one
//! whose netev_connection_options lacks its last field (an older version,
//! so today's looks appended) must pass.
//!
//! `.ci/run` installs abidiff (Debian's abigail-tools) when missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::{abi_version, require_lib, root, run_bounded};

const LIMIT: Duration = Duration::from_secs(120);

fn baseline() -> PathBuf {
    let abi = abi_version();
    let path = root().join(format!("tests/abi/libnetev-{abi}.abi"));
    assert!(
        path.is_file(),
        "{} is missing: no ABI baseline was kept for ABI {abi} (a new SONAME starts a new \
         ABI: run scripts/abi-baseline.sh at its release and commit tests/abi/)",
        path.display()
    );
    path
}

/// abidiff's exit status and leaf report for `old` (a baseline) against
/// `lib`.
fn abidiff(old: &Path, lib: &Path) -> (i32, String) {
    let mut cmd = Command::new("abidiff");
    cmd.args(["--no-added-syms", "--leaf-changes-only"])
        .arg(old)
        .arg(lib);
    let done = run_bounded(&mut cmd, LIMIT);
    let Some(status) = done.status else {
        panic!(
            "abidiff ran past {LIMIT:?}:\n{}{}",
            done.stdout, done.stderr
        );
    };
    // 1: an error of abidiff's own, 2: a usage error; 4: an ABI change, 8:
    // an incompatible one (with 4).
    let code = status.code().unwrap_or(-1);
    assert!(
        code >= 0 && code & 3 == 0,
        "abidiff could not compare ({status}): is abigail-tools installed? (.ci/run \
         installs it)\n{}{}",
        done.stdout,
        done.stderr
    );
    (code, format!("{}{}", done.stdout, done.stderr))
}

/// An options struct, which may grow by appended fields.
fn is_options_struct(name: &str) -> bool {
    let Some(name) = name.strip_prefix("struct ") else {
        return false;
    };
    let last = name.rsplit("::").next().unwrap_or(name);
    ["connection", "listener", "runtime", "tls", "udp"]
        .iter()
        .any(|k| last == format!("netev_{k}_options"))
}

/// "... from A to B (in bits)" -> (A, B); "..., at offset O (in bits)" -> O.
fn bits_after(line: &str, word: &str) -> Option<u64> {
    let rest = &line[line.find(word)? + word.len()..];
    rest.trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// What abidiff's leaf report (exit `code`) holds beyond what the append
/// rule allows; empty when the library is compatible with the baseline.
fn incompatible(code: i32, report: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if code & 8 != 0 {
        problems.push("abidiff calls the change incompatible (exit bit 8)".to_string());
    }
    // The summaries: nothing removed or changed.
    for line in report.lines().filter(|l| l.contains("summary:")) {
        if line.starts_with("Removed/Changed/Added")
            && !(line.contains(" 0 Removed,") && line.contains(" 0 Changed,"))
        {
            problems.push(line.to_string());
        }
    }
    // The changed leaf types: "'struct X' changed:" and indented lines.
    let mut lines = report.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim().is_empty() || line.contains("summary:") {
            continue;
        }
        let Some(name) = line
            .strip_prefix('\'')
            .and_then(|l| l.strip_suffix("' changed:"))
        else {
            problems.push(format!("unexpected in the report: {line}"));
            continue;
        };
        let mut body = Vec::new();
        while let Some(next) = lines.next_if(|l| l.starts_with(' ')) {
            body.push(next.trim());
        }
        let mut ok = is_options_struct(name);
        let mut old_size = None;
        let mut in_insertions = false;
        for b in &body {
            if b.starts_with("type size changed from") {
                let (from, to) = (bits_after(b, "from"), bits_after(b, " to "));
                ok &= matches!((from, to), (Some(f), Some(t)) if t >= f);
                old_size = from;
                in_insertions = false;
            } else if b.ends_with("data member insertion:")
                || b.ends_with("data member insertions:")
            {
                in_insertions = true;
            } else if in_insertions && b.starts_with('\'') && b.contains(", at offset ") {
                let at = bits_after(b, "at offset");
                ok &= matches!((at, old_size), (Some(o), Some(s)) if o >= s);
            } else {
                ok = false;
            }
        }
        ok &= old_size.is_some();
        if !ok {
            problems.push(format!("{line}\n    {}", body.join("\n    ")));
        }
    }
    problems
}

#[test]
fn abi_matches_the_released_baseline() {
    let lib = require_lib();
    let old = baseline();
    let (code, report) = abidiff(&old, &lib);
    let problems = incompatible(code, &report);
    assert!(
        problems.is_empty(),
        "libnetev.so's ABI changed since {} in a way hosts compiled against it would \
         break on (abidiff exit {code}); only added functions and fields appended to \
         options structs are compatible. Either undo the change, or make it a new \
         SONAME (bump the version's ABI number, CHANGELOG.md, scripts/abi-baseline.sh). \
         (If the only differences are in how a newer rustc describes the same types, \
         check that abi_released_layout passes and say so when refreshing the \
         baseline.)\n{}\n\nabidiff's report:\n{report}",
        old.display(),
        problems.join("\n")
    );
}

/// The spans of every `<class-decl name='NAME' ...>...</class-decl>` in the
/// XML (the struct appears once per translation unit that uses it).
fn struct_spans(xml: &str, name: &str) -> Vec<(usize, usize)> {
    let open = format!("<class-decl name='{name}' ");
    let mut spans = Vec::new();
    let mut from = 0;
    while let Some(at) = xml[from..].find(&open) {
        let start = from + at;
        let end = start
            + xml[start..]
                .find("</class-decl>")
                .expect("a class-decl ends")
            + "</class-decl>".len();
        spans.push((start, end));
        from = end;
    }
    spans
}

/// Applies `edit` to every description of the struct `name` in the
/// baseline.
fn edit_struct(xml: &str, name: &str, edit: impl Fn(&str) -> String) -> String {
    let spans = struct_spans(xml, name);
    assert!(!spans.is_empty(), "the baseline does not describe {name}");
    let mut out = String::with_capacity(xml.len());
    let mut last = 0;
    for (start, end) in spans {
        out.push_str(&xml[last..start]);
        out.push_str(&edit(&xml[start..end]));
        last = end;
    }
    out.push_str(&xml[last..]);
    out
}

/// The `<data-member ...>` element holding the field `field`, in a struct's
/// XML: its span.
fn member_span(decl: &str, field: &str) -> (usize, usize) {
    let var = decl
        .find(&format!("<var-decl name='{field}' "))
        .unwrap_or_else(|| panic!("no field {field} in:\n{decl}"));
    let start = decl[..var].rfind("<data-member ").expect("its data-member");
    let end = var + decl[var..].find("</data-member>").expect("its end") + "</data-member>".len();
    (start, end)
}

/// Sets the struct's `size-in-bits` to `f(old)`.
fn resize(decl: &str, f: impl Fn(u64) -> u64) -> String {
    let at = decl.find("size-in-bits='").expect("a size") + 14;
    let len = decl[at..].find('\'').expect("its end");
    let bits: u64 = decl[at..at + len].parse().expect("a number");
    format!("{}{}{}", &decl[..at], f(bits), &decl[at + len..])
}

/// abidiff of an edited copy of the baseline against the library: the
/// problems the append rule finds, and the report.
fn check_edited(name: &str, xml: String) -> (Vec<String>, String) {
    let lib = require_lib();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).expect("create the tmp dir");
    let path = dir.join(format!("abi-{name}-{}.abi", std::process::id()));
    std::fs::write(&path, xml).expect("write the edited baseline");
    let (code, report) = abidiff(&path, &lib);
    let _ = std::fs::remove_file(&path);
    (incompatible(code, &report), report)
}

/// The check itself: it fails on a moved field and on a grown output
/// struct, and passes an appended field.
#[test]
fn abi_check_fails_on_a_moved_field_and_passes_an_appended_one() {
    let xml = std::fs::read_to_string(baseline()).expect("read the baseline");

    // `no_delay` 64 bits on in the baseline: today's is not where hosts
    // put it.
    let moved = edit_struct(&xml, "netev_connection_options", |decl| {
        let (start, end) = member_span(decl, "no_delay");
        let member = &decl[start..end];
        let at = member.find("layout-offset-in-bits='").expect("an offset") + 23;
        let len = member[at..].find('\'').expect("its end");
        let bits: u64 = member[at..at + len].parse().expect("a number");
        let member = format!("{}{}{}", &member[..at], bits + 64, &member[at + len..]);
        format!("{}{member}{}", &decl[..start], &decl[end..])
    });
    let (problems, report) = check_edited("moved", moved);
    assert!(
        problems.iter().any(|p| p.contains("no_delay")),
        "a moved netev_connection_options.no_delay passed:\n{report}"
    );

    // netev_error_info 64 bits smaller in the baseline: today's grew, and
    // error_at would write past a host's struct.
    let grown = edit_struct(&xml, "netev_error_info", |decl| resize(decl, |b| b - 64));
    let (problems, report) = check_edited("grown", grown);
    assert!(
        problems.iter().any(|p| p.contains("netev_error_info")),
        "a grown netev_error_info passed:\n{report}"
    );

    // netev_connection_options without its last field and 64 bits smaller:
    // an older version, so today's has a field appended, which is
    // compatible.
    let older = edit_struct(&xml, "netev_connection_options", |decl| {
        let (start, end) = member_span(decl, "dispatcher");
        resize(&format!("{}{}", &decl[..start], &decl[end..]), |b| b - 64)
    });
    let (problems, report) = check_edited("older", older);
    assert!(
        problems.is_empty() && report.contains("'u64 dispatcher', at offset"),
        "a field appended to netev_connection_options was refused: {problems:?}\n{report}"
    );
}
