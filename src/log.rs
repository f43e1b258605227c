//! The lifecycle log: netev's counterpart of 4D's 4DTCPUDPLog.txt.
//!
//! One line per lifecycle event, with a UTC timestamp and the handle, to a
//! file (`netev_log_open`, or the NETEV_LOG_FILE environment variable) and/or
//! to a host callback.

use crate::error::{Error, Result};
use std::cell::Cell;
use std::ffi::{CString, c_char, c_void};
use std::fmt::Arguments;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// Receives each log line (NUL-terminated, no trailing newline), borrowed
/// until the callback returns. May run on any thread, concurrently.
#[allow(non_camel_case_types)]
pub type netev_log_callback =
    Option<unsafe extern "C" fn(line: *const c_char, user_data: *mut c_void)>;

/// Where lines go. A plain std mutex, not a counted one: it is the log's
/// own, never held while calling the host, and its release must not write
/// deferred lines (that would recurse into it).
struct Sink {
    file: Option<File>,
    from_env: bool,
    callback: netev_log_callback,
    user_data: usize,
    /// Bumped by each `set_callback`: calls are counted per generation so a
    /// replacement can wait for the calls of the callbacks it replaced.
    generation: u64,
    /// (generation, calls running now) for each generation with calls running.
    in_flight: Vec<(u64, usize)>,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    from_env: false,
    callback: None,
    user_data: 0,
    generation: 0,
    in_flight: Vec::new(),
});
/// Signalled when a log callback call returns.
static CALL_ENDED: Condvar = Condvar::new();

thread_local! {
    /// Log callbacks running on this thread (nested). A plain counter,
    /// without a destructor: it still works in a thread's exit (atexit
    /// handlers, static destructors), after thread-locals that have one
    /// are gone.
    static CALLING: Cell<u32> = const { Cell::new(0) };
}
/// Checked before any formatting so an unused log costs one load per event.
static ENABLED: AtomicBool = AtomicBool::new(false);

fn sink() -> std::sync::MutexGuard<'static, Sink> {
    SINK.lock().unwrap_or_else(|p| p.into_inner())
}

fn refresh(s: &Sink) {
    ENABLED.store(s.file.is_some() || s.callback.is_some(), Ordering::Release);
}

pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Appends to `path`, creating it; replaces any log file already open.
pub fn open(path: &str) -> Result<()> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(&e, &format!("cannot open log file {path}")))?;
    let mut s = sink();
    s.file = Some(f);
    s.from_env = false;
    refresh(&s);
    Ok(())
}

pub fn close() {
    let mut s = sink();
    s.file = None;
    s.from_env = false;
    refresh(&s);
}

/// Replaces the log callback. When it returns, calls of the callbacks it
/// replaced that run on other threads have returned too, and none starts
/// again; called from inside a log callback it does not wait (two threads
/// doing so would wait for each other).
pub fn set_callback(callback: netev_log_callback, user_data: *mut c_void) {
    let mut s = sink();
    s.callback = callback;
    s.user_data = user_data as usize;
    s.generation += 1;
    let generation = s.generation;
    refresh(&s);
    if CALLING.with(|c| c.get() > 0) {
        return;
    }
    while s.in_flight.iter().any(|(g, _)| *g < generation) {
        s = CALL_ENDED.wait(s).unwrap_or_else(|p| p.into_inner());
    }
}

/// Opens NETEV_LOG_FILE when the runtime starts, unless a log file is open.
pub fn start_from_env() {
    let Some(path) = std::env::var_os("NETEV_LOG_FILE") else {
        return;
    };
    if path.is_empty() || sink().file.is_some() {
        return;
    }
    if let Ok(f) = OpenOptions::new().create(true).append(true).open(&path) {
        let mut s = sink();
        if s.file.is_none() {
            s.file = Some(f);
            s.from_env = true;
            refresh(&s);
        }
    }
}

/// Closes the NETEV_LOG_FILE log at runtime shutdown; a log the host opened stays.
pub fn stop() {
    let mut s = sink();
    if s.from_env {
        s.file = None;
        s.from_env = false;
        refresh(&s);
    }
}

/// Civil UTC date and time from a Unix time, without a date crate.
fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_micros()
    )
}

/// Writes one line: `<timestamp> <kind> <handle> <what>`. Formatted now;
/// written now, or, while this thread holds a netev lock, as soon as it
/// holds none, so the log callback may call netev on the object the line
/// is about.
pub fn write(kind: &str, id: u64, what: Arguments<'_>) {
    if !enabled() {
        return;
    }
    let line = format!("{} {kind} {id} {what}", timestamp());
    crate::sync::when_unlocked(move || emit(line));
}

fn emit(line: String) {
    let (callback, user_data, generation) = {
        let mut s = sink();
        if let Some(f) = s.file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        let generation = s.generation;
        if s.callback.is_some() {
            match s.in_flight.iter_mut().find(|(g, _)| *g == generation) {
                Some((_, n)) => *n += 1,
                None => s.in_flight.push((generation, 1)),
            }
        }
        (s.callback, s.user_data, generation)
    };
    let Some(cb) = callback else {
        return;
    };
    // The host is called with no lock held: it may log, or call netev, itself.
    if let Ok(c) = CString::new(line) {
        CALLING.with(|c| c.set(c.get() + 1));
        crate::sync::call_host(|| {
            // SAFETY: the host registered this function for exactly this
            // call; the line is a valid C string for the call's duration.
            unsafe { cb(c.as_ptr(), user_data as *mut c_void) }
        });
        CALLING.with(|c| c.set(c.get() - 1));
    }
    let mut s = sink();
    if let Some(i) = s.in_flight.iter().position(|(g, _)| *g == generation) {
        s.in_flight[i].1 -= 1;
        if s.in_flight[i].1 == 0 {
            s.in_flight.swap_remove(i);
            CALL_ENDED.notify_all();
        }
    }
}

/// `log!(kind, id, "format", args…)`: formats only when a log is enabled.
macro_rules! log {
    ($kind:expr, $id:expr, $($arg:tt)*) => {
        if $crate::log::enabled() {
            $crate::log::write($kind, $id, format_args!($($arg)*));
        }
    };
}
pub(crate) use log;

#[cfg(test)]
mod tests {
    #[test]
    fn timestamp_shape() {
        let t = super::timestamp();
        assert_eq!(t.len(), 27, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'), "{t}");
    }
}
