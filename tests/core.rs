//! The safe core used from Rust, without the C ABI, against std::net peers.

use netev::connection::{Config, Connection, netev_connection_options};
use netev::dispatch::Dispatcher;
use netev::error::Status;
use netev::event::{EventType, netev_event};
use std::ffi::c_void;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Seen {
    types: Vec<EventType>,
    data: Vec<u8>,
    errors: Vec<Status>,
    threads: Vec<thread::ThreadId>,
}

#[derive(Default)]
struct Recorder {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Recorder {
    fn wait_for(&self, pred: impl Fn(&Seen) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = self.seen.lock().unwrap();
        while !pred(&s) {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self.changed.wait_timeout(s, deadline - now).unwrap().0;
        }
        true
    }
    fn terminated(&self) -> bool {
        self.wait_for(|s| s.types.contains(&EventType::NETEV_EVENT_TERMINATE))
    }
    fn sequence(&self) -> Vec<EventType> {
        let mut v = self.seen.lock().unwrap().types.clone();
        v.dedup_by(|a, b| *a == EventType::NETEV_EVENT_DATA && a == b);
        v
    }
}

unsafe extern "C" fn record(_conn: u64, ev: *const netev_event, ud: *mut c_void) {
    // SAFETY: netev passes the event it owns and the user_data we gave it,
    // which points at a Recorder kept alive by the test.
    let (ev, rec) = unsafe { (&*ev, &*(ud as *const Recorder)) };
    let mut s = rec.seen.lock().unwrap();
    s.types.push(ev.r#type);
    s.data.extend_from_slice(ev.data());
    if ev.r#type == EventType::NETEV_EVENT_ERROR {
        s.errors.push(ev.error);
    }
    s.threads.push(thread::current().id());
    rec.changed.notify_all();
}

fn options(rec: &Arc<Recorder>) -> netev_connection_options {
    netev_connection_options {
        on_connection: Some(record),
        on_data: Some(record),
        on_shutdown: Some(record),
        on_error: Some(record),
        on_terminate: Some(record),
        on_drain: Some(record),
        on_end: Some(record),
        user_data: Arc::as_ptr(rec) as *mut c_void,
        ..Default::default()
    }
}

/// An echo peer for one connection on 127.0.0.1.
fn echo_peer() -> (u16, thread::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = s.shutdown(Shutdown::Write);
    });
    (port, t)
}

use EventType::*;

#[test]
fn echo_round_trip_has_the_documented_event_sequence() {
    let rec = Arc::new(Recorder::default());
    let (port, peer) = echo_peer();
    let cfg = Config::from_options(&options(&rec)).unwrap();
    let c = Connection::open("127.0.0.1", port, cfg, |_| {}).unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for chunk in payload.chunks(7_000) {
        c.send(chunk).unwrap();
    }
    assert!(rec.wait_for(|s| s.data.len() >= payload.len()));
    c.shutdown().unwrap();
    assert!(rec.terminated());
    assert_eq!(
        rec.sequence(),
        [
            NETEV_EVENT_CONNECTION,
            NETEV_EVENT_DATA,
            NETEV_EVENT_END,
            NETEV_EVENT_CLOSE,
            NETEV_EVENT_TERMINATE
        ]
    );
    assert_eq!(rec.seen.lock().unwrap().data, payload);
    assert!(c.closed());
    assert_eq!(
        c.send(b"x").map_err(|e| e.code),
        Err(Status::NETEV_ERR_CLOSED)
    );
    assert_eq!(c.error_count(), 1);
    c.release().unwrap();
    assert!(Connection::get(c.id).is_err());
    peer.join().unwrap();
}

#[test]
fn refused_connect_is_error_then_terminate_and_listed() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let rec = Arc::new(Recorder::default());
    let c = Connection::open(
        "127.0.0.1",
        port,
        Config::from_options(&options(&rec)).unwrap(),
        |_| {},
    )
    .unwrap();
    assert!(rec.terminated());
    assert_eq!(rec.sequence(), [NETEV_EVENT_ERROR, NETEV_EVENT_TERMINATE]);
    assert_eq!(
        rec.seen.lock().unwrap().errors,
        [Status::NETEV_ERR_CONNECTION_REFUSED]
    );
    let info = c.error_at(0).unwrap();
    assert_eq!(info.code, Status::NETEV_ERR_CONNECTION_REFUSED);
    assert_eq!(info.os_error, libc::ECONNREFUSED);
    // TERMINATE was seen inside its callback; wait returns once it has returned.
    assert!(c.wait(Some(Duration::from_secs(10))).is_ok());
    c.release().unwrap();
    assert_eq!(
        c.release().map_err(|e| e.code),
        Err(Status::NETEV_ERR_INVALID_HANDLE)
    );
}

#[test]
fn dispatcher_runs_every_callback_on_the_waiting_thread() {
    let d = Dispatcher::create().unwrap();
    let rec = Arc::new(Recorder::default());
    let (port, peer) = echo_peer();
    let mut o = options(&rec);
    o.dispatcher = d.id;
    let c = Connection::open("127.0.0.1", port, Config::from_options(&o).unwrap(), |_| {}).unwrap();
    c.send(b"ping").unwrap();
    // Nothing runs until this thread dispatches.
    let deadline = Instant::now() + Duration::from_secs(10);
    while rec.seen.lock().unwrap().data.len() < 4 && Instant::now() < deadline {
        d.run(Some(Duration::from_millis(100))).unwrap();
    }
    c.shutdown().unwrap();
    // shutdown ends a wait at once; close makes the connection end.
    c.close_now();
    d.run_until(Some(Duration::from_secs(10)), &|| {
        rec.seen
            .lock()
            .unwrap()
            .types
            .contains(&NETEV_EVENT_TERMINATE)
    })
    .unwrap();
    let s = rec.seen.lock().unwrap();
    assert_eq!(s.data, b"ping");
    assert_eq!(*s.types.last().unwrap(), NETEV_EVENT_TERMINATE);
    let me = thread::current().id();
    assert!(s.threads.iter().all(|t| *t == me));
    drop(s);
    c.release().unwrap();
    d.release();
    peer.join().unwrap();
}

#[test]
fn a_full_queue_refuses_whole_sends_then_drains() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let rec = Arc::new(Recorder::default());
    let mut o = options(&rec);
    o.send_buffer_limit = 64 * 1024;
    let c = Connection::open("127.0.0.1", port, Config::from_options(&o).unwrap(), |_| {}).unwrap();
    let (mut peer, _) = l.accept().unwrap();
    assert!(rec.wait_for(|s| s.types.contains(&NETEV_EVENT_CONNECTION)));
    let chunk = vec![7u8; 16 * 1024];
    let mut sent = 0usize;
    let refused = loop {
        match c.send(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(e) => break e.code,
        }
        assert!(sent < 64 << 20, "the socket buffers never filled");
    };
    assert_eq!(refused, Status::NETEV_ERR_BUFFER_FULL);
    let queued = c.buffered_amount();
    assert!(queued > 0 && queued <= 64 * 1024);
    assert!(!rec.seen.lock().unwrap().types.contains(&NETEV_EVENT_DRAIN));
    let mut got = vec![0u8; sent];
    peer.read_exact(&mut got).unwrap();
    assert!(got.iter().all(|b| *b == 7));
    assert!(rec.wait_for(|s| s.types.contains(&NETEV_EVENT_DRAIN)));
    c.release().unwrap();
    assert!(rec.terminated());
    assert_eq!(
        rec.seen
            .lock()
            .unwrap()
            .types
            .iter()
            .filter(|t| **t == NETEV_EVENT_DRAIN)
            .count(),
        1
    );
}

#[test]
fn bad_values_are_refused_before_anything_starts() {
    let mut o = netev_connection_options {
        idle_timeout: f64::NAN,
        ..Default::default()
    };
    assert!(Config::from_options(&o).is_err());
    o.idle_timeout = -1.0;
    assert!(Config::from_options(&o).is_err());
    o.idle_timeout = f64::INFINITY;
    assert!(Config::from_options(&o).is_ok());
    o.dispatcher = u64::MAX;
    assert_eq!(
        Config::from_options(&o).err().map(|e| e.code),
        Some(Status::NETEV_ERR_INVALID_HANDLE)
    );
    assert_eq!(
        Connection::open("127.0.0.1", 0, Config::default(), |_| {})
            .err()
            .map(|e| e.code),
        Some(Status::NETEV_ERR_INVALID_ARGUMENT)
    );
    assert_eq!(
        Connection::open("", 80, Config::default(), |_| {})
            .err()
            .map(|e| e.code),
        Some(Status::NETEV_ERR_INVALID_ARGUMENT)
    );
}
