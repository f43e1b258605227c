//! The registry that turns 64-bit ids into live objects.
//!
//! Hosts hold ids, never pointers, so a stale, double-released or garbage
//! handle is a lookup miss instead of undefined behaviour. The registry
//! knows nothing of the kinds it holds: each is a `Registered` trait object,
//! found again as its own type by a checked downcast, so a handle of another
//! kind is a miss too.
//!
//! An id is a slot index (low 32 bits, plus one so that 0 is never valid)
//! and that slot's generation (high 32 bits). A lookup goes straight to its
//! slot and takes only that slot's lock, so host threads looking up
//! different objects never meet on a shared lock. A slot is reused with the
//! next generation; one whose generations are spent is retired, so an id is
//! never handed out twice in a process. Slots live in pages that double in
//! size and are never freed: a page pointer, once published, stays valid.

use crate::error::{Error, Result, Status};
use crate::sync::Mutex;
use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicPtr, Ordering};

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

#[derive(Default)]
struct Cell {
    /// The id this slot answers to; 0 while free.
    id: u64,
    /// The generation the slot's next id gets.
    generation: u32,
    /// None between `reserve` and `insert`: lookups miss.
    obj: Option<Arc<dyn Registered>>,
}

type Slot = Mutex<Cell>;

/// Slots in page 0; page `p` holds `FIRST_PAGE << p`.
const FIRST_PAGE_LOG2: u32 = 6;
const FIRST_PAGE: u64 = 1 << FIRST_PAGE_LOG2;
/// Enough pages for every 32-bit index.
const PAGES: usize = 32 - FIRST_PAGE_LOG2 as usize + 1;

/// Page `p`'s first slot, published once and never freed, so that lookups
/// need no lock to find a slot (the pages are reachable from here, which
/// leak checkers see).
static PAGE: [AtomicPtr<Slot>; PAGES] = [const { AtomicPtr::new(std::ptr::null_mut()) }; PAGES];

/// Slots to hand out: the free list and how many slots exist so far.
static FREE: Mutex<Free> = Mutex::new(Free {
    indices: Vec::new(),
    made: 0,
});

struct Free {
    indices: Vec<u32>,
    made: u64,
}

/// The largest index: its id's low half is `u32::MAX`.
const MAX_INDEX: u64 = u32::MAX as u64 - 1;

fn page_of(index: u64) -> (usize, u64) {
    let n = index + FIRST_PAGE;
    let page = (63 - n.leading_zeros() - FIRST_PAGE_LOG2) as usize;
    (page, n - (FIRST_PAGE << page))
}

/// The slot at `index`, if its page exists.
fn slot(index: u64) -> Option<&'static Slot> {
    if index > MAX_INDEX {
        return None;
    }
    let (page, offset) = page_of(index);
    let first = PAGE.get(page)?.load(Ordering::Acquire);
    if first.is_null() {
        return None;
    }
    // SAFETY: a published page holds `FIRST_PAGE << page` slots, is never
    // freed, and `offset` is below that by `page_of`'s construction.
    Some(unsafe { &*first.add(offset as usize) })
}

fn split(id: u64) -> Option<u64> {
    (id as u32).checked_sub(1).map(u64::from)
}

/// Takes a slot and returns its id, never handed out before in this process.
/// Lookups of the id miss until `insert`; `remove` gives the slot back.
pub fn reserve() -> u64 {
    let index = {
        let mut free = FREE.lock();
        match free.indices.pop() {
            Some(i) => u64::from(i),
            None => {
                let i = free.made;
                if i > MAX_INDEX {
                    // Four billion objects alive at once: nothing sensible
                    // remains, and handing out an id twice is worse.
                    drop(free);
                    std::process::abort();
                }
                let (page, offset) = page_of(i);
                if offset == 0 {
                    let slots: Box<[Slot]> =
                        (0..FIRST_PAGE << page).map(|_| Slot::default()).collect();
                    PAGE[page].store(Box::into_raw(slots).cast::<Slot>(), Ordering::Release);
                }
                free.made += 1;
                i
            }
        }
    };
    let Some(s) = slot(index) else {
        // Unreachable: the page was published above or before the index
        // was freed. Abort rather than hand out an id that cannot be found.
        std::process::abort();
    };
    let mut cell = s.lock();
    cell.id = (u64::from(cell.generation) << 32) | (index + 1);
    cell.id
}

/// Makes `id` (from `reserve`) find `obj`.
pub fn insert(id: u64, obj: Arc<dyn Registered>) {
    if let Some(s) = split(id).and_then(slot) {
        let mut cell = s.lock();
        if cell.id == id {
            cell.obj = Some(obj);
        }
    }
}

/// Ends `id`: lookups miss from now on, and its slot goes back for reuse
/// under the next generation. Removing twice is harmless.
pub fn remove(id: u64) -> Option<Arc<dyn Registered>> {
    let index = split(id)?;
    let s = slot(index)?;
    let (obj, reusable) = {
        let mut cell = s.lock();
        if cell.id != id {
            return None;
        }
        cell.id = 0;
        let reusable = match cell.generation.checked_add(1) {
            Some(g) => {
                cell.generation = g;
                true
            }
            None => false,
        };
        (cell.obj.take(), reusable)
    };
    if reusable {
        FREE.lock().indices.push(index as u32);
    }
    obj
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
    let found = split(id).and_then(slot).and_then(|s| {
        let cell = s.lock();
        if cell.id == id {
            cell.obj.clone()
        } else {
            None
        }
    });
    found
        .and_then(|o| {
            let any: Arc<dyn Any + Send + Sync> = o;
            any.downcast::<T>().ok()
        })
        .ok_or_else(|| Error::handle(id, kind))
}

/// Every live object, for runtime shutdown and dispatcher release.
pub fn all() -> Vec<Arc<dyn Registered>> {
    let made = FREE.lock().made;
    (0..made)
        .filter_map(|i| slot(i).and_then(|s| s.lock().obj.clone()))
        .collect()
}

/// Whether the process may use its objects (not a forked child).
pub fn usable() -> Result<()> {
    check_process()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Thing;
    impl Registered for Thing {
        fn shutdown_round(&self) {}
    }
    struct Other;
    impl Registered for Other {
        fn shutdown_round(&self) {}
    }

    #[test]
    fn pages_cover_every_index_without_overlap() {
        assert_eq!(page_of(0), (0, 0));
        assert_eq!(page_of(FIRST_PAGE - 1), (0, FIRST_PAGE - 1));
        assert_eq!(page_of(FIRST_PAGE), (1, 0));
        assert_eq!(page_of(3 * FIRST_PAGE - 1), (1, 2 * FIRST_PAGE - 1));
        let (last, offset) = page_of(MAX_INDEX);
        assert!(last < PAGES && offset < FIRST_PAGE << last);
    }

    #[test]
    fn ids_miss_once_removed_and_are_never_handed_out_again() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            let id = reserve();
            assert!(id != 0 && seen.insert(id), "id {id:#x} handed out twice");
            assert!(
                get::<Thing>(id, "thing").is_err(),
                "reserved but not inserted"
            );
            insert(id, Arc::new(Thing));
            assert!(get::<Thing>(id, "thing").is_ok());
            assert!(get::<Other>(id, "other").is_err(), "another kind");
            assert!(remove(id).is_some());
            assert!(remove(id).is_none());
            assert!(get::<Thing>(id, "thing").is_err());
        }
        for garbage in [0, u64::MAX, u64::MAX - 1, 1 << 63, 0xdead_beef] {
            assert!(get::<Thing>(garbage, "thing").is_err());
            assert!(remove(garbage).is_none());
        }
    }
}
