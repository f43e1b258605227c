//! A connection's queue of bytes sent but not yet written.
//!
//! A list of chunks, not one growing buffer: written chunks are freed as
//! soon as the socket took them, so the memory held follows the bytes
//! queued now (plus at most two chunks of slack) whatever the pattern,
//! also when the queue never empties because the host refills it on each
//! DRAIN. Each byte is copied once, on the way in, except the bytes of
//! `send_owned`, which stay in the host's buffer until written (`Owned`).

use std::collections::VecDeque;
use std::io::IoSlice;

/// Frees a buffer given to netev_connection_send_owned; receives the
/// `free_arg` given there.
#[allow(non_camel_case_types)]
pub type netev_free_fn = Option<unsafe extern "C" fn(free_arg: *mut std::ffi::c_void)>;

/// Bytes a host lent with `send_owned`: `free_fn(free_arg)` runs exactly
/// once when this is dropped (written, or dropped on close), once the
/// thread holds no netev lock.
pub struct Owned {
    ptr: *const u8,
    len: usize,
    free_fn: netev_free_fn,
    free_arg: *mut std::ffi::c_void,
}

// SAFETY: the host promised the bytes stay valid and unchanged until
// free_fn runs, on any thread (the header says so); netev only reads them.
unsafe impl Send for Owned {}

impl Owned {
    /// # Safety
    ///
    /// `ptr` points at `len` bytes that stay readable and unchanged until
    /// `free_fn(free_arg)` runs (or, when `free_fn` is None, for as long as
    /// the queue holding them lives).
    pub unsafe fn new(
        ptr: *const u8,
        len: usize,
        free_fn: netev_free_fn,
        free_arg: *mut std::ffi::c_void,
    ) -> Owned {
        Owned {
            ptr,
            len,
            free_fn,
            free_arg,
        }
    }

    /// Gives the bytes back without calling free_fn: netev did not take
    /// them (the call that offered them failed).
    pub fn disarm(mut self) {
        self.free_fn = None;
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `new`'s contract: `len` readable bytes until dropped.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let Some(free) = self.free_fn else {
            return;
        };
        let arg = crate::sync::HostPtr(self.free_arg);
        crate::sync::when_unlocked(move || {
            let arg = arg;
            crate::sync::call_host(|| {
                // SAFETY: the host's function for its own buffer, called
                // once: this Owned is dropped once.
                unsafe { free(arg.0) }
            });
        });
    }
}

enum Chunk {
    Copied(Vec<u8>),
    Owned(Owned),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Copied(v) => v,
            Chunk::Owned(o) => o.bytes(),
        }
    }
}

/// Largest chunk; what one send of more is cut into.
const CHUNK: usize = 64 << 10;
/// Smallest chunk allocated, so that many small sends share one.
const MIN_CHUNK: usize = 4 << 10;
/// Slices handed to one vectored write (1 MiB of full chunks).
pub(crate) const MAX_SLICES: usize = 16;

#[derive(Default)]
pub struct SendQueue {
    chunks: VecDeque<Chunk>,
    /// Bytes of the first chunk already written.
    head_written: usize,
    len: usize,
}

impl SendQueue {
    /// Bytes queued, not yet written.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a copy of `data`.
    pub fn push(&mut self, mut data: &[u8]) {
        self.len += data.len();
        if let Some(Chunk::Copied(tail)) = self.chunks.back_mut() {
            let n = (tail.capacity() - tail.len()).min(data.len());
            tail.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        while !data.is_empty() {
            let want = data.len().clamp(MIN_CHUNK, CHUNK);
            let mut chunk = Vec::with_capacity(want);
            let n = chunk.capacity().min(data.len());
            chunk.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.chunks.push_back(Chunk::Copied(chunk));
        }
    }

    /// Appends the host's bytes without copying them. Small ones are
    /// copied (and their buffer freed at once): a chunk per few bytes
    /// would cost more than the bytes, and memory must follow the limit.
    pub fn push_owned(&mut self, owned: Owned) {
        if owned.len < MIN_CHUNK {
            self.push(owned.bytes());
            return;
        }
        self.len += owned.len;
        self.chunks.push_back(Chunk::Owned(owned));
    }

    /// The oldest unwritten bytes, in order, as slices for a vectored write.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().take(MAX_SLICES).enumerate() {
            let from = if i == 0 { self.head_written } else { 0 };
            out[n] = IoSlice::new(&chunk.bytes()[from..]);
            n += 1;
        }
        n
    }

    /// Drops the first `n` bytes, which the socket took.
    pub fn consume(&mut self, mut n: usize) {
        debug_assert!(n <= self.len);
        n = n.min(self.len);
        self.len -= n;
        if self.len == 0 {
            *self = SendQueue::default();
            return;
        }
        while n > 0 {
            let Some(head) = self.chunks.front() else {
                break;
            };
            let left = head.bytes().len() - self.head_written;
            if n < left {
                self.head_written += n;
                break;
            }
            n -= left;
            self.head_written = 0;
            self.chunks.pop_front();
        }
    }

    /// Drops every queued byte and the memory that held them.
    pub fn clear(&mut self) {
        *self = SendQueue::default();
    }

    /// Bytes of memory the queue holds, for tests.
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| match c {
                Chunk::Copied(v) => v.capacity(),
                Chunk::Owned(_) => 0,
            })
            .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_to(q: &mut SendQueue, out: &mut Vec<u8>, max: usize) {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let k = q.slices(&mut slices);
        let mut taken = 0;
        for s in &slices[..k] {
            let n = s.len().min(max - taken);
            out.extend_from_slice(&s[..n]);
            taken += n;
            if taken == max {
                break;
            }
        }
        q.consume(taken);
    }

    #[test]
    fn bytes_come_out_in_order_across_chunks() {
        let mut q = SendQueue::default();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut out = Vec::new();
        for piece in data.chunks(7_001) {
            q.push(piece);
            drain_to(&mut q, &mut out, 5_003);
        }
        while !q.is_empty() {
            drain_to(&mut q, &mut out, 9_999);
        }
        assert_eq!(out, data);
        assert_eq!(q.capacity(), 0, "an empty queue holds no memory");
    }

    /// The pattern that made the old queue hold every byte ever sent: the
    /// host keeps refilling to the limit, the queue never empties.
    #[test]
    fn memory_follows_the_queued_bytes_when_it_never_empties() {
        let limit = 8 << 20;
        let mut q = SendQueue::default();
        let chunk = vec![1u8; 64 << 10];
        let mut out = Vec::new();
        let mut worst = 0;
        for _ in 0..(256 << 20) / chunk.len() {
            if q.len() + chunk.len() > limit {
                while q.len() > limit / 2 {
                    drain_to(&mut q, &mut out, 50_000);
                    out.clear();
                }
            }
            q.push(&chunk);
            worst = worst.max(q.capacity());
        }
        assert!(
            worst <= limit + 2 * CHUNK,
            "{worst} bytes held for a limit of {limit}"
        );
    }
}
