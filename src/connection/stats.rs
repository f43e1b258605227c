//! What a connection counts for monitoring: bytes each way, DATA events,
//! and the kernel's round-trip estimate.

use super::Connection;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A connection's counters, as `netev_connection_stats_get` reports them.
/// The struct can grow like the options structs: `size` says how much of
/// it was filled.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct netev_connection_stats {
    /// Bytes of this struct netev filled (its size in this library, or the
    /// caller's `size` if smaller).
    pub size: u32,
    /// Bytes written to the socket (plain TCP), or plaintext handed to TLS.
    pub bytes_sent: u64,
    /// Bytes read from the socket (plain TCP), or plaintext out of TLS.
    pub bytes_received: u64,
    /// DATA callbacks run.
    pub data_events: u64,
    /// As netev_connection_buffered_amount.
    pub buffered_amount: usize,
    /// The kernel's smoothed round-trip time in microseconds (TCP_INFO);
    /// 0 when unknown (not connected yet, or ended).
    pub rtt_us: u32,
}

impl netev_connection_stats {
    /// Its bytes as C lays them out, padding zeroed: what may be copied
    /// to a host (a typed copy would leave the padding undefined).
    pub fn to_bytes(&self) -> [u8; std::mem::size_of::<netev_connection_stats>()] {
        use std::mem::offset_of;
        let mut b = [0u8; std::mem::size_of::<netev_connection_stats>()];
        let mut put = |at: usize, v: &[u8]| b[at..at + v.len()].copy_from_slice(v);
        put(offset_of!(Self, size), &self.size.to_ne_bytes());
        put(offset_of!(Self, bytes_sent), &self.bytes_sent.to_ne_bytes());
        put(
            offset_of!(Self, bytes_received),
            &self.bytes_received.to_ne_bytes(),
        );
        put(
            offset_of!(Self, data_events),
            &self.data_events.to_ne_bytes(),
        );
        put(
            offset_of!(Self, buffered_amount),
            &self.buffered_amount.to_ne_bytes(),
        );
        put(offset_of!(Self, rtt_us), &self.rtt_us.to_ne_bytes());
        b
    }
}

/// Counted as the bytes move, without the state lock: the loop thread
/// reads, host threads and the loop write, any thread asks.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) sent: AtomicU64,
    pub(super) received: AtomicU64,
    pub(super) data_events: AtomicU64,
}

impl Counters {
    pub(super) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Relaxed);
    }
}

impl Connection {
    pub fn stats(&self) -> netev_connection_stats {
        let (buffered, rtt) = {
            let st = self.lock();
            let rtt = match (&st.drive.socket, st.drive.connected) {
                (Some(s), true) => rtt_us(s.as_raw_fd()),
                _ => 0,
            };
            (st.queued(), rtt)
        };
        netev_connection_stats {
            size: std::mem::size_of::<netev_connection_stats>() as u32,
            bytes_sent: self.counters.sent.load(Relaxed),
            bytes_received: self.counters.received.load(Relaxed),
            data_events: self.counters.data_events.load(Relaxed),
            buffered_amount: buffered,
            rtt_us: rtt,
        }
    }
}

/// The smoothed RTT the kernel keeps for the socket; 0 when it will not say.
fn rtt_us(fd: std::os::fd::RawFd) -> u32 {
    // SAFETY: tcp_info is plain data; all zeros is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: `fd` is the connection's open socket (the caller holds the
    // state lock, under which the loop closes it); `info` and `len` are
    // live and describe the buffer.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r == 0 { info.tcpi_rtt } else { 0 }
}
