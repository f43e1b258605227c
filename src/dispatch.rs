//! Dispatchers: queues of callbacks that a host runs on a thread of its own.
//!
//! Events of objects bound to a dispatcher are queued here instead of being
//! delivered on netev's I/O threads. The queue's eventfd is readable while
//! callbacks wait, so a host can put it in its own poll loop. Memory stays
//! bounded because each connection's reader waits for read credit that only
//! the running of its DATA callbacks gives back.

use crate::error::{Error, Result, Status};
use crate::handle::{self, Object};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A queued delivery. Returns whether it called into the host.
pub type Job = Box<dyn FnOnce() -> bool + Send>;

/// Runs `f`, which calls into the host or runs netev code on the host's
/// behalf, so that a panic in netev never unwinds into a host frame.
pub fn guard<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

thread_local! {
    /// Dispatchers whose callbacks are running on this thread right now.
    static RUNNING: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
}

/// True inside a callback run by any dispatcher on this thread.
pub fn running_on_this_thread() -> bool {
    RUNNING.with(|r| !r.borrow().is_empty())
}

fn running_here(id: u64) -> bool {
    RUNNING.with(|r| r.borrow().contains(&id))
}

/// How long a release (or a runtime shutdown) keeps running the final
/// callbacks of the objects it closed before it gives up on them.
const RELEASE_DRAIN: Duration = Duration::from_secs(5);

struct Queue {
    jobs: VecDeque<Job>,
    /// A thread is running a batch: others wait their turn, so one
    /// object's callbacks never overlap.
    running: bool,
    /// The eventfd holds a count: it is readable.
    signaled: bool,
    /// Threads blocked on `changed`; notifying is skipped when there are none.
    waiters: usize,
    /// Released and its last callbacks drained: later jobs run at once.
    retired: bool,
}

pub struct Dispatcher {
    pub id: u64,
    queue: Mutex<Queue>,
    changed: Condvar,
    fd: OwnedFd,
    /// Objects bound to this dispatcher whose TERMINATE has not run yet.
    bound: AtomicUsize,
}

impl Dispatcher {
    /// Creates a dispatcher and registers its handle.
    pub fn create() -> Result<Arc<Dispatcher>> {
        if crate::runtime::forked() {
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
            id: handle::next_id(),
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                running: false,
                signaled: false,
                waiters: 0,
                retired: false,
            }),
            changed: Condvar::new(),
            fd,
            bound: AtomicUsize::new(0),
        });
        handle::insert(d.id, Object::Dispatcher(d.clone()));
        Ok(d)
    }

    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
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

    pub fn bind(&self) {
        self.bound.fetch_add(1, Ordering::AcqRel);
    }

    pub fn unbind(&self) {
        self.bound.fetch_sub(1, Ordering::AcqRel);
    }

    /// Queues a job for the host's thread.
    pub fn post(&self, job: Job) {
        let mut q = self.lock();
        if q.retired {
            drop(q);
            guard(job);
            return;
        }
        q.jobs.push_back(job);
        if q.jobs.len() == 1 {
            self.set_signal(&mut q, true);
        }
        self.notify(&q);
    }

    /// Runs the jobs queued now, on this thread.
    fn run_batch(&self, mut q: MutexGuard<'_, Queue>) -> usize {
        let batch = std::mem::take(&mut q.jobs);
        q.running = true;
        self.set_signal(&mut q, false);
        drop(q);
        RUNNING.with(|r| r.borrow_mut().push(self.id));
        let mut ran = 0;
        for job in batch {
            if guard(job) == Some(true) {
                ran += 1;
            }
        }
        RUNNING.with(|r| {
            let mut r = r.borrow_mut();
            if let Some(i) = r.iter().rposition(|x| *x == self.id) {
                r.remove(i);
            }
        });
        let mut q = self.lock();
        q.running = false;
        if !q.jobs.is_empty() {
            self.set_signal(&mut q, true);
        }
        self.notify(&q);
        ran
    }

    /// Runs queued callbacks on the calling thread, waiting up to `timeout`
    /// (None: no limit) for the first one.
    pub fn run(&self, timeout: Option<Duration>) -> Result<usize> {
        if running_here(self.id) {
            return Err(Error::new(
                Status::NETEV_ERR_WOULD_DEADLOCK,
                "netev_dispatcher_run called inside one of its own callbacks",
            ));
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut q = self.lock();
        loop {
            if !q.running && !q.jobs.is_empty() {
                return Ok(self.run_batch(q));
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
        mut q: MutexGuard<'a, Queue>,
        deadline: Option<Instant>,
    ) -> Option<MutexGuard<'a, Queue>> {
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
            Some(left) => {
                self.changed
                    .wait_timeout(q, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => self.changed.wait(q).unwrap_or_else(|p| p.into_inner()),
        };
        q.waiters -= 1;
        Some(q)
    }

    /// Runs callbacks on this thread until `done()` holds or `deadline`
    /// passes. Returns whether `done()` held.
    pub fn run_until(&self, deadline: Option<Instant>, done: impl Fn() -> bool) -> Result<bool> {
        if running_here(self.id) {
            return Err(Error::new(
                Status::NETEV_ERR_WOULD_DEADLOCK,
                "waiting inside a callback of the dispatcher that must run it",
            ));
        }
        loop {
            if done() {
                return Ok(true);
            }
            let q = self.lock();
            if !q.running && !q.jobs.is_empty() {
                self.run_batch(q);
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

    /// Runs what is queued now without waiting; skipped if another thread runs it.
    pub fn run_ready(&self) -> usize {
        if running_here(self.id) {
            return 0;
        }
        let q = self.lock();
        if q.running || q.jobs.is_empty() {
            return 0;
        }
        self.run_batch(q)
    }

    /// Invalidates the handle, closes every connection and listener bound to
    /// it and runs their last callbacks (CLOSE, TERMINATE) on the calling thread.
    pub fn release(self: &Arc<Self>) {
        handle::remove(self.id);
        for obj in handle::all() {
            match obj {
                Object::Connection(c) if c.dispatcher_id() == self.id => c.close_now(),
                Object::Listener(l) if l.dispatcher_id() == self.id => l.terminate(),
                _ => {}
            }
        }
        if running_here(self.id) {
            // Inside one of our own callbacks: the batch that is running
            // finishes first; jobs left over then run at once as they come.
            self.lock().retired = true;
            return;
        }
        let deadline = Instant::now() + RELEASE_DRAIN;
        let _ = self.run_until(Some(deadline), || self.bound.load(Ordering::Acquire) == 0);
        let leftover = {
            let mut q = self.lock();
            q.retired = true;
            self.set_signal(&mut q, false);
            std::mem::take(&mut q.jobs)
        };
        for job in leftover {
            guard(job);
        }
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
        d.post(Box::new(|| true));
        d.post(Box::new(|| false));
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
        d.post(Box::new(move || {
            let r = d2.run(Some(Duration::ZERO));
            saw2.store(
                matches!(r, Err(e) if e.code == Status::NETEV_ERR_WOULD_DEADLOCK),
                Ordering::SeqCst,
            );
            true
        }));
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
            d2.post(Box::new(|| true));
        });
        assert_eq!(d.run(Some(Duration::from_secs(10))).unwrap(), 1);
        t.join().unwrap();
        d.release();
    }
}
