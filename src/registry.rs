//! The registry that turns 64-bit ids into live objects.
//!
//! Hosts hold ids, never pointers, so a stale, double-released or garbage
//! handle is a lookup miss instead of undefined behaviour. Ids come from one
//! counter shared by every kind and are never reused. The registry knows
//! nothing of the kinds it holds: each is a `Registered` trait object, found
//! again as its own type by a checked downcast, so a handle of another kind
//! is a miss too.

use crate::error::{Error, Result, Status};
use once_cell::sync::Lazy;
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A connection handle. 0 is never valid.
#[allow(non_camel_case_types)]
pub type netev_connection = u64;
/// A listener handle. 0 is never valid.
#[allow(non_camel_case_types)]
pub type netev_listener = u64;
/// A dispatcher handle. 0 is never valid.
#[allow(non_camel_case_types)]
pub type netev_dispatcher = u64;

/// What every registered object does when something beyond it ends.
pub trait Registered: Any + Send + Sync {
    /// One round of a runtime shutdown: end (it is called again each
    /// round), or run what is ready.
    fn shutdown_round(&self);
    /// The dispatcher `id` was released: end if bound to it.
    fn dispatcher_released(&self, _id: netev_dispatcher) {}
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// A BTreeMap, not a HashMap: its heap blocks are pointed at from their
/// start, so objects a host still holds at exit count as reachable under
/// leak checkers, where a hash table's interior pointer reads as a leak.
static TABLE: Lazy<RwLock<BTreeMap<u64, Arc<dyn Registered>>>> =
    Lazy::new(|| RwLock::new(BTreeMap::new()));

/// A fresh id, never handed out before in this process.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub fn insert(id: u64, obj: Arc<dyn Registered>) {
    let _held = crate::sync::Held::new();
    // A poisoned lock only means a panic elsewhere; the map itself is intact.
    let mut t = TABLE.write().unwrap_or_else(|p| p.into_inner());
    t.insert(id, obj);
}

pub fn remove(id: u64) -> Option<Arc<dyn Registered>> {
    let _held = crate::sync::Held::new();
    let mut t = TABLE.write().unwrap_or_else(|p| p.into_inner());
    t.remove(&id)
}

fn check_process() -> Result<()> {
    if crate::fork::forked() {
        return Err(Error::new(
            Status::NETEV_ERR_SHUTDOWN,
            "this process was forked: objects of the parent cannot be used here",
        ));
    }
    Ok(())
}

/// The object `id` names, if it is a `T`; `kind` names T in the error.
pub fn get<T: Registered>(id: u64, kind: &str) -> Result<Arc<T>> {
    check_process()?;
    let found = {
        let _held = crate::sync::Held::new();
        let t = TABLE.read().unwrap_or_else(|p| p.into_inner());
        t.get(&id).cloned()
    };
    found
        .and_then(|o| {
            let any: Arc<dyn Any + Send + Sync> = o;
            any.downcast::<T>().ok()
        })
        .ok_or_else(|| Error::handle(id, kind))
}

/// Every live object, for runtime shutdown and dispatcher release.
pub fn all() -> Vec<Arc<dyn Registered>> {
    let _held = crate::sync::Held::new();
    let t = TABLE.read().unwrap_or_else(|p| p.into_inner());
    t.values().cloned().collect()
}

/// Whether the process may use its objects (not a forked child).
pub fn usable() -> Result<()> {
    check_process()
}
