//! Client connections (4D's TCPConnection) and the event machinery that
//! accepted connections share.
//!
//! Each connection is one tokio task that owns the socket's reading and
//! every event, so a connection's callbacks are serialized by construction.
//! Hosts talk to it through `State` (one short-held mutex, never held while
//! calling the host) and the task's waker, kept in that state.

use crate::dispatch::{Delivery, Dispatcher, Job, Mailbox};
use crate::error::{Error, ErrorList, Result, Status, netev_error_info};
use crate::event::{EventType, Remote, netev_event};
use crate::handle::{self, Object, netev_connection, netev_dispatcher, netev_listener};
use crate::log::log;
use crate::runtime::{self, LiveTask};
use crate::send_queue::{self, SendQueue};
use crate::sync::{Guard, Mutex, call_host};
use std::cell::Cell;
use std::collections::VecDeque;
use std::ffi::{CString, c_void};
use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, LazyLock, OnceLock};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

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
/// then set what you need; netev copies it during the open call.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct netev_connection_options {
    /// sizeof(netev_connection_options), set by netev_connection_options_init.
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
    /// Seconds for name lookup and connect together; 0 = 30.
    pub connection_timeout: f64,
    /// Bytes queued but unsent before send refuses; 0 = 8 MiB.
    pub send_buffer_limit: usize,
    /// Dispatcher that runs the callbacks; 0 = netev's own I/O threads.
    pub dispatcher: netev_dispatcher,
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
        }
    }
}

/// Seconds a connect may take when `connection_timeout` is 0.
pub const NETEV_DEFAULT_CONNECTION_TIMEOUT_SECONDS: u64 = 30;
/// Bytes `send` may queue when `send_buffer_limit` is 0.
pub const NETEV_DEFAULT_SEND_BUFFER_LIMIT: usize = 8 << 20;
/// Largest read.
const READ_CHUNK: usize = 64 << 10;
/// Received bytes a dispatcher-bound connection may hold undelivered before
/// it stops reading (API.md allows 1 MiB; one more read may land past it,
/// and the buffer holding them at most doubles).
const UNDELIVERED_LIMIT: usize = 256 << 10;
/// Largest keepalive idle time Linux takes (MAX_TCP_KEEPIDLE).
const MAX_KEEPALIVE_SECONDS: u64 = 32_767;
/// Reads in a row before the task looks at its other work.
const READS_PER_TURN: usize = 4;
/// Rounds of work in one poll before the task yields to the others.
const ROUNDS_PER_POLL: usize = 8;
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

/// A pointer the host handed over; netev only passes it back.
#[derive(Clone, Copy)]
pub(crate) struct HostPtr(pub(crate) *mut c_void);
// SAFETY: netev never dereferences it; the host chose to receive it on
// whichever thread the documentation says callbacks run.
unsafe impl Send for HostPtr {}
// SAFETY: as above; it is only copied.
unsafe impl Sync for HostPtr {}

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
}

impl Config {
    pub fn from_options(o: &netev_connection_options) -> Result<Config> {
        let dispatcher = match o.dispatcher {
            0 => None,
            id => Some(handle::dispatcher(id)?),
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
        })
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
        }
    }
}

#[derive(Default)]
struct State {
    /// The socket's fd while connected, for host threads to write to
    /// directly; `Socket` unpublishes it under this lock before closing it.
    fd: Option<RawFd>,
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
    waiters: usize,
    last_write: Option<Instant>,
    errors: ErrorList,
    /// The task's waker, taken by whoever changes what the task acts on.
    waker: Option<Waker>,
}

impl State {
    fn queued(&self) -> usize {
        self.out.len()
    }
}

/// Dispatcher mode: the connection's events waiting for the host's thread.
/// Received bytes join the DATA waiting last, so a trickling peer costs one
/// growing buffer, not one entry per read; the dispatcher holds the
/// connection once in its queue however many events wait here.
#[derive(Default)]
struct Outbox {
    events: VecDeque<Pending>,
    /// Received bytes waiting, or being delivered: reading stops at the limit.
    undelivered: usize,
    /// The connection is in its dispatcher's queue, or being delivered from.
    scheduled: bool,
}

enum Pending {
    Data(Vec<u8>),
    Event(EventType, Option<Error>, After),
}

/// One TCP connection: a client one from `open`, or (later) an accepted one.
pub struct Connection {
    pub id: netev_connection,
    address: String,
    port: u16,
    listener: netev_listener,
    /// Set when the connection starts: an accepted connection exists (its
    /// handle is live) while the listener's host chooses its options.
    cfg: OnceLock<Config>,
    remote: OnceLock<Remote>,
    state: Mutex<State>,
    outbox: Mutex<Outbox>,
    /// Signals waiters in `wait` when no dispatcher is involved.
    ended: Condvar,
    /// The handle is in the table (see `current`).
    in_table: AtomicBool,
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
}

static DEFAULT_CONFIG: LazyLock<Config> = LazyLock::new(Config::default);

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
        let id = handle::next_id();
        let conn = Arc::new(Connection::new(id, address.to_owned(), port, 0, 1));
        log!("connection", id, "open {address} port {port}");
        conn.register();
        publish(id);
        conn.start(&rt, cfg, None);
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
        let conn = Arc::new(Connection::new(
            id,
            remote.ip_string(),
            peer.port(),
            listener,
            0,
        ));
        let _ = conn.remote.set(remote);
        conn.register();
        conn
    }

    /// Starts an incoming connection with the options its host chose.
    pub(crate) fn accept(
        self: &Arc<Self>,
        stream: TcpStream,
        cfg: Config,
        rt: &tokio::runtime::Handle,
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
        handle::insert(self.id, Object::Connection(self.clone()));
    }

    /// Removes the handle: calls on it fail from now on, from any thread.
    fn unregister(&self) {
        self.in_table.store(false, Ordering::Release);
        handle::remove(self.id);
    }

    /// This connection, if `id` names it and one of its callbacks is running
    /// on this thread: found without the handle table's lock, which is the
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
        self.cfg.get().unwrap_or(&DEFAULT_CONFIG)
    }

    /// Fixes the settings and spawns the connection's task.
    fn start(
        self: &Arc<Self>,
        rt: &tokio::runtime::Handle,
        cfg: Config,
        accepted: Option<TcpStream>,
    ) {
        if let Some(d) = &cfg.dispatcher {
            d.bind();
        }
        let _ = self.cfg.set(cfg);
        runtime::object_started();
        let task = Finisher::new(self.clone());
        let live = LiveTask::start();
        let conn = self.clone();
        rt.spawn(Task {
            conn,
            future: async move {
                let _live = live;
                task.run(accepted).await;
            },
        });
    }

    fn new(
        id: netev_connection,
        address: String,
        port: u16,
        listener: u64,
        host_refs: u32,
    ) -> Connection {
        Connection {
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
            outbox: Mutex::default(),
            ended: Condvar::new(),
            in_table: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> Guard<'_, State> {
        self.state.lock()
    }

    /// Records a failed host call on this connection and returns it.
    fn refuse(&self, st: &mut State, e: Error) -> Error {
        st.errors.push(e.clone());
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
        let mut st = self.lock();
        if st.write_shut_requested || st.close_requested || st.finished {
            let e = Error::new(
                Status::NETEV_ERR_CLOSED,
                "send after the connection was shut down or closed",
            );
            return Err(self.refuse(&mut st, e));
        }
        let queued = st.queued();
        let limit = self.cfg().send_buffer_limit;
        if queued > 0 && queued.saturating_add(data.len()) > limit {
            st.refused = true;
            let e = Error::new(
                Status::NETEV_ERR_BUFFER_FULL,
                format!(
                    "{} bytes queued + {} would pass the send limit of {}",
                    queued,
                    data.len(),
                    limit
                ),
            );
            return Err(self.refuse(&mut st, e));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut rest = data;
        // Nothing queued: write now, on the caller's thread, as libuv does;
        // only what the socket does not take wakes the task.
        if queued == 0
            && let Some(fd) = st.fd
            && let Some(n) = send_now(fd, data)
        {
            rest = &data[n..];
            log!("connection", self.id, "sent {n} bytes");
            if self.cfg().idle_timeout.is_some() {
                st.last_write = Some(Instant::now());
            }
        }
        if !rest.is_empty() {
            st.out.push(rest);
            if queued == 0 {
                kick(st);
            }
        }
        Ok(())
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
        let task = st.waker.take();
        self.wake_waiters(st);
        if let Some(w) = task {
            w.wake();
        }
        Ok(())
    }

    /// Aborts the connection now: queued bytes are dropped; CLOSE then
    /// TERMINATE follow (unless it had already ended).
    pub fn close_now(&self) {
        let mut st = self.lock();
        if st.finished || st.close_requested {
            return;
        }
        st.close_requested = true;
        st.closed = true;
        kick(st);
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

    pub fn address(&self) -> &str {
        &self.address
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
        self.lock().errors.len()
    }
    pub fn error_at(&self, index: usize) -> Option<netev_error_info> {
        self.lock().errors.get(index).map(netev_error_info::from)
    }
    pub fn dispatcher_id(&self) -> netev_dispatcher {
        self.cfg().dispatcher.as_ref().map_or(0, |d| d.id)
    }
    /// The remote end, once connected.
    pub fn remote(&self) -> Remote {
        self.remote.get().copied().unwrap_or(Remote::UNKNOWN)
    }

    // ----- delivery -------------------------------------------------------

    /// Delivers one event: at once on this thread, or through the outbox to
    /// the dispatcher's thread. `data` is copied only when it must outlive
    /// this call.
    fn deliver(self: &Arc<Self>, ty: EventType, data: &[u8], error: Option<&Error>, after: After) {
        let cfg = self.cfg();
        if cfg.callback(ty).is_none() && matches!(after, After::Nothing) {
            return;
        }
        let Some(d) = &cfg.dispatcher else {
            self.invoke(ty, data, error, after);
            return;
        };
        let mut out = self.outbox.lock();
        match ty {
            EventType::NETEV_EVENT_DATA => {
                out.undelivered += data.len();
                match out.events.back_mut() {
                    Some(Pending::Data(waiting)) => waiting.extend_from_slice(data),
                    _ => out.events.push_back(Pending::Data(data.to_vec())),
                }
            }
            // One DRAIN waiting says all a later one would.
            EventType::NETEV_EVENT_DRAIN
                if out.events.iter().any(
                    |p| matches!(p, Pending::Event(t, ..) if *t == EventType::NETEV_EVENT_DRAIN),
                ) => {}
            _ => out
                .events
                .push_back(Pending::Event(ty, error.cloned(), after)),
        }
        let post = !out.scheduled;
        out.scheduled = true;
        drop(out);
        if post {
            d.post(Job::Mailbox(self.clone()));
        }
    }

    /// Whether a dispatcher-bound connection may read more now.
    fn receive_room(&self) -> bool {
        self.cfg().dispatcher.is_none() || self.outbox.lock().undelivered < UNDELIVERED_LIMIT
    }

    /// Calls the host's callback for `ty`, then the after-action. Returns
    /// whether a host callback ran.
    fn invoke(&self, ty: EventType, data: &[u8], error: Option<&Error>, after: After) -> bool {
        if matches!(after, After::Terminated) {
            self.lock().terminating = true;
        }
        let cfg = self.cfg();
        let cb = cfg.callback(ty);
        if let Some(cb) = cb {
            let mut ev = netev_event::new(ty, self.id, &self.remote()).with_data(data);
            let message;
            if let Some(e) = error {
                message = CString::new(e.message.replace('\0', " ")).unwrap_or_default();
                ev = ev.with_error(e, &message);
            }
            let outer = CURRENT.replace(self);
            call_host(|| {
                // SAFETY: the host registered `cb` for this event type; `ev`
                // and what it points to live until the call returns.
                unsafe { cb(self.id, &ev, cfg.user_data.0) }
            });
            CURRENT.set(outer);
        }
        match after {
            After::Nothing => {}
            After::AutoShutdown => {
                if !cfg.allow_half_open {
                    let mut st = self.lock();
                    if !st.write_shut_requested {
                        st.write_shut_requested = true;
                        log!("connection", self.id, "shutdown after peer end");
                    }
                    kick(st);
                }
            }
            After::Terminated => self.terminated(),
        }
        cb.is_some()
    }

    fn terminated(&self) {
        let mut st = self.lock();
        st.terminated = true;
        let unowned = st.host_refs == 0;
        self.wake_waiters(st);
        log!("connection", self.id, "terminated");
        let cfg = self.cfg();
        if let Some(free) = cfg.user_data_free {
            call_host(|| {
                // SAFETY: the host gave this function to free its own
                // pointer; TERMINATE is the last use, so it runs once, here.
                unsafe { free(cfg.user_data.0) }
            });
        }
        if let Some(d) = &cfg.dispatcher {
            d.unbind();
        }
        if unowned {
            self.unregister();
        }
        runtime::object_ended();
    }

    /// Ends the connection, once: CLOSE or ERROR, then TERMINATE. A host that
    /// asked to close gets CLOSE whatever failed meanwhile.
    fn finish(self: &Arc<Self>, end: End) {
        let end = {
            let mut st = self.lock();
            if st.finished {
                return;
            }
            st.finished = true;
            st.closed = true;
            st.out.clear();
            let end = match end {
                End::Error(_) if st.close_requested => End::Close,
                end => end,
            };
            if let End::Error(e) = &end {
                st.errors.push(e.clone());
            }
            end
        };
        match &end {
            End::Close => {
                log!("connection", self.id, "closed");
                self.deliver(EventType::NETEV_EVENT_CLOSE, &[], None, After::Nothing);
            }
            End::Error(e) => {
                log!("connection", self.id, "error {e}");
                self.deliver(EventType::NETEV_EVENT_ERROR, &[], Some(e), After::Nothing);
            }
        }
        self.deliver(
            EventType::NETEV_EVENT_TERMINATE,
            &[],
            None,
            After::Terminated,
        );
    }

    // ----- the task -------------------------------------------------------

    fn close_requested(&self) -> bool {
        self.lock().close_requested
    }

    /// Resolves the address and tries each result in turn, all within the
    /// connection timeout.
    async fn connect(&self) -> Result<TcpStream> {
        let attempt = async {
            let addrs = tokio::net::lookup_host((self.address.as_str(), self.port))
                .await
                .map_err(|e| {
                    Error::new(
                        Status::NETEV_ERR_HOST_NOT_FOUND,
                        format!("cannot resolve {}: {e}", self.address),
                    )
                    .component("dns")
                })?;
            let mut last = None;
            for addr in addrs {
                match TcpStream::connect(addr).await {
                    Ok(s) => return Ok(s),
                    Err(e) => last = Some(Error::io(&e, &format!("connect to {addr}"))),
                }
            }
            Err(last.unwrap_or_else(|| {
                Error::new(
                    Status::NETEV_ERR_HOST_NOT_FOUND,
                    format!("{} has no address", self.address),
                )
                .component("dns")
            }))
        };
        let limit = self.cfg().connection_timeout;
        match tokio::time::timeout(limit, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                Status::NETEV_ERR_TIMEOUT,
                format!(
                    "connecting to {} port {} took longer than {:.3} s",
                    self.address,
                    self.port,
                    limit.as_secs_f64()
                ),
            )),
        }
    }

    async fn until_close_requested(&self) {
        poll_fn(|cx| {
            let mut st = self.lock();
            if st.close_requested {
                return Poll::Ready(());
            }
            register(&mut st, cx.waker());
            Poll::Pending
        })
        .await
    }

    fn configure(&self, s: &TcpStream) -> Result<()> {
        if self.cfg().no_delay {
            s.set_nodelay(true)
                .map_err(|e| Error::io(&e, "cannot set TCP_NODELAY"))?;
        }
        if let Some(t) = self.cfg().keepalive {
            let ka = socket2::TcpKeepalive::new().with_time(t);
            socket2::SockRef::from(s)
                .set_tcp_keepalive(&ka)
                .map_err(|e| Error::io(&e, "cannot set keepalive"))?;
        }
        Ok(())
    }

    /// Writes what the socket takes, shuts the write side when asked and
    /// the queue is empty, and registers the task's waker — all in one
    /// critical section, so a host change after it always wakes the task.
    fn flush(&self, s: &TcpStream, waker: &Waker, peer_ended: bool) -> Result<Snapshot> {
        let mut st = self.lock();
        if st.close_requested {
            // Queued bytes are dropped: nothing more is written, and no
            // failed write can turn the host's close into an ERROR.
            return Ok(Snapshot {
                close: true,
                ..Snapshot::default()
            });
        }
        let before = st.queued();
        while !st.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); send_queue::MAX_SLICES];
            let n = st.out.slices(&mut slices);
            // tokio's try_write_vectored is writev(), which raises SIGPIPE
            // in the host when the peer reset; sendmsg takes MSG_NOSIGNAL.
            let fd = s.as_raw_fd();
            match s.try_io(tokio::io::Interest::WRITABLE, || {
                send_vectored(fd, &slices[..n])
            }) {
                Ok(n) => st.out.consume(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(Error::io(&e, "write")),
            }
        }
        let written = before - st.queued();
        if written > 0 {
            log!("connection", self.id, "sent {written} bytes");
            if self.cfg().idle_timeout.is_some() {
                st.last_write = Some(Instant::now());
            }
        }
        let drain = st.refused && st.queued() <= self.cfg().send_buffer_limit / 2;
        if drain {
            st.refused = false;
        }
        if st.queued() == 0 && st.write_shut_requested && !st.write_shut_done {
            // With the peer's side ended too, the connection closes right
            // after this, and close() sends the same FIN: spare the call.
            if !peer_ended {
                socket2::SockRef::from(s)
                    .shutdown(std::net::Shutdown::Write)
                    .map_err(|e| Error::io(&e, "shutdown"))?;
            }
            st.write_shut_done = true;
            log!("connection", self.id, "shutdown done: write side closed");
        }
        register(&mut st, waker);
        Ok(Snapshot {
            drain,
            want_write: st.queued() > 0,
            shut_done: st.write_shut_done,
            close: false,
        })
    }

    /// Reads what is ready (a few chunks at most), delivering DATA.
    /// Returns Ready(true) at end of stream, Pending once nothing is left
    /// (the task is then registered for readability) or Ready(false) when
    /// it stopped early to let other work run.
    fn poll_read_some(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        s: &mut TcpStream,
        last_read: &mut Instant,
    ) -> Poll<Result<bool>> {
        let mut buf = READ_BUF
            .take()
            .unwrap_or_else(|| vec![0u8; READ_CHUNK].into_boxed_slice());
        let mut result = Poll::Ready(Ok(false));
        for i in 0..READS_PER_TURN {
            if i > 0 && !self.receive_room() {
                break;
            }
            // poll_read, unlike try_read, takes a short read as the end of
            // what is ready: no extra read() only to meet EAGAIN.
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut *s).poll_read(cx, &mut rb) {
                Poll::Pending => {
                    if i == 0 {
                        result = Poll::Pending;
                    }
                    break;
                }
                Poll::Ready(Err(e)) => {
                    result = Poll::Ready(Err(Error::io(&e, "read")));
                    break;
                }
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    if n == 0 {
                        result = Poll::Ready(Ok(true));
                        break;
                    }
                    log!("connection", self.id, "received {n} bytes");
                    if self.cfg().idle_timeout.is_some() {
                        *last_read = Instant::now();
                    }
                    self.deliver(EventType::NETEV_EVENT_DATA, &buf[..n], None, After::Nothing);
                    if n < buf.len() || self.close_requested() {
                        break;
                    }
                }
            }
        }
        READ_BUF.set(Some(buf));
        result
    }

    /// The established connection's work, as one poll function: no
    /// per-connection futures besides an optional idle timer, so an idle
    /// connection costs little more than its socket.
    fn poll_serve(
        self: &Arc<Self>,
        cx: &mut Context<'_>,
        s: &mut TcpStream,
        io: &mut Io,
    ) -> Poll<End> {
        #[cfg(test)]
        if self.port == tests::PANIC_PORT.load(Ordering::Relaxed) {
            panic!("a panic planted by a test");
        }
        for _ in 0..ROUNDS_PER_POLL {
            let snap = match self.flush(s, cx.waker(), io.peer_ended) {
                Ok(snap) => snap,
                Err(e) => return Poll::Ready(End::Error(e)),
            };
            if snap.drain {
                self.deliver(EventType::NETEV_EVENT_DRAIN, &[], None, After::Nothing);
            }
            if snap.close || (io.peer_ended && snap.shut_done) {
                return Poll::Ready(End::Close);
            }
            let mut progress = false;
            if !io.peer_ended && self.receive_room() {
                match self.poll_read_some(cx, s, &mut io.last_read) {
                    Poll::Pending => {}
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e)),
                    Poll::Ready(Ok(ended)) => {
                        progress = true;
                        if ended {
                            io.peer_ended = true;
                            log!("connection", self.id, "end: the peer finished sending");
                            if !self.cfg().allow_half_open {
                                self.lock().closed = true;
                            }
                            self.deliver(
                                EventType::NETEV_EVENT_END,
                                &[],
                                None,
                                After::AutoShutdown,
                            );
                        }
                    }
                }
            }
            if snap.want_write {
                match s.poll_write_ready(cx) {
                    Poll::Ready(Err(e)) => return Poll::Ready(End::Error(Error::io(&e, "write"))),
                    Poll::Ready(Ok(())) => progress = true,
                    Poll::Pending => {}
                }
            }
            if let Some(sleep) = io.idle.as_mut()
                && sleep.as_mut().poll(cx).is_ready()
            {
                let limit = self.cfg().idle_timeout.unwrap_or_default();
                let last_write = self.lock().last_write.unwrap_or(io.last_read);
                let last = io.last_read.max(last_write);
                if last.elapsed() >= limit {
                    return Poll::Ready(End::Error(Error::new(
                        Status::NETEV_ERR_TIMEOUT,
                        format!("no traffic for {:.3} s", limit.as_secs_f64()),
                    )));
                }
                sleep.as_mut().reset((last + limit).into());
                progress = true;
            }
            if !progress {
                return Poll::Pending;
            }
        }
        // Still busy: let the other connections on this thread have a turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    async fn serve(self: &Arc<Self>, s: &mut TcpStream) -> End {
        let mut io = Io {
            peer_ended: false,
            last_read: Instant::now(),
            // Only connections with an idle timeout pay for a timer.
            idle: self
                .cfg()
                .idle_timeout
                .map(|t| Box::pin(tokio::time::sleep(t))),
        };
        poll_fn(|cx| self.poll_serve(cx, s, &mut io)).await
    }
}

impl Mailbox for Connection {
    fn deliver_next(&self) -> Delivery {
        let next = {
            let mut out = self.outbox.lock();
            match out.events.pop_front() {
                Some(p) => p,
                None => {
                    out.scheduled = false;
                    return Delivery {
                        ran: false,
                        more: false,
                    };
                }
            }
        };
        let ran = match next {
            Pending::Data(bytes) => {
                let ran = self.invoke(EventType::NETEV_EVENT_DATA, &bytes, None, After::Nothing);
                let mut out = self.outbox.lock();
                let was_full = out.undelivered >= UNDELIVERED_LIMIT;
                out.undelivered -= bytes.len();
                if was_full && out.undelivered < UNDELIVERED_LIMIT {
                    drop(out);
                    // The task stopped reading for lack of room: wake it.
                    kick(self.lock());
                }
                ran
            }
            Pending::Event(ty, error, after) => self.invoke(ty, &[], error.as_ref(), after),
        };
        let mut out = self.outbox.lock();
        let more = !out.events.is_empty();
        out.scheduled = more;
        Delivery { ran, more }
    }
}

/// What the task acts on, read in the critical section that registered its waker.
#[derive(Default)]
struct Snapshot {
    drain: bool,
    want_write: bool,
    shut_done: bool,
    close: bool,
}

/// The task's own state while established.
struct Io {
    peer_ended: bool,
    last_read: Instant,
    idle: Option<Pin<Box<Sleep>>>,
}

/// Stores the task's waker unless the same one is there already.
fn register(st: &mut State, waker: &Waker) {
    if !st.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
        st.waker = Some(waker.clone());
    }
}

/// Wakes the task after a change to `st`, once the lock is released.
fn kick(mut st: Guard<'_, State>) {
    let waker = st.waker.take();
    drop(st);
    if let Some(w) = waker {
        w.wake();
    }
}

/// Owns a connection's task. Whatever ends the task — its own end, a
/// panic, the runtime dropping it at shutdown — the connection still gets
/// its CLOSE or ERROR and its TERMINATE, once.
struct Finisher {
    conn: Arc<Connection>,
    done: bool,
}

impl Finisher {
    fn new(conn: Arc<Connection>) -> Finisher {
        Finisher { conn, done: false }
    }

    fn finish(&mut self, end: End) {
        if !self.done {
            self.done = true;
            self.conn.finish(end);
        }
    }

    async fn run(mut self, accepted: Option<TcpStream>) {
        let conn = self.conn.clone();
        let stream = match accepted {
            Some(s) => Ok(s),
            None => tokio::select! {
                biased;
                _ = conn.until_close_requested() => return self.finish(End::Close),
                // Boxed: the connect phase's futures would otherwise keep
                // the task as large as they are for the connection's life.
                r = Box::pin(conn.connect()) => r,
            },
        };
        let stream = match stream.and_then(|s| conn.configure(&s).map(|_| s)) {
            Ok(s) => s,
            Err(e) => return self.finish(End::Error(e)),
        };
        if conn.remote.get().is_none()
            && let Ok(peer) = stream.peer_addr()
        {
            let _ = conn.remote.set(Remote::new(peer));
        }
        {
            let mut st = conn.lock();
            if st.close_requested {
                drop(st);
                return self.finish(End::Close);
            }
            st.fd = Some(stream.as_raw_fd());
        }
        let mut socket = Socket {
            conn: conn.clone(),
            stream,
        };
        log!(
            "connection",
            conn.id,
            "connected {}",
            conn.remote().endpoint()
        );
        conn.deliver(EventType::NETEV_EVENT_CONNECTION, &[], None, After::Nothing);
        let end = conn.serve(&mut socket.stream).await;
        drop(socket);
        self.finish(end);
    }
}

/// An established connection's socket, owned by its task. Host threads
/// write to its fd directly while the fd is published in the state; this
/// unpublishes it under the state lock before the fd closes, so no host
/// write can reach a closed, or reused, descriptor.
struct Socket {
    conn: Arc<Connection>,
    stream: TcpStream,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.conn.lock().fd = None;
    }
}

/// Writes what the socket takes now, without blocking; None when it takes
/// nothing (full, or failing: the task then meets the error itself).
fn send_now(fd: RawFd, data: &[u8]) -> Option<usize> {
    // SAFETY: `fd` is published only while the `Socket` owning it is alive
    // and the caller holds the state lock, which `Socket::drop` takes before
    // the fd can close; `data` is a live slice. MSG_NOSIGNAL keeps a reset
    // peer from raising SIGPIPE in the host.
    let n = unsafe {
        libc::send(
            fd,
            data.as_ptr().cast(),
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
    usize::try_from(n).ok().filter(|n| *n > 0)
}

/// Writes what the socket takes of `slices`, in order, without blocking
/// and without SIGPIPE.
fn send_vectored(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // IoSlice is ABI-compatible with iovec on Unix (std guarantees it); the
    // kernel only reads through these pointers.
    msg.msg_iov = slices.as_ptr().cast_mut().cast();
    msg.msg_iovlen = slices.len();
    // SAFETY: `fd` is the caller's open socket; `msg` points at `slices`,
    // live for the call.
    let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

impl Drop for Finisher {
    fn drop(&mut self) {
        // Unwinding from a panic in the task: `CatchUnwind` ends the
        // connection with ERROR once the unwinding is over.
        if !std::thread::panicking() {
            self.finish(End::Close);
        }
    }
}

/// A connection's task: a panic inside it ends the connection with
/// ERROR(NETEV_ERR_INTERNAL) at once, before the task's state (and its
/// `Finisher`, which would say CLOSE) is dropped.
struct Task<F> {
    conn: Arc<Connection>,
    future: F,
}

impl<F: Future<Output = ()>> Future for Task<F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // SAFETY: `future` is pinned structurally: it is never moved out of
        // `self`, which is itself pinned; `conn` is only borrowed.
        let (conn, future) = unsafe {
            let me = self.get_unchecked_mut();
            (&me.conn, Pin::new_unchecked(&mut me.future))
        };
        match crate::sync::contain(|| future.poll(cx)) {
            Some(poll) => poll,
            None => {
                conn.finish(End::Error(Error::new(
                    Status::NETEV_ERR_INTERNAL,
                    "a panic inside netev ended this connection; please report it",
                )));
                Poll::Ready(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU16;

    /// A connection to this port panics in its task (see `poll_serve`).
    pub(super) static PANIC_PORT: AtomicU16 = AtomicU16::new(0);
    static SEEN: std::sync::Mutex<Vec<(EventType, i32)>> = std::sync::Mutex::new(Vec::new());

    unsafe extern "C" fn record(_: netev_connection, ev: *const netev_event, _: *mut c_void) {
        // SAFETY: netev passes a live event for the duration of the call.
        let ev = unsafe { &*ev };
        SEEN.lock().unwrap().push((ev.r#type, ev.error as i32));
    }

    #[test]
    fn a_panic_in_the_task_ends_the_connection_with_an_internal_error() {
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

    /// An idle connection's cost is mostly its task; keep the task small
    /// (it was 736 bytes with a select! over five futures).
    #[test]
    fn connection_task_stays_small() {
        let c = Arc::new(Connection::new(1, String::new(), 1, 0, 1));
        let task = Finisher::new(c.clone()).run(None);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 512, "the connection task is {size} bytes");
        drop(task);
        // The task never ran: dropping it still ended the connection.
        assert!(c.closed());
        assert!(c.lock().terminated);
    }
}
