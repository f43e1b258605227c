//! netev's threads: the I/O loops (`io_loop`) and tokio's blocking pool for
//! name lookups. Started lazily, shut down on request, never stopped from
//! one of their own threads.

use crate::error::{Error, Result, Status};
use crate::io_loop::{Loop, LoopHandle};
use crate::sync::{Guard, Held, Mutex};
use std::sync::Arc;
use std::sync::Condvar;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Runtime settings a host may give before first use.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct netev_runtime_options {
    /// sizeof(netev_runtime_options) as the host's header declares it,
    /// set by netev_runtime_options_init: which fields the host has.
    pub size: u32,
    /// I/O threads; 0 = one per core.
    pub worker_threads: u32,
}

impl Default for netev_runtime_options {
    fn default() -> Self {
        netev_runtime_options {
            size: std::mem::size_of::<Self>() as u32,
            worker_threads: 0,
        }
    }
}

// SAFETY: #[repr(C)], `size: u32` first, Default is zeros and the size;
// its other field is a number.
unsafe impl crate::abi::Versioned for netev_runtime_options {
    const NAME: &'static str = "netev_runtime_options";
    const FIRST_SIZE: usize =
        std::mem::offset_of!(netev_runtime_options, worker_threads) + std::mem::size_of::<u32>();
    const BOOLS: &'static [(&'static str, usize)] = &[];
}

/// What runs while netev runs.
struct Runtime {
    loops: Vec<Loop>,
    shared: Arc<Shared>,
    /// A tokio runtime given no tasks: only its blocking pool is used, for
    /// getaddrinfo, which has no non-blocking form.
    blocking: tokio::runtime::Runtime,
}

/// What opens and lookups need of the runtime.
pub struct Shared {
    loops: Vec<Arc<LoopHandle>>,
    next: AtomicUsize,
    blocking: tokio::runtime::Handle,
}

static RUNTIME: Mutex<Option<Runtime>> = Mutex::new(None);
static WORKERS: AtomicU32 = AtomicU32::new(0);
static SHUTTING_DOWN: AtomicBool = AtomicBool::new(false);

use crate::fork::forked;
pub use crate::io_loop::on_loop_thread as on_runtime_thread;

fn shut_down_error() -> Error {
    Error::new(
        Status::NETEV_ERR_SHUTDOWN,
        "this process was forked: netev cannot run in the child",
    )
}

fn lock() -> Guard<'static, Option<Runtime>> {
    RUNTIME.lock()
}

fn build() -> Result<Runtime> {
    crate::fork::watch();
    let workers = match WORKERS.load(Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    // Multi-thread with one (idle) worker: building a current-thread one
    // would store a thread handle in the host thread's TLS, which leak
    // checkers report once netev is shut down. Built on a thread of its
    // own: tokio enters its context on the building thread, and a host
    // thread in its exit (an atexit handler, a thread_local's destructor)
    // no longer has the thread-locals that takes.
    let builder = std::thread::Builder::new()
        .name("netev-start".into())
        .spawn(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("netev-dns")
                .build()
        })
        .map_err(|e| Error::io(&e, "cannot start the runtime"))?;
    let blocking = builder
        .join()
        .map_err(|_| Error::new(Status::NETEV_ERR_INTERNAL, "building the runtime panicked"))?
        .map_err(|e| Error::io(&e, "cannot start the runtime"))?;
    let mut loops = Vec::with_capacity(workers);
    for _ in 0..workers {
        match Loop::spawn("netev-io") {
            Ok(l) => loops.push(l),
            Err(e) => {
                for l in loops {
                    l.stop();
                }
                return Err(Error::io(&e, "cannot start netev's I/O threads"));
            }
        }
    }
    let shared = Arc::new(Shared {
        loops: loops.iter().map(|l| l.handle.clone()).collect(),
        next: AtomicUsize::new(0),
        blocking: blocking.handle().clone(),
    });
    Ok(Runtime {
        loops,
        shared,
        blocking,
    })
}

fn started_log() {
    crate::log::start_from_env();
    crate::log::log!("runtime", 0, "open");
}

/// Opens in progress: a shutdown waits for them to have registered what
/// they open, so that it ends it, instead of racing them.
static OPENING: AtomicUsize = AtomicUsize::new(0);

/// The runtime's handle while an object opens. Holding it, the open
/// registers its object before a shutdown can look for it; it counts as a
/// held lock (no host call meanwhile, log lines deferred), so a shutdown
/// waiting for it never waits for the host.
pub struct Opening {
    shared: Arc<Shared>,
    _held: Held,
}

impl Opening {
    /// The loop the next object goes to: the caller's own when it runs on
    /// one (an accepted connection stays with its listener, a connection
    /// opened in a callback with the connection that opened it: no hand-off
    /// between threads), otherwise each in turn.
    pub fn next_loop(&self) -> Arc<LoopHandle> {
        if let Some(current) = crate::io_loop::current() {
            return current;
        }
        let s = &self.shared;
        let i = s.next.fetch_add(1, Ordering::Relaxed) % s.loops.len();
        s.loops[i].clone()
    }
}

impl Drop for Opening {
    fn drop(&mut self) {
        OPENING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The runtime's handle for an open, starting the runtime on first use.
pub fn opening() -> Result<Opening> {
    if forked() {
        return Err(shut_down_error());
    }
    let held = Held::new();
    OPENING.fetch_add(1, Ordering::SeqCst);
    // Dropped on every early return: the count goes back down.
    let counted = OpeningCount;
    if shutting_down() {
        return Err(Error::new(
            Status::NETEV_ERR_SHUTDOWN,
            "netev_runtime_shutdown is running: nothing new can start",
        ));
    }
    let mut rt = lock();
    let shared = match rt.as_ref() {
        Some(rt) => rt.shared.clone(),
        None => {
            let started = build()?;
            let shared = started.shared.clone();
            *rt = Some(started);
            drop(rt);
            started_log();
            shared
        }
    };
    std::mem::forget(counted);
    Ok(Opening {
        shared,
        _held: held,
    })
}

/// Runs `f` on the blocking pool (a name lookup).
pub fn spawn_blocking(f: impl FnOnce() + Send + 'static) -> Result<()> {
    let handle = lock().as_ref().map(|rt| rt.shared.blocking.clone());
    match handle {
        Some(h) => {
            // Counted until it ran (or was dropped unrun): shutdown reports
            // a lookup still blocking one of netev's threads.
            let counted = BlockingJob::new();
            drop(h.spawn_blocking(move || {
                let _counted = counted;
                f()
            }));
            Ok(())
        }
        None => Err(Error::new(
            Status::NETEV_ERR_SHUTDOWN,
            "netev's runtime is not running",
        )),
    }
}

/// Jobs on the blocking pool (name lookups) not finished yet.
static BLOCKING: AtomicUsize = AtomicUsize::new(0);

struct BlockingJob;

impl BlockingJob {
    fn new() -> BlockingJob {
        BLOCKING.fetch_add(1, Ordering::SeqCst);
        BlockingJob
    }
}

impl Drop for BlockingJob {
    fn drop(&mut self) {
        BLOCKING.fetch_sub(1, Ordering::SeqCst);
    }
}

struct OpeningCount;

impl Drop for OpeningCount {
    fn drop(&mut self) {
        OPENING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Starts the runtime with `options`. Fails with INVALID_ARGUMENT when it
/// already runs: settings only apply to a fresh start.
pub fn init(options: &netev_runtime_options) -> Result<()> {
    if forked() {
        return Err(shut_down_error());
    }
    if options.worker_threads > 1024 {
        return Err(Error::invalid("worker_threads is above 1024"));
    }
    let mut rt = lock();
    if rt.is_some() {
        return Err(Error::invalid(
            "the runtime is already running; netev_runtime_shutdown first",
        ));
    }
    WORKERS.store(options.worker_threads, Ordering::Relaxed);
    *rt = Some(build()?);
    drop(rt);
    started_log();
    Ok(())
}

/// Counts objects whose TERMINATE callback has not returned yet, so
/// shutdown can wait for their last events instead of cutting them off,
/// and return only once nothing more will be delivered.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Taken only to sleep on, and to signal, the last one's end during
/// shutdown: a start and an end otherwise cost one atomic each.
static LIVE_LOCK: Mutex<()> = Mutex::new(());
static LIVE_CHANGED: Condvar = Condvar::new();

/// A connection or listener started: it will have a TERMINATE.
pub fn object_started() {
    LIVE.fetch_add(1, Ordering::AcqRel);
}

/// Its TERMINATE callback returned.
pub fn object_ended() {
    if LIVE.fetch_sub(1, Ordering::AcqRel) == 1 && shutting_down() {
        let _held = LIVE_LOCK.lock();
        LIVE_CHANGED.notify_all();
    }
}

fn live() -> usize {
    LIVE.load(Ordering::Acquire)
}

/// Serialises shutdowns: a second caller waits for the first, then runs its
/// own (which finds little or nothing left to do).
struct Gate {
    running: bool,
}

static GATE: Mutex<Gate> = Mutex::new(Gate { running: false });
static GATE_CHANGED: Condvar = Condvar::new();

fn timed_out() -> Error {
    Error::new(
        Status::NETEV_ERR_TIMEOUT,
        "netev_runtime_shutdown ran out of time before every TERMINATE had run",
    )
}

/// Ends every open object (each TERMINATE runs once), then stops netev's
/// threads. Callbacks of dispatcher-bound objects still queued run on the
/// calling thread unless another thread is running that dispatcher. OK
/// means every TERMINATE callback has returned and nothing more will be
/// delivered; past the deadline, TIMEOUT. A later call starts a fresh
/// runtime.
pub fn shutdown(timeout: Option<Duration>) -> Result<()> {
    if forked() {
        return Err(shut_down_error());
    }
    if on_runtime_thread() {
        return Err(Error::new(
            Status::NETEV_ERR_WOULD_DEADLOCK,
            "netev_runtime_shutdown called on a netev I/O thread (inside a callback)",
        ));
    }
    if crate::dispatch::running_on_this_thread() || crate::sync::in_host_call() {
        return Err(Error::new(
            Status::NETEV_ERR_WOULD_DEADLOCK,
            "netev_runtime_shutdown called inside a callback: it waits for every \
             callback to return, this one included",
        ));
    }
    let deadline = timeout.map(|t| Instant::now() + t);
    {
        let mut gate = GATE.lock();
        while gate.running {
            gate = match deadline {
                None => gate.wait(&GATE_CHANGED),
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Err(timed_out());
                    }
                    gate.wait_timeout(&GATE_CHANGED, d - now)
                }
            };
        }
        gate.running = true;
    }
    let result = shutdown_now(deadline);
    GATE.lock().running = false;
    GATE_CHANGED.notify_all();
    result
}

fn shutdown_now(deadline: Option<Instant>) -> Result<()> {
    let past = |d: Option<Instant>| d.is_some_and(|d| Instant::now() >= d);
    SHUTTING_DOWN.store(true, Ordering::SeqCst);
    // Opens already past their check register their object first (they
    // call no host code meanwhile), so the rounds below end it.
    while OPENING.load(Ordering::SeqCst) > 0 && !past(deadline) {
        std::thread::yield_now();
    }
    // Let every task deliver its last events while dispatcher-bound ones
    // are run here. Each round ends what is still open: a callback run here
    // may have opened something before it saw the shutdown.
    loop {
        for obj in crate::registry::all() {
            obj.shutdown_round();
        }
        if live() == 0 {
            break;
        }
        let slice = Duration::from_millis(5);
        let wait = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break;
                }
                slice.min(d - now)
            }
            None => slice,
        };
        let held = LIVE_LOCK.lock();
        if live() > 0 {
            let _ = held.wait_timeout(&LIVE_CHANGED, wait);
        }
    }
    if live() > 0 {
        // Out of time. The runtime stays up, so the objects ended above
        // still deliver their last callbacks on netev's threads, and a later
        // call finds them finished and stops the threads for good.
        SHUTTING_DOWN.store(false, Ordering::SeqCst);
        return Err(timed_out());
    }
    let rt = lock().take();
    if let Some(rt) = rt {
        crate::log::log!("runtime", 0, "shutdown");
        // Nothing of netev's runs any more: this only waits for the threads
        // to exit (and for a name lookup still blocking one of them).
        for l in rt.loops {
            l.stop();
        }
        let left = deadline
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(Duration::from_secs(1));
        rt.blocking
            .shutdown_timeout(left.max(Duration::from_millis(100)));
    }
    // A name lookup cannot be interrupted: its thread exits when the
    // resolver returns. Until then netev's threads are not all gone.
    while BLOCKING.load(Ordering::SeqCst) > 0 && !past(deadline) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stuck = BLOCKING.load(Ordering::SeqCst);
    crate::log::stop();
    SHUTTING_DOWN.store(false, Ordering::SeqCst);
    if stuck > 0 {
        return Err(Error::new(
            Status::NETEV_ERR_TIMEOUT,
            format!(
                "{stuck} name lookups are still running on netev threads, which exit \
                 when the resolver returns; nothing more is delivered"
            ),
        ));
    }
    Ok(())
}

/// True while `shutdown` runs: nothing new starts.
pub fn shutting_down() -> bool {
    SHUTTING_DOWN.load(Ordering::Relaxed)
}
