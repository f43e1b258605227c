//! Connections (4D's TCPConnection), client and accepted: the options, the
//! settings, and what hosts call. `driver` is its I/O on its loop's thread,
//! `deliver` how its events reach the host.
//!
//! One loop drives each connection, so its callbacks are serialized by
//! construction. Hosts talk to it through `State` (one short-held mutex,
//! never held while calling the host) and a request for a turn on its loop.

mod deliver;
mod driver;
mod stats;

pub use stats::netev_connection_stats;

use crate::dispatch::Dispatcher;
use crate::error::{Error, ErrorList, Result, Status, netev_error_info};
use crate::event::{EventType, Remote, netev_event};
use crate::framing::Framing;
use crate::io_loop::LoopHandle;
use crate::log::log;
use crate::registry::{self, Registered, netev_connection, netev_dispatcher, netev_listener};
use crate::runtime;
use crate::send_queue::{Owned, SendQueue};
use crate::sync::{Guard, Mutex};
use crate::tls::{TlsConfig, netev_tls_config};
use deliver::Outbox;
use driver::Drive;
use std::cell::Cell;
use std::ffi::{c_char, c_void};
use std::io::IoSlice;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Receives one event of a connection. `event` is borrowed until the
/// callback returns; `conn` is the connection's handle.
#[allow(non_camel_case_types)]
pub type netev_connection_callback = Option<
    unsafe extern "C" fn(conn: netev_connection, event: *const netev_event, user_data: *mut c_void),
>;

/// Frees a connection's `user_data`; called once, after TERMINATE.
#[allow(non_camel_case_types)]
pub type netev_user_data_free = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// How a connection behaves. Fill it with `netev_connection_options_init`,
/// then set what you need; netev copies it during the open call (its first
/// `size` bytes: see NETEV_OPTIONS_HAS and "Versions" at the end of this
/// header).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct netev_connection_options {
    /// sizeof(netev_connection_options) as the host's header declares it,
    /// set by netev_connection_options_init: which fields the host has.
    pub size: u32,
    /// CONNECTION: the connection is established.
    pub on_connection: netev_connection_callback,
    /// DATA: bytes arrived (in order, in arbitrary pieces).
    pub on_data: netev_connection_callback,
    /// CLOSE: the connection closed properly (4D's onShutdown).
    pub on_shutdown: netev_connection_callback,
    /// ERROR: the connection failed; TERMINATE follows.
    pub on_error: netev_connection_callback,
    /// TERMINATE: the last event, always delivered once.
    pub on_terminate: netev_connection_callback,
    /// DRAIN: after a refused send, the queue fell to half the limit.
    pub on_drain: netev_connection_callback,
    /// END: the peer finished sending.
    pub on_end: netev_connection_callback,
    /// Passed to every callback; the host owns it.
    pub user_data: *mut c_void,
    /// Called once with `user_data` after TERMINATE; may be NULL.
    pub user_data_free: netev_user_data_free,
    /// TCP_NODELAY: send small writes at once.
    pub no_delay: bool,
    /// false: when the peer ends, netev shuts our side too once queued bytes
    /// are out. true: the host keeps sending and ends with shutdown or close.
    pub allow_half_open: bool,
    /// Seconds of idle before TCP keepalive probes; 0 = off. Applied in
    /// whole seconds, rounded up (at least 1); above 32767 (the most Linux
    /// takes), open gives NETEV_ERR_INVALID_ARGUMENT.
    pub keepalive: f64,
    /// Seconds without traffic before ERROR(NETEV_ERR_TIMEOUT); 0 = none.
    pub idle_timeout: f64,
    /// Seconds for name lookup and connect together; 0 = 30. With TLS the
    /// handshake has as long again, from the TCP connect (or accept) on:
    /// past it, ERROR(NETEV_ERR_TIMEOUT, component "tls").
    pub connection_timeout: f64,
    /// Bytes queued but unsent before send refuses; 0 = 8 MiB.
    pub send_buffer_limit: usize,
    /// Dispatcher that runs the callbacks; 0 = netev's own I/O threads.
    pub dispatcher: netev_dispatcher,
    /// Client: the local IP (IPv4 or IPv6 text) to bind before
    /// connecting; NULL = any. Only addresses of its family are tried.
    /// Copied at open; accepted connections ignore it.
    pub bind_address: *const c_char,
    /// Client: the local port to bind before connecting; 0 = any (picked
    /// at connect time, so one bind_address serves more connections than
    /// it has free ports). Accepted connections ignore it.
    pub bind_port: u16,
    /// NETEV_FRAMING_NONE (0): DATA carries bytes as they arrive.
    /// NETEV_FRAMING_DELIMITER (1): each DATA is one frame without its
    /// delimiter (an empty frame is a DATA with `data` NULL and
    /// `data_len` 0); at END a trailing partial frame
    /// comes as a last DATA. NETEV_FRAMING_LENGTH_PREFIX (2): each DATA is
    /// one frame's payload; END inside a frame is ERROR
    /// NETEV_ERR_PROTOCOL. A frame over `max_frame` is ERROR
    /// NETEV_ERR_PROTOCOL (nothing of it is delivered), then TERMINATE.
    pub framing: u8,
    /// Length-prefix framing: the prefix's size, 1, 2, 4 or 8 bytes,
    /// big-endian, counting the payload only; 0 = 4.
    pub length_prefix_bytes: u8,
    /// Delimiter framing: the delimiter, 1 to 16 bytes (for example "\r\n"),
    /// copied at open (for options a listener's on_connection returns:
    /// once the callback returned; the defaults it is handed point at
    /// netev's own copy). Must be NULL with other framing.
    pub delimiter: *const u8,
    /// The delimiter's length in bytes.
    pub delimiter_len: usize,
    /// With framing, the largest frame accepted, in bytes; 0 = 1 MiB.
    /// netev never holds more than this (plus a delimiter) of a frame.
    pub max_frame: usize,
    /// TLS: a client configuration (netev_tls_client_config_create) for a
    /// client connection, a server one for a listener's connections; 0 =
    /// plain TCP. The connection holds its own reference: the host may
    /// release the configuration right after open. With TLS, CONNECTION
    /// fires once the handshake completed; DATA carries plaintext.
    pub tls: netev_tls_config,
    /// Client: the name sent in TLS SNI and verified against the server's
    /// certificate; NULL = the address given to open (a name, or an IP
    /// literal, verified against the certificate's IP addresses and sent
    /// as no SNI). Copied at open. Listeners never read it.
    pub server_name: *const c_char,
}

impl netev_connection_options {
    /// Whether every field is the same (function pointers by address), so
    /// that settings validated once can be shared.
    pub(crate) fn same_as(&self, o: &Self) -> bool {
        let callbacks = |x: &Self| {
            [
                x.on_connection,
                x.on_data,
                x.on_shutdown,
                x.on_error,
                x.on_terminate,
                x.on_drain,
                x.on_end,
            ]
            .map(|cb| cb.map_or(0, |f| f as usize))
        };
        callbacks(self) == callbacks(o)
            && self.size == o.size
            && self.user_data == o.user_data
            && self.user_data_free.map_or(0, |f| f as usize)
                == o.user_data_free.map_or(0, |f| f as usize)
            && self.no_delay == o.no_delay
            && self.allow_half_open == o.allow_half_open
            && self.keepalive.to_bits() == o.keepalive.to_bits()
            && self.idle_timeout.to_bits() == o.idle_timeout.to_bits()
            && self.connection_timeout.to_bits() == o.connection_timeout.to_bits()
            && self.send_buffer_limit == o.send_buffer_limit
            && self.dispatcher == o.dispatcher
            && self.bind_address == o.bind_address
            && self.bind_port == o.bind_port
            && self.framing == o.framing
            && self.length_prefix_bytes == o.length_prefix_bytes
            && self.delimiter == o.delimiter
            && self.delimiter_len == o.delimiter_len
            && self.max_frame == o.max_frame
            && self.tls == o.tls
            && self.server_name == o.server_name
    }
}

impl Default for netev_connection_options {
    fn default() -> Self {
        netev_connection_options {
            size: std::mem::size_of::<Self>() as u32,
            on_connection: None,
            on_data: None,
            on_shutdown: None,
            on_error: None,
            on_terminate: None,
            on_drain: None,
            on_end: None,
            user_data: std::ptr::null_mut(),
            user_data_free: None,
            no_delay: false,
            allow_half_open: false,
            keepalive: 0.0,
            idle_timeout: 0.0,
            connection_timeout: 0.0,
            send_buffer_limit: 0,
            dispatcher: 0,
            bind_address: std::ptr::null(),
            bind_port: 0,
            framing: 0,
            length_prefix_bytes: 0,
            delimiter: std::ptr::null(),
            delimiter_len: 0,
            max_frame: 0,
            tls: 0,
            server_name: std::ptr::null(),
        }
    }
}

// SAFETY: #[repr(C)], `size: u32` first, Default is zeros and the size;
// its fields are callbacks (Option<fn>), pointers, numbers and two bools.
unsafe impl crate::abi::Versioned for netev_connection_options {
    const NAME: &'static str = "netev_connection_options";
    const FIRST_SIZE: usize = std::mem::offset_of!(netev_connection_options, dispatcher)
        + std::mem::size_of::<netev_dispatcher>();
    const BOOLS: &'static [(&'static str, usize)] = &[
        (
            "no_delay",
            std::mem::offset_of!(netev_connection_options, no_delay),
        ),
        (
            "allow_half_open",
            std::mem::offset_of!(netev_connection_options, allow_half_open),
        ),
    ];
}

/// Seconds a connect may take when `connection_timeout` is 0.
pub const NETEV_DEFAULT_CONNECTION_TIMEOUT_SECONDS: u64 = 30;
/// Bytes `send` may queue when `send_buffer_limit` is 0.
pub const NETEV_DEFAULT_SEND_BUFFER_LIMIT: usize = 8 << 20;
/// Received bytes a dispatcher-bound connection may hold undelivered before
/// it stops reading (API.md allows 1 MiB; one more read may land past it,
/// and the buffer holding them at most doubles).
const UNDELIVERED_LIMIT: usize = 256 << 10;
/// Largest keepalive idle time Linux takes (MAX_TCP_KEEPIDLE).
const MAX_KEEPALIVE_SECONDS: u64 = 32_767;
/// Longest duration accepted; larger values (and infinity) mean "practically never".
const MAX_SECONDS: f64 = 1e9;

/// A seconds value from the host: NaN or negative is invalid, 0 is None.
pub fn seconds(value: f64, what: &str) -> Result<Option<Duration>> {
    if value.is_nan() || value < 0.0 {
        return Err(Error::invalid(format!(
            "{what} must be 0 or a positive number of seconds, not {value}"
        )));
    }
    if value == 0.0 {
        return Ok(None);
    }
    Ok(Some(Duration::from_secs_f64(value.min(MAX_SECONDS))))
}

/// The keepalive idle time: whole seconds, rounded up, at least 1, at most
/// what the OS takes, so a bad value fails `open` rather than the connection.
fn keepalive(value: f64) -> Result<Option<Duration>> {
    let Some(t) = seconds(value, "keepalive")? else {
        return Ok(None);
    };
    let whole = t.as_secs() + u64::from(t.subsec_nanos() > 0);
    if whole > MAX_KEEPALIVE_SECONDS {
        return Err(Error::invalid(format!(
            "keepalive is {value} s; the most the OS takes is {MAX_KEEPALIVE_SECONDS} s"
        )));
    }
    Ok(Some(Duration::from_secs(whole.max(1))))
}

pub(crate) use crate::sync::HostPtr;

/// Validated connection settings.
#[derive(Clone)]
pub struct Config {
    callbacks: [netev_connection_callback; 8],
    user_data: HostPtr,
    user_data_free: netev_user_data_free,
    pub no_delay: bool,
    pub allow_half_open: bool,
    pub keepalive: Option<Duration>,
    pub idle_timeout: Option<Duration>,
    pub connection_timeout: Duration,
    pub send_buffer_limit: usize,
    pub dispatcher: Option<Arc<Dispatcher>>,
    /// TLS: the configuration, and for a client the name it sends (SNI)
    /// and verifies, set at open.
    pub tls: Option<Arc<TlsConfig>>,
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    pub framing: Option<Framing>,
    /// Client: the local address to bind before connecting (set at open).
    pub bind: Option<Bind>,
}

/// A client's local end, bound before connecting.
#[derive(Clone, Copy, Debug)]
pub struct Bind {
    /// None: any address of the destination's family.
    pub ip: Option<std::net::IpAddr>,
    /// 0: any port.
    pub port: u16,
}

impl Config {
    /// Validates options. The C ABI reads a host's struct with
    /// `abi::read` first (its `size` bytes over the defaults); here `o` is
    /// a whole struct of this version, whose `size` must still be at least
    /// the first version's (a struct no init function set is refused).
    pub fn from_options(o: &netev_connection_options) -> Result<Config> {
        Self::from_options_with(o, None)
    }

    /// As `from_options`; a `tls` naming `held` (a configuration the
    /// caller already holds, as a listener holds its defaults') takes it
    /// even when the host has released its handle since.
    pub fn from_options_with(
        o: &netev_connection_options,
        held: Option<&Arc<TlsConfig>>,
    ) -> Result<Config> {
        let first = <netev_connection_options as crate::abi::Versioned>::FIRST_SIZE;
        if (o.size as usize) < first {
            return Err(Error::invalid(format!(
                "connection options size is {}, below {first}: initialise them with \
                 netev_connection_options_init",
                o.size,
            )));
        }
        let delimiter = match (o.delimiter.is_null(), o.delimiter_len) {
            (true, 0) => None,
            (true, _) => return Err(Error::null("delimiter (delimiter_len is not 0)")),
            (false, n) if n > crate::framing::MAX_DELIMITER => {
                return Err(Error::invalid(format!(
                    "delimiter_len is {n}: a delimiter is 1 to {} bytes",
                    crate::framing::MAX_DELIMITER
                )));
            }
            // SAFETY: non-NULL, and at most 16 bytes; the header asks the
            // host for `delimiter_len` readable bytes there during the call
            // (they are copied).
            (false, n) => Some(unsafe { std::slice::from_raw_parts(o.delimiter, n) }),
        };
        let framing = Framing::new(o.framing, o.length_prefix_bytes, delimiter, o.max_frame)?;
        let dispatcher = match o.dispatcher {
            0 => None,
            id => Some(Dispatcher::get(id)?),
        };
        let tls = match (o.tls, held) {
            (0, _) => None,
            (id, Some(t)) if t.id == id => Some(t.clone()),
            (id, _) => Some(TlsConfig::get(id)?),
        };
        let mut callbacks = [None; 8];
        for (ty, cb) in [
            (EventType::NETEV_EVENT_CONNECTION, o.on_connection),
            (EventType::NETEV_EVENT_DATA, o.on_data),
            (EventType::NETEV_EVENT_ERROR, o.on_error),
            (EventType::NETEV_EVENT_CLOSE, o.on_shutdown),
            (EventType::NETEV_EVENT_TERMINATE, o.on_terminate),
            (EventType::NETEV_EVENT_DRAIN, o.on_drain),
            (EventType::NETEV_EVENT_END, o.on_end),
        ] {
            callbacks[ty as usize] = cb;
        }
        Ok(Config {
            callbacks,
            user_data: HostPtr(o.user_data),
            user_data_free: o.user_data_free,
            no_delay: o.no_delay,
            allow_half_open: o.allow_half_open,
            keepalive: keepalive(o.keepalive)?,
            idle_timeout: seconds(o.idle_timeout, "idle_timeout")?,
            connection_timeout: seconds(o.connection_timeout, "connection_timeout")?.unwrap_or(
                Duration::from_secs(NETEV_DEFAULT_CONNECTION_TIMEOUT_SECONDS),
            ),
            send_buffer_limit: match o.send_buffer_limit {
                0 => NETEV_DEFAULT_SEND_BUFFER_LIMIT,
                n => n,
            },
            dispatcher,
            tls,
            server_name: None,
            framing,
            bind: None,
        })
    }

    /// Checks the TLS configuration fits the side: a client one for a
    /// client connection, a server one for an accepted connection.
    pub fn check_tls_side(&self, client: bool) -> Result<()> {
        match &self.tls {
            Some(t) if t.is_client() != client => Err(Error::invalid(format!(
                "tls {} is a {} configuration; a {} connection needs a {} one",
                t.id,
                if t.is_client() { "client" } else { "server" },
                if client { "client" } else { "listener's" },
                if client { "client" } else { "server" },
            ))),
            _ => Ok(()),
        }
    }

    fn callback(&self, ty: EventType) -> netev_connection_callback {
        self.callbacks[ty as usize]
    }
}

impl Default for Config {
    fn default() -> Self {
        // Defaults never fail validation: no dispatcher, no bad numbers.
        Config {
            callbacks: [None; 8],
            user_data: HostPtr(std::ptr::null_mut()),
            user_data_free: None,
            no_delay: false,
            allow_half_open: false,
            keepalive: None,
            idle_timeout: None,
            connection_timeout: Duration::from_secs(NETEV_DEFAULT_CONNECTION_TIMEOUT_SECONDS),
            send_buffer_limit: NETEV_DEFAULT_SEND_BUFFER_LIMIT,
            dispatcher: None,
            tls: None,
            server_name: None,
            framing: None,
            bind: None,
        }
    }
}

#[derive(Default)]
struct State {
    /// The loop's part: the socket, where the connection is in its life.
    drive: Drive,
    /// Bytes queued but not yet written.
    out: SendQueue,
    /// No more sends: shut the write side once `out` is written.
    write_shut_requested: bool,
    write_shut_done: bool,
    close_requested: bool,
    /// The host called shutdown: ends a wait.
    host_shutdown: bool,
    /// The `closed` property.
    closed: bool,
    /// CLOSE or ERROR is decided: nothing more goes out.
    finished: bool,
    /// A send was refused: DRAIN is owed once the queue is low.
    refused: bool,
    /// TERMINATE is being delivered: the host has seen, or is seeing, the end.
    terminating: bool,
    /// The TERMINATE callback has returned.
    terminated: bool,
    host_refs: u32,
    /// Threads blocked in `wait` (immediate mode).
    waiters: u32,
    last_write: Option<Instant>,
    /// Allocated on the first error: most connections never have one.
    errors: Option<Box<ErrorList>>,
}

impl State {
    fn queued(&self) -> usize {
        self.out.len()
    }
}

/// One TCP connection: a client one from `open`, or (later) an accepted one.
pub struct Connection {
    pub id: netev_connection,
    /// As given to open; empty (no allocation) for an accepted connection,
    /// whose address is its peer's IP, kept in `remote`.
    address: Box<str>,
    port: u16,
    listener: netev_listener,
    /// Set when the connection starts: an accepted connection exists (its
    /// handle is live) while the listener's host chooses its options.
    cfg: OnceLock<Arc<Config>>,
    remote: OnceLock<Remote>,
    state: Mutex<State>,
    /// Dispatcher mode's events waiting for the host (made on first use).
    outbox: OnceLock<Box<Mutex<Outbox>>>,
    /// The loop that drives it, once started.
    lp: OnceLock<Arc<LoopHandle>>,
    /// Itself, for asking its loop for a turn from a `&self` method.
    me: Weak<Connection>,
    /// Signals waiters in `wait` when no dispatcher is involved.
    ended: Condvar,
    /// The handle is in the table (see `current`).
    in_table: AtomicBool,
    /// The host paused reading: no DATA or END until it resumes.
    paused: AtomicBool,
    counters: stats::Counters,
}

/// How the connection ended.
enum End {
    Close,
    Error(Error),
}

/// What runs after a callback, on the same thread, in event order.
#[derive(Clone, Copy)]
enum After {
    Nothing,
    /// After END: shut our write side unless half-open is allowed.
    AutoShutdown,
    /// After TERMINATE: free user_data and the handle.
    Terminated,
}

thread_local! {
    /// Each I/O thread's read buffer: connections hold none while idle.
    static READ_BUF: Cell<Option<Box<[u8]>>> = const { Cell::new(None) };
    /// The connection whose callback runs on this thread (see `current`).
    static CURRENT: Cell<*const Connection> = const { Cell::new(std::ptr::null()) };
    /// The incoming connection whose accept callback runs on this thread.
    static DECIDING: Cell<netev_connection> = const { Cell::new(0) };
}

/// Runs `f` (the accept callback offering connection `id`) marked as such:
/// a wait on `id` inside it could never end.
pub(crate) fn deciding<R>(id: netev_connection, f: impl FnOnce() -> R) -> R {
    let outer = DECIDING.replace(id);
    let r = f();
    DECIDING.set(outer);
    r
}

static DEFAULT_CONFIG: LazyLock<Config> = LazyLock::new(Config::default);

impl Registered for Connection {
    fn shutdown_round(&self) {
        self.close_now();
    }
    fn dispatcher_released(&self, id: netev_dispatcher) {
        if self.dispatcher_id() == id {
            self.close_now();
        }
    }
}

impl Connection {
    /// Starts connecting to `address`:`port` in the background and returns
    /// the connection, registered under its handle. `publish` receives the
    /// handle before anything can happen to the connection, so a host's
    /// out-pointer is written before any callback can run.
    pub fn open(
        address: &str,
        port: u16,
        cfg: Config,
        publish: impl FnOnce(netev_connection),
    ) -> Result<Arc<Connection>> {
        if port == 0 {
            return Err(Error::invalid("port 0 is not a valid destination port"));
        }
        if address.is_empty() {
            return Err(Error::invalid("the address is empty"));
        }
        let rt = runtime::opening()?;
        let id = registry::reserve();
        let conn = Connection::new(id, address.into(), port, 0, 1);
        log!("connection", id, "open {address} port {port}");
        conn.register();
        publish(id);
        conn.start(&rt, Arc::new(cfg), None);
        Ok(conn)
    }

    /// A connection a listener accepted and is offering to its host: its
    /// handle is live (retain and the getters work) before the host decides.
    /// netev owns it (no host reference yet). Follow with `accept` or `discard`.
    pub(crate) fn incoming(
        id: netev_connection,
        peer: std::net::SocketAddr,
        listener: netev_listener,
    ) -> Arc<Connection> {
        let remote = Remote::new(peer);
        let conn = Connection::new(id, Box::default(), peer.port(), listener, 0);
        let _ = conn.remote.set(remote);
        conn.register();
        conn
    }

    /// Starts an incoming connection with the options its host chose.
    pub(crate) fn accept(
        self: &Arc<Self>,
        stream: mio::net::TcpStream,
        cfg: Arc<Config>,
        rt: &runtime::Opening,
    ) {
        self.start(rt, cfg, Some(stream));
    }

    /// Ends an incoming connection that never started (rejected, or its
    /// options invalid): no callback fires; a handle the host retained in
    /// the accept callback stays readable (closed) until released.
    pub(crate) fn discard(&self) {
        let mut st = self.lock();
        st.finished = true;
        st.closed = true;
        st.terminating = true;
        st.terminated = true;
        let unowned = st.host_refs == 0;
        drop(st);
        if unowned {
            self.unregister();
        }
    }

    fn register(self: &Arc<Self>) {
        self.in_table.store(true, Ordering::Release);
        registry::insert(self.id, self.clone());
    }

    /// Removes the handle: calls on it fail from now on, from any thread.
    fn unregister(&self) {
        self.in_table.store(false, Ordering::Release);
        registry::remove(self.id);
    }

    /// The connection `id` names.
    pub fn get(id: netev_connection) -> Result<Arc<Connection>> {
        registry::usable()?;
        if let Some(c) = Connection::current(id) {
            return Ok(c);
        }
        registry::get(id, "connection")
    }

    /// This connection, if `id` names it and one of its callbacks is running
    /// on this thread: found without the handle table, which is the
    /// common case of a callback sending on its own connection.
    pub(crate) fn current(id: netev_connection) -> Option<Arc<Connection>> {
        let p = CURRENT.get();
        if p.is_null() {
            return None;
        }
        // SAFETY: CURRENT is set only by `invoke` around a callback, while
        // its caller holds an Arc to this connection, and restored before
        // that Arc can go: the pointee is alive while the callback runs.
        let c = unsafe { &*p };
        if c.id != id || !c.in_table.load(Ordering::Acquire) {
            return None;
        }
        // SAFETY: `p` points into a live Arc's allocation (see above); the
        // new strong count is given back when the returned Arc drops.
        unsafe {
            Arc::increment_strong_count(p);
            Some(Arc::from_raw(p))
        }
    }

    /// The connection's settings; the defaults while an incoming connection
    /// waits for its host's decision.
    fn cfg(&self) -> &Config {
        self.cfg.get().map_or(&DEFAULT_CONFIG, |c| c)
    }

    /// Fixes the settings and hands the connection to a loop.
    fn start(
        self: &Arc<Self>,
        rt: &runtime::Opening,
        cfg: Arc<Config>,
        accepted: Option<mio::net::TcpStream>,
    ) {
        if let Some(d) = &cfg.dispatcher {
            d.bind();
        }
        let _ = self.cfg.set(cfg);
        runtime::object_started();
        if let Some(socket) = accepted {
            self.lock().drive.socket = Some(socket);
        }
        let lp = rt.next_loop();
        let _ = self.lp.set(lp.clone());
        lp.add(self.clone());
    }

    fn new(
        id: netev_connection,
        address: Box<str>,
        port: u16,
        listener: u64,
        host_refs: u32,
    ) -> Arc<Connection> {
        Arc::new_cyclic(|me| Connection {
            id,
            address,
            port,
            listener,
            cfg: OnceLock::new(),
            remote: OnceLock::new(),
            state: Mutex::new(State {
                host_refs,
                ..State::default()
            }),
            outbox: OnceLock::new(),
            lp: OnceLock::new(),
            me: me.clone(),
            ended: Condvar::new(),
            in_table: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            counters: stats::Counters::default(),
        })
    }

    fn lock(&self) -> Guard<'_, State> {
        self.state.lock()
    }

    /// Records a failed host call on this connection and returns it.
    fn refuse(&self, st: &mut State, e: Error) -> Error {
        st.errors.get_or_insert_default().push(e.clone());
        e
    }

    /// Records a host call refused before it reached the connection (a bad
    /// argument) and returns it.
    pub fn refuse_call(&self, e: Error) -> Error {
        let mut st = self.lock();
        self.refuse(&mut st, e)
    }

    /// Queues `data` (copied) after every byte sent before it.
    pub fn send(&self, data: &[u8]) -> Result<()> {
        self.enqueue(&[data], None)
    }

    /// Queues the host's bytes without copying them (see `Owned`). On an
    /// error the bytes were not taken, and their free function never runs.
    pub fn send_owned(&self, owned: Owned) -> Result<()> {
        self.enqueue(&[], Some(owned))
    }

    /// Queues `payload` as one frame: with its length prefix before it, or
    /// its delimiter after it, in one send.
    pub fn send_frame(&self, payload: &[u8]) -> Result<()> {
        let Some(framing) = &self.cfg().framing else {
            return Err(self.refuse_call(Error::invalid(
                "send_frame on a connection without framing (NETEV_FRAMING_NONE)",
            )));
        };
        let (head, head_len, tail) = framing.envelope(payload).map_err(|e| self.refuse_call(e))?;
        self.enqueue(&[&head[..head_len], payload, tail], None)
    }

    /// Queues `parts` (copied), then `owned`, as one send: all or nothing.
    fn enqueue(&self, parts: &[&[u8]], owned: Option<Owned>) -> Result<()> {
        let total = parts.iter().map(|p| p.len()).sum::<usize>()
            + owned.as_ref().map_or(0, |o| o.bytes().len());
        let mut st = self.lock();
        if st.write_shut_requested || st.close_requested || st.finished {
            if let Some(o) = owned {
                o.disarm();
            }
            let e = Error::new(
                Status::NETEV_ERR_CLOSED,
                "send after the connection was shut down or closed",
            );
            return Err(self.refuse(&mut st, e));
        }
        let queued = st.queued();
        let limit = self.cfg().send_buffer_limit;
        if queued > 0 && queued.saturating_add(total) > limit {
            if let Some(o) = owned {
                o.disarm();
            }
            st.refused = true;
            let e = Error::new(
                Status::NETEV_ERR_BUFFER_FULL,
                format!("{queued} bytes queued + {total} would pass the send limit of {limit}"),
            );
            let e = self.refuse(&mut st, e);
            if queued <= limit / 2 {
                // Already low: the DRAIN is due now, not at the next write.
                self.kick(st);
            }
            return Err(e);
        }
        if total == 0 {
            // Nothing to write: an empty owned buffer is freed (once this
            // thread holds no lock).
            return Ok(());
        }
        let mut taken = 0;
        // Ciphertext rustls holds that the socket did not take: the loop
        // must watch for writability.
        let mut tls_pending = false;
        // Nothing queued: write now, on the caller's thread, as libuv does;
        // only what the socket does not take wakes the task. With TLS the
        // plaintext goes through rustls under the state lock (once the
        // handshake completed), and what it makes is written at once too.
        if queued == 0
            && let Some(fd) = st.drive.writable_fd()
        {
            let mut slices = [IoSlice::new(&[]); 4];
            let mut n = 0;
            for p in parts
                .iter()
                .copied()
                .chain(owned.as_ref().map(Owned::bytes))
            {
                if !p.is_empty() {
                    slices[n] = IoSlice::new(p);
                    n += 1;
                }
            }
            taken = match st.drive.tls.as_deref_mut() {
                None => driver::send_now(fd, &slices[..n]),
                Some(t) => {
                    let n = t.take_plaintext(&slices[..n]);
                    // A failed write is the loop's to meet (it ends the
                    // connection); the bytes are rustls' now either way.
                    let _ = t.write_out(&mut driver::FdWriter(fd));
                    tls_pending = t.wants_write();
                    n
                }
            };
            if taken > 0 {
                stats::Counters::add(&self.counters.sent, taken);
                log!("connection", self.id, "sent {taken} bytes");
                if self.cfg().idle_timeout.is_some() {
                    st.last_write = Some(Instant::now());
                }
            }
        }
        let rest = total - taken;
        let mut skip = taken;
        for p in parts {
            let n = skip.min(p.len());
            skip -= n;
            if n < p.len() {
                st.out.push(&p[n..]);
            }
        }
        if let Some(o) = owned
            && skip < o.bytes().len()
        {
            // Part of it may be written: the queue starts inside it.
            let first = st.out.is_empty();
            st.out.push_owned(o);
            if first {
                st.out.consume(skip);
            }
        }
        if (rest > 0 && queued == 0) || tls_pending {
            self.kick(st);
        }
        Ok(())
    }

    /// Stops reading: no DATA or END until `resume`.
    pub fn pause(&self) {
        if !self.paused.swap(true, Ordering::AcqRel) {
            log!("connection", self.id, "paused");
        }
    }

    /// Reads again, after what a pause held back.
    pub fn resume(&self) {
        if self.paused.swap(false, Ordering::AcqRel) {
            log!("connection", self.id, "resumed");
            self.redeliver();
            self.kick(self.lock());
        }
    }

    pub fn paused(&self) -> bool {
        self.paused.load(Ordering::Acquire)
    }

    /// The socket's own address while it is connected (from the TCP
    /// connect or accept until the end).
    pub fn local(&self) -> Option<Remote> {
        let st = self.lock();
        match (&st.drive.socket, st.drive.connected) {
            (Some(s), true) => s.local_addr().ok().map(Remote::new),
            _ => None,
        }
    }

    /// Closes the write side once queued bytes are written; reading goes on.
    pub fn shutdown(&self) -> Result<()> {
        let mut st = self.lock();
        if st.close_requested || st.finished {
            let e = Error::new(
                Status::NETEV_ERR_CLOSED,
                "shutdown after the connection closed",
            );
            return Err(self.refuse(&mut st, e));
        }
        st.host_shutdown = true;
        st.closed = true;
        if !st.write_shut_requested {
            st.write_shut_requested = true;
            log!("connection", self.id, "shutdown requested");
        }
        self.wake_waiters(st);
        self.kick(self.lock());
        Ok(())
    }

    /// Aborts the connection now: queued bytes are dropped; CLOSE then
    /// TERMINATE follow (unless it had already ended).
    pub fn close_now(&self) {
        let mut st = self.lock();
        if st.finished && !st.close_requested && !st.terminating {
            // It failed, but the host has not been told yet (the ERROR waits
            // for its dispatcher): the host asked to close, so it sees CLOSE.
            st.close_requested = true;
            drop(st);
            self.error_becomes_close();
            return;
        }
        if st.finished || st.close_requested {
            return;
        }
        st.close_requested = true;
        st.closed = true;
        self.kick(st);
    }

    /// Wakes threads in `wait` after a change to what they wait for. The
    /// state lock is released before the dispatcher's is taken: a waiter
    /// running the dispatcher takes them in the other order.
    fn wake_waiters(&self, st: Guard<'_, State>) {
        if st.waiters > 0 {
            self.ended.notify_all();
        }
        drop(st);
        if let Some(d) = &self.cfg().dispatcher {
            d.wake();
        }
    }

    fn wait_done(&self) -> bool {
        let st = self.lock();
        st.host_shutdown || st.terminated
    }

    /// Blocks until the connection has ended (its TERMINATE callback
    /// returned) or shutdown was called, running its dispatcher's callbacks
    /// meanwhile. `None` waits without limit; zero only runs what is ready.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<()> {
        let timed_out = || Error::new(Status::NETEV_ERR_TIMEOUT, "the wait timed out");
        if self.wait_done() {
            return Ok(());
        }
        if DECIDING.get() == self.id && timeout != Some(Duration::ZERO) {
            return Err(Error::new(
                Status::NETEV_ERR_WOULD_DEADLOCK,
                "netev_connection_wait inside the accept callback offering this connection: \
                 it cannot start before that callback returns",
            ));
        }
        if let Some(d) = &self.cfg().dispatcher {
            return match d.run_until(timeout, &|| self.wait_done())? {
                true => Ok(()),
                false => Err(timed_out()),
            };
        }
        if timeout == Some(Duration::ZERO) {
            return Err(timed_out());
        }
        if runtime::on_runtime_thread() {
            return Err(Error::new(
                Status::NETEV_ERR_WOULD_DEADLOCK,
                "netev_connection_wait inside a callback on a netev I/O thread: \
                 the events it waits for need this thread",
            ));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = self.lock();
        st.waiters += 1;
        let result = loop {
            if st.host_shutdown || st.terminated {
                break Ok(());
            }
            st = match deadline {
                None => st.wait(&self.ended),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        break Err(timed_out());
                    }
                    st.wait_timeout(&self.ended, d - now)
                }
            };
        };
        st.waiters -= 1;
        result
    }

    /// Takes one more host reference.
    pub fn retain(&self) -> Result<()> {
        let mut st = self.lock();
        st.host_refs = st
            .host_refs
            .checked_add(1)
            .ok_or_else(|| Error::invalid("too many references"))?;
        Ok(())
    }

    /// Gives back one host reference. The last one closes a client
    /// connection if still open; an accepted one goes on, owned by netev.
    /// The handle dies once no reference is left and TERMINATE has returned.
    pub fn release(&self) -> Result<()> {
        let mut st = self.lock();
        if st.host_refs == 0 {
            return Err(Error::handle(
                self.id,
                "connection (no reference left to release)",
            ));
        }
        st.host_refs -= 1;
        if st.host_refs > 0 {
            return Ok(());
        }
        let ending = st.terminating;
        drop(st);
        if ending {
            // TERMINATE was delivered (or is being): nothing more concerns
            // the host, and a handle it gave back must not outlive the call.
            self.unregister();
        } else if self.listener == 0 {
            self.close_now();
        }
        // An accepted connection released before its end goes on: netev
        // owns it until TERMINATE, as if it had never been retained.
        Ok(())
    }

    /// As given to open; for an accepted connection, the peer's IP.
    pub fn address(&self) -> std::borrow::Cow<'_, str> {
        if self.listener != 0 {
            return self.remote().ip_string().into();
        }
        (*self.address).into()
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn closed(&self) -> bool {
        self.lock().closed
    }
    pub fn no_delay(&self) -> bool {
        self.cfg().no_delay
    }
    pub fn listener(&self) -> netev_listener {
        self.listener
    }
    pub fn user_data(&self) -> *mut c_void {
        self.cfg().user_data.0
    }
    pub fn buffered_amount(&self) -> usize {
        self.lock().queued()
    }
    pub fn error_count(&self) -> usize {
        self.lock().errors.as_ref().map_or(0, |e| e.len())
    }
    pub fn error_at(&self, index: usize) -> Option<netev_error_info> {
        self.lock()
            .errors
            .as_ref()
            .and_then(|e| e.get(index))
            .map(netev_error_info::from)
    }
    pub fn dispatcher_id(&self) -> netev_dispatcher {
        self.cfg().dispatcher.as_ref().map_or(0, |d| d.id)
    }
    /// The remote end, once connected.
    pub fn remote(&self) -> Remote {
        self.remote.get().copied().unwrap_or(Remote::UNKNOWN)
    }

    /// Reads what the TLS handshake settled (None: plain TCP, or the
    /// handshake has not completed).
    fn tls_info<R>(&self, f: impl FnOnce(&crate::tls::Info) -> R) -> Option<R> {
        let st = self.lock();
        let t = st.drive.tls.as_deref()?;
        t.established.then(|| f(&t.info))
    }
    /// "TLSv1.3" or "TLSv1.2"; "" for plain TCP or before the handshake.
    pub fn tls_version(&self) -> String {
        self.tls_info(|i| i.version.to_owned()).unwrap_or_default()
    }
    /// The ALPN protocol agreed on; "" when none.
    pub fn alpn(&self) -> String {
        self.tls_info(|i| i.alpn.as_deref().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
    /// Server side: the SNI name the client sent; "" when none.
    pub fn tls_server_name(&self) -> String {
        self.tls_info(|i| i.sni.as_deref().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
    /// The DER of the peer's leaf certificate; empty when none.
    pub fn peer_certificate(&self) -> Vec<u8> {
        self.tls_info(|i| i.peer_certificate.as_deref().unwrap_or(&[]).to_vec())
            .unwrap_or_default()
    }
    /// The `tls` log line's words: version, cipher suite, ALPN.
    fn tls_summary(&self) -> Option<String> {
        self.tls_info(|i| {
            format!(
                "{} {} alpn {}",
                i.version,
                i.cipher,
                i.alpn.as_deref().unwrap_or("none")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Status;
    use std::sync::atomic::AtomicU16;

    /// A connection to this port panics in its loop (see `driver::serve`).
    pub(super) static PANIC_PORT: AtomicU16 = AtomicU16::new(0);
    static SEEN: std::sync::Mutex<Vec<(EventType, i32)>> = std::sync::Mutex::new(Vec::new());

    unsafe extern "C" fn record(_: netev_connection, ev: *const netev_event, _: *mut c_void) {
        // SAFETY: netev passes a live event for the duration of the call.
        let ev = unsafe { &*ev };
        SEEN.lock().unwrap().push((ev.r#type, ev.error as i32));
    }

    #[test]
    fn a_panic_in_the_driver_ends_the_connection_with_an_internal_error() {
        let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = server.local_addr().unwrap().port();
        PANIC_PORT.store(port, Ordering::Relaxed);
        let o = netev_connection_options {
            on_connection: Some(record),
            on_error: Some(record),
            on_shutdown: Some(record),
            on_terminate: Some(record),
            ..Default::default()
        };
        let c =
            Connection::open("127.0.0.1", port, Config::from_options(&o).unwrap(), |_| {}).unwrap();
        let _peer = server.accept().unwrap();
        c.wait(Some(Duration::from_secs(10))).unwrap();
        let seen = SEEN.lock().unwrap().clone();
        let types: Vec<_> = seen.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            types,
            [
                EventType::NETEV_EVENT_CONNECTION,
                EventType::NETEV_EVENT_ERROR,
                EventType::NETEV_EVENT_TERMINATE
            ]
        );
        assert_eq!(seen[1].1, Status::NETEV_ERR_INTERNAL as i32);
        assert_eq!(c.error_at(0).unwrap().code, Status::NETEV_ERR_INTERNAL);
        c.release().unwrap();
    }

    /// What an idle connection costs netev, besides the kernel's socket.
    /// With its Arc header, 16 bytes under a malloc size class (400 of
    /// 416); the idle row of benches/run.sh checks the whole cost against
    /// 0.5 KiB.
    #[test]
    fn a_connection_stays_small() {
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 384, "a connection is {size} bytes");
    }
}
