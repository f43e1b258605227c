//! Delivery: how an event reaches the host, at once on the loop's thread
//! or through the connection's outbox to its dispatcher's thread, and how
//! the connection ends (CLOSE or ERROR, then TERMINATE, exactly once).

use super::{After, CURRENT, Connection, End, UNDELIVERED_LIMIT};
use crate::dispatch::{Delivery, Job, Mailbox};
use crate::error::Error;
use crate::event::{EventType, netev_event};
use crate::log::log;
use crate::runtime;
use crate::sync::{Mutex, call_host};
use std::collections::VecDeque;
use std::ffi::CString;
use std::sync::Arc;

/// Dispatcher mode: the connection's events waiting for the host's thread.
/// Received bytes join the DATA waiting last (up to `DATA_CHUNK`), so a
/// trickling peer costs one growing buffer, not one entry per read; the dispatcher holds the
/// connection once in its queue however many events wait here.
#[derive(Default)]
pub(super) struct Outbox {
    events: VecDeque<Pending>,
    /// Received bytes waiting, or being delivered: reading stops at the limit.
    undelivered: usize,
    /// The connection is in its dispatcher's queue, or being delivered from.
    scheduled: bool,
}

/// The most one waiting DATA holds: later bytes start another. Buffers stay
/// under malloc's mmap threshold, so the heap reuses them instead of mapping
/// and faulting in fresh pages for every delivery.
const DATA_CHUNK: usize = crate::dispatch::BUFFER_SIZE;

/// What one waiting DATA costs besides its bytes (its queue slot, its
/// allocation's header and slack), counted against the receive limit: a
/// peer sending empty or tiny frames must not queue a million of them.
const ENTRY_COST: usize = 128;

enum Pending {
    Data(Vec<u8>),
    Event(EventType, Option<Error>, After),
}

impl Pending {
    /// DATA or END: what a pause holds back.
    fn received(&self) -> bool {
        matches!(
            self,
            Pending::Data(_) | Pending::Event(EventType::NETEV_EVENT_END, ..)
        )
    }

    fn is_drain(&self) -> bool {
        matches!(self, Pending::Event(EventType::NETEV_EVENT_DRAIN, ..))
    }
}

impl Connection {
    /// The outbox, made on first use: only dispatcher-bound connections
    /// have one, the others do not pay for it.
    fn outbox(&self) -> &Mutex<Outbox> {
        self.outbox.get_or_init(Box::default)
    }

    /// Turns an ERROR still waiting in the outbox into CLOSE (see `close_now`).
    pub(super) fn error_becomes_close(&self) {
        let Some(outbox) = self.outbox.get() else {
            return; // never used: no dispatcher
        };
        let mut out = outbox.lock();
        for p in out.events.iter_mut() {
            if let Pending::Event(ty @ EventType::NETEV_EVENT_ERROR, error, _) = p {
                *ty = EventType::NETEV_EVENT_CLOSE;
                *error = None;
            }
        }
    }

    /// Delivers one event: at once on this thread, or through the outbox to
    /// the dispatcher's thread. `data` is copied only when it must outlive
    /// this call.
    pub(super) fn deliver(
        self: &Arc<Self>,
        ty: EventType,
        data: &[u8],
        error: Option<&Error>,
        after: After,
    ) {
        let cfg = self.cfg();
        if cfg.callback(ty).is_none() && matches!(after, After::Nothing) {
            return;
        }
        let Some(d) = &cfg.dispatcher else {
            self.invoke(ty, data, error, after);
            return;
        };
        let mut out = self.outbox().lock();
        match ty {
            EventType::NETEV_EVENT_DATA => {
                out.undelivered += data.len();
                match out.events.back_mut() {
                    // Frames stay apart: one DATA each.
                    Some(Pending::Data(waiting))
                        if cfg.framing.is_none() && waiting.len() + data.len() <= DATA_CHUNK =>
                    {
                        if waiting.capacity() < waiting.len() + data.len() {
                            let want = (2 * waiting.capacity())
                                .clamp(waiting.len() + data.len(), DATA_CHUNK);
                            waiting.reserve_exact(want - waiting.len());
                        }
                        waiting.extend_from_slice(data);
                    }
                    // A full read says more follow: a pooled buffer.
                    _ if (DATA_CHUNK / 2..=DATA_CHUNK).contains(&data.len()) => {
                        let mut buf = d.buffer();
                        buf.extend_from_slice(data);
                        out.undelivered += ENTRY_COST;
                        out.events.push_back(Pending::Data(buf));
                    }
                    _ => {
                        out.undelivered += ENTRY_COST;
                        out.events.push_back(Pending::Data(data.to_vec()));
                    }
                }
            }
            // One DRAIN waiting says all a later one would.
            EventType::NETEV_EVENT_DRAIN
                if out.events.iter().any(
                    |p| matches!(p, Pending::Event(t, ..) if *t == EventType::NETEV_EVENT_DRAIN),
                ) => {}
            _ => out
                .events
                .push_back(Pending::Event(ty, error.cloned(), after)),
        }
        let post = !out.scheduled;
        out.scheduled = true;
        drop(out);
        if post {
            d.post(Job::Mailbox(self.clone()));
        }
    }

    /// After a resume: hands the events a pause held back to the
    /// dispatcher again.
    pub(super) fn redeliver(&self) {
        let Some(d) = &self.cfg().dispatcher else {
            return;
        };
        let post = {
            let mut out = self.outbox().lock();
            let post = !out.scheduled && !out.events.is_empty();
            out.scheduled |= post;
            post
        };
        if post && let Some(me) = self.me.upgrade() {
            d.post(Job::Mailbox(me));
        }
    }

    /// Whether a dispatcher-bound connection may read more now.
    pub(super) fn receive_room(&self) -> bool {
        self.cfg().dispatcher.is_none() || self.outbox().lock().undelivered < UNDELIVERED_LIMIT
    }

    /// Calls the host's callback for `ty`, then the after-action. Returns
    /// whether a host callback ran.
    fn invoke(&self, ty: EventType, data: &[u8], error: Option<&Error>, after: After) -> bool {
        if matches!(after, After::Terminated) {
            self.lock().terminating = true;
        }
        let cfg = self.cfg();
        let remote = self.remote();
        // Everything the callback needs is made first (an allocation can
        // take long, under a sanitizer above all), so that the check below
        // sits right before the callback.
        let message = error.map(|e| CString::new(e.message.replace('\0', " ")).unwrap_or_default());
        let mut ev = netev_event::new(ty, self.id, &remote).with_data(data);
        if let (Some(e), Some(m)) = (error, &message) {
            ev = ev.with_error(e, m);
        }
        // The host may have closed after the failure was decided and before
        // its ERROR began: close's word (CLOSE, never ERROR) holds, decided
        // as late as the callback itself can be.
        let (ty, ev) = match ty {
            EventType::NETEV_EVENT_ERROR if self.lock().close_requested => (
                EventType::NETEV_EVENT_CLOSE,
                netev_event::new(EventType::NETEV_EVENT_CLOSE, self.id, &remote),
            ),
            _ => (ty, ev),
        };
        let cb = cfg.callback(ty);
        if let Some(cb) = cb {
            if ty == EventType::NETEV_EVENT_DATA {
                super::stats::Counters::add(&self.counters.data_events, 1);
            }
            let outer = CURRENT.replace(self);
            call_host(|| {
                // SAFETY: the host registered `cb` for this event type; `ev`
                // and what it points to live until the call returns.
                unsafe { cb(self.id, &ev, cfg.user_data.0) }
            });
            CURRENT.set(outer);
        }
        match after {
            After::Nothing => {}
            After::AutoShutdown => {
                if !cfg.allow_half_open {
                    let mut st = self.lock();
                    if !st.write_shut_requested {
                        st.write_shut_requested = true;
                        log!("connection", self.id, "shutdown after peer end");
                    }
                    self.kick(st);
                }
            }
            After::Terminated => self.terminated(),
        }
        cb.is_some()
    }

    fn terminated(&self) {
        let mut st = self.lock();
        st.terminated = true;
        let unowned = st.host_refs == 0;
        self.wake_waiters(st);
        log!("connection", self.id, "terminated");
        let cfg = self.cfg();
        if let Some(free) = cfg.user_data_free {
            call_host(|| {
                // SAFETY: the host gave this function to free its own
                // pointer; TERMINATE is the last use, so it runs once, here.
                unsafe { free(cfg.user_data.0) }
            });
        }
        if let Some(d) = &cfg.dispatcher {
            d.unbind();
        }
        if unowned {
            self.unregister();
        }
        runtime::object_ended();
    }

    /// Ends the connection, once: CLOSE or ERROR, then TERMINATE. A host that
    /// asked to close gets CLOSE whatever failed meanwhile.
    pub(super) fn finish(self: &Arc<Self>, end: End) {
        let end = {
            let mut st = self.lock();
            if st.finished {
                return;
            }
            st.finished = true;
            st.closed = true;
            st.out.clear();
            let end = match end {
                End::Error(_) if st.close_requested => End::Close,
                end => end,
            };
            if let End::Error(e) = &end {
                st.errors.get_or_insert_default().push(e.clone());
            }
            end
        };
        match &end {
            End::Close => {
                log!("connection", self.id, "closed");
                self.deliver(EventType::NETEV_EVENT_CLOSE, &[], None, After::Nothing);
            }
            End::Error(e) => {
                log!("connection", self.id, "error {e}");
                self.deliver(EventType::NETEV_EVENT_ERROR, &[], Some(e), After::Nothing);
            }
        }
        self.deliver(
            EventType::NETEV_EVENT_TERMINATE,
            &[],
            None,
            After::Terminated,
        );
    }
}

impl Mailbox for Connection {
    fn deliver_next(&self) -> Delivery {
        let next = {
            let mut out = self.outbox().lock();
            let at = match self.paused() {
                false => Some(0),
                // DATA and END wait; a DRAIN goes past them (a host that
                // paused until another connection drains must still hear
                // this one's); the end of the connection does not wait.
                true => match out.events.iter().position(|p| !p.received()) {
                    Some(i) if out.events[i].is_drain() => Some(i),
                    Some(_) => Some(0),
                    None => None,
                },
            };
            match at.and_then(|i| out.events.remove(i)) {
                Some(p) => p,
                None => {
                    out.scheduled = false;
                    return Delivery {
                        ran: false,
                        more: false,
                    };
                }
            }
        };
        let ran = match next {
            Pending::Data(bytes) => {
                let ran = self.invoke(EventType::NETEV_EVENT_DATA, &bytes, None, After::Nothing);
                let mut out = self.outbox().lock();
                let was_full = out.undelivered >= UNDELIVERED_LIMIT;
                out.undelivered -= bytes.len() + ENTRY_COST;
                if was_full && out.undelivered < UNDELIVERED_LIMIT {
                    drop(out);
                    // The loop stopped reading for lack of room: resume.
                    self.kick(self.lock());
                }
                if let Some(d) = &self.cfg().dispatcher {
                    d.give_back(bytes);
                }
                ran
            }
            Pending::Event(ty, error, after) => self.invoke(ty, &[], error.as_ref(), after),
        };
        let mut out = self.outbox().lock();
        let more = !out.events.is_empty();
        out.scheduled = more;
        Delivery { ran, more }
    }
}
