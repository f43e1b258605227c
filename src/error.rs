//! Status codes, the per-thread last error, and the per-object errors list.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::ffi::c_char;
use std::fmt;
use std::io;

/// Result of every netev call that can fail. The numbers are fixed forever,
/// so bindings can use them without this header; a number is never reused.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum netev_status {
    /// Success: the call did what it says.
    NETEV_OK = 0,
    /// A required pointer was NULL.
    NETEV_ERR_NULL_ARGUMENT = 1,
    /// A bad value: invalid UTF-8, port 0 for a client, a negative or NaN
    /// timeout, an index out of range, a wrong `size` in an options struct.
    NETEV_ERR_INVALID_ARGUMENT = 2,
    /// The handle is unknown, released, or of another kind.
    NETEV_ERR_INVALID_HANDLE = 3,
    /// A send after shutdown or close.
    NETEV_ERR_CLOSED = 4,
    /// The send would pass the connection's (or UDP socket's) send-buffer limit.
    NETEV_ERR_BUFFER_FULL = 5,
    /// A wait, a connect or an idle timeout ran out.
    NETEV_ERR_TIMEOUT = 6,
    /// A blocking call made where it can never finish (for example waiting
    /// inside a callback on the thread that must run it).
    NETEV_ERR_WOULD_DEADLOCK = 7,
    /// The peer refused the connection (ECONNREFUSED): nothing listens on
    /// that port.
    NETEV_ERR_CONNECTION_REFUSED = 8,
    /// The peer reset or aborted the connection (ECONNRESET, ECONNABORTED,
    /// EPIPE, ENOTCONN).
    NETEV_ERR_CONNECTION_RESET = 9,
    /// The name does not resolve.
    NETEV_ERR_HOST_NOT_FOUND = 10,
    /// The address and port are already bound (EADDRINUSE).
    NETEV_ERR_ADDRESS_IN_USE = 11,
    /// The OS refused (EACCES, EPERM): a privileged port, a broadcast
    /// address without `broadcast`, a file that may not be opened.
    NETEV_ERR_PERMISSION_DENIED = 12,
    /// Another OS error; `os_error` holds errno.
    NETEV_ERR_IO = 13,
    /// The runtime is shut down, or the handle belongs to a parent process.
    NETEV_ERR_SHUTDOWN = 14,
    /// A bug in netev (a caught panic).
    NETEV_ERR_INTERNAL = 15,
    /// A TLS handshake, certificate or record failure, or a bad TLS
    /// configuration; the message says which (component "tls").
    NETEV_ERR_TLS = 16,
    /// The peer broke the connection's framing: a frame over `max_frame`,
    /// or the stream ended inside a length-prefixed frame.
    NETEV_ERR_PROTOCOL = 17,
}

pub use netev_status as Status;
use netev_status::*;

const NAMES: [&str; 18] = [
    "NETEV_OK\0",
    "NETEV_ERR_NULL_ARGUMENT\0",
    "NETEV_ERR_INVALID_ARGUMENT\0",
    "NETEV_ERR_INVALID_HANDLE\0",
    "NETEV_ERR_CLOSED\0",
    "NETEV_ERR_BUFFER_FULL\0",
    "NETEV_ERR_TIMEOUT\0",
    "NETEV_ERR_WOULD_DEADLOCK\0",
    "NETEV_ERR_CONNECTION_REFUSED\0",
    "NETEV_ERR_CONNECTION_RESET\0",
    "NETEV_ERR_HOST_NOT_FOUND\0",
    "NETEV_ERR_ADDRESS_IN_USE\0",
    "NETEV_ERR_PERMISSION_DENIED\0",
    "NETEV_ERR_IO\0",
    "NETEV_ERR_SHUTDOWN\0",
    "NETEV_ERR_INTERNAL\0",
    "NETEV_ERR_TLS\0",
    "NETEV_ERR_PROTOCOL\0",
];
const UNKNOWN_STATUS: &str = "NETEV_UNKNOWN_STATUS\0";

impl Status {
    /// The identifier, NUL-terminated, for any integer a host may pass.
    pub fn name_of(value: i32) -> &'static str {
        usize::try_from(value)
            .ok()
            .and_then(|i| NAMES.get(i))
            .copied()
            .unwrap_or(UNKNOWN_STATUS)
    }

    pub fn name(self) -> &'static str {
        let n = Self::name_of(self as i32);
        &n[..n.len() - 1]
    }
}

/// A failure: what the host gets back as a status, in the last-error
/// message, and in an object's errors list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: Status,
    pub os_error: i32,
    pub message: String,
    pub component: &'static str,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(code: Status, message: impl Into<String>) -> Self {
        Error {
            code,
            os_error: 0,
            message: message.into(),
            component: "netev",
        }
    }

    pub fn null(what: &str) -> Self {
        Self::new(NETEV_ERR_NULL_ARGUMENT, format!("{what} is NULL"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(NETEV_ERR_INVALID_ARGUMENT, message)
    }

    pub fn handle(id: u64, kind: &str) -> Self {
        Self::new(
            NETEV_ERR_INVALID_HANDLE,
            format!("{id} is not a live {kind} handle"),
        )
    }

    /// Maps an OS error to the closest status; errno is kept either way.
    pub fn io(err: &io::Error, context: &str) -> Self {
        use io::ErrorKind as K;
        let code = match err.kind() {
            K::ConnectionRefused => NETEV_ERR_CONNECTION_REFUSED,
            // NotConnected: a shutdown() after the peer's reset arrived.
            K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::NotConnected => {
                NETEV_ERR_CONNECTION_RESET
            }
            K::AddrInUse => NETEV_ERR_ADDRESS_IN_USE,
            K::PermissionDenied => NETEV_ERR_PERMISSION_DENIED,
            K::TimedOut => NETEV_ERR_TIMEOUT,
            _ => NETEV_ERR_IO,
        };
        Error {
            code,
            os_error: err.raw_os_error().unwrap_or(0),
            message: format!("{context}: {err}"),
            component: "os",
        }
    }

    pub fn component(mut self, component: &'static str) -> Self {
        self.component = component;
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

/// One entry of an object's errors list (4D's `errors` collection).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct netev_error_info {
    /// 4D: errCode.
    pub code: netev_status,
    /// errno, or 0.
    pub os_error: i32,
    /// 4D: message. NUL-terminated, cut to fit.
    pub message: [c_char; 256],
    /// 4D: componentSignature: "netev", "os", "dns", "tls", "framing".
    pub component: [c_char; 32],
}

impl From<&Error> for netev_error_info {
    fn from(e: &Error) -> Self {
        let mut info = netev_error_info {
            code: e.code,
            os_error: e.os_error,
            message: [0; 256],
            component: [0; 32],
        };
        copy_cstr(&mut info.message, &e.message);
        copy_cstr(&mut info.component, e.component);
        info
    }
}

/// Copies `s` into a fixed C array, cut to fit and always NUL-terminated.
/// A cut never splits a UTF-8 sequence.
pub fn copy_cstr(dst: &mut [c_char], s: &str) {
    let Some(room) = dst.len().checked_sub(1) else {
        return;
    };
    let mut n = s.len().min(room);
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    for (d, b) in dst.iter_mut().zip(&s.as_bytes()[..n]) {
        *d = *b as c_char;
    }
    dst[n] = 0;
}

/// How many entries an errors list keeps; older ones are dropped first so a
/// host that keeps misusing one connection cannot grow it without bound.
pub(crate) const ERRORS_KEPT: usize = 64;

/// An object's errors list.
#[derive(Debug, Default)]
pub struct ErrorList(VecDeque<Error>);

impl ErrorList {
    pub fn push(&mut self, e: Error) {
        if self.0.len() == ERRORS_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(e);
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, i: usize) -> Option<&Error> {
        self.0.get(i)
    }
}

thread_local! {
    static LAST: RefCell<String> = const { RefCell::new(String::new()) };
}

/// The last failure of threads in their exit (atexit handlers, static and
/// thread_local destructors), whose LAST the C library has destroyed:
/// shared by such threads, which are rarely more than the one calling
/// exit().
static LAST_IN_EXIT: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

/// Records the calling thread's last failure, in words.
pub fn set_last(e: &Error) {
    let mut text = Some(e.to_string());
    let _ = LAST.try_with(|l| {
        if let (Ok(mut l), Some(t)) = (l.try_borrow_mut(), text.take()) {
            *l = t;
        }
    });
    if let Some(t) = text {
        *LAST_IN_EXIT.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }
}

/// Runs `f` with the calling thread's last failure message.
pub fn with_last<R>(f: impl FnOnce(&str) -> R) -> R {
    let text = LAST
        .try_with(|l| l.try_borrow().map(|s| s.clone()).unwrap_or_default())
        .unwrap_or_else(|_| {
            LAST_IN_EXIT
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        });
    f(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_every_status_and_unknowns() {
        assert_eq!(Status::name_of(0), "NETEV_OK\0");
        assert_eq!(Status::name_of(15), "NETEV_ERR_INTERNAL\0");
        assert_eq!(Status::name_of(16), "NETEV_ERR_TLS\0");
        assert_eq!(Status::name_of(17), "NETEV_ERR_PROTOCOL\0");
        assert_eq!(Status::name_of(18), "NETEV_UNKNOWN_STATUS\0");
        assert_eq!(Status::name_of(-1), "NETEV_UNKNOWN_STATUS\0");
        assert_eq!(NETEV_ERR_TIMEOUT.name(), "NETEV_ERR_TIMEOUT");
    }

    #[test]
    fn os_errors_map_to_statuses() {
        let code = |errno| Error::io(&io::Error::from_raw_os_error(errno), "x").code;
        assert_eq!(code(libc::ECONNREFUSED), NETEV_ERR_CONNECTION_REFUSED);
        assert_eq!(code(libc::ECONNRESET), NETEV_ERR_CONNECTION_RESET);
        assert_eq!(code(libc::EPIPE), NETEV_ERR_CONNECTION_RESET);
        assert_eq!(code(libc::ENOTCONN), NETEV_ERR_CONNECTION_RESET);
        assert_eq!(code(libc::EADDRINUSE), NETEV_ERR_ADDRESS_IN_USE);
        assert_eq!(code(libc::EACCES), NETEV_ERR_PERMISSION_DENIED);
        assert_eq!(code(libc::EMFILE), NETEV_ERR_IO);
        let e = Error::io(&io::Error::from_raw_os_error(libc::EMFILE), "accept");
        assert_eq!((e.os_error, e.component), (libc::EMFILE, "os"));
    }

    #[test]
    fn copy_cstr_cuts_on_char_boundary() {
        let mut buf = [1 as c_char; 4];
        copy_cstr(&mut buf, "aé€");
        assert_eq!(
            &buf[..4],
            &[b'a' as c_char, 0xc3u8 as c_char, 0xa9u8 as c_char, 0]
        );
        let mut one = [1 as c_char; 1];
        copy_cstr(&mut one, "abc");
        assert_eq!(one[0], 0);
    }

    #[test]
    fn error_list_keeps_the_newest() {
        let mut l = ErrorList::default();
        for i in 0..(ERRORS_KEPT + 5) {
            l.push(Error::invalid(format!("{i}")));
        }
        assert_eq!(l.len(), ERRORS_KEPT);
        assert_eq!(l.get(0).map(|e| e.message.as_str()), Some("5"));
    }
}
