//! Fork detection: in a child created by fork() after netev started, the
//! parent's threads do not exist, so nothing of the parent can work there.

use std::sync::Once;
use std::sync::atomic::{AtomicBool, Ordering};

static FORKED: AtomicBool = AtomicBool::new(false);
static WATCH: Once = Once::new();

extern "C" fn after_fork_in_child() {
    FORKED.store(true, Ordering::SeqCst);
}

/// Starts noticing forks; called when netev's threads start.
pub fn watch() {
    WATCH.call_once(|| {
        // SAFETY: registering a plain function with no captured state; it
        // only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::pthread_atfork(None, None, Some(after_fork_in_child));
        }
    });
}

/// True in a child process created by fork() after netev started.
pub fn forked() -> bool {
    FORKED.load(Ordering::Relaxed)
}
