//! UDP sockets (4D's UDPSocket and UDPEvent): one DATA per datagram, sends
//! to an IP or a name, ERROR events that do not end the socket.
//!
//! A socket lives on one I/O loop like a connection. Datagrams are read in
//! batches (`recvmmsg`) into the thread's buffers and handed to the host
//! from there; sends go out at once from the caller's thread when nothing
//! waits, else queue (bounded by `send_buffer_limit`) and leave in batches
//! (`sendmmsg`) when the socket is writable. Names resolve on the blocking
//! pool; a datagram to a name waits in the queue, in order, until then.

use crate::abi::Versioned;
use crate::connection::netev_user_data_free;
use crate::dispatch::{Delivery, Dispatcher, Job, Mailbox};
use crate::error::{Error, ErrorList, Result, Status, netev_error_info};
use crate::event::{EventType, Remote, netev_event};
use crate::io_loop::{Cx, LoopHandle, Ready, Source};
use crate::log::log;
use crate::registry::{self, Registered, netev_dispatcher};
use crate::runtime;
use crate::sync::{Guard, HostPtr, Mutex, call_host};
use std::collections::{HashMap, VecDeque};
use std::ffi::{CString, c_char, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// A UDP socket handle. 0 is never valid.
#[allow(non_camel_case_types)]
pub type netev_udp_socket = u64;

/// Receives one event of a UDP socket. `event` is borrowed until the
/// callback returns; `event->connection` is the socket's handle.
#[allow(non_camel_case_types)]
pub type netev_udp_callback = Option<
    unsafe extern "C" fn(sock: netev_udp_socket, event: *const netev_event, user_data: *mut c_void),
>;

/// How a UDP socket behaves. Fill it with `netev_udp_options_init`, then
/// set what you need; netev copies it during `netev_udp_open` (its first
/// `size` bytes: see "Versions" at the end of this header).
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy)]
pub struct netev_udp_options {
    /// sizeof(netev_udp_options) as the host's header declares it, set by
    /// netev_udp_options_init.
    pub size: u32,
    /// DATA: one datagram; `ip` and `port` are its sender's.
    pub on_data: netev_udp_callback,
    /// ERROR: a send failed or a name did not resolve; the socket goes on.
    pub on_error: netev_udp_callback,
    /// TERMINATE: the last event, once, after close, release or runtime
    /// shutdown.
    pub on_terminate: netev_udp_callback,
    /// Passed to every callback; the host owns it.
    pub user_data: *mut c_void,
    /// Called once with `user_data` after TERMINATE; may be NULL.
    pub user_data_free: netev_user_data_free,
    /// The local IP to bind (copied); NULL = all interfaces, IPv6 and IPv4
    /// (IPv4 alone where the machine has no IPv6).
    pub bind_address: *const c_char,
    /// SO_REUSEPORT: several sockets may bind the same port.
    pub reuse_port: bool,
    /// SO_BROADCAST: sends to broadcast addresses are allowed.
    pub broadcast: bool,
    /// Bytes of datagrams queued but not yet sent before send gives
    /// NETEV_ERR_BUFFER_FULL; 0 = 1 MiB.
    pub send_buffer_limit: usize,
    /// Dispatcher that runs the callbacks; 0 = netev's own I/O threads.
    pub dispatcher: netev_dispatcher,
}

impl Default for netev_udp_options {
    fn default() -> Self {
        netev_udp_options {
            size: std::mem::size_of::<Self>() as u32,
            on_data: None,
            on_error: None,
            on_terminate: None,
            user_data: std::ptr::null_mut(),
            user_data_free: None,
            bind_address: std::ptr::null(),
            reuse_port: false,
            broadcast: false,
            send_buffer_limit: 0,
            dispatcher: 0,
        }
    }
}

// SAFETY: #[repr(C)], `size: u32` first, Default is zeros and the size;
// its fields are callbacks (Option<fn>), pointers, numbers and two bools.
unsafe impl Versioned for netev_udp_options {
    const NAME: &'static str = "netev_udp_options";
    // New in this version: its first layout is this one.
    const FIRST_SIZE: usize = std::mem::size_of::<netev_udp_options>();
    const BOOLS: &'static [(&'static str, usize)] = &[
        (
            "reuse_port",
            std::mem::offset_of!(netev_udp_options, reuse_port),
        ),
        (
            "broadcast",
            std::mem::offset_of!(netev_udp_options, broadcast),
        ),
    ];
}

/// Bytes of datagrams a UDP socket may queue when its `send_buffer_limit`
/// is 0.
pub const NETEV_UDP_DEFAULT_SEND_BUFFER_LIMIT: usize = 1 << 20;
/// The largest datagram to an IPv4 address (65 535 minus the IP and UDP headers).
const MAX_DATAGRAM_V4: usize = 65_507;
/// The largest datagram to an IPv6 address.
const MAX_DATAGRAM_V6: usize = 65_527;
/// Datagrams read or written per system call.
const BATCH: usize = 16;
/// Batches read per turn before the loop's other sources get theirs.
const BATCHES_PER_TURN: usize = 4;
/// Received bytes (plus `ENTRY_COST` per datagram) a dispatcher-bound
/// socket holds undelivered before it stops reading: the kernel drops
/// what comes meanwhile, netev does not grow.
const UNDELIVERED_LIMIT: usize = 1 << 20;
const ENTRY_COST: usize = 128;
/// How long a resolved name is used before it is looked up again.
const NAME_TTL: Duration = Duration::from_secs(30);

/// Validated settings.
struct Config {
    on_data: netev_udp_callback,
    on_error: netev_udp_callback,
    on_terminate: netev_udp_callback,
    user_data: HostPtr,
    user_data_free: netev_user_data_free,
    bind_address: Option<IpAddr>,
    reuse_port: bool,
    broadcast: bool,
    send_buffer_limit: usize,
    dispatcher: Option<Arc<Dispatcher>>,
}

impl Config {
    /// `bind_address` is the already-converted text of the C field.
    fn new(o: &netev_udp_options, bind_address: Option<&str>) -> Result<Config> {
        let bind_address = match bind_address {
            None => None,
            Some(t) => Some(t.parse::<IpAddr>().map_err(|_| {
                Error::invalid(format!("bind_address {t:?} is not an IPv4 or IPv6 address"))
            })?),
        };
        Ok(Config {
            on_data: o.on_data,
            on_error: o.on_error,
            on_terminate: o.on_terminate,
            user_data: HostPtr(o.user_data),
            user_data_free: o.user_data_free,
            bind_address,
            reuse_port: o.reuse_port,
            broadcast: o.broadcast,
            send_buffer_limit: match o.send_buffer_limit {
                0 => NETEV_UDP_DEFAULT_SEND_BUFFER_LIMIT,
                n => n,
            },
            dispatcher: match o.dispatcher {
                0 => None,
                id => Some(Dispatcher::get(id)?),
            },
        })
    }

    fn callback(&self, ty: EventType) -> netev_udp_callback {
        match ty {
            EventType::NETEV_EVENT_DATA => self.on_data,
            EventType::NETEV_EVENT_ERROR => self.on_error,
            EventType::NETEV_EVENT_TERMINATE => self.on_terminate,
            _ => None,
        }
    }
}

/// Where a queued datagram goes.
enum Dest {
    Addr(SocketAddr),
    /// A name being looked up: the datagram waits, in order.
    Name(Arc<str>, u16),
}

struct Datagram {
    to: Dest,
    data: Vec<u8>,
}

enum Lookup {
    Pending,
    Found(IpAddr, Instant),
}

struct State {
    /// Taken out (and so closed) by close: the port is free at once.
    socket: Option<mio::net::UdpSocket>,
    queue: VecDeque<Datagram>,
    queued: usize,
    names: HashMap<Arc<str>, Lookup>,
    /// Lookups that failed, for the loop to report.
    failed: Vec<Error>,
    write_interest: bool,
    requested: bool,
    key: usize,
    started: bool,
    ending: bool,
    /// TERMINATE is being delivered, or was.
    terminating: bool,
    terminated: bool,
    host_refs: u32,
    errors: ErrorList,
}

/// Dispatcher mode: events waiting for the host's thread.
#[derive(Default)]
struct Outbox {
    events: VecDeque<Pending>,
    undelivered: usize,
    scheduled: bool,
}

enum Pending {
    Data(Vec<u8>, Remote),
    Error(Error),
    Terminate,
}

pub struct UdpSocket {
    pub id: netev_udp_socket,
    port: u16,
    /// The socket is IPv6 (dual-stack or bound to an IPv6 address): IPv4
    /// destinations are written as ::ffff:a.b.c.d.
    v6: bool,
    /// Bound to one IPv6 address: IPv4 destinations are unreachable.
    v6_only: bool,
    /// close was called: no DATA callback starts from now on.
    closed: std::sync::atomic::AtomicBool,
    cfg: Config,
    state: Mutex<State>,
    outbox: Mutex<Outbox>,
    lp: OnceLock<Arc<LoopHandle>>,
    me: Weak<UdpSocket>,
}

fn bind(port: u16, cfg: &Config) -> std::io::Result<(std::net::UdpSocket, bool, bool)> {
    use socket2::{Domain, Socket, Type};
    let (addr, dual) = match cfg.bind_address {
        Some(ip) => (SocketAddr::new(ip, port), false),
        None => (
            SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
            true,
        ),
    };
    let (socket, addr, dual) = match Socket::new(Domain::for_address(addr), Type::DGRAM, None) {
        Ok(s) => (s, addr, dual),
        // No IPv6 on this host: all interfaces means all IPv4 ones.
        Err(_) if dual => (
            Socket::new(Domain::IPV4, Type::DGRAM, None)?,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
            false,
        ),
        Err(e) => return Err(e),
    };
    if dual {
        socket.set_only_v6(false)?;
    }
    if cfg.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if cfg.broadcast {
        socket.set_broadcast(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.set_cloexec(true)?;
    socket.bind(&addr.into())?;
    Ok((socket.into(), addr.is_ipv6(), addr.is_ipv6() && !dual))
}

impl UdpSocket {
    /// Binds now (so a port in use fails here), then reads in the
    /// background. `publish` receives the handle before any event.
    pub fn open(
        port: u16,
        o: &netev_udp_options,
        bind_address: Option<&str>,
        publish: impl FnOnce(netev_udp_socket),
    ) -> Result<Arc<UdpSocket>> {
        let cfg = Config::new(o, bind_address)?;
        let rt = runtime::opening()?;
        let (socket, v6, v6_only) =
            bind(port, &cfg).map_err(|e| Error::io(&e, &format!("cannot bind UDP port {port}")))?;
        let socket = mio::net::UdpSocket::from_std(socket);
        let local = socket.local_addr().ok();
        let port = local.map_or(port, |a| a.port());
        if let Some(d) = &cfg.dispatcher {
            d.bind();
        }
        let s = Arc::new_cyclic(|me| UdpSocket {
            id: registry::reserve(),
            port,
            v6,
            v6_only,
            closed: std::sync::atomic::AtomicBool::new(false),
            cfg,
            state: Mutex::new(State {
                socket: Some(socket),
                queue: VecDeque::new(),
                queued: 0,
                names: HashMap::new(),
                failed: Vec::new(),
                write_interest: false,
                requested: false,
                key: 0,
                started: false,
                ending: false,
                terminating: false,
                terminated: false,
                host_refs: 1,
                errors: ErrorList::default(),
            }),
            outbox: Mutex::default(),
            lp: OnceLock::new(),
            me: me.clone(),
        });
        registry::insert(s.id, s.clone());
        runtime::object_started();
        log!("udp", s.id, "open");
        if let Some(a) = local {
            log!("udp", s.id, "listening {}", Remote::new(a).endpoint());
        }
        publish(s.id);
        let lp = rt.next_loop();
        let _ = s.lp.set(lp.clone());
        lp.add(s.clone());
        Ok(s)
    }

    pub fn get(id: netev_udp_socket) -> Result<Arc<UdpSocket>> {
        registry::usable()?;
        registry::get(id, "UDP socket")
    }

    fn lock(&self) -> Guard<'_, State> {
        self.state.lock()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn refuse(&self, st: &mut State, e: Error) -> Error {
        st.errors.push(e.clone());
        e
    }

    /// Records a call refused before it reached the socket (a bad argument).
    pub fn refuse_call(&self, e: Error) -> Error {
        let mut st = self.lock();
        self.refuse(&mut st, e)
    }

    /// The address to send to for `ip`, in the socket's family.
    fn target(&self, ip: IpAddr, port: u16) -> Result<SocketAddr> {
        match ip {
            IpAddr::V4(v4) if self.v6_only => Err(Error::invalid(format!(
                "{v4} is an IPv4 address; this socket is bound to an IPv6 address"
            ))),
            IpAddr::V4(v4) if self.v6 => Ok(SocketAddr::V6(SocketAddrV6::new(
                v4.to_ipv6_mapped(),
                port,
                0,
                0,
            ))),
            IpAddr::V6(v6) if !self.v6 => match v6.to_ipv4_mapped() {
                Some(v4) => Ok(SocketAddr::new(IpAddr::V4(v4), port)),
                None => Err(Error::invalid(format!(
                    "{v6} is an IPv6 address; this socket is IPv4 only"
                ))),
            },
            ip => Ok(SocketAddr::new(ip, port)),
        }
    }

    /// Sends a copy of `data` to `host`:`port` (an IP, or a name resolved
    /// in the background), after every datagram queued before it.
    pub fn send(&self, data: &[u8], host: &str, port: u16) -> Result<()> {
        if port == 0 {
            return Err(self.refuse_call(Error::invalid("port 0 is not a valid destination port")));
        }
        if host.is_empty() {
            return Err(self.refuse_call(Error::invalid("the host is empty")));
        }
        let literal = host.parse::<IpAddr>().ok();
        let max = match literal {
            Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => MAX_DATAGRAM_V6,
            _ => MAX_DATAGRAM_V4,
        };
        if data.len() > max {
            return Err(self.refuse_call(Error::invalid(format!(
                "a datagram of {} bytes is over the {max} a UDP datagram to {host} can carry",
                data.len()
            ))));
        }
        let mut st = self.lock();
        if st.socket.is_none() {
            let e = Error::new(
                Status::NETEV_ERR_CLOSED,
                "send after the UDP socket was closed",
            );
            return Err(self.refuse(&mut st, e));
        }
        let limit = self.cfg.send_buffer_limit;
        if st.queued > 0 && st.queued.saturating_add(data.len()) > limit {
            let e = Error::new(
                Status::NETEV_ERR_BUFFER_FULL,
                format!(
                    "{} bytes queued + {} would pass the send limit of {limit}",
                    st.queued,
                    data.len()
                ),
            );
            return Err(self.refuse(&mut st, e));
        }
        let to = match literal {
            Some(ip) => match self.target(ip, port) {
                Ok(a) => Dest::Addr(a),
                Err(e) => return Err(self.refuse(&mut st, e)),
            },
            None => {
                let name: Arc<str> = host.to_ascii_lowercase().into();
                match st.names.get(&name) {
                    Some(Lookup::Found(ip, at)) if at.elapsed() < NAME_TTL => {
                        match self.target(*ip, port) {
                            Ok(a) => Dest::Addr(a),
                            Err(e) => return Err(self.refuse(&mut st, e)),
                        }
                    }
                    Some(Lookup::Pending) => Dest::Name(name, port),
                    _ => {
                        if let Err(e) = self.resolve(name.clone()) {
                            return Err(self.refuse(&mut st, e));
                        }
                        st.names.insert(name.clone(), Lookup::Pending);
                        Dest::Name(name, port)
                    }
                }
            }
        };
        if st.queue.is_empty()
            && let (Dest::Addr(addr), Some(socket)) = (&to, &st.socket)
        {
            // Nothing waits: out now, on the caller's thread.
            match socket.send_to(data, *addr) {
                Ok(n) => {
                    log!(
                        "udp",
                        self.id,
                        "sent {n} bytes to {}",
                        Remote::new(*addr).endpoint()
                    );
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    let e = Error::io(&e, &format!("send to {}", Remote::new(*addr).endpoint()));
                    log!("udp", self.id, "error {e}");
                    return Err(self.refuse(&mut st, e));
                }
            }
        }
        let first = st.queue.is_empty();
        st.queued += data.len();
        st.queue.push_back(Datagram {
            to,
            data: data.to_vec(),
        });
        if first {
            self.kick(st);
        }
        Ok(())
    }

    /// Looks `name` up on the blocking pool; the loop sends what waited.
    fn resolve(&self, name: Arc<str>) -> Result<()> {
        let me = self
            .me
            .upgrade()
            .ok_or_else(|| Error::new(Status::NETEV_ERR_CLOSED, "closed"))?;
        runtime::spawn_blocking(move || {
            let found = (&*name, 0u16)
                .to_socket_addrs()
                .map(|a| a.collect::<Vec<_>>());
            let mut st = me.lock();
            // The first address this socket can reach.
            let usable = |a: &SocketAddr| match a.ip() {
                IpAddr::V4(_) => !me.v6_only,
                IpAddr::V6(_) => me.v6,
            };
            match found
                .as_ref()
                .ok()
                .and_then(|v| v.iter().find(|a| usable(a)))
            {
                Some(a) => {
                    st.names.insert(name, Lookup::Found(a.ip(), Instant::now()));
                }
                None => {
                    let why = match found {
                        Err(e) => e.to_string(),
                        Ok(_) => "no address of this socket's family".to_owned(),
                    };
                    st.names.remove(&name);
                    st.failed.push(
                        Error::new(
                            Status::NETEV_ERR_HOST_NOT_FOUND,
                            format!("cannot resolve {name}: {why}"),
                        )
                        .component("dns"),
                    );
                    // Datagrams waiting for it are dropped by the loop.
                    for d in st.queue.iter_mut() {
                        if matches!(&d.to, Dest::Name(n, _) if *n == name) {
                            d.to = Dest::Name("".into(), 0);
                        }
                    }
                }
            }
            me.kick(st);
        })
    }

    /// Stops now: the socket closes (its port is free when this returns);
    /// queued datagrams are dropped; TERMINATE follows.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        let mut st = self.lock();
        if let Some(socket) = st.socket.take() {
            drop(socket);
            log!("udp", self.id, "closed");
            self.kick(st);
        }
    }

    pub fn release(&self) -> Result<()> {
        let mut st = self.lock();
        if st.host_refs == 0 {
            return Err(Error::handle(self.id, "UDP socket (already released)"));
        }
        st.host_refs -= 1;
        let ending = st.terminating;
        drop(st);
        if ending {
            registry::remove(self.id);
        } else {
            self.close();
        }
        Ok(())
    }

    pub fn error_count(&self) -> usize {
        self.lock().errors.len()
    }

    pub fn error_at(&self, index: usize) -> Option<netev_error_info> {
        self.lock().errors.get(index).map(netev_error_info::from)
    }

    /// Joins (or leaves) a multicast group on an interface (its IPv4
    /// address; NULL = the default one).
    pub fn multicast(&self, group: &str, interface: Option<&str>, join: bool) -> Result<()> {
        let what = if join { "join" } else { "leave" };
        let group: IpAddr = group.parse().map_err(|_| {
            self.refuse_call(Error::invalid(format!(
                "group {group:?} is not an IP address"
            )))
        })?;
        if !group.is_multicast() {
            return Err(self.refuse_call(Error::invalid(format!(
                "{group} is not a multicast address"
            ))));
        }
        let st = self.lock();
        let Some(socket) = &st.socket else {
            drop(st);
            return Err(self.refuse_call(Error::new(
                Status::NETEV_ERR_CLOSED,
                "the UDP socket was closed",
            )));
        };
        let s = socket2::SockRef::from(socket);
        let r = match group {
            IpAddr::V4(g) => {
                let ifa = match interface {
                    None => Ipv4Addr::UNSPECIFIED,
                    Some(t) => t.parse::<Ipv4Addr>().map_err(|_| {
                        Error::invalid(format!("interface_address {t:?} is not an IPv4 address"))
                    })?,
                };
                if self.v6_only {
                    return Err(self.refuse_call(Error::invalid(format!(
                        "{g} is an IPv4 group; this socket is bound to an IPv6 address"
                    ))));
                } else if join {
                    s.join_multicast_v4(&g, &ifa)
                } else {
                    s.leave_multicast_v4(&g, &ifa)
                }
            }
            IpAddr::V6(g) => {
                if interface.is_some() {
                    return Err(Error::invalid(
                        "an IPv6 group takes interface_address NULL (the default interface)",
                    ));
                }
                if !self.v6 {
                    return Err(self.refuse_call(Error::invalid(format!(
                        "{g} is an IPv6 group; this socket is IPv4 only"
                    ))));
                } else if join {
                    s.join_multicast_v6(&g, 0)
                } else {
                    s.leave_multicast_v6(&g, 0)
                }
            }
        };
        drop(st);
        r.map_err(|e| {
            self.refuse_call(Error::io(
                &e,
                &format!("cannot {what} multicast group {group}"),
            ))
        })?;
        log!("udp", self.id, "{what} multicast {group}");
        Ok(())
    }

    /// Asks the loop for a turn, once the lock is released.
    fn kick(&self, mut st: Guard<'_, State>) {
        // After the end the loop holds it no more: a request would keep it
        // (and its loop) alive in the loop's inbox.
        if st.requested || !st.started || st.ending {
            return;
        }
        st.requested = true;
        drop(st);
        if let (Some(lp), Some(me)) = (self.lp.get(), self.me.upgrade()) {
            lp.request(me);
        }
    }

    /// Sends what the queue holds, in batches, until the socket would block.
    fn flush(&self, cx: &Cx<'_>, st: &mut State) -> Vec<Error> {
        let mut errors = std::mem::take(&mut st.failed);
        let Some(socket) = &st.socket else {
            return errors;
        };
        let fd = socket.as_raw_fd();
        loop {
            // Names resolved since: their datagrams get their address.
            let mut batch = 0;
            for d in st.queue.iter_mut().take(BATCH) {
                if let Dest::Name(name, port) = &d.to {
                    if name.is_empty() {
                        break; // a failed lookup's datagram: dropped below
                    }
                    match st.names.get(name) {
                        Some(Lookup::Found(ip, _)) => match self.target(*ip, *port) {
                            Ok(a) => d.to = Dest::Addr(a),
                            Err(_) => break,
                        },
                        _ => break,
                    }
                }
                batch += 1;
            }
            if batch == 0 {
                // The head waits for a lookup, or its lookup failed.
                match st.queue.front() {
                    Some(Datagram {
                        to: Dest::Name(n, _),
                        ..
                    }) if n.is_empty() => {
                        if let Some(d) = st.queue.pop_front() {
                            st.queued -= d.data.len();
                        }
                        continue;
                    }
                    _ => break,
                }
            }
            match send_batch(fd, st.queue.iter().take(batch)) {
                Ok(n) => {
                    for _ in 0..n {
                        if let Some(d) = st.queue.pop_front() {
                            st.queued -= d.data.len();
                            if let Dest::Addr(a) = d.to {
                                log!(
                                    "udp",
                                    self.id,
                                    "sent {} bytes to {}",
                                    d.data.len(),
                                    Remote::new(a).endpoint()
                                );
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // The first datagram of the batch was refused: it is
                    // dropped and reported; the rest go on.
                    if let Some(d) = st.queue.pop_front() {
                        st.queued -= d.data.len();
                        let to = match d.to {
                            Dest::Addr(a) => Remote::new(a).endpoint(),
                            Dest::Name(n, p) => format!("{n}:{p}"),
                        };
                        errors.push(Error::io(&e, &format!("send to {to}")));
                    }
                }
            }
        }
        let blocked = st
            .queue
            .front()
            .is_some_and(|d| matches!(d.to, Dest::Addr(_)));
        if blocked != st.write_interest && cx.reregister(fd, st.key, blocked).is_ok() {
            st.write_interest = blocked;
        }
        for e in &errors {
            st.errors.push(e.clone());
        }
        errors
    }

    /// Reads what is ready, delivering one DATA per datagram. Returns
    /// whether more may wait (a full turn's worth was read). Each batch is
    /// read under the state lock, under which close takes the socket (so
    /// the fd read is this socket's, never a reused number), and delivered
    /// after it is released.
    fn read(self: &Arc<Self>) -> bool {
        RX.with(|rx| {
            let mut rx = rx.borrow_mut();
            let rx = rx.get_or_insert_with(Rx::new);
            for _ in 0..BATCHES_PER_TURN {
                if !self.receive_room() {
                    return false;
                }
                let got = {
                    let st = self.lock();
                    let Some(s) = &st.socket else {
                        return false;
                    };
                    rx.recv(s.as_raw_fd())
                };
                let n = match got {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // EAGAIN: all read. Another error concerns one datagram
                    // (an ICMP report): the next read goes on.
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                    Err(_) => continue,
                };
                for i in 0..n {
                    let (data, from) = rx.datagram(i);
                    let remote = Remote::new(from);
                    log!(
                        "udp",
                        self.id,
                        "received {} bytes from {}",
                        data.len(),
                        remote.endpoint()
                    );
                    self.deliver_data(data, &remote);
                }
                if n < BATCH {
                    return false;
                }
            }
            true
        })
    }

    fn receive_room(&self) -> bool {
        self.cfg.dispatcher.is_none() || self.outbox.lock().undelivered < UNDELIVERED_LIMIT
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    fn deliver_data(self: &Arc<Self>, data: &[u8], from: &Remote) {
        if self.cfg.on_data.is_none() || self.is_closed() {
            return;
        }
        match &self.cfg.dispatcher {
            None => {
                self.invoke(EventType::NETEV_EVENT_DATA, data, from, None);
            }
            Some(_) => self.queue(Pending::Data(data.to_vec(), *from)),
        }
    }

    fn deliver_error(self: &Arc<Self>, e: Error) {
        log!("udp", self.id, "error {e}");
        match &self.cfg.dispatcher {
            None => {
                self.invoke(
                    EventType::NETEV_EVENT_ERROR,
                    &[],
                    &Remote::UNKNOWN,
                    Some(&e),
                );
            }
            Some(_) => self.queue(Pending::Error(e)),
        }
    }

    fn deliver_terminate(self: &Arc<Self>) {
        match &self.cfg.dispatcher {
            None => {
                self.invoke(
                    EventType::NETEV_EVENT_TERMINATE,
                    &[],
                    &Remote::UNKNOWN,
                    None,
                );
            }
            Some(_) => self.queue(Pending::Terminate),
        }
    }

    fn queue(self: &Arc<Self>, p: Pending) {
        let Some(d) = &self.cfg.dispatcher else {
            return;
        };
        let mut out = self.outbox.lock();
        if let Pending::Data(bytes, _) = &p {
            out.undelivered += bytes.len() + ENTRY_COST;
        }
        out.events.push_back(p);
        let post = !out.scheduled;
        out.scheduled = true;
        drop(out);
        if post {
            d.post(Job::Mailbox(self.clone()));
        }
    }

    /// Calls the host's callback for `ty`; returns whether one ran.
    fn invoke(&self, ty: EventType, data: &[u8], from: &Remote, error: Option<&Error>) -> bool {
        if ty == EventType::NETEV_EVENT_TERMINATE {
            // From here a release gives the handle back at once (as for
            // connections): the host has seen, or is seeing, the end.
            self.lock().terminating = true;
        }
        let cb = self.cfg.callback(ty);
        if let Some(cb) = cb {
            let mut ev = netev_event::new(ty, self.id, from).with_data(data);
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
        log!("udp", self.id, "terminated");
        if let Some(free) = self.cfg.user_data_free {
            let ud = self.cfg.user_data;
            call_host(|| {
                // SAFETY: the host's function for its own pointer; TERMINATE
                // is the last use, so it runs once, here.
                unsafe { free(ud.0) }
            });
        }
        if let Some(d) = &self.cfg.dispatcher {
            d.unbind();
        }
        if unowned {
            registry::remove(self.id);
        }
        runtime::object_ended();
    }

    pub fn dispatcher_id(&self) -> netev_dispatcher {
        self.cfg.dispatcher.as_ref().map_or(0, |d| d.id)
    }
}

impl Registered for UdpSocket {
    fn shutdown_round(&self) {
        self.close();
    }
    fn dispatcher_released(&self, id: netev_dispatcher) {
        if self.dispatcher_id() == id {
            self.close();
        }
    }
}

impl Mailbox for UdpSocket {
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
            Pending::Data(bytes, from) => {
                // Received before close, delivered after it: dropped.
                let ran = !self.is_closed()
                    && self.invoke(EventType::NETEV_EVENT_DATA, &bytes, &from, None);
                let mut out = self.outbox.lock();
                let was_full = out.undelivered >= UNDELIVERED_LIMIT;
                out.undelivered -= bytes.len() + ENTRY_COST;
                if was_full && out.undelivered < UNDELIVERED_LIMIT {
                    drop(out);
                    // The loop stopped reading for lack of room: resume.
                    self.kick(self.lock());
                }
                ran
            }
            Pending::Error(e) => self.invoke(
                EventType::NETEV_EVENT_ERROR,
                &[],
                &Remote::UNKNOWN,
                Some(&e),
            ),
            Pending::Terminate => self.invoke(
                EventType::NETEV_EVENT_TERMINATE,
                &[],
                &Remote::UNKNOWN,
                None,
            ),
        };
        let mut out = self.outbox.lock();
        let more = !out.events.is_empty();
        out.scheduled = more;
        Delivery { ran, more }
    }
}

impl Source for UdpSocket {
    fn start(self: Arc<Self>, cx: &mut Cx<'_>, key: usize) {
        let mut st = self.lock();
        st.key = key;
        st.started = true;
        if let Some(s) = &st.socket {
            let writable = !st.queue.is_empty();
            match cx.register(s.as_raw_fd(), key, writable) {
                Ok(()) => st.write_interest = writable,
                Err(e) => {
                    let e = Error::io(&e, "cannot register the UDP socket");
                    st.errors.push(e.clone());
                    st.socket = None;
                    drop(st);
                    self.deliver_error(e);
                    return self.service(cx, Ready::default());
                }
            }
        }
        drop(st);
        self.service(cx, Ready::default());
    }

    fn service(self: Arc<Self>, cx: &mut Cx<'_>, _ready: Ready) {
        let mut st = self.lock();
        st.requested = false;
        if st.socket.is_none() {
            if !st.ending {
                st.ending = true;
                st.queue.clear();
                st.queued = 0;
                cx.remove(st.key);
                drop(st);
                self.deliver_terminate();
            }
            return;
        }
        let errors = self.flush(cx, &mut st);
        drop(st);
        for e in errors {
            self.deliver_error(e);
        }
        if self.read() {
            cx.again(self);
        }
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

/// Sends up to BATCH datagrams with one sendmmsg; how many went.
fn send_batch<'a>(fd: RawFd, batch: impl Iterator<Item = &'a Datagram>) -> std::io::Result<usize> {
    let mut addrs: [libc::sockaddr_storage; BATCH] =
        // SAFETY: sockaddr_storage is plain data; all zeros is valid.
        unsafe { std::mem::zeroed() };
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    // SAFETY: mmsghdr is plain data; all zeros is valid (no address yet).
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    let mut lens: [libc::socklen_t; BATCH] = [0; BATCH];
    let mut n = 0;
    for d in batch.take(BATCH) {
        let Dest::Addr(a) = d.to else { break };
        lens[n] = write_sockaddr(a, &mut addrs[n]);
        iovs[n] = libc::iovec {
            iov_base: d.data.as_ptr().cast_mut().cast(),
            iov_len: d.data.len(),
        };
        n += 1;
    }
    for (((m, a), len), iov) in msgs
        .iter_mut()
        .zip(&mut addrs)
        .zip(lens)
        .zip(&mut iovs)
        .take(n)
    {
        m.msg_hdr.msg_name = (a as *mut libc::sockaddr_storage).cast();
        m.msg_hdr.msg_namelen = len;
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    if n == 0 {
        return Ok(0);
    }
    // SAFETY: `fd` is the socket's open descriptor (the caller holds the
    // state lock, under which close takes it); `msgs` points at `n` filled
    // headers whose addresses and buffers live until the call returns.
    let r = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as libc::c_uint, libc::MSG_DONTWAIT) };
    usize::try_from(r).map_err(|_| std::io::Error::last_os_error())
}

fn write_sockaddr(a: SocketAddr, out: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let s = socket2::SockAddr::from(a);
    let len = s.len();
    // SAFETY: SockAddr holds a valid sockaddr of `len` bytes, which fits
    // in a sockaddr_storage.
    unsafe {
        std::ptr::copy_nonoverlapping(
            s.as_ptr().cast::<u8>(),
            (out as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        )
    };
    len
}

/// The sender of a received datagram.
fn read_sockaddr(a: &libc::sockaddr_storage) -> SocketAddr {
    match a.ss_family as libc::c_int {
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 (its family says so).
            let a6 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a6.sin6_addr.s6_addr),
                u16::from_be(a6.sin6_port),
                a6.sin6_flowinfo,
                a6.sin6_scope_id,
            ))
        }
        _ => {
            // SAFETY: the kernel wrote a sockaddr_in (AF_INET).
            let a4 = unsafe { &*(a as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a4.sin_addr.s_addr)),
                u16::from_be(a4.sin_port),
            ))
        }
    }
}

/// Datagram slots of 64 KiB each: any datagram fits whole. The memory is
/// reserved, not touched: a slot's pages are resident only as far as
/// datagrams filled them. The slots start 64 KiB + 1 KiB + 64 B apart, not
/// exactly 64 KiB: slots a power of two apart would put every datagram's
/// first bytes in the same cache sets.
const SLOT: usize = 65_536 + 1_024 + 64;

/// An I/O thread's receive buffers for recvmmsg.
struct Rx {
    buf: Vec<u8>,
    addrs: [libc::sockaddr_storage; BATCH],
    lens: [usize; BATCH],
}

impl Rx {
    fn new() -> Rx {
        Rx {
            buf: vec![0u8; BATCH * SLOT],
            // SAFETY: sockaddr_storage is plain data; all zeros is valid.
            addrs: unsafe { std::mem::zeroed() },
            lens: [0; BATCH],
        }
    }

    /// Reads up to BATCH datagrams; how many.
    fn recv(&mut self, fd: RawFd) -> std::io::Result<usize> {
        let base = self.buf.as_mut_ptr();
        let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; BATCH];
        // SAFETY: mmsghdr is plain data; all zeros is valid.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for (i, ((m, a), iov)) in msgs
            .iter_mut()
            .zip(&mut self.addrs)
            .zip(&mut iovs)
            .enumerate()
        {
            *iov = libc::iovec {
                // SAFETY: i < BATCH, so i * SLOT < buf.len(): inside the buffer.
                iov_base: unsafe { base.add(i * SLOT) }.cast(),
                iov_len: SLOT,
            };
            m.msg_hdr.msg_name = (a as *mut libc::sockaddr_storage).cast();
            m.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `fd` is a descriptor of this socket the caller owns for
        // the call; every header points at live, writable memory of the
        // sizes given.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        let n = usize::try_from(r).map_err(|_| std::io::Error::last_os_error())?;
        for (len, m) in self.lens.iter_mut().zip(&msgs).take(n) {
            *len = m.msg_len as usize;
        }
        Ok(n)
    }

    fn datagram(&self, i: usize) -> (&[u8], SocketAddr) {
        let at = i * SLOT;
        (
            &self.buf[at..at + self.lens[i].min(SLOT)],
            read_sockaddr(&self.addrs[i]),
        )
    }
}

thread_local! {
    /// Each I/O thread's receive buffers, made on its first UDP read.
    static RX: std::cell::RefCell<Option<Rx>> = const { std::cell::RefCell::new(None) };
}
