//! The C ABI: every export checks and converts its arguments, then calls
//! the safe core, inside one panic boundary.

use crate::abi;
use crate::connection::{
    Bind, Config, Connection, netev_connection_options, netev_connection_stats, seconds,
};
use crate::dispatch::Dispatcher;
use crate::error::{Error, Result, Status, netev_error_info, netev_status};
use crate::event::EventType;
use crate::listener::{Listener, ListenerConfig, netev_listener_options};
use crate::log;
use crate::registry::{netev_connection, netev_dispatcher, netev_listener};
use crate::runtime::{self, netev_runtime_options};
use crate::send_queue::{Owned, netev_free_fn};
use crate::tls::{TlsConfig, TlsInput, netev_tls_config, netev_tls_options};
use crate::udp::{UdpSocket, netev_udp_options, netev_udp_socket};
use std::ffi::{CStr, c_char, c_int, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Duration;

/// Runs one export's body: its error becomes the thread's last error and
/// the returned status; a panic becomes NETEV_ERR_INTERNAL.
fn boundary(f: impl FnOnce() -> Result<()>) -> netev_status {
    let e = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => return Status::NETEV_OK,
        Ok(Err(e)) => e,
        Err(_) => Error::new(
            Status::NETEV_ERR_INTERNAL,
            "a panic inside netev was caught; please report it",
        ),
    };
    crate::error::set_last(&e);
    e.code
}

/// Stores `value` through a required out-pointer.
fn put<T>(out: *mut T, name: &str, value: T) -> Result<()> {
    if out.is_null() {
        return Err(Error::null(name));
    }
    // SAFETY: non-NULL was checked; the host promises it points at a T it
    // owns, as the header documents for every out-pointer.
    unsafe { out.write(value) };
    Ok(())
}

/// Checks an out-pointer before any work, so a failing call has no effect.
fn need<T>(p: *const T, name: &str) -> Result<()> {
    if p.is_null() {
        Err(Error::null(name))
    } else {
        Ok(())
    }
}

/// A NUL-terminated UTF-8 string from the host.
fn text<'a>(p: *const c_char, name: &str) -> Result<&'a str> {
    need(p, name)?;
    // SAFETY: non-NULL was checked; the host promises a NUL-terminated
    // string that stays valid for the duration of the call.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str()
        .map_err(|_| Error::invalid(format!("{name} is not valid UTF-8")))
}

/// Copies `s` into a host buffer snprintf-style; returns the full length.
fn copy_out(s: &str, buf: *mut c_char, capacity: usize) -> Result<usize> {
    if capacity > 0 {
        need(buf, "buf")?;
        check_size(capacity, "capacity")?;
        // SAFETY: non-NULL was checked; the host promises `capacity`
        // writable bytes at `buf`.
        let dst = unsafe { std::slice::from_raw_parts_mut(buf, capacity) };
        crate::error::copy_cstr(dst, s);
    }
    Ok(s.len())
}

/// Copies what of `bytes` fits into a host buffer of `capacity` bytes.
fn copy_bytes_out(bytes: &[u8], buf: *mut u8, capacity: usize) -> Result<()> {
    if capacity > 0 {
        need(buf, "buf")?;
        check_size(capacity, "capacity")?;
        let n = bytes.len().min(capacity);
        // SAFETY: non-NULL was checked; the host promises `capacity`
        // writable bytes at `buf`, and n <= capacity.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf, n) };
    }
    Ok(())
}

/// Reads a host's options struct (NULL: the defaults): its first `size`
/// bytes over the defaults, as "Versions" in the header says.
fn read_options<T: abi::Versioned>(p: *const T, name: &str) -> Result<T> {
    // SAFETY: NULL, or the host's struct with `size` readable bytes, as the
    // header asks of every options struct passed in.
    unsafe { abi::read(p, name) }
}

/// A size no object can have (above PTRDIFF_MAX) is refused before any
/// slice is built from it.
fn check_size(len: usize, name: &str) -> Result<()> {
    if len > isize::MAX as usize {
        return Err(Error::invalid(format!(
            "{name} is {len}, above PTRDIFF_MAX: no buffer is that large"
        )));
    }
    Ok(())
}

/// A wait timeout: negative is no limit, NaN is invalid.
fn wait_timeout(t: f64) -> Result<Option<Duration>> {
    if t.is_nan() {
        return Err(Error::invalid("the timeout is NaN"));
    }
    if t < 0.0 {
        return Ok(None);
    }
    Ok(Some(seconds(t, "timeout")?.unwrap_or(Duration::ZERO)))
}

fn status_name(status: i32) -> *const c_char {
    Status::name_of(status).as_ptr().cast()
}

// ----- status and names ---------------------------------------------------

/// The identifier of a status ("NETEV_ERR_TIMEOUT"), or
/// "NETEV_UNKNOWN_STATUS" for a value that is not one. Static, never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn netev_status_name(status: i32) -> *const c_char {
    status_name(status)
}

/// The 4D name of an event type: "connection", "data", "error", "close",
/// "terminate", "drain", "end"; "unknown" otherwise. Static, never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn netev_event_type_name(r#type: i32) -> *const c_char {
    EventType::name_of(r#type).as_ptr().cast()
}

/// Copies the calling thread's last failure, in words, into `buf` (cut to
/// fit, always NUL-terminated when `capacity` > 0) and returns the length
/// it needs without the NUL. A successful call leaves it unchanged. `buf`
/// may be NULL when `capacity` is 0.
#[unsafe(no_mangle)]
pub extern "C" fn netev_last_error_message(buf: *mut c_char, capacity: usize) -> usize {
    catch_unwind(|| crate::error::with_last(|m| copy_out(m, buf, capacity).unwrap_or(m.len())))
        .unwrap_or(0)
}

/// The version, "MAJOR.MINOR.PATCH". Static, never NULL.
#[unsafe(no_mangle)]
pub extern "C" fn netev_version() -> *const c_char {
    crate::VERSION.as_ptr().cast()
}

// ----- connections --------------------------------------------------------

/// Fills the `size` bytes at `options` with the defaults — every callback,
/// pointer and handle NULL/0, every bool false, every number 0 (the
/// documented default), zeros for fields this library does not know — and
/// sets `options->size` to `size`. Writes exactly `size` bytes, and none
/// when it fails.
///
/// `size` is sizeof(netev_connection_options) as the caller's header
/// declares it, which the netev_connection_options_init macro passes: a
/// host compiled against an older header has a smaller struct, one compiled
/// against a newer header a larger one (see "Versions" at the end of this
/// header). A binding passes the size of its own struct.
///
/// Returns NETEV_ERR_NULL_ARGUMENT (`options` NULL),
/// NETEV_ERR_INVALID_ARGUMENT (`size` below the struct's first version,
/// netev 0.2's, or above NETEV_OPTIONS_SIZE_MAX).
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_options_init_sized(
    options: *mut netev_connection_options,
    size: usize,
) -> netev_status {
    boundary(|| abi::init_sized(options, size, "options"))
}

/// netev_connection_options_init_sized with this library's own
/// sizeof(netev_connection_options). In C and C++ the macro of the same
/// name, defined at the end of this header, replaces calls to it with
/// `_sized` and the size of the caller's struct: this exported function
/// serves bindings that mirror this version's header exactly (calling
/// `_sized` with the size of their own struct keeps working with a newer
/// library). Returns NETEV_ERR_NULL_ARGUMENT if `options` is NULL.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_options_init(
    options: *mut netev_connection_options,
) -> netev_status {
    boundary(|| {
        abi::init_sized(
            options,
            std::mem::size_of::<netev_connection_options>(),
            "options",
        )
    })
}

/// Opens a client connection to `address` (a host name, or an IPv4 or IPv6
/// literal) and `port`, and stores its handle in `*out`. Returns at once:
/// name lookup and connect run in the background, all within
/// `connection_timeout`. When the name has several addresses they are
/// raced as RFC 8305 says: IPv6 first, then the families alternate; an
/// attempt that has not connected within 250 ms (or that failed) gets the
/// next address started beside it; the first to connect wins and the
/// others are closed. With `bind_address`, only addresses of its family
/// are tried. A failure then arrives as ERROR (the last attempt's reason)
/// and TERMINATE, and lands in the errors list.
///
/// `options` may be NULL for the defaults; netev copies it (its first
/// `size` bytes; fields past them take their defaults). The caller owns
/// the handle and gives it back with `netev_connection_release`. `*out` is
/// written before any callback can run, but callbacks may run (on netev's
/// threads) before this returns: have them use the handle they are given.
///
/// Callbacks run on netev's I/O threads, or on the thread that runs the
/// dispatcher named in `options`.
///
/// Returns NETEV_ERR_NULL_ARGUMENT (`address` or `out` NULL),
/// NETEV_ERR_INVALID_ARGUMENT (invalid UTF-8, empty address, port 0, a
/// negative or NaN number of seconds, a keepalive above 32767 s, a bool
/// other than 0 or 1, `size` not set by an init function, a field past
/// this library's struct set: see "Versions"),
/// NETEV_ERR_INVALID_HANDLE (`dispatcher` not a live dispatcher, `tls`
/// not a live TLS configuration), NETEV_ERR_INVALID_ARGUMENT also for a
/// server TLS configuration, or a `server_name` (or, without one, an
/// address) that is no DNS name or IP address while `tls` is set, and for
/// bad framing fields (framing not 0-2, length_prefix_bytes not 0, 1, 2,
/// 4 or 8, a delimiter not 1 to 16 bytes, or one given with other
/// framing), or a `bind_address` that is no IP address;
/// NETEV_ERR_NULL_ARGUMENT also for a NULL `delimiter` with a non-zero
/// `delimiter_len`; NETEV_ERR_SHUTDOWN (forked child). When it fails no
/// callback ever fires.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_open(
    address: *const c_char,
    port: u16,
    options: *const netev_connection_options,
    out: *mut netev_connection,
) -> netev_status {
    boundary(|| {
        let address = text(address, "address")?;
        need(out, "out")?;
        let options = read_options(options, "options")?;
        let mut cfg = Config::from_options(&options)?;
        cfg.check_tls_side(true)?;
        if cfg.tls.is_some() {
            let name = match options.server_name.is_null() {
                true => address,
                false => text(options.server_name, "server_name")?,
            };
            cfg.server_name = Some(crate::tls::server_name(name)?);
        }
        if !options.bind_address.is_null() || options.bind_port != 0 {
            let ip = match options.bind_address.is_null() {
                true => None,
                false => {
                    let t = text(options.bind_address, "bind_address")?;
                    Some(t.parse::<std::net::IpAddr>().map_err(|_| {
                        Error::invalid(format!("bind_address {t:?} is not an IPv4 or IPv6 address"))
                    })?)
                }
            };
            cfg.bind = Some(Bind {
                ip,
                port: options.bind_port,
            });
        }
        // Written before the connection can have an event (`out` was checked).
        Connection::open(address, port, cfg, |id| {
            let _ = put(out, "out", id);
        })?;
        Ok(())
    })
}

/// Queues a copy of `len` bytes at `data` for sending, after every byte
/// queued before it (from any thread). Bytes sent before the connection is
/// established go out once it is. `data` may be NULL when `len` is 0.
/// Memory stays bounded by the limit (plus under 200 KiB of slack) whatever
/// the pattern: written bytes are freed as the socket takes them. One send
/// into an empty queue is taken whole, whatever its size (so no message is
/// refused forever): bound what a single call sends if that matters.
///
/// With TLS the bytes are plaintext, and so are the limit and the queue:
/// before the handshake completed they wait in the queue; after it, with
/// nothing queued, the calling thread encrypts them and writes the
/// records itself.
///
/// `len` above PTRDIFF_MAX gives NETEV_ERR_INVALID_ARGUMENT (also recorded
/// in the errors list) without touching `data`.
/// Returns NETEV_ERR_CLOSED after shutdown or close; NETEV_ERR_BUFFER_FULL
/// when the queued bytes plus `len` would pass `send_buffer_limit` (a send
/// into an empty queue is always taken): nothing of the call is queued, and
/// one DRAIN follows once the queue falls to half the limit.
/// NETEV_ERR_INVALID_HANDLE, NETEV_ERR_NULL_ARGUMENT otherwise.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_send(
    conn: netev_connection,
    data: *const c_void,
    len: usize,
) -> netev_status {
    boundary(|| {
        let c = Connection::get(conn)?;
        if len == 0 {
            return c.send(&[]);
        }
        need(data, "data")?;
        check_size(len, "len").map_err(|e| c.refuse_call(e))?;
        // SAFETY: non-NULL was checked; the host promises `len` readable
        // bytes at `data` for the duration of the call.
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
        c.send(bytes)
    })
}

/// Closes the write side once every byte already queued is written;
/// reading goes on until the peer closes, then CLOSE and TERMINATE. Ends
/// any wait on the connection. Calling it again is harmless. With TLS it
/// sends close_notify after the queued bytes (once the handshake
/// completed), then the FIN; the peer's close_notify is END.
/// Returns NETEV_ERR_CLOSED after close or once the connection ended,
/// NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_shutdown(conn: netev_connection) -> netev_status {
    boundary(|| Connection::get(conn)?.shutdown())
}

/// Stops reading: no DATA or END arrives until netev_connection_resume.
/// netev reads nothing more, so the peer's bytes back up in the kernel's
/// buffers and then block the peer's sends (receive-side flow control). A
/// DATA callback already running finishes; with framing, frames already
/// read wait for the resume (at most one read's worth). A dispatcher-bound
/// connection's DATA and END already queued wait too; a DRAIN still
/// comes, and so do CLOSE or ERROR and TERMINATE if the connection ends
/// meanwhile (after the DATA that waited). idle_timeout does not count
/// time spent paused. Idempotent; from any thread and any callback; the
/// log says "paused". For back-pressure between two connections (a
/// proxy), pause the reading side when a send to the other returns
/// NETEV_ERR_BUFFER_FULL and resume it on the other's DRAIN, which only
/// follows a refused send (see examples-c/proxy.c).
/// Returns NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_pause(conn: netev_connection) -> netev_status {
    boundary(|| {
        Connection::get(conn)?.pause();
        Ok(())
    })
}

/// Reads again after netev_connection_pause: what the pause held back is
/// delivered first, in order (DATA, then END). Idempotent; from any thread
/// and any callback; the log says "resumed".
/// Returns NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_resume(conn: netev_connection) -> netev_status {
    boundary(|| {
        Connection::get(conn)?.resume();
        Ok(())
    })
}

/// Whether the connection is paused.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_paused(conn: netev_connection, out: *mut bool) -> netev_status {
    property(conn, out, |c| c.paused())
}

/// Queues `len` bytes at `data` for sending without copying them, after
/// every byte queued before it, as netev_connection_send does (same
/// limit, same order, same statuses). netev takes ownership of the bytes:
/// they must stay valid and unchanged until `free_fn(free_arg)` runs,
/// exactly once, when they were written or dropped (close, an error,
/// runtime shutdown). It runs on any thread: a netev I/O thread, the
/// dispatcher's, or the calling thread, possibly before this call returns
/// (when the socket took everything at once, or `len` is 0). Sends under
/// 4 KiB are copied (and freed at once): a zero-copy entry would cost more
/// than the bytes. `free_fn` may be NULL for bytes that outlive the
/// connection (static data). Like a callback, `free_fn` runs with no netev
/// lock held and may call any netev function; every `free_fn` owed has
/// run by the time netev_runtime_shutdown returns NETEV_OK.
///
/// When it returns an error netev did not take the bytes and never calls
/// `free_fn`: the caller still owns them.
/// Returns NETEV_ERR_CLOSED, NETEV_ERR_BUFFER_FULL,
/// NETEV_ERR_NULL_ARGUMENT (`data` NULL with `len` > 0),
/// NETEV_ERR_INVALID_ARGUMENT (`len` above PTRDIFF_MAX),
/// NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
// `free_arg` is never dereferenced, only handed back to `free_fn`.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub extern "C" fn netev_connection_send_owned(
    conn: netev_connection,
    data: *const c_void,
    len: usize,
    free_fn: netev_free_fn,
    free_arg: *mut c_void,
) -> netev_status {
    boundary(|| {
        let c = Connection::get(conn)?;
        if len > 0 {
            need(data, "data")?;
            check_size(len, "len").map_err(|e| c.refuse_call(e))?;
        }
        let data = match len {
            0 => std::ptr::NonNull::<u8>::dangling().as_ptr().cast_const(),
            _ => data.cast::<u8>(),
        };
        // SAFETY: `data` is non-NULL (dangling only for 0 bytes) and the
        // header makes the host promise `len` bytes there until free_fn.
        let owned = unsafe { Owned::new(data, len, free_fn, free_arg) };
        c.send_owned(owned)
    })
}

/// Sends `len` bytes at `data` (copied) as one frame of the connection's
/// framing: after a big-endian length prefix, or followed by the
/// delimiter, in one send (all of it is queued, or none). Limits, order
/// and statuses are netev_connection_send's.
/// Returns NETEV_ERR_INVALID_ARGUMENT without framing
/// (NETEV_FRAMING_NONE), for a payload the peer would not read back as
/// this one frame (it contains the delimiter, or, with a delimiter that
/// overlaps itself such as "\r\n\r\n", ends with part of one that
/// would match first), or one too long for the length
/// prefix (256 bytes or more with a 1-byte prefix, 65 536 with 2, 2^32
/// with 4); NETEV_ERR_CLOSED, NETEV_ERR_BUFFER_FULL,
/// NETEV_ERR_NULL_ARGUMENT (`data` NULL with `len` > 0),
/// NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_send_frame(
    conn: netev_connection,
    data: *const c_void,
    len: usize,
) -> netev_status {
    boundary(|| {
        let c = Connection::get(conn)?;
        if len == 0 {
            return c.send_frame(&[]);
        }
        need(data, "data")?;
        check_size(len, "len").map_err(|e| c.refuse_call(e))?;
        // SAFETY: non-NULL was checked; the host promises `len` readable
        // bytes at `data` for the duration of the call.
        let bytes = unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) };
        c.send_frame(bytes)
    })
}

/// Waits until the connection has ended (its TERMINATE callback returned)
/// or shutdown was called on it, at most `timeout_seconds` (< 0: no limit;
/// 0: only run what is ready). If the connection has a dispatcher, its
/// queued callbacks run on the calling thread meanwhile; the deadline is
/// checked between them (a callback already running finishes, none starts
/// after the deadline), so a busy peer never stretches the wait. With 0 it
/// runs the callbacks ready when it is called (one per object bound to the
/// dispatcher, in the order they came) and returns without waiting.
///
/// Returns NETEV_OK, NETEV_ERR_TIMEOUT, NETEV_ERR_INVALID_ARGUMENT (NaN),
/// NETEV_ERR_INVALID_HANDLE, or NETEV_ERR_WOULD_DEADLOCK at once when
/// called where it could stall: inside a callback on a netev I/O thread
/// (with a timeout other than 0, or on a dispatcher-bound connection),
/// inside a callback of the dispatcher it would have to run, or inside the
/// listener's accept callback that is offering this very connection.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_wait(
    conn: netev_connection,
    timeout_seconds: f64,
) -> netev_status {
    boundary(|| {
        let t = wait_timeout(timeout_seconds)?;
        Connection::get(conn)?.wait(t)
    })
}

/// Aborts the connection now: unsent queued bytes are dropped, and CLOSE
/// then TERMINATE follow (never ERROR). Harmless on a connection that
/// already ended. The handle stays valid until released. With TLS no
/// close_notify is sent: an abort is what the peer sees (use shutdown for
/// a clean end).
/// Returns NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_close(conn: netev_connection) -> netev_status {
    boundary(|| {
        Connection::get(conn)?.close_now();
        Ok(())
    })
}

/// Takes one more reference to the connection: its handle stays valid
/// until a matching `netev_connection_release`. Use it to keep a connection
/// accepted by a listener past its TERMINATE.
/// Returns NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_retain(conn: netev_connection) -> netev_status {
    boundary(|| Connection::get(conn)?.retain())
}

/// Gives back a reference taken by `netev_connection_open` or
/// `netev_connection_retain`. The last one closes a client connection if
/// it is still open (CLOSE and TERMINATE still fire, once) and frees it:
/// the handle stays usable inside those last callbacks, then is invalid.
/// Given back once TERMINATE is being delivered or later, the handle is
/// invalid when this returns. An accepted connection whose last reference
/// is given back before its end goes on, owned by netev until its
/// TERMINATE returns.
/// Returns NETEV_ERR_INVALID_HANDLE for an unknown handle or when no
/// reference is left to give back (a double release).
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_release(conn: netev_connection) -> netev_status {
    boundary(|| Connection::get(conn)?.release())
}

/// Copies the address as given to open (name or IP; for an accepted
/// connection, the peer's IP) into `buf`, cut to
/// fit and NUL-terminated when `capacity` > 0, and stores the full length
/// without the NUL in `*needed`. `buf` may be NULL when `capacity` is 0.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_address(
    conn: netev_connection,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> netev_status {
    boundary(|| {
        need(needed, "needed")?;
        let c = Connection::get(conn)?;
        let n = copy_out(&c.address(), buf, capacity)?;
        put(needed, "needed", n)
    })
}

/// Stores one property of a live connection through a required out-pointer.
fn property<T>(
    conn: netev_connection,
    out: *mut T,
    get: impl FnOnce(&Connection) -> T,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let c = Connection::get(conn)?;
        put(out, "out", get(&c))
    })
}

/// The port given to open; for an accepted connection, the peer's port.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_port(conn: netev_connection, out: *mut u16) -> netev_status {
    property(conn, out, |c| c.port())
}

/// True once shutdown or close was called, the peer ended (unless
/// half-open is allowed), or the connection closed or failed.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_closed(conn: netev_connection, out: *mut bool) -> netev_status {
    property(conn, out, |c| c.closed())
}

/// Whether TCP_NODELAY was asked for.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_no_delay(
    conn: netev_connection,
    out: *mut bool,
) -> netev_status {
    property(conn, out, |c| c.no_delay())
}

/// The listener that accepted the connection; 0 for a client connection.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_listener(
    conn: netev_connection,
    out: *mut netev_listener,
) -> netev_status {
    property(conn, out, |c| c.listener())
}

/// The `user_data` given in the options.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_user_data(
    conn: netev_connection,
    out: *mut *mut c_void,
) -> netev_status {
    property(conn, out, |c| c.user_data())
}

/// Bytes queued by send but not yet written to the socket. With TLS:
/// plaintext bytes not yet handed to rustls (which holds at most 64 KiB
/// of ciphertext more, bounded on its own).
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_buffered_amount(
    conn: netev_connection,
    out: *mut usize,
) -> netev_status {
    property(conn, out, |c| c.buffered_amount())
}

/// How many entries the errors list holds (the newest 64 are kept).
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_error_count(
    conn: netev_connection,
    out: *mut usize,
) -> netev_status {
    property(conn, out, |c| c.error_count())
}

/// Copies entry `index` (0 = oldest) of the errors list into `*out`.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE,
/// NETEV_ERR_INVALID_ARGUMENT when `index` >= the error count.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_error_at(
    conn: netev_connection,
    index: usize,
    out: *mut netev_error_info,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let c = Connection::get(conn)?;
        let info = c.error_at(index).ok_or_else(|| {
            Error::invalid(format!(
                "index {index} is out of range ({} errors)",
                c.error_count()
            ))
        })?;
        put(out, "out", info)
    })
}

/// Copies a string property of a live connection, snprintf-style.
fn string_property(
    conn: netev_connection,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
    get: impl FnOnce(&Connection) -> String,
) -> netev_status {
    boundary(|| {
        need(needed, "needed")?;
        let c = Connection::get(conn)?;
        let n = copy_out(&get(&c), buf, capacity)?;
        put(needed, "needed", n)
    })
}

/// Copies the TLS version the handshake agreed on ("TLSv1.3" or
/// "TLSv1.2"; "" for plain TCP or before the handshake completed) into
/// `buf`, as netev_connection_address does (cut to fit, NUL-terminated
/// when `capacity` > 0, full length in `*needed`). Readable from
/// CONNECTION on, and after the end until release.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_tls_version(
    conn: netev_connection,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> netev_status {
    string_property(conn, buf, capacity, needed, |c| c.tls_version())
}

/// Copies the ALPN protocol the handshake agreed on ("" when none, or for
/// plain TCP), as netev_connection_tls_version does.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_alpn(
    conn: netev_connection,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> netev_status {
    string_property(conn, buf, capacity, needed, |c| c.alpn())
}

/// Server side: copies the name the client sent in SNI ("" when it sent
/// none, on a client connection, or for plain TCP), as
/// netev_connection_tls_version does.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_server_name(
    conn: netev_connection,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> netev_status {
    string_property(conn, buf, capacity, needed, |c| c.tls_server_name())
}

/// Copies the DER bytes of the peer's leaf certificate into `buf` (up to
/// `capacity` bytes; no NUL) and stores its full length in `*needed`: 0
/// when the peer sent none (a client without a certificate), for plain
/// TCP, or before the handshake completed. `buf` may be NULL when
/// `capacity` is 0 (ask the length, then call again).
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE,
/// NETEV_ERR_INVALID_ARGUMENT (`capacity` above PTRDIFF_MAX).
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_peer_certificate(
    conn: netev_connection,
    buf: *mut u8,
    capacity: usize,
    needed: *mut usize,
) -> netev_status {
    boundary(|| {
        need(needed, "needed")?;
        let c = Connection::get(conn)?;
        let der = c.peer_certificate();
        copy_bytes_out(&der, buf, capacity)?;
        put(needed, "needed", der.len())
    })
}

/// Copies the connection's own IP address (getsockname), as
/// netev_connection_address does: "" before the TCP connect completed and
/// after the connection ended; an IPv4 address is never shown as
/// "::ffff:". Read it in the CONNECTION callback to keep it.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_local_address(
    conn: netev_connection,
    buf: *mut c_char,
    capacity: usize,
    needed: *mut usize,
) -> netev_status {
    string_property(conn, buf, capacity, needed, |c| {
        c.local().map(|l| l.ip_string()).unwrap_or_default()
    })
}

/// The connection's own port; 0 before the TCP connect completed and
/// after the connection ended.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_local_port(
    conn: netev_connection,
    out: *mut u16,
) -> netev_status {
    property(conn, out, |c| c.local().map_or(0, |l| l.port))
}

/// Fills the first `size` bytes at `out` with the connection's counters
/// and sets `out->size` to how many it filled: this library's
/// sizeof(netev_connection_stats), or `size` if smaller. `size` is
/// sizeof(netev_connection_stats) as the caller's header declares it,
/// which the netev_connection_stats_get macro passes. Counters keep their
/// values after the connection ended, until its handle is released.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE,
/// NETEV_ERR_INVALID_ARGUMENT (`size` below 4 or above
/// NETEV_OPTIONS_SIZE_MAX); nothing is written when it fails.
#[unsafe(no_mangle)]
pub extern "C" fn netev_connection_stats_get_sized(
    conn: netev_connection,
    out: *mut netev_connection_stats,
    size: usize,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        if !(4..=crate::abi::NETEV_OPTIONS_SIZE_MAX as usize).contains(&size) {
            return Err(Error::invalid(format!(
                "size is {size}: pass sizeof(netev_connection_stats) (use the \
                 netev_connection_stats_get macro)"
            )));
        }
        let stats = Connection::get(conn)?.stats();
        // SAFETY: `out` is non-NULL, `size` is at least 4, and the header
        // asks the host for `size` writable bytes there.
        unsafe { abi::write_sized(out.cast(), size, &stats.to_bytes()) };
        Ok(())
    })
}

// ----- listeners ----------------------------------------------------------

/// Fills the `size` bytes at `options` with the defaults — callbacks,
/// pointers and handles NULL/0 (`connection_defaults` NULL: the defaults
/// of netev_connection_options_init), `backlog` 0 (1024), `reuse_port`
/// false, zeros for fields this library does not know — and sets
/// `options->size` to `size`. Writes exactly `size` bytes, and none when
/// it fails. `size` is sizeof(netev_listener_options) as the caller's
/// header declares it, which the netev_listener_options_init macro passes
/// (see "Versions" at the end of this header).
///
/// Returns NETEV_ERR_NULL_ARGUMENT (`options` NULL),
/// NETEV_ERR_INVALID_ARGUMENT (`size` below the struct's first version,
/// netev 0.2's, or above NETEV_OPTIONS_SIZE_MAX).
#[unsafe(no_mangle)]
pub extern "C" fn netev_listener_options_init_sized(
    options: *mut netev_listener_options,
    size: usize,
) -> netev_status {
    boundary(|| abi::init_sized(options, size, "options"))
}

/// netev_listener_options_init_sized with this library's own
/// sizeof(netev_listener_options), for bindings that mirror this version's
/// header exactly; in C and C++ the macro of the same name replaces calls
/// to it (see netev_connection_options_init).
/// Returns NETEV_ERR_NULL_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn netev_listener_options_init(
    options: *mut netev_listener_options,
) -> netev_status {
    boundary(|| {
        abi::init_sized(
            options,
            std::mem::size_of::<netev_listener_options>(),
            "options",
        )
    })
}

/// Listens on `port` (0 picks a free one: see `netev_listener_port`) and
/// stores the listener's handle in `*out`. Binding happens now, so a port
/// in use fails here; accepting runs in the background. SO_REUSEADDR is
/// always set. `options` may be NULL for the defaults; netev copies it
/// (its first `size` bytes), `bind_address`, and the connection options
/// `connection_defaults` points at (their first `size` bytes), so none of
/// them need outlive the call. The caller owns the handle until
/// `netev_listener_release`.
///
/// Each incoming connection is offered to `on_connection` (on netev's I/O
/// threads, or the dispatcher's thread); an accepted connection is owned
/// by netev until its TERMINATE returns, unless retained. The connections
/// a listener accepts are driven by the same netev I/O thread as the
/// listener (no hand-off between threads, as in libuv); to spread a server
/// over several threads, open one listener per thread with `reuse_port`.
///
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_ARGUMENT (bad
/// `bind_address`, bad `connection_defaults`, a bool other than 0 or 1,
/// `size` of either struct not set by an init function, a field past this
/// library's struct set: see "Versions"),
/// NETEV_ERR_INVALID_HANDLE (unknown dispatcher), NETEV_ERR_ADDRESS_IN_USE,
/// NETEV_ERR_PERMISSION_DENIED (a privileged port), NETEV_ERR_IO.
#[unsafe(no_mangle)]
pub extern "C" fn netev_listener_open(
    port: u16,
    options: *const netev_listener_options,
    out: *mut netev_listener,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let options = read_options(options, "options")?;
        let defaults = read_options(options.connection_defaults, "connection_defaults")?;
        let bind_address = match options.bind_address.is_null() {
            true => None,
            false => Some(text(options.bind_address, "bind_address")?),
        };
        let cfg = ListenerConfig::from_options(&options, bind_address, defaults)?;
        // Written before the listener can have an event (`out` was checked).
        Listener::open(port, cfg, |id| {
            let _ = put(out, "out", id);
        })?;
        Ok(())
    })
}

/// Stores the port the listener is bound to (the real one when opened
/// with port 0). Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_listener_port(listener: netev_listener, out: *mut u16) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let l = Listener::get(listener)?;
        put(out, "out", l.port())
    })
}

/// Stops accepting and closes the listening socket: the port is free when
/// this returns. Connections already accepted go on. TERMINATE follows,
/// once. Harmless when already terminated. Returns NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_listener_terminate(listener: netev_listener) -> netev_status {
    boundary(|| {
        Listener::get(listener)?.terminate();
        Ok(())
    })
}

/// Gives back the handle from `netev_listener_open`, terminating the
/// listener if it still runs; the handle is invalid once its TERMINATE
/// returned. Returns NETEV_ERR_INVALID_HANDLE (also on a double release).
#[unsafe(no_mangle)]
pub extern "C" fn netev_listener_release(listener: netev_listener) -> netev_status {
    boundary(|| Listener::get(listener)?.release())
}

/// How many entries the listener's errors list holds (the newest 64).
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_listener_error_count(
    listener: netev_listener,
    out: *mut usize,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let l = Listener::get(listener)?;
        put(out, "out", l.error_count())
    })
}

/// Copies entry `index` (0 = oldest) of the listener's errors list.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE,
/// NETEV_ERR_INVALID_ARGUMENT when `index` >= the error count.
#[unsafe(no_mangle)]
pub extern "C" fn netev_listener_error_at(
    listener: netev_listener,
    index: usize,
    out: *mut netev_error_info,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let l = Listener::get(listener)?;
        let info = l.error_at(index).ok_or_else(|| {
            Error::invalid(format!(
                "index {index} is out of range ({} errors)",
                l.error_count()
            ))
        })?;
        put(out, "out", info)
    })
}

// ----- dispatchers --------------------------------------------------------

/// Creates a dispatcher and stores its handle in `*out`. Name it in
/// options to have those objects' callbacks queued here and run by
/// `netev_dispatcher_run` (or a wait) on the host's thread. The caller owns
/// it and gives it back with `netev_dispatcher_release`.
/// Memory: received bytes wait in 64 KiB buffers; after a burst the
/// dispatcher keeps up to 32 of them (2 MiB) for the next deliveries, so a
/// stream does not pay a page fault per 4 KiB; release gives them back.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_IO (no descriptor left).
#[unsafe(no_mangle)]
pub extern "C" fn netev_dispatcher_create(out: *mut netev_dispatcher) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let d = Dispatcher::create()?;
        put(out, "out", d.id)
    })
}

/// Runs the callbacks queued when it starts on the calling thread, waiting
/// up to `timeout_seconds` (< 0: no limit) for the first; stores how many
/// callbacks ran in `*ran` (which may be NULL). Each queued object gets one
/// callback per run, so a peer that keeps sending cannot hold the caller:
/// what arrives meanwhile waits for the next run. Another thread running
/// the same dispatcher makes this one wait its turn, so one object's
/// callbacks never overlap.
/// Returns NETEV_ERR_INVALID_HANDLE (also when the dispatcher is released,
/// by another thread, while this call waits: it returns at once),
/// NETEV_ERR_INVALID_ARGUMENT (NaN), NETEV_ERR_WOULD_DEADLOCK when called
/// inside one of its own callbacks or on a netev I/O thread (a dispatcher's
/// callbacks belong on the host's threads, and netev's must stay free for
/// I/O).
#[unsafe(no_mangle)]
pub extern "C" fn netev_dispatcher_run(
    d: netev_dispatcher,
    timeout_seconds: f64,
    ran: *mut usize,
) -> netev_status {
    boundary(|| {
        let t = wait_timeout(timeout_seconds)?;
        let n = Dispatcher::get(d)?.run(t)?;
        if !ran.is_null() {
            put(ran, "ran", n)?;
        }
        Ok(())
    })
}

/// Stores in `*fd` a descriptor that is readable while callbacks are
/// queued (and while a run is under way: it is cleared when a run ends with
/// nothing left): add it to poll/epoll/select, libuv or GLib and call
/// `netev_dispatcher_run` when it fires. netev owns it: never read,
/// write or close it. Valid until the dispatcher is released.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_dispatcher_fd(d: netev_dispatcher, fd: *mut c_int) -> netev_status {
    boundary(|| {
        need(fd, "fd")?;
        let d = Dispatcher::get(d)?;
        put(fd, "fd", d.fd())
    })
}

/// Releases the dispatcher: the handle is invalid at once, every
/// connection, listener and UDP socket bound to it is closed, and their
/// last callbacks (DATA already queued, CLOSE, TERMINATE) run on the calling thread before this returns (at
/// most 5 s). Callbacks that come later still run, on netev's I/O threads;
/// each object still gets every remaining callback once, TERMINATE last,
/// never two at a time.
/// It never blocks where that could stall: inside one of the dispatcher's
/// own callbacks, the remaining callbacks run on this thread right after
/// the current one returns; on a netev I/O thread, they run on netev's
/// threads. Returns NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_dispatcher_release(d: netev_dispatcher) -> netev_status {
    boundary(|| {
        Dispatcher::get(d)?.release();
        Ok(())
    })
}

// ----- runtime and log ----------------------------------------------------

/// Fills the `size` bytes at `options` with the defaults (`worker_threads`
/// 0: one per core; zeros for fields this library does not know) and sets
/// `options->size` to `size`. Writes exactly `size` bytes, and none when
/// it fails. `size` is sizeof(netev_runtime_options) as the caller's
/// header declares it, which the netev_runtime_options_init macro passes
/// (see "Versions" at the end of this header).
///
/// Returns NETEV_ERR_NULL_ARGUMENT (`options` NULL),
/// NETEV_ERR_INVALID_ARGUMENT (`size` below the struct's first version,
/// netev 0.2's, or above NETEV_OPTIONS_SIZE_MAX).
#[unsafe(no_mangle)]
pub extern "C" fn netev_runtime_options_init_sized(
    options: *mut netev_runtime_options,
    size: usize,
) -> netev_status {
    boundary(|| abi::init_sized(options, size, "options"))
}

/// netev_runtime_options_init_sized with this library's own
/// sizeof(netev_runtime_options), for bindings that mirror this version's
/// header exactly; in C and C++ the macro of the same name replaces calls
/// to it (see netev_connection_options_init).
/// Returns NETEV_ERR_NULL_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn netev_runtime_options_init(options: *mut netev_runtime_options) -> netev_status {
    boundary(|| {
        abi::init_sized(
            options,
            std::mem::size_of::<netev_runtime_options>(),
            "options",
        )
    })
}

/// Starts netev's runtime with `options` (NULL: defaults; netev reads their
/// first `size` bytes). Optional: the first open starts it with defaults.
/// Returns NETEV_ERR_INVALID_ARGUMENT when it already runs (shut it down
/// first) or the options are bad (`size` not set by an init function, a
/// field past this library's struct set: see "Versions"),
/// NETEV_ERR_SHUTDOWN in a forked child.
#[unsafe(no_mangle)]
pub extern "C" fn netev_runtime_init(options: *const netev_runtime_options) -> netev_status {
    boundary(|| {
        let options = read_options(options, "options")?;
        runtime::init(&options)
    })
}

/// Ends every open object — each TERMINATE runs once — and stops netev's
/// threads, waiting at most `timeout_seconds` (< 0: no limit) for objects
/// to finish. Callbacks of dispatcher-bound objects still queued run on the
/// calling thread, unless another thread is running that dispatcher (then
/// they run there, and this waits for them); connections a dispatcher-bound
/// listener accepted but never offered are closed without a callback.
/// While it runs, opens return NETEV_ERR_SHUTDOWN; an open that returned
/// NETEV_OK before is ended by it. A second call made meanwhile waits for
/// the first (within its own timeout), then returns as it would alone.
///
/// NETEV_OK means every TERMINATE callback has returned, every
/// `user_data_free` has run, netev's threads are gone and nothing more will
/// be delivered. NETEV_ERR_TIMEOUT means the deadline passed first: every
/// object has been told to end, but netev's threads stay up, so a callback
/// still running finishes, and the last callbacks (CLOSE or ERROR,
/// TERMINATE) of those objects still run, on netev's threads or, for
/// dispatcher-bound ones, when the host runs or releases the dispatcher.
/// Call it again (it waits for what is left, then stops the threads)
/// before freeing what those callbacks use. One case differs: when every
/// object ended but a name lookup still blocks one of netev's threads (a
/// resolver cannot be interrupted), it returns NETEV_ERR_TIMEOUT with
/// everything delivered and stopped except those threads, which exit on
/// their own when their lookups return. Handles stay valid until
/// released; after NETEV_OK, a later open starts a fresh runtime. Returns
/// NETEV_ERR_WOULD_DEADLOCK inside any callback (the log callback and
/// `user_data_free` included: it waits for every callback to return),
/// NETEV_ERR_INVALID_ARGUMENT (NaN).
#[unsafe(no_mangle)]
pub extern "C" fn netev_runtime_shutdown(timeout_seconds: f64) -> netev_status {
    boundary(|| runtime::shutdown(wait_timeout(timeout_seconds)?))
}

/// Appends the lifecycle log to the file at `path` (created if needed),
/// replacing any log file already open. The NETEV_LOG_FILE environment
/// variable does the same when the runtime starts.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_ARGUMENT (UTF-8),
/// NETEV_ERR_PERMISSION_DENIED or NETEV_ERR_IO when it cannot be opened.
#[unsafe(no_mangle)]
pub extern "C" fn netev_log_open(path: *const c_char) -> netev_status {
    boundary(|| log::open(text(path, "path")?))
}

/// Closes the log file, if one is open.
#[unsafe(no_mangle)]
pub extern "C" fn netev_log_close() -> netev_status {
    boundary(|| {
        log::close();
        Ok(())
    })
}

/// Hands every log line to `callback` with `user_data` (NULL removes it).
/// It may run on any thread, concurrently; the line is borrowed until it
/// returns. It is a callback like the others: it never runs while netev
/// holds a lock, and may call any netev function, on the object the line is
/// about too (lines logged while netev holds a lock are handed over as soon
/// as it holds none, in order, on the same thread).
/// When this returns, calls of the callback it replaced that were running
/// on other threads have returned, and the old callback is never called
/// again: its `user_data` may be freed. Called from inside the log callback
/// itself, it does not wait for calls running on other threads.
#[unsafe(no_mangle)]
pub extern "C" fn netev_log_set_callback(
    callback: log::netev_log_callback,
    user_data: *mut c_void,
) -> netev_status {
    boundary(|| {
        log::set_callback(callback, user_data);
        Ok(())
    })
}

// ----- TLS configurations -------------------------------------------------

/// Fills the `size` bytes at `options` with the defaults — every path and
/// PEM pointer NULL, every bool false, zeros for fields this library does
/// not know — and sets `options->size` to `size`. Writes exactly `size`
/// bytes, and none when it fails. `size` is sizeof(netev_tls_options) as
/// the caller's header declares it, which the netev_tls_options_init macro
/// passes (see "Versions" at the end of this header).
///
/// Returns NETEV_ERR_NULL_ARGUMENT (`options` NULL),
/// NETEV_ERR_INVALID_ARGUMENT (`size` below the struct's first version or
/// above NETEV_OPTIONS_SIZE_MAX).
#[unsafe(no_mangle)]
pub extern "C" fn netev_tls_options_init_sized(
    options: *mut netev_tls_options,
    size: usize,
) -> netev_status {
    boundary(|| abi::init_sized(options, size, "options"))
}

/// netev_tls_options_init_sized with this library's own
/// sizeof(netev_tls_options), for bindings that mirror this version's
/// header exactly; in C and C++ the macro of the same name replaces calls
/// to it (see netev_connection_options_init).
/// Returns NETEV_ERR_NULL_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn netev_tls_options_init(options: *mut netev_tls_options) -> netev_status {
    boundary(|| abi::init_sized(options, std::mem::size_of::<netev_tls_options>(), "options"))
}

/// The options' strings, converted; the paths and PEM texts are only
/// borrowed for the create call.
fn tls_input<'a>(o: &netev_tls_options) -> Result<TlsInput<'a>> {
    let opt = |p: *const c_char, name: &str| -> Result<Option<&'a str>> {
        match p.is_null() {
            true => Ok(None),
            false => text(p, name).map(Some),
        }
    };
    Ok(TlsInput {
        ca_file: opt(o.ca_file, "ca_file")?,
        ca_pem: opt(o.ca_pem, "ca_pem")?,
        cert_file: opt(o.cert_file, "cert_file")?,
        cert_pem: opt(o.cert_pem, "cert_pem")?,
        key_file: opt(o.key_file, "key_file")?,
        key_pem: opt(o.key_pem, "key_pem")?,
        alpn: opt(o.alpn, "alpn")?,
        insecure_skip_verify: o.insecure_skip_verify,
        require_client_cert: o.require_client_cert,
        tls13_only: o.tls13_only,
    })
}

/// Builds a TLS client configuration and stores its handle in `*out`: set
/// it as `tls` in the options of any number of client connections. The
/// server's chain and name are verified: against `ca_file`/`ca_pem`, or,
/// with neither, the system's trust store (read now, with
/// rustls-native-certs). A client certificate (`cert_*` and `key_*`) is
/// offered to servers that ask for one. Everything is read during the
/// call; the caller owns the handle until `netev_tls_config_release`.
/// Thread-safe; the crypto is rustls with ring.
///
/// Returns NETEV_ERR_NULL_ARGUMENT (`out` NULL), NETEV_ERR_INVALID_ARGUMENT
/// (invalid UTF-8, a certificate without its key or the reverse, both the
/// file and the PEM of one item, `require_client_cert` set, a bad `alpn`
/// list, a bad `size` or bool: see "Versions"), NETEV_ERR_TLS (a file that
/// cannot be read, bad PEM, a key that does not match its certificate, no
/// root in the system's store: the reason in netev_last_error_message,
/// never the key), NETEV_ERR_SHUTDOWN (forked child).
#[unsafe(no_mangle)]
pub extern "C" fn netev_tls_client_config_create(
    options: *const netev_tls_options,
    out: *mut netev_tls_config,
) -> netev_status {
    boundary(|| {
        need(options, "options")?;
        need(out, "out")?;
        let o = read_options(options, "options")?;
        let c = TlsConfig::client(&tls_input(&o)?)?;
        put(out, "out", c.id)
    })
}

/// Builds a TLS server configuration and stores its handle in `*out`: set
/// it as `tls` in a listener's `connection_defaults` (its connections then
/// speak only TLS), or per connection in `on_connection`. `cert_*` (the
/// chain, leaf first) and `key_*` are required. With
/// `require_client_cert`, clients must present a certificate signed by
/// `ca_file`/`ca_pem` (required then). The caller owns the handle until
/// `netev_tls_config_release`.
///
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_ARGUMENT (a missing
/// certificate or key, `require_client_cert` without CAs,
/// `insecure_skip_verify` set, as for the client otherwise), NETEV_ERR_TLS
/// (as for the client), NETEV_ERR_SHUTDOWN.
#[unsafe(no_mangle)]
pub extern "C" fn netev_tls_server_config_create(
    options: *const netev_tls_options,
    out: *mut netev_tls_config,
) -> netev_status {
    boundary(|| {
        need(options, "options")?;
        need(out, "out")?;
        let o = read_options(options, "options")?;
        let c = TlsConfig::server(&tls_input(&o)?)?;
        put(out, "out", c.id)
    })
}

/// Gives back the handle from a `_config_create`: it is invalid when this
/// returns. Connections (and listeners' defaults) already using the
/// configuration keep it alive, and connections opened afterwards cannot
/// name it. Returns NETEV_ERR_INVALID_HANDLE (also on a double release).
#[unsafe(no_mangle)]
pub extern "C" fn netev_tls_config_release(config: netev_tls_config) -> netev_status {
    boundary(|| {
        TlsConfig::get(config)?.release();
        Ok(())
    })
}

// ----- UDP sockets --------------------------------------------------------

/// Fills the `size` bytes at `options` with the defaults — callbacks,
/// pointers and handles NULL/0, `reuse_port` and `broadcast` false,
/// `send_buffer_limit` 0 (1 MiB), zeros for fields this library does not
/// know — and sets `options->size` to `size`, as
/// netev_connection_options_init_sized does.
/// Returns NETEV_ERR_NULL_ARGUMENT (`options` NULL),
/// NETEV_ERR_INVALID_ARGUMENT (`size` below the struct's first version or
/// above NETEV_OPTIONS_SIZE_MAX).
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_options_init_sized(
    options: *mut netev_udp_options,
    size: usize,
) -> netev_status {
    boundary(|| abi::init_sized(options, size, "options"))
}

/// netev_udp_options_init_sized with this library's own
/// sizeof(netev_udp_options), for bindings that mirror this version's
/// header exactly; in C and C++ the macro of the same name replaces calls
/// to it. Returns NETEV_ERR_NULL_ARGUMENT.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_options_init(options: *mut netev_udp_options) -> netev_status {
    netev_udp_options_init_sized(options, std::mem::size_of::<netev_udp_options>())
}

/// Opens a UDP socket on `port` (0 = a free one: see netev_udp_port) and
/// stores its handle in `*out`. The socket is bound when this returns (a
/// port in use fails here); datagrams are read in the background, one DATA
/// per datagram (never merged or split, up to 65 535 bytes; an empty one
/// is a DATA with `data` NULL and `data_len` 0) with the sender's `ip` and
/// `port`. With `bind_address` NULL it listens on every interface, IPv6
/// and IPv4 (an IPv4 sender shows as "a.b.c.d", never "::ffff:").
///
/// `options` may be NULL for the defaults; netev copies it. The caller
/// owns the handle and gives it back with netev_udp_release. Callbacks run
/// on netev's I/O threads, or on the thread that runs the dispatcher named
/// in `options`; they never overlap. ERROR events (a send the OS refused,
/// a name that did not resolve) do not end the socket; TERMINATE is last
/// and once, after netev_udp_close, netev_udp_release or runtime shutdown.
///
/// A dispatcher-bound socket whose host does not dispatch holds at most
/// 1 MiB of undelivered datagrams (counting 128 bytes of bookkeeping
/// each); past it netev stops reading and the kernel drops what comes.
///
/// Returns NETEV_ERR_NULL_ARGUMENT (`out` NULL), NETEV_ERR_INVALID_ARGUMENT
/// (a `bind_address` that is no IP address, invalid UTF-8, a bool other
/// than 0 or 1, a bad `size`), NETEV_ERR_INVALID_HANDLE (`dispatcher`),
/// NETEV_ERR_ADDRESS_IN_USE and other OS errors from bind,
/// NETEV_ERR_SHUTDOWN (forked child). When it fails no callback fires.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_open(
    port: u16,
    options: *const netev_udp_options,
    out: *mut netev_udp_socket,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let o = read_options(options, "options")?;
        let bind_address = match o.bind_address.is_null() {
            true => None,
            false => Some(text(o.bind_address, "bind_address")?),
        };
        UdpSocket::open(port, &o, bind_address, |id| {
            let _ = put(out, "out", id);
        })?;
        Ok(())
    })
}

/// Sends a copy of `len` bytes at `data` as one datagram to `host` (an IP
/// literal, or a name resolved in the background: the datagram waits,
/// after those sent before it, until the name resolves; the first address
/// the resolver gives that the socket can reach is used, and kept 30 s)
/// and `port`. Datagrams leave in the order sent. With nothing
/// queued it goes out on the calling thread. `data` may be NULL when `len`
/// is 0 (an empty datagram). A name that does not resolve gives an ERROR
/// event (NETEV_ERR_HOST_NOT_FOUND) and its datagrams are dropped; the
/// socket goes on.
/// Returns NETEV_ERR_INVALID_ARGUMENT (a datagram over 65 507 bytes, or
/// 65 527 to an IPv6 literal; port 0; an empty host; an address of a
/// family the socket cannot reach; invalid UTF-8), NETEV_ERR_BUFFER_FULL
/// (the queued bytes plus `len` would pass `send_buffer_limit`; nothing is
/// queued, and no DRAIN follows: a later send may succeed; a datagram into
/// an empty queue is always taken, so none is refused forever),
/// NETEV_ERR_CLOSED (after close), an OS error refusing it at once (e.g.
/// NETEV_ERR_PERMISSION_DENIED for a broadcast address without
/// `broadcast`), NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE. Each
/// refusal is also in the socket's errors list.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_send(
    sock: netev_udp_socket,
    data: *const c_void,
    len: usize,
    host: *const c_char,
    port: u16,
) -> netev_status {
    boundary(|| {
        let s = UdpSocket::get(sock)?;
        let host = text(host, "host").map_err(|e| s.refuse_call(e))?;
        let bytes = if len == 0 {
            &[][..]
        } else {
            need(data, "data")?;
            check_size(len, "len").map_err(|e| s.refuse_call(e))?;
            // SAFETY: non-NULL was checked; the host promises `len`
            // readable bytes at `data` for the duration of the call.
            unsafe { std::slice::from_raw_parts(data.cast::<u8>(), len) }
        };
        s.send(bytes, host, port)
    })
}

/// The port the socket is bound to (the one picked for port 0).
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_port(sock: netev_udp_socket, out: *mut u16) -> netev_status {
    udp_property(sock, out, |s| s.port())
}

/// Stores one property of a live UDP socket through a required out-pointer.
fn udp_property<T>(
    sock: netev_udp_socket,
    out: *mut T,
    get: impl FnOnce(&UdpSocket) -> T,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let s = UdpSocket::get(sock)?;
        put(out, "out", get(&s))
    })
}

/// Joins the multicast group `group` (an IPv4 or IPv6 multicast address)
/// on the interface with IPv4 address `interface_address` (NULL = the
/// default interface; IPv6 groups take NULL only).
/// Returns NETEV_ERR_INVALID_ARGUMENT (not a multicast address, a group
/// of a family the socket does not have, a bad interface address), an OS
/// error when the machine does not allow it, NETEV_ERR_CLOSED,
/// NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE; each failure is also
/// in the socket's errors list.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_join_multicast(
    sock: netev_udp_socket,
    group: *const c_char,
    interface_address: *const c_char,
) -> netev_status {
    multicast(sock, group, interface_address, true)
}

/// Leaves a group joined with netev_udp_join_multicast; the same statuses.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_leave_multicast(
    sock: netev_udp_socket,
    group: *const c_char,
    interface_address: *const c_char,
) -> netev_status {
    multicast(sock, group, interface_address, false)
}

fn multicast(
    sock: netev_udp_socket,
    group: *const c_char,
    interface_address: *const c_char,
    join: bool,
) -> netev_status {
    boundary(|| {
        let s = UdpSocket::get(sock)?;
        let group = text(group, "group").map_err(|e| s.refuse_call(e))?;
        let interface = match interface_address.is_null() {
            true => None,
            false => {
                Some(text(interface_address, "interface_address").map_err(|e| s.refuse_call(e))?)
            }
        };
        s.multicast(group, interface, join)
    })
}

/// Stops the socket: it is closed when this returns (its port is free for
/// another bind), datagrams queued to send are dropped, and so are
/// datagrams received but not yet delivered: no DATA callback starts once
/// this returned (one already running finishes). TERMINATE follows.
/// Calling it again is harmless. The handle stays valid until released.
/// Returns NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_close(sock: netev_udp_socket) -> netev_status {
    boundary(|| {
        UdpSocket::get(sock)?.close();
        Ok(())
    })
}

/// Gives back the caller's handle; closes the socket first if it is still
/// open (TERMINATE follows). The handle is invalid once this returned and
/// TERMINATE was delivered. Returns NETEV_ERR_INVALID_HANDLE (also on a
/// second release).
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_release(sock: netev_udp_socket) -> netev_status {
    boundary(|| UdpSocket::get(sock)?.release())
}

/// How many entries the socket's errors list holds (the newest 64).
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_error_count(sock: netev_udp_socket, out: *mut usize) -> netev_status {
    udp_property(sock, out, |s| s.error_count())
}

/// Copies entry `index` (0 = oldest) of the errors list into `*out`.
/// Returns NETEV_ERR_NULL_ARGUMENT, NETEV_ERR_INVALID_HANDLE,
/// NETEV_ERR_INVALID_ARGUMENT when `index` >= the error count.
#[unsafe(no_mangle)]
pub extern "C" fn netev_udp_error_at(
    sock: netev_udp_socket,
    index: usize,
    out: *mut netev_error_info,
) -> netev_status {
    boundary(|| {
        need(out, "out")?;
        let s = UdpSocket::get(sock)?;
        let info = s
            .error_at(index)
            .ok_or_else(|| Error::invalid(format!("index {index} is past the errors list")))?;
        put(out, "out", info)
    })
}
