//! The registry that turns 64-bit ids into live objects.
//!
//! Hosts hold ids, never pointers, so a stale, double-released or garbage
//! handle is a lookup miss instead of undefined behaviour. Ids come from one
//! counter shared by every kind and are never reused.

use crate::connection::Connection;
use crate::dispatch::Dispatcher;
use crate::error::{Error, Result};
use crate::listener::Listener;
use once_cell::sync::Lazy;
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

#[derive(Clone)]
pub enum Object {
    Connection(Arc<Connection>),
    Dispatcher(Arc<Dispatcher>),
    Listener(Arc<Listener>),
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
/// A BTreeMap, not a HashMap: its heap blocks are pointed at from their
/// start, so objects a host still holds at exit count as reachable under
/// leak checkers, where a hash table's interior pointer reads as a leak.
static TABLE: Lazy<RwLock<BTreeMap<u64, Object>>> = Lazy::new(|| RwLock::new(BTreeMap::new()));

/// A fresh id, never handed out before in this process.
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

pub fn insert(id: u64, obj: Object) {
    // A poisoned lock only means a panic elsewhere; the map itself is intact.
    let _held = crate::sync::Held::new();
    let mut t = TABLE.write().unwrap_or_else(|p| p.into_inner());
    t.insert(id, obj);
}

pub fn remove(id: u64) -> Option<Object> {
    let _held = crate::sync::Held::new();
    let mut t = TABLE.write().unwrap_or_else(|p| p.into_inner());
    t.remove(&id)
}

fn get(id: u64) -> Option<Object> {
    let _held = crate::sync::Held::new();
    let t = TABLE.read().unwrap_or_else(|p| p.into_inner());
    t.get(&id).cloned()
}

fn check_process() -> Result<()> {
    if crate::runtime::forked() {
        return Err(Error::new(
            crate::error::Status::NETEV_ERR_SHUTDOWN,
            "this process was forked: objects of the parent cannot be used here",
        ));
    }
    Ok(())
}

pub fn connection(id: u64) -> Result<Arc<Connection>> {
    check_process()?;
    if let Some(c) = Connection::current(id) {
        return Ok(c);
    }
    match get(id) {
        Some(Object::Connection(c)) => Ok(c),
        _ => Err(Error::handle(id, "connection")),
    }
}

pub fn dispatcher(id: u64) -> Result<Arc<Dispatcher>> {
    check_process()?;
    match get(id) {
        Some(Object::Dispatcher(d)) => Ok(d),
        _ => Err(Error::handle(id, "dispatcher")),
    }
}

pub fn listener(id: u64) -> Result<Arc<Listener>> {
    check_process()?;
    match get(id) {
        Some(Object::Listener(l)) => Ok(l),
        _ => Err(Error::handle(id, "listener")),
    }
}

/// Every live object, for runtime shutdown.
pub fn all() -> Vec<Object> {
    let _held = crate::sync::Held::new();
    let t = TABLE.read().unwrap_or_else(|p| p.into_inner());
    t.values().cloned().collect()
}
