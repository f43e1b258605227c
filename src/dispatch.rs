//! Dispatchers: queues of callbacks that a host runs on a thread of its own.
//!
//! Events of objects bound to a dispatcher are queued here instead of being
//! delivered on netev's I/O threads. The queue's eventfd is readable while
//! callbacks wait, so a host can put it in its own poll loop. Memory stays
//! bounded whatever the host does: a connection sits in the queue once (a
//! `Mailbox`) however many of its events wait, and stops reading once its
//! undelivered bytes reach their limit; each turn runs one callback, so a
//! run or a wait can stop between callbacks.

use crate::error::{Error, Result, Status};
use crate::registry::{self, Registered, netev_dispatcher};
use crate::sync::{Guard, Mutex, contain};
use std::cell::Cell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar};
use std::time::{Duration, Instant};

/// An object whose events wait in a queue of its own until the host's
/// thread runs them, one per turn. The dispatcher holds it at most once in
/// its queue however many events wait, so a peer trickling bytes to a host
/// that does not dispatch costs one queue entry, not one per read.
pub trait Mailbox: Send + Sync {
    /// Delivers the oldest waiting event. Returns whether a host callback
    /// ran and whether more events wait (the dispatcher then queues the
    /// mailbox again, behind what was queued meanwhile).
    fn deliver_next(&self) -> Delivery;
}

pub struct Delivery {
    pub ran: bool,
    pub more: bool,
}

/// A queued delivery.
pub enum Job {
    /// One delivery; returns whether it called into the host.
    Once(Box<dyn FnOnce() -> bool + Send>),
    Mailbox(Arc<dyn Mailbox>),
}

impl Job {
    /// Runs one callback's worth of the job; returns whether a host callback
    /// ran, and the job again when it has more to deliver.
    fn run(self) -> (bool, Option<Job>) {
        match self {
            Job::Once(f) => (contain(f).unwrap_or(false), None),
            Job::Mailbox(m) => match contain(|| m.deliver_next()) {
                Some(Delivery { ran, more: true }) => (ran, Some(Job::Mailbox(m))),
                Some(Delivery { ran, more: false }) => (ran, None),
                None => (false, None),
            },
        }
    }
}

/// Dispatchers nested on one thread that RUNNING names one by one; deeper
/// runs are counted, not named (see `running_here`).
const NAMED_RUNS: usize = 16;

thread_local! {
    /// Dispatchers whose callbacks are running on this thread right now,
    /// innermost last, and how many there are. Plain values, without a
    /// destructor: they still work in a thread's exit (atexit handlers,
    /// static destructors), after thread-locals that have one are gone.
    static RUNNING: Cell<[u64; NAMED_RUNS]> = const { Cell::new([0; NAMED_RUNS]) };
    static RUNNING_DEPTH: Cell<usize> = const { Cell::new(0) };
}

/// True inside a callback run by any dispatcher on this thread.
pub fn running_on_this_thread() -> bool {
    RUNNING_DEPTH.with(|d| d.get() > 0)
}

/// True inside a callback run by dispatcher `id` on this thread. Past
/// NAMED_RUNS nested dispatchers (a host running 17 different ones inside
/// each other's callbacks), the deeper ones are not named here.
fn running_here(id: u64) -> bool {
    let depth = RUNNING_DEPTH.with(Cell::get).min(NAMED_RUNS);
    RUNNING.with(|r| r.get()[..depth].contains(&id))
}

/// Marks this thread as running `id`'s callbacks while it lives.
struct Running;

impl Running {
    fn enter(id: u64) -> Running {
        let depth = RUNNING_DEPTH.with(|d| d.replace(d.get() + 1));
        if depth < NAMED_RUNS {
            RUNNING.with(|r| {
                let mut ids = r.get();
                ids[depth] = id;
                r.set(ids);
            });
        }
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Guards end in the reverse order of their start: the innermost
        // is the last named.
        RUNNING_DEPTH.with(|d| d.set(d.get().saturating_sub(1)));
    }
}

/// How long a release keeps running the final callbacks of the objects it
/// closed before it leaves the rest to netev's threads.
const RELEASE_DRAIN: Duration = Duration::from_secs(5);

struct Queue {
    jobs: VecDeque<Job>,
    /// A thread is running jobs: others wait their turn, so one object's
    /// callbacks never overlap.
    running: bool,
    /// The eventfd holds a count: it is readable.
    signaled: bool,
    /// A loop thread will signal at the end of its turn (see `post`).
    signal_due: bool,
    /// Threads blocked on `changed`; notifying is skipped when there are none.
    waiters: usize,
    /// Released: nobody will run this queue any more. The thread running it
    /// (if any) runs what is left; later jobs run on the thread posting them.
    retired: bool,
}

pub struct Dispatcher {
    pub id: u64,
    queue: Mutex<Queue>,
    changed: Condvar,
    fd: OwnedFd,
    /// Objects bound to this dispatcher whose TERMINATE has not run yet.
    bound: AtomicUsize,
    /// Delivered data buffers kept for the next deliveries (see `buffer`).
    spares: Mutex<Vec<Vec<u8>>>,
}

/// The capacity of a pooled buffer, and how many a dispatcher keeps.
pub(crate) const BUFFER_SIZE: usize = 64 << 10;
const SPARE_BUFFERS: usize = 32;

impl crate::sync::Wake for Dispatcher {
    fn wake(&self) {
        let mut q = self.lock();
        q.signal_due = false;
        if !q.running && !q.jobs.is_empty() {
            self.set_signal(&mut q, true);
        }
    }
}

/// When a run stops starting callbacks.
#[derive(Clone, Copy)]
struct Until<'a> {
    deadline: Option<Instant>,
    done: &'a dyn Fn() -> bool,
}

impl Until<'_> {
    fn reached(&self) -> bool {
        (self.done)() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

impl Dispatcher {
    /// Creates a dispatcher and registers its handle.
    pub fn create() -> Result<Arc<Dispatcher>> {
        if crate::fork::forked() {
            return Err(Error::new(Status::NETEV_ERR_SHUTDOWN, "forked process"));
        }
        // SAFETY: eventfd takes no pointers; the result is checked below.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(Error::io(
                &std::io::Error::last_os_error(),
                "cannot create the dispatcher's eventfd",
            ));
        }
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let d = Arc::new(Dispatcher {
            id: registry::reserve(),
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                running: false,
                signaled: false,
                signal_due: false,
                waiters: 0,
                retired: false,
            }),
            changed: Condvar::new(),
            fd,
            bound: AtomicUsize::new(0),
            spares: Mutex::new(Vec::new()),
        });
        registry::insert(d.id, d.clone());
        Ok(d)
    }

    /// The dispatcher `id` names.
    pub fn get(id: netev_dispatcher) -> Result<Arc<Dispatcher>> {
        registry::get(id, "dispatcher")
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn lock(&self) -> Guard<'_, Queue> {
        self.queue.lock()
    }

    fn set_signal(&self, q: &mut Queue, on: bool) {
        if q.signaled == on {
            return;
        }
        let mut v: u64 = 1;
        let p = (&mut v as *mut u64).cast::<libc::c_void>();
        // SAFETY: `p` points at 8 writable bytes for the duration of the call.
        // A failure leaves the fd as it was; `signaled` then follows the fd.
        let n = unsafe {
            if on {
                libc::write(self.fd(), p, 8)
            } else {
                libc::read(self.fd(), p, 8)
            }
        };
        if n == 8 {
            q.signaled = on;
        }
    }

    fn notify(&self, q: &Queue) {
        if q.waiters > 0 {
            self.changed.notify_all();
        }
    }

    /// Wakes threads waiting in `run_until`, whose condition may now hold.
    pub fn wake(&self) {
        let q = self.lock();
        self.notify(&q);
    }

    /// An empty buffer of `BUFFER_SIZE` bytes' capacity for data crossing to
    /// the host's thread. Reusing a few keeps a stream from paying a page
    /// fault per 4 KiB: malloc gives freed memory back to the kernel when a
    /// buffer is freed on a thread other than the one that made it.
    pub fn buffer(&self) -> Vec<u8> {
        self.spares
            .lock()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(BUFFER_SIZE))
    }

    /// Takes back a buffer from `buffer` once its bytes are delivered.
    pub fn give_back(&self, mut buf: Vec<u8>) {
        if buf.capacity() != BUFFER_SIZE {
            return;
        }
        buf.clear();
        let mut spares = self.spares.lock();
        if spares.len() < SPARE_BUFFERS {
            spares.push(buf);
        }
    }

    pub fn bind(&self) {
        self.bound.fetch_add(1, Ordering::AcqRel);
    }

    pub fn unbind(&self) {
        self.bound.fetch_sub(1, Ordering::AcqRel);
    }

    /// Queues a job for the host's thread. On an I/O thread the host is
    /// woken at the end of the loop's turn (or before any host code runs on
    /// that thread, which could take long), once for everything the turn
    /// queued: waking it per event would switch threads per event.
    pub fn post(self: &Arc<Self>, job: Job) {
        let mut q = self.lock();
        if q.retired && !q.running {
            q.running = true;
            q.jobs.push_back(job);
            self.run_retired(q);
            return;
        }
        q.jobs.push_back(job);
        if !q.running && !q.signaled && !q.signal_due {
            q.signal_due = crate::io_loop::wake_at_end_of_turn(self.clone());
            if !q.signal_due {
                self.set_signal(&mut q, true);
            }
        }
        self.notify(&q);
    }

    /// Runs what is left of a released dispatcher's queue on this thread,
    /// until it is empty. The caller has set `running`.
    fn run_retired<'a>(&'a self, mut q: Guard<'a, Queue>) {
        let _running = Running::enter(self.id);
        while let Some(job) = q.jobs.pop_front() {
            drop(q);
            let (_, again) = job.run();
            q = self.lock();
            if let Some(job) = again {
                q.jobs.push_back(job);
            }
        }
        q.running = false;
        self.set_signal(&mut q, false);
        self.notify(&q);
    }

    /// Runs, on this thread, the jobs queued when it starts, one callback
    /// each (a mailbox with more goes to the back of the queue, for a later
    /// run), stopping early once `until` is reached. Returns the number of
    /// host callbacks that ran.
    fn run_batch<'a>(&'a self, mut q: Guard<'a, Queue>, until: Option<Until<'_>>) -> usize {
        let batch = q.jobs.len();
        q.running = true;
        // The eventfd stays readable while this runs and is cleared at the
        // end if nothing is left: a host that keeps getting events pays one
        // read() per idle moment, not a read and a write per batch.
        drop(q);
        let running = Running::enter(self.id);
        let mut ran = 0;
        for i in 0..batch {
            if i > 0 && until.is_some_and(|u| u.reached()) {
                break;
            }
            let Some(job) = self.lock().jobs.pop_front() else {
                break;
            };
            let (r, again) = job.run();
            ran += usize::from(r);
            if let Some(job) = again {
                self.lock().jobs.push_back(job);
            }
        }
        drop(running);
        let mut q = self.lock();
        if q.retired {
            // Released inside one of the callbacks just run: nobody will
            // run this queue again, so what is left runs now, here.
            self.run_retired(q);
            return ran;
        }
        q.running = false;
        let waiting = !q.jobs.is_empty();
        self.set_signal(&mut q, waiting);
        self.notify(&q);
        ran
    }

    /// Refuses to block where the callbacks waited for could never run.
    fn check_may_block(&self, what: &str) -> Result<()> {
        if running_here(self.id) {
            return Err(Error::new(
                Status::NETEV_ERR_WOULD_DEADLOCK,
                format!("{what} inside a callback of the dispatcher it would have to run"),
            ));
        }
        if crate::io_loop::on_loop_thread() {
            return Err(Error::new(
                Status::NETEV_ERR_WOULD_DEADLOCK,
                format!(
                    "{what} on a netev I/O thread: a dispatcher's callbacks run on the host's \
                     threads, and this one must stay free for netev's I/O"
                ),
            ));
        }
        Ok(())
    }

    /// Runs queued callbacks on the calling thread, waiting up to `timeout`
    /// (None: no limit) for the first one. Runs at most what was queued when
    /// it started, so a flood cannot hold it.
    pub fn run(&self, timeout: Option<Duration>) -> Result<usize> {
        self.check_may_block("netev_dispatcher_run")?;
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = self.lock();
        loop {
            if q.retired {
                return Err(Error::handle(
                    self.id,
                    "dispatcher (released while this ran)",
                ));
            }
            if !q.running && !q.jobs.is_empty() {
                let ran = self.run_batch(q, None);
                // Jobs that called nothing of the host's (an event without
                // a callback) are not the callback this run waits for.
                if ran > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                    return Ok(ran);
                }
                q = self.lock();
                continue;
            }
            q = match self.wait(q, deadline) {
                Some(q) => q,
                None => return Ok(0),
            };
        }
    }

    /// Blocks until the queue changes or `deadline` passes (None after it passed).
    fn wait<'a>(
        &self,
        mut q: Guard<'a, Queue>,
        deadline: Option<Instant>,
    ) -> Option<Guard<'a, Queue>> {
        let left = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    return None;
                }
                Some(d - now)
            }
            None => None,
        };
        q.waiters += 1;
        let mut q = match left {
            Some(left) => q.wait_timeout(&self.changed, left),
            None => q.wait(&self.changed),
        };
        q.waiters -= 1;
        Some(q)
    }

    /// Runs callbacks on this thread until `done()` holds or `timeout`
    /// passes (None: no limit; zero: only what is queued now). Checks both
    /// between callbacks: one already running finishes, none starts after.
    /// Returns whether `done()` held.
    pub fn run_until(&self, timeout: Option<Duration>, done: &dyn Fn() -> bool) -> Result<bool> {
        self.check_may_block("waiting")?;
        if done() {
            return Ok(true);
        }
        if timeout == Some(Duration::ZERO) {
            let q = self.lock();
            if !q.running && !q.jobs.is_empty() {
                let until = Until {
                    deadline: None,
                    done,
                };
                self.run_batch(q, Some(until));
            }
            return Ok(done());
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let until = Until { deadline, done };
        loop {
            if done() {
                return Ok(true);
            }
            let q = self.lock();
            if !q.running && !q.jobs.is_empty() {
                self.run_batch(q, Some(until));
                if until.reached() {
                    return Ok(done());
                }
                continue;
            }
            if done() {
                return Ok(true);
            }
            if self.wait(q, deadline).is_none() {
                return Ok(done());
            }
        }
    }

    /// Runs what is queued now without waiting; skipped if another thread
    /// runs it or this thread is inside one of its callbacks.
    pub fn run_ready(&self) -> usize {
        if running_here(self.id) {
            return 0;
        }
        let q = self.lock();
        if q.running || q.jobs.is_empty() {
            return 0;
        }
        self.run_batch(q, None)
    }

    /// Invalidates the handle, closes every connection and listener bound to
    /// it and runs their last callbacks (CLOSE, TERMINATE) on the calling
    /// thread, for up to 5 s; what is left then runs on netev's threads.
    /// Inside one of its own callbacks, or on a netev I/O thread, it does not
    /// wait: the callbacks left run after the current one (on the thread
    /// running it), or on netev's threads.
    pub fn release(self: &Arc<Self>) {
        registry::remove(self.id);
        self.spares.lock().clear();
        for obj in registry::all() {
            obj.dispatcher_released(self.id);
        }
        if self.check_may_block("release").is_ok() {
            let _ = self.run_until(Some(RELEASE_DRAIN), &|| {
                self.bound.load(Ordering::Acquire) == 0
            });
        }
        let mut q = self.lock();
        q.retired = true;
        // A thread blocked in `run` learns the dispatcher is gone.
        self.notify(&q);
        if q.running {
            // The thread running it (maybe this one, further up) runs the
            // rest when its current callback returns.
            return;
        }
        q.running = true;
        self.run_retired(q);
    }
}

impl Registered for Dispatcher {
    /// Runs the last callbacks of what the shutdown ends, unless the host
    /// runs them on a thread of its own.
    fn shutdown_round(&self) {
        self.run_ready();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::thread;

    #[test]
    fn fd_is_readable_exactly_while_jobs_wait() {
        let d = Dispatcher::create().unwrap();
        let readable = |d: &Dispatcher| {
            let mut p = libc::pollfd {
                fd: d.fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd, zero timeout.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        assert!(!readable(&d));
        d.post(Job::Once(Box::new(|| true)));
        d.post(Job::Once(Box::new(|| false)));
        assert!(readable(&d));
        assert_eq!(d.run(Some(Duration::ZERO)).unwrap(), 1);
        assert!(!readable(&d));
        assert_eq!(d.run(Some(Duration::from_millis(1))).unwrap(), 0);
        d.release();
    }

    #[test]
    fn nested_run_is_refused() {
        let d = Dispatcher::create().unwrap();
        let saw = Arc::new(AtomicBool::new(false));
        let (d2, saw2) = (d.clone(), saw.clone());
        d.post(Job::Once(Box::new(move || {
            let r = d2.run(Some(Duration::ZERO));
            saw2.store(
                matches!(r, Err(e) if e.code == Status::NETEV_ERR_WOULD_DEADLOCK),
                Ordering::SeqCst,
            );
            true
        })));
        assert_eq!(d.run(None).unwrap(), 1);
        assert!(saw.load(Ordering::SeqCst));
        d.release();
    }

    #[test]
    fn run_wakes_for_a_job_posted_from_another_thread() {
        let d = Dispatcher::create().unwrap();
        let d2 = d.clone();
        let t = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            d2.post(Job::Once(Box::new(|| true)));
        });
        assert_eq!(d.run(Some(Duration::from_secs(10))).unwrap(), 1);
        t.join().unwrap();
        d.release();
    }
}
