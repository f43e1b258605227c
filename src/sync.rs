//! Locks that know they are held, and the one door into the host.
//!
//! netev promises that no host code (a callback, `user_data_free`, the log
//! callback) ever runs while netev holds a lock: a host that calls back into
//! netev from there would deadlock on it. Every netev lock goes through
//! [`Mutex`] (or holds a [`Held`] token beside a lock of another kind), which
//! counts, per thread, the locks held; every call into the host goes through
//! [`call_host`], which in debug builds aborts the process when that count is
//! not zero, so a test catches the next such bug rather than a reader.
//!
//! Log lines written while a lock is held are kept on the thread and written
//! when its last lock is released (see `log::write`).

use std::cell::{Cell, RefCell};
use std::mem::ManuallyDrop;
use std::ops::{Deref, DerefMut};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

thread_local! {
    /// netev locks this thread holds right now.
    static HELD: Cell<u32> = const { Cell::new(0) };
    /// Host calls running on this thread (nested when a callback calls
    /// netev, which calls the host again).
    static IN_HOST: Cell<u32> = const { Cell::new(0) };
    /// What must wait until this thread holds no lock (log lines, the
    /// free functions of owned sends), null when nothing waits. A raw
    /// pointer, not a Vec: it has no destructor, so it still works in a
    /// thread's exit (atexit handlers, static destructors), after
    /// thread-locals that have one are gone. Made when work is deferred,
    /// freed when it has run, so a thread never ends holding it.
    static DEFERRED: Cell<*mut Vec<Box<dyn FnOnce()>>> = const { Cell::new(std::ptr::null_mut()) };
    /// Wake-ups put off until this thread sleeps or calls the host (netev's
    /// I/O threads; read with try_with, see `wake_later`).
    static WAKES: RefCell<Vec<Arc<dyn Wake>>> = const { RefCell::new(Vec::new()) };
    static ANY_WAKES: Cell<bool> = const { Cell::new(false) };
}

/// A pointer the host handed over; netev only passes it back.
#[derive(Clone, Copy)]
pub(crate) struct HostPtr(pub(crate) *mut std::ffi::c_void);
// SAFETY: netev never dereferences it; the host chose to receive it on
// whichever thread the documentation says callbacks run.
unsafe impl Send for HostPtr {}
// SAFETY: as above; it is only copied.
unsafe impl Sync for HostPtr {}

/// A wake-up of another thread (a dispatcher's host) that a loop thread
/// batches: one per turn, not one per event.
pub trait Wake: Send + Sync {
    fn wake(&self);
}

/// Puts off `w` until `wake_pending` runs on this thread: at the end of the
/// loop's turn, or before this thread calls the host, whose code could
/// hold the wake-up back for as long as it runs.
pub fn wake_later(w: Arc<dyn Wake>) {
    let mut w = Some(w);
    let _ = WAKES.try_with(|v| v.borrow_mut().extend(w.take()));
    match w {
        None => ANY_WAKES.with(|a| a.set(true)),
        // A thread in its exit has no WAKES any more: wake now.
        Some(w) => {
            let _ = contain(|| w.wake());
        }
    }
}

/// Does the wake-ups put off on this thread.
pub fn wake_pending() {
    if !ANY_WAKES.with(|a| a.replace(false)) {
        return;
    }
    loop {
        let wakes = WAKES
            .try_with(|v| std::mem::take(&mut *v.borrow_mut()))
            .unwrap_or_default();
        if wakes.is_empty() {
            return;
        }
        for w in wakes {
            contain(|| w.wake());
        }
    }
}

/// Runs `f` once this thread holds no netev lock: now if it holds none.
/// For work that may call the host (a log line), requested under a lock.
pub fn when_unlocked(f: impl FnOnce() + 'static) {
    if !holding_a_lock() {
        f();
        return;
    }
    DEFERRED.with(|d| {
        let mut work = d.get();
        if work.is_null() {
            work = Box::into_raw(Box::<Vec<Box<dyn FnOnce()>>>::default());
            d.set(work);
        }
        // SAFETY: a non-null DEFERRED came from Box::into_raw just above
        // (now or earlier) on this thread, which alone reads this
        // thread-local; run_deferred takes it out before it frees it.
        unsafe { (*work).push(Box::new(f)) };
    });
}

fn run_deferred() {
    loop {
        let work = DEFERRED.with(|d| d.replace(std::ptr::null_mut()));
        if work.is_null() {
            return;
        }
        // SAFETY: taken out of DEFERRED just now, so this is the one
        // pointer to that Box::into_raw allocation; what the work defers
        // in turn goes to a new one.
        let work = unsafe { Box::from_raw(work) };
        for f in *work {
            f();
        }
    }
}

/// True while this thread holds a netev lock.
pub fn holding_a_lock() -> bool {
    HELD.with(|h| h.get() > 0)
}

/// Counts one lock as held by this thread for as long as it lives.
pub struct Held(());

impl Held {
    #[allow(clippy::new_without_default)] // taking one is an act, not a default
    pub fn new() -> Held {
        HELD.with(|h| h.set(h.get() + 1));
        Held(())
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let left = HELD.with(|h| {
            let n = h.get().saturating_sub(1);
            h.set(n);
            n
        });
        if left == 0 {
            run_deferred();
        }
    }
}

/// A mutex whose guard counts as held (see the module comment). A poisoned
/// lock only means a panic elsewhere, caught at the boundary; the data is
/// still consistent at every unlock, so poisoning is ignored.
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub const fn new(value: T) -> Mutex<T> {
        Mutex(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> Guard<'_, T> {
        let inner = self.0.lock().unwrap_or_else(|p| p.into_inner());
        Guard {
            inner: ManuallyDrop::new(inner),
            held: ManuallyDrop::new(Held::new()),
        }
    }
}

impl<T: Default> Default for Mutex<T> {
    fn default() -> Self {
        Mutex::new(T::default())
    }
}

pub struct Guard<'a, T> {
    inner: ManuallyDrop<std::sync::MutexGuard<'a, T>>,
    held: ManuallyDrop<Held>,
}

impl<T> Deref for Guard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for Guard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

impl<T> Drop for Guard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: each field is dropped exactly once, here, and never used
        // again: the mutex first, then the count, whose last release may
        // write deferred log lines (which must not run under the mutex).
        unsafe {
            ManuallyDrop::drop(&mut self.inner);
            ManuallyDrop::drop(&mut self.held);
        }
    }
}

impl<'a, T> Guard<'a, T> {
    fn into_parts(self) -> (std::sync::MutexGuard<'a, T>, Held) {
        let mut me = ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped, so each field is taken exactly once.
        unsafe {
            (
                ManuallyDrop::take(&mut me.inner),
                ManuallyDrop::take(&mut me.held),
            )
        }
    }

    fn from_parts(inner: std::sync::MutexGuard<'a, T>, held: Held) -> Self {
        Guard {
            inner: ManuallyDrop::new(inner),
            held: ManuallyDrop::new(held),
        }
    }

    /// Blocks on `cv`, releasing the lock meanwhile. The thread still counts
    /// the lock as held: it calls nothing while blocked.
    pub fn wait(self, cv: &std::sync::Condvar) -> Self {
        let (inner, held) = self.into_parts();
        let inner = cv.wait(inner).unwrap_or_else(|p| p.into_inner());
        Guard::from_parts(inner, held)
    }

    /// As `wait`, for at most `timeout`.
    pub fn wait_timeout(self, cv: &std::sync::Condvar, timeout: Duration) -> Self {
        let (inner, held) = self.into_parts();
        let inner = match cv.wait_timeout(inner, timeout) {
            Ok((g, _)) => g,
            Err(p) => p.into_inner().0,
        };
        Guard::from_parts(inner, held)
    }
}

/// Runs netev code on the host's behalf (a queued delivery, a drop on a
/// host thread) so that a panic in netev never unwinds into a host frame.
pub fn contain<R>(f: impl FnOnce() -> R) -> Option<R> {
    catch_unwind(AssertUnwindSafe(f)).ok()
}

/// Calls into the host: every callback, `user_data_free` and the log
/// callback go through here. No netev lock may be held (checked in debug
/// builds, where a violation aborts so that tests cannot miss it), and a
/// panic on the way never crosses into the host.
pub fn call_host<R>(f: impl FnOnce() -> R) -> Option<R> {
    if cfg!(debug_assertions) && holding_a_lock() {
        eprintln!(
            "netev bug: the host is about to be called while this thread holds a netev lock\n{}",
            std::backtrace::Backtrace::force_capture()
        );
        std::process::abort();
    }
    wake_pending();
    IN_HOST.with(|c| c.set(c.get() + 1));
    let r = contain(f);
    IN_HOST.with(|c| c.set(c.get() - 1));
    r
}

/// True inside a callback (of any kind, the log callback included) on this
/// thread.
pub fn in_host_call() -> bool {
    IN_HOST.with(|c| c.get() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_count_while_held_and_across_waits() {
        let m = Mutex::new(1);
        let cv = std::sync::Condvar::new();
        assert!(!holding_a_lock());
        {
            let g = m.lock();
            assert!(holding_a_lock());
            let g = g.wait_timeout(&cv, Duration::from_millis(1));
            assert_eq!(*g, 1);
            assert!(holding_a_lock());
        }
        assert!(!holding_a_lock());
        {
            let _held = Held::new();
            let _g = m.lock();
            assert!(holding_a_lock());
        }
        assert!(!holding_a_lock());
    }

    #[test]
    fn call_host_contains_panics() {
        assert_eq!(call_host(|| 7), Some(7));
        assert_eq!(call_host(|| -> i32 { panic!("contained") }), None);
    }
}
