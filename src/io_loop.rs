//! netev's I/O threads: one event loop each, over mio (epoll on Linux).
//!
//! A loop owns a slab of sources (connections, listeners), each registered
//! with the loop's poll under its slab key, edge-triggered, once for its
//! whole life: an idle connection costs its slab slot and nothing else of
//! the loop's. Readiness calls the source on the loop's thread; so do the
//! requests other threads make (a send the socket did not take at once, a
//! close, room to read again), queued in the loop's inbox behind one waker.
//! Timers (connect deadlines, idle timeouts, accept back-off) are a heap per
//! loop whose earliest deadline bounds the poll.
//!
//! The loop knows nothing of the kinds it drives: they implement `Source`.

use crate::sync::{Mutex, contain};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Something a loop drives. Every method runs on the loop's thread.
pub trait Source: Send + Sync {
    /// The source joined the loop under `key`: register its fd, start.
    fn start(self: Arc<Self>, cx: &mut Cx<'_>, key: usize);
    /// Its fd is ready, or someone asked (`LoopHandle::request`), or it
    /// asked to go on (`Cx::again`): do what is due.
    fn service(self: Arc<Self>, cx: &mut Cx<'_>, ready: Ready);
    /// A timer it set is due (it may have been set again since: check).
    fn timer(self: Arc<Self>, cx: &mut Cx<'_>);
    /// One of the calls above panicked (a bug in netev): end the source.
    fn panicked(self: Arc<Self>, cx: &mut Cx<'_>);
}

/// Runs one call on a source; a panic in it ends the source instead of
/// the loop.
fn call(cx: &mut Cx<'_>, src: &Arc<dyn Source>, f: impl FnOnce(Arc<dyn Source>, &mut Cx<'_>)) {
    if contain(|| f(src.clone(), cx)).is_none() {
        contain(|| src.clone().panicked(cx));
    }
}

/// On a loop thread, puts off `wake` until the end of this turn, or until
/// host code is about to run on this thread (`sync::wake_pending`), and
/// returns true; elsewhere returns false (the caller then wakes now).
/// Callers deduplicate.
pub fn wake_at_end_of_turn(wake: Arc<dyn crate::sync::Wake>) -> bool {
    if !on_loop_thread() {
        return false;
    }
    crate::sync::wake_later(wake);
    true
}

/// What the poll reported; all false for a request or a turn asked for
/// with `again`.
#[derive(Clone, Copy, Default)]
pub struct Ready {
    /// The poll reported this (edge-triggered): once the socket runs dry a
    /// new edge comes with more. Otherwise nothing says how much is there.
    pub polled: bool,
    pub writable: bool,
    /// The peer's end (or a hang-up) has arrived: read to the end, a short
    /// read does not mean dry.
    pub read_closed: bool,
    /// Error or hang-up: a read or write will tell which.
    pub error: bool,
}

const WAKER: Token = Token(usize::MAX);

thread_local! {
    /// The loop this thread runs, on netev's I/O threads.
    static CURRENT: std::cell::RefCell<Option<Arc<LoopHandle>>> =
        const { std::cell::RefCell::new(None) };
}

// CURRENT is read with try_with: a host thread in its exit (an atexit
// handler, a static destructor) has lost its thread-locals with
// destructors, and such a thread is never an I/O thread.

/// True on netev's I/O threads, where blocking would stall the I/O that
/// the blocked call is waiting for.
pub fn on_loop_thread() -> bool {
    CURRENT.try_with(|c| c.borrow().is_some()).unwrap_or(false)
}

/// The loop running on this thread, if it is one of netev's.
pub fn current() -> Option<Arc<LoopHandle>> {
    CURRENT.try_with(|c| c.borrow().clone()).ok().flatten()
}

fn is_current(h: &LoopHandle) -> bool {
    CURRENT
        .try_with(|c| c.borrow().as_ref().is_some_and(|c| std::ptr::eq(&**c, h)))
        .unwrap_or(false)
}

/// Requests from other threads, and from callbacks on this one.
#[derive(Default)]
struct Inbox {
    add: Vec<Arc<dyn Source>>,
    service: Vec<Arc<dyn Source>>,
    stop: bool,
    /// The waker was written since the loop last emptied the inbox.
    woken: bool,
}

/// The part of a loop other threads talk to.
pub struct LoopHandle {
    waker: Waker,
    inbox: Mutex<Inbox>,
}

impl LoopHandle {
    fn push(&self, f: impl FnOnce(&mut Inbox)) {
        let mut inbox = self.inbox.lock();
        f(&mut inbox);
        // On the loop's own thread no wake is needed: it looks at its inbox
        // before it polls again.
        let wake = !inbox.woken && !is_current(self);
        inbox.woken |= wake;
        drop(inbox);
        if wake {
            // A failed wake leaves the request queued; the loop finds it
            // at its next wake-up, which a timer or an event bounds.
            let _ = self.waker.wake();
        }
    }

    /// Adds `source` to the loop (it then gets `start`).
    pub fn add(&self, source: Arc<dyn Source>) {
        self.push(|i| i.add.push(source));
    }

    /// Asks the loop to `service` the source soon. Callers deduplicate.
    pub fn request(&self, source: Arc<dyn Source>) {
        self.push(|i| i.service.push(source));
    }

    fn stop(&self) {
        self.push(|i| i.stop = true);
    }
}

fn interest(writable: bool) -> Interest {
    if writable {
        Interest::READABLE | Interest::WRITABLE
    } else {
        Interest::READABLE
    }
}

/// What a source may do on its loop's thread.
pub struct Cx<'a> {
    registry: &'a Registry,
    timers: &'a mut BinaryHeap<Reverse<Timer>>,
    again: &'a mut Vec<Arc<dyn Source>>,
    slab: &'a mut Slab<Arc<dyn Source>>,
    seq: &'a mut u64,
}

impl Cx<'_> {
    /// Registers `fd` under `key`, edge-triggered, for reading and, with
    /// `writable`, writing.
    pub fn register(&self, fd: RawFd, key: usize, writable: bool) -> io::Result<()> {
        self.registry.register(
            &mut mio::unix::SourceFd(&fd),
            Token(key),
            interest(writable),
        )
    }

    /// Changes whether `fd` (registered under `key`) reports writability.
    /// A socket that has nothing to write should not: every ACK that frees
    /// room in its buffer would wake the loop for nothing.
    pub fn reregister(&self, fd: RawFd, key: usize, writable: bool) -> io::Result<()> {
        self.registry.reregister(
            &mut mio::unix::SourceFd(&fd),
            Token(key),
            interest(writable),
        )
    }

    /// Stops polling `fd` (before it closes, or when another socket takes
    /// its key).
    pub fn deregister(&self, fd: RawFd) {
        let _ = self.registry.deregister(&mut mio::unix::SourceFd(&fd));
    }

    /// Leaves the loop: `key` is free once this returns.
    pub fn remove(&mut self, key: usize) {
        self.slab.try_remove(key);
    }

    /// Calls `timer` at or after `at`.
    pub fn set_timer(&mut self, at: Instant, source: Arc<dyn Source>) {
        *self.seq += 1;
        self.timers.push(Reverse(Timer {
            at,
            seq: *self.seq,
            source,
        }));
    }

    /// Calls `service` again in this loop's next turn, after the others:
    /// the source stopped early to let them run.
    pub fn again(&mut self, source: Arc<dyn Source>) {
        self.again.push(source);
    }
}

pub struct Timer {
    at: Instant,
    seq: u64,
    source: Arc<dyn Source>,
}

impl PartialEq for Timer {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Timer {}
impl PartialOrd for Timer {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Timer {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// A running loop: its handle and its thread.
pub struct Loop {
    pub handle: Arc<LoopHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    /// Starts a loop on a new thread named `name`.
    pub fn spawn(name: &str) -> io::Result<Loop> {
        let poll = Poll::new()?;
        let waker = Waker::new(poll.registry(), WAKER)?;
        let handle = Arc::new(LoopHandle {
            waker,
            inbox: Mutex::default(),
        });
        let h = handle.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                CURRENT.with(|c| *c.borrow_mut() = Some(h.clone()));
                run(poll, &h);
                CURRENT.with(|c| c.borrow_mut().take());
            })?;
        Ok(Loop {
            handle,
            thread: Some(thread),
        })
    }

    /// Stops the loop and waits for its thread. Its sources are dropped
    /// (their owners ended them first).
    pub fn stop(mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sources serviced per turn before the loop polls again, so the timers and
/// the other sockets get their turn under a flood of requests.
const EVENTS_PER_POLL: usize = 1024;

fn run(mut poll: Poll, handle: &Arc<LoopHandle>) {
    let mut events = Events::with_capacity(EVENTS_PER_POLL);
    let mut slab: Slab<Arc<dyn Source>> = Slab::new();
    let mut timers = BinaryHeap::new();
    let mut again = Vec::new();
    let mut next_again = Vec::new();
    let mut seq = 0u64;
    let mut inbox = Inbox::default();
    loop {
        // Before the loop can sleep: one wake-up per dispatcher for all that
        // this turn queued for it, not one per event.
        crate::sync::wake_pending();
        let queued_here = {
            let i = handle.inbox.lock();
            !i.add.is_empty() || !i.service.is_empty() || i.stop
        };
        let timeout = if !again.is_empty() || queued_here {
            Some(Duration::ZERO)
        } else {
            timers
                .peek()
                .map(|Reverse(t): &Reverse<Timer>| t.at.saturating_duration_since(Instant::now()))
        };
        if let Err(e) = poll.poll(&mut events, timeout)
            && e.kind() != io::ErrorKind::Interrupted
        {
            // Nothing to recover: only a broken epoll fd fails here.
            std::thread::sleep(Duration::from_millis(10));
        }
        let registry = poll.registry();
        let mut cx = Cx {
            registry,
            timers: &mut timers,
            again: &mut next_again,
            slab: &mut slab,
            seq: &mut seq,
        };
        for ev in events.iter() {
            if ev.token() == WAKER {
                continue;
            }
            let Some(src) = cx.slab.get(ev.token().0).cloned() else {
                continue;
            };
            let ready = Ready {
                polled: true,
                writable: ev.is_writable() || ev.is_write_closed(),
                read_closed: ev.is_read_closed(),
                error: ev.is_error(),
            };
            call(&mut cx, &src, |s, cx| s.service(cx, ready));
        }
        for src in again.drain(..) {
            call(&mut cx, &src, |s, cx| s.service(cx, Ready::default()));
        }
        {
            let mut shared = handle.inbox.lock();
            std::mem::swap(&mut *shared, &mut inbox);
            shared.woken = false;
        }
        for src in inbox.add.drain(..) {
            let key = cx.slab.insert(src.clone());
            call(&mut cx, &src, |s, cx| s.start(cx, key));
        }
        for src in inbox.service.drain(..) {
            call(&mut cx, &src, |s, cx| s.service(cx, Ready::default()));
        }
        let now = Instant::now();
        while cx.timers.peek().is_some_and(|Reverse(t)| t.at <= now) {
            if let Some(Reverse(t)) = cx.timers.pop() {
                call(&mut cx, &t.source, |s, cx| s.timer(cx));
            }
        }
        std::mem::swap(&mut again, &mut next_again);
        if inbox.stop {
            crate::sync::wake_pending();
            // Whatever is left holds its own loop's handle: let it go.
            *handle.inbox.lock() = Inbox::default();
            return;
        }
    }
}
