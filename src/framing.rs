//! Message framing over a byte stream: a delimiter after each frame, or a
//! big-endian length before it (API.md, "Connection additions").
//!
//! `Deframer` cuts received bytes into frames without copying what arrives
//! whole in one read; only a frame split across reads is gathered, and that
//! buffer never holds more than `max_frame` (plus a delimiter's or a
//! prefix's bytes), so a peer that never ends its frame costs at most that.

use crate::error::{Error, Result, Status};

/// NETEV_FRAMING_NONE: DATA carries bytes as they arrive.
pub const NETEV_FRAMING_NONE: u8 = 0;
/// NETEV_FRAMING_DELIMITER: each DATA is one frame, without its delimiter.
pub const NETEV_FRAMING_DELIMITER: u8 = 1;
/// NETEV_FRAMING_LENGTH_PREFIX: each DATA is one frame's payload.
pub const NETEV_FRAMING_LENGTH_PREFIX: u8 = 2;

/// `max_frame` when the options leave it 0.
pub(crate) const DEFAULT_MAX_FRAME: usize = 1 << 20;
/// The longest delimiter.
pub(crate) const MAX_DELIMITER: usize = 16;

/// How a connection's stream is cut into frames (validated settings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framing {
    kind: Kind,
    max_frame: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Delimiter(Box<[u8]>),
    /// The prefix's size in bytes: 1, 2, 4 or 8.
    LengthPrefix(u8),
}

fn protocol(message: String) -> Error {
    Error::new(Status::NETEV_ERR_PROTOCOL, message).component("framing")
}

impl Framing {
    /// From the options' fields; `delimiter` is the host's bytes (copied).
    /// None for NETEV_FRAMING_NONE, whose other fields must then be unset.
    pub fn new(
        mode: u8,
        prefix_bytes: u8,
        delimiter: Option<&[u8]>,
        max_frame: usize,
    ) -> Result<Option<Framing>> {
        let max_frame = match max_frame {
            0 => DEFAULT_MAX_FRAME,
            n => n,
        };
        let kind = match mode {
            NETEV_FRAMING_NONE => {
                if prefix_bytes != 0 || delimiter.is_some() {
                    return Err(Error::invalid(
                        "length_prefix_bytes or delimiter set without framing: \
                         set framing too, or leave them 0",
                    ));
                }
                return Ok(None);
            }
            NETEV_FRAMING_DELIMITER => {
                if prefix_bytes != 0 {
                    return Err(Error::invalid(
                        "length_prefix_bytes is for NETEV_FRAMING_LENGTH_PREFIX",
                    ));
                }
                match delimiter {
                    Some(d) if (1..=MAX_DELIMITER).contains(&d.len()) => Kind::Delimiter(d.into()),
                    Some(d) => {
                        return Err(Error::invalid(format!(
                            "delimiter_len is {}: a delimiter is 1 to {MAX_DELIMITER} bytes",
                            d.len()
                        )));
                    }
                    None => {
                        return Err(Error::invalid(
                            "NETEV_FRAMING_DELIMITER needs a delimiter (delimiter, delimiter_len)",
                        ));
                    }
                }
            }
            NETEV_FRAMING_LENGTH_PREFIX => {
                if delimiter.is_some() {
                    return Err(Error::invalid("delimiter is for NETEV_FRAMING_DELIMITER"));
                }
                match prefix_bytes {
                    0 => Kind::LengthPrefix(4),
                    n @ (1 | 2 | 4 | 8) => Kind::LengthPrefix(n),
                    n => {
                        return Err(Error::invalid(format!(
                            "length_prefix_bytes is {n}: it is 1, 2, 4 or 8 (0 = 4)"
                        )));
                    }
                }
            }
            n => {
                return Err(Error::invalid(format!(
                    "framing is {n}: NETEV_FRAMING_NONE (0), _DELIMITER (1) or _LENGTH_PREFIX (2)"
                )));
            }
        };
        Ok(Some(Framing { kind, max_frame }))
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// The delimiter, for delimiter framing.
    pub fn delimiter(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Delimiter(d) => Some(d),
            Kind::LengthPrefix(_) => None,
        }
    }

    /// What `send_frame` puts around `payload`: (before, after). Refuses a
    /// payload the peer could not take back as the same one frame.
    pub fn envelope(&self, payload: &[u8]) -> Result<([u8; 8], usize, &[u8])> {
        match &self.kind {
            Kind::Delimiter(d) => {
                // The peer cuts at the first delimiter it sees: it must be
                // the one sent after the payload. Besides one inside the
                // payload, a delimiter that overlaps itself ("\r\n\r\n",
                // "--") can match earlier, starting in the payload's tail.
                let tail = &payload[payload.len().saturating_sub(d.len() - 1)..];
                let mut joint = [0u8; 2 * MAX_DELIMITER];
                joint[..tail.len()].copy_from_slice(tail);
                joint[tail.len()..tail.len() + d.len()].copy_from_slice(d);
                if find(payload, d).is_some()
                    || find(&joint[..tail.len() + d.len()], d) != Some(tail.len())
                {
                    return Err(Error::invalid(
                        "the frame contains the delimiter, or ends with the start of \
                         it: the peer would not read it back as this one frame",
                    ));
                }
                Ok(([0; 8], 0, d))
            }
            Kind::LengthPrefix(n) => {
                let n = usize::from(*n);
                let len = payload.len() as u64;
                if n < 8 && len >= 1u64 << (8 * n) {
                    return Err(Error::invalid(format!(
                        "a frame of {len} bytes does not fit a {n}-byte length prefix"
                    )));
                }
                let mut head = [0u8; 8];
                head[..n].copy_from_slice(&len.to_be_bytes()[8 - n..]);
                Ok((head, n, &[]))
            }
        }
    }
}

/// The first position of `needle` in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from
            + hay[from..=hay.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if hay[i + 1..i + needle.len()] == *rest {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

/// One frame cut from the stream: borrowed from the bytes just read when
/// it arrived whole, or gathered across reads.
pub enum Frame<'a> {
    Borrowed(&'a [u8]),
    Gathered(Vec<u8>),
}

impl Frame<'_> {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Frame::Borrowed(b) => b,
            Frame::Gathered(v) => v,
        }
    }
}

/// A connection's receive side of framing: the frame being gathered, and
/// bytes read but held back by a pause (at most one read's worth).
#[derive(Default)]
pub struct Deframer {
    /// Delimiter: the frame so far (its tail may be a delimiter's start).
    /// Length prefix: the payload so far, once the prefix is complete.
    partial: Vec<u8>,
    /// Length prefix: the prefix bytes so far.
    head: [u8; 8],
    head_len: u8,
    /// Length prefix: the payload's length, once the prefix is complete.
    want: Option<usize>,
    /// Read while the host paused between two frames of one read: fed
    /// before anything new is read.
    pub held: Vec<u8>,
}

impl Deframer {
    /// Cuts the next frame from `input` (advanced past what it used). None:
    /// `input` is used up and the frame, if any, is incomplete. An error
    /// means the stream broke the framing; nothing of that frame is given.
    pub fn next<'a>(&mut self, f: &Framing, input: &mut &'a [u8]) -> Result<Option<Frame<'a>>> {
        match &f.kind {
            Kind::Delimiter(d) => self.next_delimited(d, f.max_frame, input),
            Kind::LengthPrefix(n) => self.next_prefixed(usize::from(*n), f.max_frame, input),
        }
    }

    fn next_delimited<'a>(
        &mut self,
        d: &[u8],
        max: usize,
        input: &mut &'a [u8],
    ) -> Result<Option<Frame<'a>>> {
        let too_long = || protocol(format!("a frame is longer than max_frame ({max} bytes)"));
        if !self.partial.is_empty() {
            // A delimiter that starts in what was gathered and ends in the
            // input; the one starting furthest back comes first.
            for k in (1..d.len()).rev() {
                if self.partial.ends_with(&d[..k]) {
                    let rest = &d[k..];
                    if input.len() >= rest.len() && input.starts_with(rest) {
                        *input = &input[rest.len()..];
                        let mut frame = std::mem::take(&mut self.partial);
                        frame.truncate(frame.len() - k);
                        if frame.len() > max {
                            return Err(too_long());
                        }
                        return Ok(Some(Frame::Gathered(frame)));
                    }
                    if input.len() < rest.len() && rest.starts_with(input) {
                        // Maybe the delimiter: undecided until more comes.
                        return self.gather(input, max + d.len() - 1, too_long);
                    }
                }
            }
        }
        match find(input, d) {
            Some(i) if self.partial.is_empty() => {
                let frame = &input[..i];
                *input = &input[i + d.len()..];
                if frame.len() > max {
                    return Err(too_long());
                }
                Ok(Some(Frame::Borrowed(frame)))
            }
            Some(i) => {
                if self.partial.len() + i > max {
                    return Err(too_long());
                }
                let mut frame = std::mem::take(&mut self.partial);
                frame.extend_from_slice(&input[..i]);
                *input = &input[i + d.len()..];
                Ok(Some(Frame::Gathered(frame)))
            }
            // The gathered bytes may end with a delimiter's first bytes,
            // which are not the frame's.
            None => self.gather(input, max + d.len() - 1, too_long),
        }
    }

    /// Keeps all of `input` as the frame's start, refusing to hold more than `limit`.
    fn gather<'a>(
        &mut self,
        input: &mut &'a [u8],
        limit: usize,
        err: impl FnOnce() -> Error,
    ) -> Result<Option<Frame<'a>>> {
        if self.partial.len() + input.len() > limit {
            return Err(err());
        }
        self.partial.extend_from_slice(input);
        *input = &[];
        Ok(None)
    }

    fn next_prefixed<'a>(
        &mut self,
        n: usize,
        max: usize,
        input: &mut &'a [u8],
    ) -> Result<Option<Frame<'a>>> {
        loop {
            let Some(want) = self.want else {
                // The prefix: whole in the input (the common case), or
                // gathered across reads.
                let have = usize::from(self.head_len);
                let take = (n - have).min(input.len());
                self.head[have..have + take].copy_from_slice(&input[..take]);
                *input = &input[take..];
                self.head_len += take as u8;
                if usize::from(self.head_len) < n {
                    return Ok(None);
                }
                let mut be = [0u8; 8];
                be[8 - n..].copy_from_slice(&self.head[..n]);
                let len = u64::from_be_bytes(be);
                if len > max as u64 {
                    return Err(protocol(format!(
                        "a frame of {len} bytes is longer than max_frame ({max} bytes)"
                    )));
                }
                self.want = Some(len as usize);
                continue;
            };
            if self.partial.is_empty() && input.len() >= want {
                let frame = &input[..want];
                *input = &input[want..];
                self.reset_prefix();
                return Ok(Some(Frame::Borrowed(frame)));
            }
            if self.partial.capacity() < want {
                // The length is known and bounded by max_frame: reserve once.
                self.partial.reserve_exact(want - self.partial.len());
            }
            let take = (want - self.partial.len()).min(input.len());
            self.partial.extend_from_slice(&input[..take]);
            *input = &input[take..];
            if self.partial.len() < want {
                return Ok(None);
            }
            self.reset_prefix();
            return Ok(Some(Frame::Gathered(std::mem::take(&mut self.partial))));
        }
    }

    fn reset_prefix(&mut self) {
        self.head_len = 0;
        self.want = None;
    }

    /// The stream ended: the trailing partial frame to deliver (delimiter
    /// framing), or the error for a frame cut short (length prefix).
    pub fn finish(&mut self, f: &Framing) -> Result<Option<Vec<u8>>> {
        match &f.kind {
            Kind::Delimiter(_) => {
                if self.partial.is_empty() {
                    return Ok(None);
                }
                if self.partial.len() > f.max_frame {
                    return Err(protocol(format!(
                        "a frame is longer than max_frame ({} bytes)",
                        f.max_frame
                    )));
                }
                Ok(Some(std::mem::take(&mut self.partial)))
            }
            Kind::LengthPrefix(_) => {
                if self.head_len == 0 {
                    return Ok(None);
                }
                Err(protocol(match self.want {
                    Some(w) => format!(
                        "the peer ended inside a frame: {} of its {w} bytes arrived",
                        self.partial.len()
                    ),
                    None => "the peer ended inside a frame's length prefix".to_owned(),
                }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &Framing, stream: &[u8], cuts: &[usize]) -> Result<Vec<Vec<u8>>> {
        let mut d = Deframer::default();
        let mut out = Vec::new();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&stream.len())) {
            let mut input = &stream[at..c.max(at)];
            at = c.max(at);
            while let Some(fr) = d.next(f, &mut input)? {
                out.push(fr.bytes().to_vec());
            }
            assert!(input.is_empty());
        }
        if let Some(last) = d.finish(f)? {
            out.push(last);
        }
        Ok(out)
    }

    fn delim(d: &[u8], max: usize) -> Framing {
        Framing::new(NETEV_FRAMING_DELIMITER, 0, Some(d), max)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn a_delimiter_split_at_every_point_still_cuts_the_same_frames() {
        let f = delim(b"\r\n", 0);
        let stream = b"ab\r\n\r\ncd\r\r\n\ne\r";
        let want: Vec<Vec<u8>> = vec![b"ab".to_vec(), vec![], b"cd\r".to_vec(), b"\ne\r".to_vec()];
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                assert_eq!(frames(&f, stream, &[i, j]).unwrap(), want, "cuts {i} {j}");
            }
        }
    }

    #[test]
    fn an_overlong_frame_is_refused_before_it_is_held() {
        let f = delim(b"\n", 4);
        assert!(frames(&f, b"abcd\nabcd\n", &[3]).is_ok());
        let e = frames(&f, b"abcde\n", &[]).unwrap_err();
        assert_eq!(e.code, Status::NETEV_ERR_PROTOCOL);
        let e = frames(&f, b"ab", &[1]).map(|v| v.len());
        assert_eq!(e.unwrap(), 1);
        let mut d = Deframer::default();
        let mut input: &[u8] = b"abcdefgh";
        assert!(d.next(&f, &mut input).is_err(), "never held past max_frame");
    }

    #[test]
    fn length_prefixes_of_every_size_round_trip() {
        for n in [1u8, 2, 4, 8] {
            let f = Framing::new(NETEV_FRAMING_LENGTH_PREFIX, n, None, 300)
                .unwrap()
                .unwrap();
            let payloads: Vec<Vec<u8>> = vec![vec![], vec![7; 1], vec![9; 255], vec![1, 2, 3]];
            let mut stream = Vec::new();
            for p in &payloads {
                let (head, hn, tail) = f.envelope(p).unwrap();
                stream.extend_from_slice(&head[..hn]);
                stream.extend_from_slice(p);
                stream.extend_from_slice(tail);
            }
            for i in 0..=stream.len() {
                assert_eq!(
                    frames(&f, &stream, &[i]).unwrap(),
                    payloads,
                    "n {n} cut {i}"
                );
            }
            let cut = frames(&f, &stream[..stream.len() - 1], &[]).unwrap_err();
            assert_eq!(cut.code, Status::NETEV_ERR_PROTOCOL);
        }
        let f = Framing::new(NETEV_FRAMING_LENGTH_PREFIX, 1, None, 0)
            .unwrap()
            .unwrap();
        assert!(f.envelope(&[0; 256]).is_err());
        let f = Framing::new(NETEV_FRAMING_LENGTH_PREFIX, 4, None, 10)
            .unwrap()
            .unwrap();
        let e = frames(&f, &[0, 0, 0, 11], &[]).unwrap_err();
        assert_eq!(e.code, Status::NETEV_ERR_PROTOCOL);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(Framing::new(3, 0, None, 0).is_err());
        assert!(Framing::new(NETEV_FRAMING_DELIMITER, 0, None, 0).is_err());
        assert!(Framing::new(NETEV_FRAMING_DELIMITER, 0, Some(&[0; 17]), 0).is_err());
        assert!(Framing::new(NETEV_FRAMING_LENGTH_PREFIX, 3, None, 0).is_err());
        assert!(Framing::new(NETEV_FRAMING_NONE, 4, None, 0).is_err());
        assert_eq!(Framing::new(NETEV_FRAMING_NONE, 0, None, 5).unwrap(), None);
        assert!(delim(b"\n", 0).envelope(b"a\nb").is_err());
        // A self-overlapping delimiter: "x\r\n" + "\r\n\r\n" would be cut at "x".
        let d = delim(b"\r\n\r\n", 0);
        assert!(d.envelope(b"x\r\n").is_err());
        assert!(d.envelope(b"x\r").is_ok());
        assert!(d.envelope(b"x\r\n\r").is_ok());
        assert!(delim(b"--", 0).envelope(b"a-").is_err());
        assert!(delim(b"ab", 0).envelope(b"a").is_ok());
    }

    #[test]
    fn a_random_stream_cut_at_random_points_gives_every_frame_once() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for round in 0..200 {
            let f = if round % 2 == 0 {
                delim(b"<>", 64)
            } else {
                Framing::new(NETEV_FRAMING_LENGTH_PREFIX, 2, None, 64)
                    .unwrap()
                    .unwrap()
            };
            let mut want = Vec::new();
            let mut stream = Vec::new();
            for _ in 0..rnd(30) {
                let p: Vec<u8> = (0..rnd(65)).map(|_| b"<>ab"[rnd(4) as usize]).collect();
                let p = match f.envelope(&p) {
                    Ok(_) => p,
                    Err(_) => p.into_iter().filter(|&b| b != b'>').collect(),
                };
                let (head, hn, tail) = f.envelope(&p).unwrap();
                stream.extend_from_slice(&head[..hn]);
                stream.extend_from_slice(&p);
                stream.extend_from_slice(tail);
                want.push(p);
            }
            let mut cuts: Vec<usize> = (0..rnd(8))
                .map(|_| rnd(stream.len() as u64 + 1) as usize)
                .collect();
            cuts.sort_unstable();
            assert_eq!(frames(&f, &stream, &cuts).unwrap(), want, "round {round}");
        }
    }
}
