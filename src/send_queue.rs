//! A connection's queue of bytes sent but not yet written.
//!
//! A list of chunks, not one growing buffer: written chunks are freed as
//! soon as the socket took them, so the memory held follows the bytes
//! queued now (plus at most two chunks of slack) whatever the pattern,
//! also when the queue never empties because the host refills it on each
//! DRAIN. Each byte is copied once, on the way in.

use std::collections::VecDeque;
use std::io::IoSlice;

/// Largest chunk; what one send of more is cut into.
const CHUNK: usize = 64 << 10;
/// Smallest chunk allocated, so that many small sends share one.
const MIN_CHUNK: usize = 4 << 10;
/// Slices handed to one vectored write (1 MiB of full chunks).
pub(crate) const MAX_SLICES: usize = 16;

#[derive(Default)]
pub struct SendQueue {
    chunks: VecDeque<Vec<u8>>,
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
        if let Some(tail) = self.chunks.back_mut() {
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
            self.chunks.push_back(chunk);
        }
    }

    /// The oldest unwritten bytes, in order, as slices for a vectored write.
    pub fn slices<'a>(&'a self, out: &mut [IoSlice<'a>; MAX_SLICES]) -> usize {
        let mut n = 0;
        for (i, chunk) in self.chunks.iter().take(MAX_SLICES).enumerate() {
            let from = if i == 0 { self.head_written } else { 0 };
            out[n] = IoSlice::new(&chunk[from..]);
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
            let left = head.len() - self.head_written;
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
        self.chunks.iter().map(Vec::capacity).sum::<usize>()
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
