//! Listeners (4D's TCPListener): accept connections and hand each to the
//! same connection machinery a client connection uses.

use crate::abi::{self, NETEV_OPTIONS_SIZE_MAX};
use crate::connection::{Config, Connection, HostPtr, netev_connection_options};
use crate::dispatch::{Dispatcher, Job};
use crate::error::{Error, ErrorList, Result, netev_error_info};
use crate::event::{EventType, Remote, netev_event};
use crate::io_loop::{Cx, LoopHandle, Ready, Source};
use crate::log::log;
use crate::registry::{self, Registered, netev_dispatcher, netev_listener};
use crate::runtime;
use crate::sync::{Guard, Mutex, call_host};
use mio::net::{TcpListener, TcpStream};
use std::ffi::{CString, c_char, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// Decides on one incoming connection. `event` (type CONNECTION) carries the
/// peer's ip and port and, in `connection`, the new connection's handle,
/// already live: `netev_connection_retain` and the getters work on it here
/// (`user_data` and `no_delay` read their defaults until this returns, and
/// no callback of the connection runs before). `options` is pre-filled
/// from the listener's `connection_defaults`: edit it and return true to
/// accept, or return false to close the socket at once. If the options
/// returned with true are invalid, the socket is closed, the listener gets
/// an ERROR, and their `user_data_free` (if set) is called once.
///
/// `options` is netev's: its `size` is this library's
/// sizeof(netev_connection_options), and it has room for
/// NETEV_OPTIONS_SIZE_MAX bytes, zero past the library's fields. Fields
/// past `options->size` do not exist in this library: check with
/// NETEV_OPTIONS_HAS before setting one (set anyway, it makes the options
/// invalid, as above). They are read as any options are: resetting them
/// with netev_connection_options_init(options) is allowed, and then fields
/// past the new `size` take their defaults.
#[allow(non_camel_case_types)]
pub type netev_accept_callback = Option<
    unsafe extern "C" fn(
        listener: netev_listener,
        event: *const netev_event,
        user_data: *mut c_void,
        options: *mut netev_connection_options,
    ) -> bool,
>;

/// Receives a listener's ERROR or TERMINATE event, borrowed until it returns.
#[allow(non_camel_case_types)]
pub type netev_listener_callback = Option<
    unsafe extern "C" fn(
        listener: netev_listener,
        event: *const netev_event,
        user_data: *mut c_void,
    ),
>;

/// How a listener behaves. Fill it with `netev_listener_options_init`;
/// netev copies it (its first `size` bytes), `bind_address` and
/// `connection_defaults` during the open call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct netev_listener_options {
    /// sizeof(netev_listener_options) as the host's header declares it,
    /// set by netev_listener_options_init: which fields the host has.
    pub size: u32,
    /// Accept or reject each incoming connection; NULL accepts with
    /// `connection_defaults`.
    pub on_connection: netev_accept_callback,
    /// ERROR: accepting failed (for instance no descriptor left); the
    /// listener keeps going, retrying with a back-off.
    pub on_error: netev_listener_callback,
    /// TERMINATE: the listener stopped; always its last event.
    pub on_terminate: netev_listener_callback,
    /// Passed to the listener's callbacks; the host owns it.
    pub user_data: *mut c_void,
    /// IPv4 or IPv6 literal to bind; NULL = all interfaces, IPv6 and IPv4.
    pub bind_address: *const c_char,
    /// Length of the kernel's queue of connections not yet accepted; 0 = 1024.
    pub backlog: u32,
    /// SO_REUSEPORT: several listeners (or processes) share one port.
    pub reuse_port: bool,
    /// Options each accepted connection starts from (and the accept
    /// callback gets pre-filled); NULL = the defaults of
    /// netev_connection_options_init. netev copies them (their first
    /// `size` bytes) during the open call. When their `dispatcher` is 0,
    /// accepted connections use the listener's `dispatcher`.
    pub connection_defaults: *const netev_connection_options,
    /// Dispatcher that runs the listener's callbacks; 0 = netev's threads.
    pub dispatcher: netev_dispatcher,
}

impl Default for netev_listener_options {
    fn default() -> Self {
        netev_listener_options {
            size: std::mem::size_of::<Self>() as u32,
            on_connection: None,
            on_error: None,
            on_terminate: None,
            user_data: std::ptr::null_mut(),
            bind_address: std::ptr::null(),
            backlog: 0,
            reuse_port: false,
            connection_defaults: std::ptr::null(),
            dispatcher: 0,
        }
    }
}

// SAFETY: #[repr(C)], `size: u32` first, Default is zeros and the size;
// its fields are callbacks, pointers, numbers and one bool.
unsafe impl abi::Versioned for netev_listener_options {
    const NAME: &'static str = "netev_listener_options";
    const FIRST_SIZE: usize = std::mem::offset_of!(netev_listener_options, dispatcher)
        + std::mem::size_of::<netev_dispatcher>();
    const BOOLS: &'static [(&'static str, usize)] = &[(
        "reuse_port",
        std::mem::offset_of!(netev_listener_options, reuse_port),
    )];
}

const DEFAULT_BACKLOG: u32 = 1024;
/// Accepted connections a dispatcher-bound listener may hold while its
/// host has not run the accept callbacks: past it, the kernel's backlog
/// holds further connections.
const PENDING_ACCEPTS: usize = 64;
const BACKOFF_START: Duration = Duration::from_millis(10);
/// Accepts in one turn before the loop serves the others.
const ACCEPTS_PER_TURN: usize = 64;
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The defaults for accepted connections, as the host gave them.
#[derive(Clone, Copy)]
pub struct Defaults(pub netev_connection_options);
// SAFETY: the struct holds numbers, function pointers and the host's
// user_data pointer, which netev never dereferences, only passes back.
unsafe impl Send for Defaults {}
// SAFETY: as above; it is only copied.
unsafe impl Sync for Defaults {}

/// Validated listener settings.
pub struct ListenerConfig {
    pub on_connection: netev_accept_callback,
    pub on_error: netev_listener_callback,
    pub on_terminate: netev_listener_callback,
    user_data: HostPtr,
    pub bind_address: Option<IpAddr>,
    pub backlog: u32,
    pub reuse_port: bool,
    /// What the accept callback gets pre-filled: the defaults, with the
    /// listener's dispatcher when they name none.
    pub connection_defaults: Defaults,
    /// Those defaults, validated now (a bad one fails the open) and shared
    /// by every accepted connection whose callback left them as they were.
    shared_defaults: Arc<Config>,
    pub dispatcher: Option<Arc<Dispatcher>>,
}

impl ListenerConfig {
    /// `bind_address` is the already-converted text of the C field, and
    /// `connection_defaults` the struct it points at, read (a NULL pointer
    /// read as the defaults).
    pub fn from_options(
        o: &netev_listener_options,
        bind_address: Option<&str>,
        connection_defaults: netev_connection_options,
    ) -> Result<Self> {
        let bind_address = match bind_address {
            None => None,
            Some(text) => Some(text.parse::<IpAddr>().map_err(|_| {
                Error::invalid(format!(
                    "bind_address {text:?} is not an IPv4 or IPv6 address"
                ))
            })?),
        };
        let dispatcher = match o.dispatcher {
            0 => None,
            id => Some(Dispatcher::get(id)?),
        };
        let mut defaults = connection_defaults;
        if defaults.dispatcher == 0 {
            defaults.dispatcher = o.dispatcher;
        }
        // Listeners never read it (a client's field): no pointer into the
        // host's memory is kept past this call.
        defaults.server_name = std::ptr::null();
        defaults.bind_address = std::ptr::null();
        defaults.bind_port = 0;
        let shared_defaults = Config::from_options(&defaults)?;
        shared_defaults.check_tls_side(false)?;
        // The accept callback sees these defaults: their delimiter points
        // at netev's copy, which lives as long as the listener, never at
        // the host's bytes, which need not outlive the open call.
        defaults.delimiter = shared_defaults
            .framing
            .as_ref()
            .and_then(|f| f.delimiter())
            .map_or(std::ptr::null(), <[u8]>::as_ptr);
        let shared_defaults = Arc::new(shared_defaults);
        Ok(ListenerConfig {
            on_connection: o.on_connection,
            on_error: o.on_error,
            on_terminate: o.on_terminate,
            user_data: HostPtr(o.user_data),
            bind_address,
            backlog: if o.backlog == 0 {
                DEFAULT_BACKLOG
            } else {
                o.backlog
            },
            reuse_port: o.reuse_port,
            connection_defaults: Defaults(defaults),
            shared_defaults,
            dispatcher,
        })
    }
}

struct State {
    /// The listening socket; taken out (and so closed) by terminate. The
    /// loop accepts under the lock, so dropping it here closes the fd at
    /// once (and takes it out of the loop's poll).
    socket: Option<TcpListener>,
    /// TERMINATE is decided (queued or delivered).
    ending: bool,
    terminated: bool,
    host_refs: u32,
    errors: ErrorList,
    /// Dispatcher mode: accepted sockets waiting for the host's decision.
    pending: usize,
    /// After an accept error, no accepting before this.
    backoff_until: Option<Instant>,
    backoff: Duration,
    /// A turn was requested and has not started yet.
    requested: bool,
    /// Its key on its loop.
    key: usize,
}

pub struct Listener {
    pub id: netev_listener,
    port: u16,
    cfg: ListenerConfig,
    state: Mutex<State>,
    lp: OnceLock<Arc<LoopHandle>>,
    me: Weak<Listener>,
}

fn bind(port: u16, cfg: &ListenerConfig) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let (addr, dual) = match cfg.bind_address {
        Some(ip) => (SocketAddr::new(ip, port), false),
        None => (
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            true,
        ),
    };
    let socket = match Socket::new(Domain::for_address(addr), Type::STREAM, None) {
        Ok(s) => s,
        // No IPv6 on this host: all interfaces means all IPv4 ones.
        Err(_) if dual => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            return bind_socket(
                Socket::new(Domain::IPV4, Type::STREAM, None)?,
                v4,
                cfg,
                false,
            );
        }
        Err(e) => return Err(e),
    };
    bind_socket(socket, addr, cfg, dual)
}

fn bind_socket(
    socket: socket2::Socket,
    addr: SocketAddr,
    cfg: &ListenerConfig,
    dual: bool,
) -> std::io::Result<std::net::TcpListener> {
    if dual {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    if cfg.reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    socket.listen(cfg.backlog.min(i32::MAX as u32) as i32)?;
    Ok(socket.into())
}

impl Listener {
    /// Binds and listens now (so a port in use fails here), then accepts in
    /// the background. Port 0 picks a free port; see `port()`.
    /// `publish` receives the handle before the listener can have an event.
    pub fn open(
        port: u16,
        cfg: ListenerConfig,
        publish: impl FnOnce(netev_listener),
    ) -> Result<Arc<Listener>> {
        let rt = runtime::opening()?;
        let socket = bind(port, &cfg)
            .map(TcpListener::from_std)
            .map_err(|e| Error::io(&e, &format!("cannot listen on port {port}")))?;
        let port = socket.local_addr().map(|a| a.port()).unwrap_or(port);
        if let Some(d) = &cfg.dispatcher {
            d.bind();
        }
        let l = Arc::new_cyclic(|me| Listener {
            id: registry::reserve(),
            port,
            cfg,
            state: Mutex::new(State {
                socket: Some(socket),
                ending: false,
                terminated: false,
                host_refs: 1,
                errors: ErrorList::default(),
                pending: 0,
                backoff_until: None,
                backoff: BACKOFF_START,
                requested: false,
                key: 0,
            }),
            lp: OnceLock::new(),
            me: me.clone(),
        });
        registry::insert(l.id, l.clone());
        runtime::object_started();
        log!("listener", l.id, "listening on port {port}");
        publish(l.id);
        let lp = rt.next_loop();
        let _ = l.lp.set(lp.clone());
        lp.add(l.clone());
        Ok(l)
    }

    /// The listener `id` names.
    pub fn get(id: netev_listener) -> Result<Arc<Listener>> {
        registry::get(id, "listener")
    }

    fn lock(&self) -> Guard<'_, State> {
        self.state.lock()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dispatcher_id(&self) -> netev_dispatcher {
        self.cfg.dispatcher.as_ref().map_or(0, |d| d.id)
    }

    /// Stops accepting and closes the socket now, so the port is free when
    /// this returns; connections already accepted go on. TERMINATE follows.
    pub fn terminate(&self) {
        let mut st = self.lock();
        if let Some(socket) = st.socket.take() {
            drop(socket);
            self.kick(st);
        }
    }

    /// Asks the loop for a turn, once the lock is released.
    fn kick(&self, mut st: Guard<'_, State>) {
        if st.requested {
            return;
        }
        st.requested = true;
        drop(st);
        if let (Some(lp), Some(me)) = (self.lp.get(), self.me.upgrade()) {
            lp.request(me);
        }
    }

    pub fn release(&self) -> Result<()> {
        let mut st = self.lock();
        if st.host_refs == 0 {
            return Err(Error::handle(self.id, "listener (already released)"));
        }
        st.host_refs -= 1;
        let terminated = st.terminated;
        drop(st);
        if terminated {
            registry::remove(self.id);
        } else {
            self.terminate();
        }
        Ok(())
    }

    pub fn error_count(&self) -> usize {
        self.lock().errors.len()
    }

    pub fn error_at(&self, index: usize) -> Option<netev_error_info> {
        self.lock().errors.get(index).map(netev_error_info::from)
    }

    /// Offers an accepted socket to the host (on the dispatcher when there
    /// is one) and starts the connection if accepted.
    fn incoming(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        match &self.cfg.dispatcher {
            None => {
                self.decide(stream, peer);
            }
            Some(d) => {
                let l = self.clone();
                d.post(Job::Once(Box::new(move || {
                    let ran = l.decide(stream, peer);
                    // Room for one more undecided accept.
                    let mut st = l.lock();
                    st.pending -= 1;
                    if st.pending + 1 == PENDING_ACCEPTS {
                        l.kick(st);
                    }
                    ran
                })));
            }
        }
    }

    /// Runs the accept callback and starts or drops the connection.
    /// Returns whether a host callback ran.
    fn decide(self: &Arc<Self>, stream: TcpStream, peer: SocketAddr) -> bool {
        if runtime::shutting_down() {
            // Accepted just before the shutdown: never offered, closed here.
            return false;
        }
        let id = registry::reserve();
        let remote = Remote::new(peer);
        // Live before the host decides, so it can retain and read it there.
        let conn = Connection::incoming(id, peer, self.id);
        let mut options = self.cfg.connection_defaults.0;
        // The options the host returned, when they cannot be read.
        let mut unreadable = None;
        let accepted = match self.cfg.on_connection {
            None => true,
            Some(cb) => {
                let mut ev = netev_event::new(EventType::NETEV_EVENT_CONNECTION, id, &remote);
                ev.connection = id;
                let mut room = AcceptRoom::new(options);
                let p = room.options_mut();
                let accepted = crate::connection::deciding(id, || {
                    call_host(|| {
                        // SAFETY: the host registered `cb` for incoming
                        // connections; `ev` and `room` live until it returns.
                        unsafe { cb(self.id, &ev, self.cfg.user_data.0, p) }
                    })
                })
                .unwrap_or(false);
                if accepted {
                    match room.read() {
                        Ok(o) => options = o,
                        Err(e) => {
                            // Still the host's user_data to free, below.
                            (options.user_data, options.user_data_free) = room.user_data();
                            unreadable = Some(e);
                        }
                    }
                }
                accepted
            }
        };
        if !accepted {
            log!("listener", self.id, "rejected {}", remote.endpoint());
            conn.discard();
            drop(stream);
            return self.cfg.on_connection.is_some();
        }
        let cfg = match unreadable {
            Some(e) => Err(e),
            None if options.same_as(&self.cfg.connection_defaults.0) => {
                Ok(self.cfg.shared_defaults.clone())
            }
            None => Config::from_options_with(&options, self.cfg.shared_defaults.tls.as_ref())
                .and_then(|c| c.check_tls_side(false).map(|()| Arc::new(c))),
        };
        match cfg {
            Ok(cfg) => match runtime::opening() {
                Ok(rt) => {
                    log!(
                        "listener",
                        self.id,
                        "accepted {} as connection {id}",
                        remote.endpoint()
                    );
                    conn.accept(stream, cfg, &rt);
                }
                // Shutting down between the check above and here.
                Err(_) => {
                    conn.discard();
                    drop(stream);
                    give_back(&options);
                }
            },
            Err(e) => {
                conn.discard();
                give_back(&options);
                let e = Error::new(
                    e.code,
                    format!("connection options from on_connection: {}", e.message),
                );
                log!("listener", self.id, "error {e}");
                self.lock().errors.push(e.clone());
                // On the thread delivering this listener's events already:
                // queued instead, it could land after a TERMINATE posted
                // meanwhile (the host may have ended the listener, or
                // released its dispatcher, inside on_connection).
                self.invoke(EventType::NETEV_EVENT_ERROR, Some(&e));
            }
        }
        self.cfg.on_connection.is_some()
    }

    fn deliver(self: &Arc<Self>, ty: EventType, error: Option<&Error>) {
        let l = self.clone();
        let error = error.cloned();
        let job = move || l.invoke(ty, error.as_ref());
        match &self.cfg.dispatcher {
            None => {
                job();
            }
            Some(d) => d.post(Job::Once(Box::new(job))),
        }
    }

    fn invoke(&self, ty: EventType, error: Option<&Error>) -> bool {
        let cb = match ty {
            EventType::NETEV_EVENT_ERROR => self.cfg.on_error,
            _ => self.cfg.on_terminate,
        };
        if let Some(cb) = cb {
            let mut ev = netev_event::new(ty, 0, &Remote::UNKNOWN);
            let message;
            if let Some(e) = error {
                message = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
                ev = ev.with_error(e, &message);
            }
            call_host(|| {
                // SAFETY: the host registered `cb` for this event type; `ev`
                // and what it points to live until the call returns.
                unsafe { cb(self.id, &ev, self.cfg.user_data.0) }
            });
        }
        if ty == EventType::NETEV_EVENT_TERMINATE {
            self.terminated();
        }
        cb.is_some()
    }

    fn terminated(&self) {
        let mut st = self.lock();
        st.terminated = true;
        let unowned = st.host_refs == 0;
        drop(st);
        log!("listener", self.id, "terminated");
        if let Some(d) = &self.cfg.dispatcher {
            d.unbind();
        }
        if unowned {
            registry::remove(self.id);
        }
        runtime::object_ended();
    }
}

impl Registered for Listener {
    fn shutdown_round(&self) {
        self.terminate();
    }
    fn dispatcher_released(&self, id: netev_dispatcher) {
        if self.dispatcher_id() == id {
            self.terminate();
        }
    }
}

impl Source for Listener {
    fn start(self: Arc<Self>, cx: &mut Cx<'_>, key: usize) {
        let mut st = self.lock();
        st.key = key;
        if let Some(s) = &st.socket
            && let Err(e) = cx.register(s.as_raw_fd(), key, false)
        {
            let e = Error::io(&e, "cannot register the listener");
            st.errors.push(e.clone());
            st.socket = None;
            drop(st);
            self.deliver(EventType::NETEV_EVENT_ERROR, Some(&e));
        } else {
            drop(st);
        }
        self.service(cx, Ready::default());
    }

    /// Accepts what is waiting (the socket is edge-triggered: until the
    /// kernel has no more, or a limit says to stop and come back).
    fn service(self: Arc<Self>, cx: &mut Cx<'_>, _ready: Ready) {
        let mut st = self.lock();
        st.requested = false;
        for _ in 0..ACCEPTS_PER_TURN {
            let Some(socket) = &st.socket else {
                if !st.ending {
                    st.ending = true;
                    cx.remove(st.key);
                    drop(st);
                    self.deliver(EventType::NETEV_EVENT_TERMINATE, None);
                }
                return;
            };
            if st.backoff_until.is_some_and(|t| Instant::now() < t) {
                return;
            }
            if self.cfg.dispatcher.is_some() && st.pending >= PENDING_ACCEPTS {
                // The kernel's backlog holds the rest until the host decides.
                return;
            }
            match socket.accept() {
                Ok((stream, peer)) => {
                    st.backoff = BACKOFF_START;
                    if self.cfg.dispatcher.is_some() {
                        st.pending += 1;
                    }
                    drop(st);
                    // accept4(SOCK_NONBLOCK | SOCK_CLOEXEC): ready as it is.
                    self.incoming(stream, peer);
                    st = self.lock();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if is_transient(&e) => {}
                Err(e) => {
                    let err = Error::io(&e, "accept");
                    log!("listener", self.id, "error {err}");
                    st.errors.push(err.clone());
                    // Until descriptors free up the socket stays readable:
                    // come back after a pause instead of spinning.
                    let at = Instant::now() + st.backoff;
                    st.backoff_until = Some(at);
                    st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                    drop(st);
                    self.deliver(EventType::NETEV_EVENT_ERROR, Some(&err));
                    cx.set_timer(at, self.clone());
                    return;
                }
            }
        }
        drop(st);
        cx.again(self);
    }

    fn timer(self: Arc<Self>, cx: &mut Cx<'_>) {
        self.service(cx, Ready::default());
    }

    fn panicked(self: Arc<Self>, cx: &mut Cx<'_>) {
        let socket = self.lock().socket.take();
        drop(socket);
        self.service(cx, Ready::default());
    }
}

/// The options the accept callback edits: the listener's connection
/// defaults in room for NETEV_OPTIONS_SIZE_MAX bytes, zero past them, so a
/// host compiled against a newer header (whose init, or whose fields, reach
/// past this version's struct) writes inside netev's memory, and its new
/// fields are refused as unknown rather than corrupting anything.
#[repr(C)]
union AcceptRoom {
    options: netev_connection_options,
    bytes: [u64; NETEV_OPTIONS_SIZE_MAX as usize / 8],
}

impl AcceptRoom {
    fn new(defaults: netev_connection_options) -> Self {
        let mut room = AcceptRoom {
            bytes: [0; NETEV_OPTIONS_SIZE_MAX as usize / 8],
        };
        room.options = defaults;
        room
    }

    fn options_mut(&mut self) -> *mut netev_connection_options {
        &raw mut self.options
    }

    /// What the host left there, read as any options struct is; a byte
    /// set past the struct's `size` (a field this library does not have,
    /// set without NETEV_OPTIONS_HAS) makes the options invalid.
    fn read(&self) -> Result<netev_connection_options> {
        // SAFETY: the room has NETEV_OPTIONS_SIZE_MAX readable bytes, and
        // `read` reads no more than that (nor than `size`).
        let options = unsafe { abi::read(&raw const self.options, "options") }?;
        // SAFETY: every byte of the room was initialised (zeroed, then the
        // defaults written over the start) and the host only wrote into it.
        let (bytes, size) = unsafe {
            (
                std::slice::from_raw_parts(
                    (&raw const self.bytes).cast::<u8>(),
                    NETEV_OPTIONS_SIZE_MAX as usize,
                ),
                self.options.size as usize,
            )
        };
        if let Some(at) = bytes
            .get(size..)
            .and_then(|past| past.iter().position(|b| *b != 0))
        {
            return Err(Error::invalid(format!(
                "options: byte {} is set, past the struct's size ({size}): a field this \
                 library does not know (check with NETEV_OPTIONS_HAS)",
                size + at
            )));
        }
        Ok(options)
    }

    /// `user_data` and `user_data_free`, also when the rest is unreadable.
    fn user_data(&self) -> (*mut c_void, crate::connection::netev_user_data_free) {
        // SAFETY: both fields lie in the room's initialised bytes, and any
        // bit pattern is a valid pointer or Option of a function pointer.
        unsafe { (self.options.user_data, self.options.user_data_free) }
    }
}

/// The host accepted and handed its user_data over, but no connection
/// started (so no TERMINATE will free it): free it now, once.
fn give_back(options: &netev_connection_options) {
    if let Some(free) = options.user_data_free {
        call_host(|| {
            // SAFETY: the host's own function for its own pointer; with no
            // connection, nothing else will ever call it for this one.
            unsafe { free(options.user_data) }
        });
    }
}

/// Accept errors that concern one connection only (already gone), not the listener.
fn is_transient(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ECONNABORTED
                | libc::ECONNRESET
                | libc::EINTR
                | libc::EAGAIN
                | libc::EPROTO
                | libc::EPERM
        )
    )
}
