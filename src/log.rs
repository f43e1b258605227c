//! The lifecycle log: netev's counterpart of 4D's 4DTCPUDPLog.txt.
//!
//! One line per lifecycle event, with a UTC timestamp and the handle, to a
//! file (`netev_log_open`, or the NETEV_LOG_FILE environment variable) and/or
//! to a host callback.

use crate::error::{Error, Result};
use std::ffi::{CString, c_char, c_void};
use std::fmt::Arguments;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Receives each log line (NUL-terminated, no trailing newline), borrowed
/// until the callback returns. May run on any thread, concurrently.
#[allow(non_camel_case_types)]
pub type netev_log_callback =
    Option<unsafe extern "C" fn(line: *const c_char, user_data: *mut c_void)>;

struct Sink {
    file: Option<File>,
    from_env: bool,
    callback: netev_log_callback,
    user_data: usize,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    from_env: false,
    callback: None,
    user_data: 0,
});
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

pub fn set_callback(callback: netev_log_callback, user_data: *mut c_void) {
    let mut s = sink();
    s.callback = callback;
    s.user_data = user_data as usize;
    refresh(&s);
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

/// Writes one line: `<timestamp> <kind> <handle> <what>`.
pub fn write(kind: &str, id: u64, what: Arguments<'_>) {
    if !enabled() {
        return;
    }
    let line = format!("{} {kind} {id} {what}", timestamp());
    let (callback, user_data) = {
        let mut s = sink();
        if let Some(f) = s.file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
        (s.callback, s.user_data)
    };
    // The host is called with no lock held: it may log, or call netev, itself.
    if let Some(cb) = callback
        && let Ok(c) = CString::new(line)
    {
        crate::dispatch::guard(|| {
            // SAFETY: the host registered this function for exactly this
            // call; the line is a valid C string for the call's duration.
            unsafe { cb(c.as_ptr(), user_data as *mut c_void) }
        });
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
