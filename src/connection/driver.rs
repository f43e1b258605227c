//! The connection's I/O, run by its loop (`io_loop`): name lookup and
//! connect, then reading, writing and the end, on the loop's thread only.
//!
//! What the loop needs between turns lives in `Drive`, inside the state's
//! mutex, so host threads can publish changes (a send queued, a close) and
//! ask for a turn with one request; the socket is read without the lock
//! (only this thread closes it) and written under it, as host threads do.

use super::{After, Bind, Connection, End, READ_BUF, State};
use crate::error::{Error, Result, Status};
use crate::event::{EventType, Remote};
use crate::framing::Deframer;
use crate::io_loop::{Cx, Ready, Source};
use crate::log::log;
use crate::runtime;
use crate::send_queue::{self, SendQueue};
use crate::sync::Guard;
use crate::tls::Session;
use std::io::{self, IoSlice};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

/// Largest read.
pub(super) const READ_CHUNK: usize = 64 << 10;
/// Full reads in a row before the connection lets the others have a turn.
const READS_PER_TURN: usize = 4;

/// Where the connection is in its life, as its loop sees it.
#[derive(Default)]
pub(super) enum Phase {
    /// Not on a loop yet.
    #[default]
    Idle,
    /// Waiting for the name lookup on the blocking pool.
    Resolving(Box<Connect>),
    /// A non-blocking connect to `addrs[next - 1]` is under way.
    Connecting(Box<Connect>),
    Established,
    /// Removed from the loop; CLOSE or ERROR is decided.
    Done,
}

/// What connecting takes, boxed in the phase: an established connection
/// carries none of it.
#[derive(Default)]
pub(super) struct Connect {
    /// The name lookup's result, waiting for the loop.
    resolved: Option<io::Result<Vec<SocketAddr>>>,
    /// The addresses in the order they are tried (see `race_order`).
    addrs: Vec<SocketAddr>,
    next: usize,
    last_error: Option<Error>,
    deadline: Option<Instant>,
    /// Connects under way, raced as RFC 8305 describes: the first to
    /// connect wins, the others are closed.
    racing: Vec<(mio::net::TcpStream, SocketAddr)>,
    /// When the next address gets its attempt if none has connected by
    /// then (RFC 8305's Connection Attempt Delay).
    next_at: Option<Instant>,
}

/// RFC 8305's Connection Attempt Delay: how long an attempt has before
/// the next address is tried beside it.
const ATTEMPT_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// The order addresses are tried in (RFC 8305 section 4): IPv6 first,
/// then the families alternate, each in the resolver's order; duplicates
/// and addresses of another family than a bound local address dropped.
fn race_order(addrs: Vec<SocketAddr>, bind: Option<Bind>) -> Vec<SocketAddr> {
    let family = bind.and_then(|b| b.ip).map(|ip| ip.is_ipv4());
    let mut v6 = Vec::new();
    let mut v4 = Vec::new();
    for a in addrs {
        if family.is_some_and(|v4_only| v4_only != a.is_ipv4())
            || v6.contains(&a)
            || v4.contains(&a)
        {
            continue;
        }
        if a.is_ipv4() { v4.push(a) } else { v6.push(a) }
    }
    let mut out = Vec::with_capacity(v6.len() + v4.len());
    let (mut a, mut b) = (v6.into_iter(), v4.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// A test seam, in debug builds only: NETEV_TEST_HOSTS="name=ip,ip;..."
/// resolves `name` to those addresses in that order, so tests can race
/// both families where "localhost" has only one (as in some sandboxes).
#[cfg(debug_assertions)]
fn test_hosts(name: &str, port: u16) -> Option<io::Result<Vec<SocketAddr>>> {
    let table = std::env::var("NETEV_TEST_HOSTS").ok()?;
    let ips = table
        .split(';')
        .find_map(|entry| entry.strip_prefix(name)?.strip_prefix('='))?;
    Some(Ok(ips
        .split(',')
        .filter_map(|ip| ip.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, port))
        .collect()))
}

#[cfg(not(debug_assertions))]
fn test_hosts(_: &str, _: u16) -> Option<io::Result<Vec<SocketAddr>>> {
    None
}

/// A non-blocking connect to `addr` from `bind`'s address and port.
fn start_connect(addr: SocketAddr, bind: Option<Bind>) -> Result<mio::net::TcpStream> {
    let what = || format!("connect to {addr}");
    let Some(b) = bind else {
        return mio::net::TcpStream::connect(addr).map_err(|e| Error::io(&e, &what()));
    };
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(|e| Error::io(&e, &what()))?;
    let ip = b.ip.unwrap_or(match addr {
        SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    });
    let local = SocketAddr::new(ip, b.port);
    if b.port == 0 && addr.is_ipv4() {
        // The port is picked at connect time, per destination: a bound
        // address serves more connections than it has ports. Best effort
        // (Linux 4.2 and later).
        let one: libc::c_int = 1;
        // SAFETY: `s` is an open socket; `one` is a live c_int.
        unsafe {
            libc::setsockopt(
                s.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
    }
    s.bind(&SockAddr::from(local))
        .map_err(|e| Error::io(&e, &format!("bind to {local} before connecting to {addr}")))?;
    match s.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(Error::io(&e, &what())),
    }
    Ok(mio::net::TcpStream::from_std(s.into()))
}

/// Where a connect attempt stands.
enum Attempt {
    Pending,
    Connected,
    Failed(io::Error),
}

fn attempt_status(s: &mio::net::TcpStream) -> Attempt {
    match s.take_error() {
        Ok(Some(e)) | Err(e) => Attempt::Failed(e),
        Ok(None) => match s.peer_addr() {
            Ok(_) => Attempt::Connected,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Attempt::Pending,
            Err(e) => Attempt::Failed(e),
        },
    }
}

/// The loop's part of the state.
#[derive(Default)]
pub(super) struct Drive {
    pub(super) phase: Phase,
    /// The socket: connecting, or established (then `connected`).
    pub(super) socket: Option<mio::net::TcpStream>,
    /// Host threads may write to the socket directly.
    pub(super) connected: bool,
    /// A turn was requested and has not started yet.
    pub(super) requested: bool,
    pub(super) peer_ended: bool,
    key: usize,
    /// The socket is registered for writability too: it is connecting, or
    /// the socket did not take all that was queued.
    write_interest: bool,
    /// The deadline of the timer that counts (connect, then idle): an
    /// earlier one still in the loop's heap is stale.
    armed: Option<Instant>,
    last_read: Option<Instant>,
    /// TLS: rustls' session, once the socket is connected.
    pub(super) tls: Option<Box<Session>>,
    /// With framing: the frame being gathered, and bytes a pause held
    /// back. Out of the state while a turn uses it.
    framer: Option<Box<Deframer>>,
    /// The peer's end arrived while the host had paused: END waits.
    end_held: bool,
}

impl Drive {
    /// The fd host threads may write to now.
    pub(super) fn writable_fd(&self) -> Option<RawFd> {
        match (&self.socket, self.connected) {
            (Some(s), true) => Some(s.as_raw_fd()),
            _ => None,
        }
    }
}

impl Source for Connection {
    fn start(self: Arc<Self>, cx: &mut Cx<'_>, key: usize) {
        let mut st = self.lock();
        st.drive.key = key;
        if let Some(socket) = st.drive.socket.take() {
            // Accepted: already connected.
            drop(st);
            return self.established(cx, socket);
        }
        if st.close_requested {
            drop(st);
            return self.end(cx, End::Close);
        }
        let deadline = Instant::now() + self.cfg().connection_timeout;
        let mut connect = Box::new(Connect {
            deadline: Some(deadline),
            ..Connect::default()
        });
        self.arm(&mut st, cx, deadline);
        if let Ok(ip) = self.address().parse::<IpAddr>() {
            connect.addrs = race_order(vec![SocketAddr::new(ip, self.port())], self.cfg().bind);
            st.drive.phase = Phase::Connecting(connect);
            drop(st);
            return self.connect_next(cx);
        }
        st.drive.phase = Phase::Resolving(connect);
        drop(st);
        let me = self.clone();
        let spawned = runtime::spawn_blocking(move || {
            let found = test_hosts(&me.address(), me.port()).unwrap_or_else(|| {
                (&*me.address(), me.port())
                    .to_socket_addrs()
                    .map(|a| a.collect::<Vec<_>>())
            });
            let mut st = me.lock();
            if let Phase::Resolving(c) = &mut st.drive.phase {
                c.resolved = Some(found);
            }
            me.kick(st);
        });
        if let Err(e) = spawned {
            self.end(cx, End::Error(e));
        }
    }

    fn service(self: Arc<Self>, cx: &mut Cx<'_>, ready: Ready) {
        let mut st = self.lock();
        st.drive.requested = false;
        if st.close_requested && !matches!(st.drive.phase, Phase::Established | Phase::Done) {
            drop(st);
            return self.end(cx, End::Close);
        }
        match &mut st.drive.phase {
            Phase::Idle | Phase::Done => {}
            Phase::Resolving(connect) => {
                let Some(found) = connect.resolved.take() else {
                    return;
                };
                match found {
                    Ok(addrs) => {
                        connect.addrs = race_order(addrs, self.cfg().bind);
                        let Phase::Resolving(connect) = std::mem::take(&mut st.drive.phase) else {
                            return;
                        };
                        st.drive.phase = Phase::Connecting(connect);
                        drop(st);
                        self.connect_next(cx);
                    }
                    Err(e) => {
                        drop(st);
                        let e = Error::new(
                            Status::NETEV_ERR_HOST_NOT_FOUND,
                            format!("cannot resolve {}: {e}", self.address()),
                        )
                        .component("dns");
                        self.end(cx, End::Error(e));
                    }
                }
            }
            Phase::Connecting(c) => {
                if !(ready.writable || ready.error) {
                    return;
                }
                let mut failed = false;
                let mut won = None;
                let mut i = 0;
                while i < c.racing.len() {
                    match attempt_status(&c.racing[i].0) {
                        Attempt::Pending => i += 1,
                        Attempt::Connected => {
                            won = Some(c.racing.swap_remove(i).0);
                            break;
                        }
                        Attempt::Failed(e) => {
                            let (s, addr) = c.racing.swap_remove(i);
                            c.last_error = Some(Error::io(&e, &format!("connect to {addr}")));
                            cx.deregister(s.as_raw_fd());
                            failed = true;
                        }
                    }
                }
                if let Some(socket) = won {
                    for (loser, _) in c.racing.drain(..) {
                        cx.deregister(loser.as_raw_fd());
                    }
                    drop(st);
                    return self.established(cx, socket);
                }
                drop(st);
                if failed {
                    // RFC 8305: a failed attempt starts the next one at once.
                    self.connect_next(cx);
                }
            }
            Phase::Established => self.serve(cx, ready, st),
        }
    }

    fn panicked(self: Arc<Self>, cx: &mut Cx<'_>) {
        let e = Error::new(
            Status::NETEV_ERR_INTERNAL,
            "a panic inside netev ended this connection; please report it",
        );
        self.end(cx, End::Error(e));
    }

    fn timer(self: Arc<Self>, cx: &mut Cx<'_>) {
        let mut st = self.lock();
        let now = Instant::now();
        if st.drive.armed.is_some_and(|at| now < at) {
            // A timer set before the one that counts now.
            return;
        }
        match &st.drive.phase {
            Phase::Connecting(c)
                if c.next_at.is_some_and(|at| now >= at) && c.deadline.is_none_or(|d| now < d) =>
            {
                // No attempt connected within the delay: the next address
                // races the ones under way.
                drop(st);
                self.connect_next(cx);
            }
            Phase::Resolving(c) | Phase::Connecting(c) => {
                if c.deadline.is_some_and(|d| now >= d) {
                    drop(st);
                    let limit = self.cfg().connection_timeout;
                    let e = Error::new(
                        Status::NETEV_ERR_TIMEOUT,
                        format!(
                            "connecting to {} port {} took longer than {:.3} s",
                            self.address(),
                            self.port(),
                            limit.as_secs_f64()
                        ),
                    );
                    self.end(cx, End::Error(e));
                }
            }
            Phase::Established => {
                let handshake = st.drive.tls.as_ref().and_then(|t| t.handshake_deadline);
                if handshake.is_some_and(|d| now >= d) {
                    drop(st);
                    let limit = self.cfg().connection_timeout;
                    let e = Error::new(
                        Status::NETEV_ERR_TIMEOUT,
                        format!(
                            "the TLS handshake did not complete within {:.3} s",
                            limit.as_secs_f64()
                        ),
                    )
                    .component("tls");
                    return self.end(cx, End::Error(e));
                }
                let Some(limit) = self.cfg().idle_timeout else {
                    if let Some(d) = handshake {
                        self.arm(&mut st, cx, d);
                    }
                    return;
                };
                let last = match (st.drive.last_read, st.last_write) {
                    // The host holds the peer back: not idle.
                    _ if self.paused() => now,
                    (Some(r), Some(w)) => r.max(w),
                    (r, w) => r.or(w).unwrap_or(now),
                };
                if now.duration_since(last) >= limit {
                    drop(st);
                    let e = Error::new(
                        Status::NETEV_ERR_TIMEOUT,
                        format!("no traffic for {:.3} s", limit.as_secs_f64()),
                    );
                    self.end(cx, End::Error(e));
                } else {
                    let at = handshake.map_or(last + limit, |d| d.min(last + limit));
                    self.arm(&mut st, cx, at);
                }
            }
            Phase::Idle | Phase::Done => {}
        }
    }
}

impl Connection {
    /// Starts a connect to the next address (racing those under way), or,
    /// with no address left and none under way, fails with the last error.
    fn connect_next(self: Arc<Self>, cx: &mut Cx<'_>) {
        loop {
            let mut st = self.lock();
            let key = st.drive.key;
            let Phase::Connecting(c) = &mut st.drive.phase else {
                return;
            };
            c.next_at = None;
            let Some(addr) = c.addrs.get(c.next).copied() else {
                if !c.racing.is_empty() {
                    // The ones under way decide; the deadline bounds them.
                    let at = c.deadline;
                    if let Some(at) = at {
                        self.arm(&mut st, cx, at);
                    }
                    return;
                }
                let e = c
                    .last_error
                    .take()
                    .unwrap_or_else(|| match self.cfg().bind {
                        Some(Bind { ip: Some(ip), .. }) => Error::new(
                            Status::NETEV_ERR_HOST_NOT_FOUND,
                            format!(
                                "{} has no {} address to connect to from bind_address {ip}",
                                self.address(),
                                if ip.is_ipv4() { "IPv4" } else { "IPv6" }
                            ),
                        )
                        .component("dns"),
                        _ => Error::new(
                            Status::NETEV_ERR_HOST_NOT_FOUND,
                            format!("{} has no address", self.address()),
                        )
                        .component("dns"),
                    });
                drop(st);
                return self.end(cx, End::Error(e));
            };
            c.next += 1;
            let failed = match start_connect(addr, self.cfg().bind) {
                Ok(s) => match cx.register(s.as_raw_fd(), key, true) {
                    Ok(()) => {
                        c.racing.push((s, addr));
                        let mut wake = None;
                        if c.next < c.addrs.len() {
                            let at = Instant::now() + ATTEMPT_DELAY;
                            c.next_at = Some(at);
                            wake = Some(c.deadline.map_or(at, |d| d.min(at)));
                        }
                        st.drive.write_interest = true;
                        if let Some(at) = wake {
                            self.arm(&mut st, cx, at);
                        }
                        return;
                    }
                    Err(e) => Error::io(&e, "register the socket"),
                },
                Err(e) => e,
            };
            c.last_error = Some(failed);
        }
    }

    /// The socket is connected: configure it, say CONNECTION, serve.
    fn established(self: Arc<Self>, cx: &mut Cx<'_>, socket: mio::net::TcpStream) {
        let key = self.lock().drive.key;
        if let Err(e) = self.configure(&socket) {
            return self.end(cx, End::Error(e));
        }
        // Accepted sockets are registered here; connected ones already are.
        let accepted = self.listener() != 0;
        if accepted && let Err(e) = cx.register(socket.as_raw_fd(), key, false) {
            return self.end(cx, End::Error(Error::io(&e, "register the socket")));
        }
        if self.remote.get().is_none()
            && let Ok(peer) = socket.peer_addr()
        {
            let _ = self.remote.set(Remote::new(peer));
        }
        // TLS: the session starts now; CONNECTION waits for its handshake,
        // which must complete within connection_timeout.
        let now = Instant::now();
        let tls = match &self.cfg().tls {
            None => None,
            Some(t) => match t.session(self.cfg().server_name.as_ref()) {
                Ok(mut s) => {
                    s.handshake_deadline = Some(now + self.cfg().connection_timeout);
                    Some(Box::new(s))
                }
                Err(e) => return self.end(cx, End::Error(e)),
            },
        };
        let handshake = tls.as_ref().and_then(|t| t.handshake_deadline);
        {
            let mut st = self.lock();
            st.drive.socket = Some(socket);
            st.drive.connected = true;
            st.drive.phase = Phase::Established;
            st.drive.tls = tls;
            if self.cfg().idle_timeout.is_some() {
                st.drive.last_read = Some(now);
            }
        }
        let idle = self.cfg().idle_timeout.map(|limit| now + limit);
        let first = match (handshake, idle) {
            (Some(h), Some(i)) => Some(h.min(i)),
            (h, i) => h.or(i),
        };
        if let Some(at) = first {
            let mut st = self.lock();
            self.arm(&mut st, cx, at);
        }
        log!(
            "connection",
            self.id,
            "connected {}",
            self.remote().endpoint()
        );
        if handshake.is_none() {
            self.deliver(EventType::NETEV_EVENT_CONNECTION, &[], None, After::Nothing);
        }
        let st = self.lock();
        self.serve(cx, Ready::default(), st);
    }

    fn configure(&self, s: &mio::net::TcpStream) -> Result<()> {
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

    /// One turn of an established connection: write what is queued, read
    /// what is ready, end when it is over.
    /// `st` is the lock the turn took first, kept for the flush: one lock
    /// per turn when there is nothing to write.
    fn serve(self: &Arc<Self>, cx: &mut Cx<'_>, ready: Ready, st: Guard<'_, State>) {
        #[cfg(test)]
        if self.port() == super::tests::PANIC_PORT.load(std::sync::atomic::Ordering::Relaxed) {
            panic!("a panic planted by a test");
        }
        let snap = match self.flush(cx, ready, st) {
            Ok(snap) => snap,
            Err(e) => return self.clone().end(cx, End::Error(e)),
        };
        if snap.drain {
            self.deliver(EventType::NETEV_EVENT_DRAIN, &[], None, After::Nothing);
        }
        if snap.close || (snap.peer_ended && snap.shut_done) {
            return self.clone().end(cx, End::Close);
        }
        let mut framer = snap.framer;
        if snap.peer_ended || snap.paused || !self.receive_room() {
            return self.keep(framer);
        }
        // What a pause held back goes first: frames read but not delivered,
        // then the peer's end.
        let held = match framer.as_deref_mut() {
            Some(f) if !f.held.is_empty() => Some(std::mem::take(&mut f.held)),
            _ => None,
        };
        let held = held.and_then(|bytes| self.receive(&mut framer, &bytes));
        let result = match (held, snap.end_held) {
            (Some(r), _) => r,
            (None, true) => Read::Ended,
            (None, false) => {
                // A short read means the socket ran dry only when an edge
                // will say otherwise: after a poll that did not report the
                // peer's end.
                let short_is_dry = ready.polled && !ready.read_closed && !ready.error;
                self.read_some(snap.fd, short_is_dry, &mut framer)
            }
        };
        match result {
            Read::Drained => self.keep(framer),
            Read::More => {
                self.keep(framer);
                cx.again(self.clone());
            }
            Read::Failed(e) => self.clone().end(cx, End::Error(e)),
            Read::Ended => self.peer_ended(cx, framer),
        }
    }

    /// Puts the framer back for the next turn.
    fn keep(&self, framer: Option<Box<Deframer>>) {
        if framer.is_some() {
            self.lock().drive.framer = framer;
        }
    }

    /// The peer finished sending: the trailing partial frame, then END
    /// (held back while paused), then our own end unless half-open.
    fn peer_ended(self: &Arc<Self>, cx: &mut Cx<'_>, mut framer: Option<Box<Deframer>>) {
        if !self.paused()
            && let (Some(f), Some(framing)) = (framer.as_deref_mut(), &self.cfg().framing)
        {
            // Bytes a pause held back come before this; there are none
            // unless paused.
            match f.finish(framing) {
                Ok(None) => {}
                Ok(Some(last)) => self.deliver_data(&last),
                Err(e) => return self.clone().end(cx, End::Error(e)),
            }
        }
        if self.paused() {
            let mut st = self.lock();
            st.drive.end_held = true;
            st.drive.framer = framer;
            return;
        }
        log!("connection", self.id, "end: the peer finished sending");
        {
            let mut st = self.lock();
            st.drive.end_held = false;
            st.drive.peer_ended = true;
            if !self.cfg().allow_half_open {
                st.closed = true;
            }
        }
        self.deliver(EventType::NETEV_EVENT_END, &[], None, After::AutoShutdown);
        // What END's callback (or the automatic shutdown) queued, and the
        // end itself, are for the next turn.
        let st = self.lock();
        self.kick(st);
    }

    /// Delivers received bytes: as they are, or cut into frames. Some when
    /// reading must stop: the framing broke, or the host paused or closed
    /// between two frames of `data` (the rest is held for `resume`).
    fn receive(self: &Arc<Self>, framer: &mut Option<Box<Deframer>>, data: &[u8]) -> Option<Read> {
        let Some(framing) = &self.cfg().framing else {
            self.deliver_data(data);
            return None;
        };
        let f = framer.get_or_insert_with(Box::default);
        let mut input = data;
        loop {
            match f.next(framing, &mut input) {
                Err(e) => return Some(Read::Failed(e)),
                Ok(None) => return None,
                Ok(Some(frame)) => {
                    self.deliver_data(frame.bytes());
                    if input.is_empty() {
                        // The caller checks for a pause or a close after
                        // each read.
                        return None;
                    }
                    // A pause, a close, or (dispatcher) the receive limit:
                    // the rest waits, at most one read's worth.
                    if self.paused() || !self.receive_room() || self.lock().close_requested {
                        f.held.extend_from_slice(input);
                        return Some(Read::Drained);
                    }
                }
            }
        }
    }

    fn deliver_data(self: &Arc<Self>, data: &[u8]) {
        log!("connection", self.id, "received {} bytes", data.len());
        self.deliver(EventType::NETEV_EVENT_DATA, data, None, After::Nothing);
    }

    /// Writes what the socket takes, shuts the write side when asked and
    /// the queue is empty, and says what the turn must do next.
    fn flush(&self, cx: &Cx<'_>, ready: Ready, mut st: Guard<'_, State>) -> Result<Snapshot> {
        let fd = st.drive.socket.as_ref().map(|s| s.as_raw_fd());
        let mut snap = Snapshot {
            fd,
            peer_ended: st.drive.peer_ended,
            paused: self.paused(),
            end_held: st.drive.end_held,
            framer: st.drive.framer.take(),
            ..Snapshot::default()
        };
        if st.close_requested {
            // Queued bytes are dropped: nothing more is written, and no
            // failed write can turn the host's close into an ERROR.
            snap.close = true;
            return Ok(snap);
        }
        let Some(fd) = fd else {
            return Ok(snap);
        };
        let before = st.queued();
        let state: &mut State = &mut st;
        let mut shut_ready = true;
        match state.drive.tls.as_deref_mut() {
            None => {
                while !state.out.is_empty() {
                    let mut slices = [IoSlice::new(&[]); send_queue::MAX_SLICES];
                    let n = state.out.slices(&mut slices);
                    match send_vectored(fd, &slices[..n]) {
                        Ok(n) => state.out.consume(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(Error::io(&e, "write")),
                    }
                }
            }
            Some(t) => {
                pump(t, &mut state.out, fd).map_err(|e| Error::io(&e, "write"))?;
                if state.out.is_empty() && state.write_shut_requested && !state.write_shut_done {
                    // close_notify goes after the queued bytes, and the
                    // FIN after it; not before the handshake completed.
                    shut_ready = t.established;
                    if t.established {
                        t.close_notify();
                        t.write_out(&mut FdWriter(fd))
                            .map_err(|e| Error::io(&e, "write"))?;
                        shut_ready = !t.wants_write();
                    }
                }
            }
        }
        // Writability is watched only while bytes wait; a connected socket
        // stops watching at the first writable edge with nothing to write.
        // With TLS, what waits is rustls' ciphertext (plaintext waits for
        // room in it, or for the handshake).
        let blocked = match st.drive.tls.as_deref() {
            None => !st.out.is_empty(),
            Some(t) => t.wants_write(),
        };
        if blocked != st.drive.write_interest && (blocked || ready.writable) {
            cx.reregister(fd, st.drive.key, blocked)
                .map_err(|e| Error::io(&e, "register the socket"))?;
            st.drive.write_interest = blocked;
        }
        let written = before - st.queued();
        if written > 0 {
            super::stats::Counters::add(&self.counters.sent, written);
            log!("connection", self.id, "sent {written} bytes");
            if self.cfg().idle_timeout.is_some() {
                st.last_write = Some(Instant::now());
            }
        }
        snap.drain = st.refused && st.queued() <= self.cfg().send_buffer_limit / 2;
        if snap.drain {
            st.refused = false;
        }
        if st.queued() == 0 && st.write_shut_requested && !st.write_shut_done && shut_ready {
            // With the peer's side ended too, the connection closes right
            // after this, and close() sends the same FIN: spare the call.
            if !st.drive.peer_ended {
                // SAFETY: `fd` is this connection's open socket: only this
                // thread closes it, and not before this turn ends.
                if unsafe { libc::shutdown(fd, libc::SHUT_WR) } != 0 {
                    return Err(Error::io(&io::Error::last_os_error(), "shutdown"));
                }
            }
            st.write_shut_done = true;
            log!("connection", self.id, "shutdown done: write side closed");
        }
        snap.shut_done = st.write_shut_done;
        Ok(snap)
    }

    /// Reads what is ready (a few full chunks at most), delivering DATA.
    fn read_some(
        self: &Arc<Self>,
        fd: Option<RawFd>,
        short_is_dry: bool,
        framer: &mut Option<Box<Deframer>>,
    ) -> Read {
        let Some(fd) = fd else {
            return Read::Drained;
        };
        let mut buf = READ_BUF
            .take()
            .unwrap_or_else(|| vec![0u8; READ_CHUNK].into_boxed_slice());
        let mut result = Read::More;
        let tls = self.cfg().tls.is_some();
        for i in 0..READS_PER_TURN {
            if i > 0 && !self.receive_room() {
                result = Read::Drained;
                break;
            }
            // SAFETY: `fd` is this connection's open socket (only this
            // thread closes it); `buf` is a live, writable buffer.
            let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::WouldBlock => result = Read::Drained,
                    io::ErrorKind::Interrupted => continue,
                    _ => result = Read::Failed(Error::io(&e, "read")),
                }
                break;
            }
            let n = n as usize;
            if n == 0 {
                result = match tls {
                    false => Read::Ended,
                    true => Read::Failed(self.tls_eof()),
                };
                break;
            }
            if self.cfg().idle_timeout.is_some() {
                self.lock().drive.last_read = Some(Instant::now());
            }
            let stop = if tls {
                self.tls_received(fd, &buf[..n], framer)
            } else {
                super::stats::Counters::add(&self.counters.received, n);
                self.receive(framer, &buf[..n])
            };
            if let Some(r) = stop {
                result = r;
                break;
            }
            // A short read emptied the socket: the next bytes (or the end)
            // come with a new edge, so no read() only to meet EAGAIN.
            if n < buf.len() && short_is_dry {
                result = Read::Drained;
                break;
            }
            if self.paused() || self.lock().close_requested {
                result = Read::Drained;
                break;
            }
        }
        READ_BUF.set(Some(buf));
        if matches!(result, Read::More) {
            // Four full chunks and maybe more: the rest after the others.
            return Read::More;
        }
        result
    }

    /// TLS: hands `data`, read from the socket, to the session: delivers
    /// CONNECTION when it completes the handshake, then the plaintext it
    /// held, and answers at once what it asks to send (handshake flights,
    /// alerts). None: go on reading.
    fn tls_received(
        self: &Arc<Self>,
        fd: RawFd,
        data: &[u8],
        framer: &mut Option<Box<Deframer>>,
    ) -> Option<Read> {
        let mut plain = PLAIN_BUF.take().unwrap_or_default();
        let mut filled = 0;
        let (fed, written, pending) = {
            let mut st = self.lock();
            let t = st.drive.tls.as_deref_mut()?;
            let fed = t.feed(data, &mut plain, &mut filled);
            let written = t.write_out(&mut FdWriter(fd));
            (fed, written, t.wants_write())
        };
        if fed.established {
            if let Some(info) = self.tls_summary() {
                log!("connection", self.id, "tls {info}");
            }
            self.deliver(EventType::NETEV_EVENT_CONNECTION, &[], None, After::Nothing);
        }
        let mut stop = None;
        if filled > 0 {
            super::stats::Counters::add(&self.counters.received, filled);
            stop = self.receive(framer, &plain[..filled]);
        }
        if plain.len() <= 2 * READ_CHUNK {
            PLAIN_BUF.set(Some(plain));
        }
        if let Some(Read::Failed(e)) = stop {
            return Some(Read::Failed(e));
        }
        if let Some(e) = fed.error {
            return Some(Read::Failed(e));
        }
        if let Err(e) = written {
            return Some(Read::Failed(Error::io(&e, "write")));
        }
        if fed.closed {
            // After the frames a pause held back, which go first.
            return Some(Read::Ended);
        }
        if stop.is_some() {
            return stop;
        }
        // Plaintext queued before the handshake goes out now, and
        // ciphertext the socket did not take waits for writability: both
        // in the next turn's flush.
        (fed.established || pending).then_some(Read::More)
    }

    /// TLS: the peer's FIN arrived without close_notify.
    fn tls_eof(&self) -> Error {
        let established = self
            .lock()
            .drive
            .tls
            .as_ref()
            .is_some_and(|t| t.established);
        let message = if established {
            "truncated: the peer closed the connection without a TLS close_notify \
             (the data may have been cut)"
        } else {
            "the peer closed the connection during the TLS handshake"
        };
        Error::new(Status::NETEV_ERR_TLS, message).component("tls")
    }

    /// Leaves the loop (closing the socket under the lock, so no host write
    /// can reach the fd, or a reused one) and ends the connection.
    pub(super) fn end(self: Arc<Self>, cx: &mut Cx<'_>, end: End) {
        let socket = {
            let mut st = self.lock();
            if matches!(st.drive.phase, Phase::Done) {
                return;
            }
            st.drive.phase = Phase::Done;
            st.drive.connected = false;
            if let Some(t) = st.drive.tls.as_deref_mut() {
                t.end();
            }
            cx.remove(st.drive.key);
            st.drive.socket.take()
        };
        {
            // Closed under the lock: a host thread holding it may be
            // writing. Closing takes it out of the loop's poll too (no other
            // descriptor refers to the socket), so no deregister call.
            let _st = self.lock();
            drop(socket);
        }
        self.finish(end);
    }

    /// Sets the timer that counts from now on.
    fn arm(self: &Arc<Self>, st: &mut State, cx: &mut Cx<'_>, at: Instant) {
        st.drive.armed = Some(at);
        cx.set_timer(at, self.clone());
    }

    /// Asks the loop for a turn after a change to `st`, once the lock is released.
    pub(super) fn kick(&self, mut st: Guard<'_, State>) {
        if st.drive.requested || matches!(st.drive.phase, Phase::Idle | Phase::Done) {
            return;
        }
        st.drive.requested = true;
        drop(st);
        if let (Some(lp), Some(me)) = (self.lp.get(), self.me.upgrade()) {
            lp.request(me);
        }
    }
}

enum Read {
    /// Nothing more now: a new edge comes with the next bytes.
    Drained,
    /// Stopped early with more to read: go on after the others.
    More,
    Ended,
    Failed(Error),
}

/// What the turn acts on, read under the lock.
#[derive(Default)]
struct Snapshot {
    fd: Option<RawFd>,
    drain: bool,
    shut_done: bool,
    close: bool,
    peer_ended: bool,
    paused: bool,
    end_held: bool,
    framer: Option<Box<Deframer>>,
}

thread_local! {
    /// Each I/O thread's buffer for the plaintext of one read.
    static PLAIN_BUF: std::cell::Cell<Option<Vec<u8>>> = const { std::cell::Cell::new(None) };
}

/// TLS: writes rustls' pending ciphertext, and moves queued plaintext into
/// it as room frees up, until the socket would block or all is out.
/// Memory stays bounded: rustls takes plaintext only while its ciphertext
/// buffer is under `tls::SEND_BUFFER`.
pub(super) fn pump(t: &mut Session, out: &mut SendQueue, fd: RawFd) -> io::Result<()> {
    loop {
        t.write_out(&mut FdWriter(fd))?;
        if t.wants_write() || out.is_empty() {
            return Ok(());
        }
        let taken = {
            let mut slices = [IoSlice::new(&[]); send_queue::MAX_SLICES];
            let n = out.slices(&mut slices);
            t.take_plaintext(&slices[..n])
        };
        if taken == 0 {
            return Ok(());
        }
        out.consume(taken);
    }
}

/// Writes to a socket without blocking and without SIGPIPE; EAGAIN is
/// `WouldBlock`.
pub(super) struct FdWriter(pub(super) RawFd);

impl io::Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        send_vectored(self.0, &[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        send_vectored(self.0, bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes what the socket takes of `slices`, in order, without blocking
/// and without SIGPIPE (writev has no MSG_NOSIGNAL; sendmsg has).
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

/// Writes what the socket takes of `slices` now, without blocking; 0 when
/// it takes nothing (full, or failing: the loop then meets the error
/// itself). The caller holds the state lock, under which the loop closes
/// the socket, so `fd` is this connection's open socket.
pub(super) fn send_now(fd: RawFd, slices: &[IoSlice<'_>]) -> usize {
    send_vectored(fd, slices).unwrap_or(0)
}
