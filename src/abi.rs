//! Options structs that can grow (API.md, "An ABI that can grow").
//!
//! Every options struct starts with a `u32 size`: the `sizeof` of the
//! struct as the host's header declares it. A host compiled against an
//! older header passes a smaller struct, one compiled against a newer
//! header a larger one, so netev never assumes its own `sizeof`:
//!
//! - `init_sized(p, size)` writes exactly `size` bytes: zeros, the default
//!   of every field of every version (those a newer header appended too),
//!   and `size` itself.
//! - `read(p)` reads only the first `size` bytes into a defaulted struct:
//!   fields past them take their defaults. Bytes past this version's own
//!   struct (a newer header's fields) must be zero, their defaults: a
//!   field this version does not know, set to anything else, would be
//!   silently ignored, so it is refused instead (Linux's
//!   `copy_struct_from_user`, used by `clone3` and `openat2`, does the
//!   same).
//! - A `size` below the struct's first version (its layout in netev 0.2)
//!   was never set by an init function; one above `NETEV_OPTIONS_SIZE_MAX`
//!   is no version of any options struct (most likely an uninitialised
//!   one). Both are refused before any byte past `size` is touched.
//!
//! Growing a struct: only append fields (never reorder, resize or remove
//! one), keep every default all-zero bytes, and prefer appends that leave
//! no implicit padding (a padding byte past an older `sizeof` is part of
//! what an older library checks for zero). Never embed one options struct
//! in another by value. `FIRST_SIZE` never changes.

use crate::error::{Error, Result};
use std::mem::size_of;

/// The largest `size` an options struct may declare: no version of any
/// options struct will be that large, so a larger one is refused as
/// uninitialised. The accept callback's options have this much room.
pub const NETEV_OPTIONS_SIZE_MAX: u32 = 4096;

/// An options struct that can grow (each implements it beside its
/// definition).
///
/// # Safety
///
/// Implementors are `#[repr(C)]`, their first field is `size: u32`, their
/// `Default` is all-zero bytes apart from `size`, and every bit pattern is
/// a valid value of every field except the `bool`s listed in `BOOLS`
/// (numbers, raw pointers, `Option`s of function pointers).
pub unsafe trait Versioned: Copy + Default {
    /// The C name, for error messages.
    const NAME: &'static str;
    /// Where the struct's first version (netev 0.2) ends: the end of its
    /// last field. A smaller `size` was never set by an init function.
    const FIRST_SIZE: usize;
    /// The `bool` fields (name, offset): a byte other than 0 or 1 there is
    /// not a C `bool`, and no Rust `bool` either.
    const BOOLS: &'static [(&'static str, usize)];
}

/// A host's `size` (`what` and `suffix` name it): at least the first
/// version, at most the maximum.
fn check_size<T: Versioned>(size: usize, what: &str, suffix: &str) -> Result<()> {
    if size < T::FIRST_SIZE {
        return Err(Error::invalid(format!(
            "{what}{suffix} is {size}, below {}, the size of {} in its first version \
             (netev 0.2): initialise it with its _init function",
            T::FIRST_SIZE,
            T::NAME
        )));
    }
    if size > NETEV_OPTIONS_SIZE_MAX as usize {
        return Err(Error::invalid(format!(
            "{what}{suffix} is {size}, above NETEV_OPTIONS_SIZE_MAX ({NETEV_OPTIONS_SIZE_MAX}): \
             no version of {} is that large (an uninitialised struct?)",
            T::NAME
        )));
    }
    Ok(())
}

/// Writes a struct that can grow to a host: the first `size` bytes of
/// `bytes` (its C layout), with its leading `u32 size` set to how many
/// were written.
///
/// # Safety
///
/// `out` is non-NULL with `size` writable bytes, and `size` >= 4.
pub unsafe fn write_sized(out: *mut u8, size: usize, bytes: &[u8]) {
    let n = size.min(bytes.len());
    // SAFETY: the caller's contract; n <= size, n >= 4 (bytes is a
    // whole struct that starts with its u32 size) and bytes.len() >= n.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), out, n);
        out.cast::<u32>().write_unaligned(n as u32);
    }
}

/// `netev_*_options_init_sized`: fills the host's `size` bytes at `p` with
/// the defaults (all zero bytes: Versioned's contract, and the header's
/// rule for every field of every version) and sets its `size`. Writes
/// nothing when it fails.
pub fn init_sized<T: Versioned>(p: *mut T, size: usize, name: &str) -> Result<()> {
    if p.is_null() {
        return Err(Error::null(name));
    }
    check_size::<T>(size, "size", "")?;
    // SAFETY: the host promises `size` writable bytes at `p` (that is what
    // it passes `size` for), and `size` >= FIRST_SIZE > 4; byte writes and
    // write_unaligned need no alignment.
    unsafe {
        std::ptr::write_bytes(p.cast::<u8>(), 0, size);
        // `size` fits: check_size bounded it by NETEV_OPTIONS_SIZE_MAX.
        p.cast::<u32>().write_unaligned(size as u32);
    }
    Ok(())
}

/// Reads a host's options struct: its first `size` bytes over the
/// defaults, with `size` then set to this version's own (so the value is
/// whole). NULL gives the defaults.
///
/// # Safety
///
/// `p` is NULL or points at an options struct of type `T` (any version)
/// whose `size` bytes are readable, as the header asks of the host.
pub unsafe fn read<T: Versioned>(p: *const T, name: &str) -> Result<T> {
    let mut value = T::default();
    if p.is_null() {
        return Ok(value);
    }
    let base = p.cast::<u8>();
    // SAFETY: non-NULL; every options struct starts with a u32 `size`, and
    // read_unaligned tolerates any alignment.
    let size = unsafe { p.cast::<u32>().read_unaligned() } as usize;
    check_size::<T>(size, name, ".size")?;
    let ours = size_of::<T>().min(size);
    // Bytes are read one by one (never as a slice over the struct, whose
    // padding may be uninitialised when it is netev's own, as in the
    // accept callback's room).
    for &(field, offset) in T::BOOLS {
        if offset >= ours {
            continue; // past the host's struct: the default
        }
        // SAFETY: offset < ours <= size: inside the host's struct.
        let b = unsafe { base.add(offset).read() };
        if b > 1 {
            return Err(Error::invalid(format!(
                "{name}.{field} is {b}: a bool is 0 (false) or 1 (true)"
            )));
        }
    }
    for at in ours..size {
        // SAFETY: at < size: inside the host's struct.
        if unsafe { base.add(at).read() } != 0 {
            return Err(Error::invalid(format!(
                "{name} sets a field at byte {at} that this netev ({}) does not know \
                 ({} ends at byte {}): it needs a newer libnetev",
                env!("CARGO_PKG_VERSION"),
                T::NAME,
                size_of::<T>()
            )));
        }
    }
    // SAFETY: `ours` bytes are readable at `base` (ours <= size) and
    // writable in `value` (ours <= size_of::<T>()); no overlap (a local).
    // Every byte pattern is a valid value of every field (Versioned's
    // contract) but the bools, checked above; bytes of a field cut by
    // `size` (never the case for a size some header gave) would still only
    // make a valid number or pointer.
    unsafe {
        std::ptr::copy_nonoverlapping(base, (&raw mut value).cast::<u8>(), ours);
        (&raw mut value).cast::<u32>().write(size_of::<T>() as u32);
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection::netev_connection_options;
    use crate::listener::netev_listener_options;
    use crate::runtime::netev_runtime_options;
    use std::mem::offset_of;

    /// The first versions are the 0.2 layout (on a 64-bit target), forever.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn first_sizes_are_the_0_2_layout() {
        assert_eq!(netev_connection_options::FIRST_SIZE, 128);
        assert_eq!(netev_listener_options::FIRST_SIZE, 72);
        assert_eq!(netev_runtime_options::FIRST_SIZE, 8);
    }

    /// A struct in two versions, the way an options struct grows: version
    /// 1 ends after `b`, version 2 appends `c` and `d`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct Grown {
        size: u32,
        a: u32,
        b: f64,
        c: u64,
        d: bool,
    }

    impl Default for Grown {
        fn default() -> Self {
            Grown {
                size: size_of::<Self>() as u32,
                a: 0,
                b: 0.0,
                c: 0,
                d: false,
            }
        }
    }

    // SAFETY: #[repr(C)], size first, zero defaults, one bool listed.
    unsafe impl Versioned for Grown {
        const NAME: &'static str = "grown";
        const FIRST_SIZE: usize = offset_of!(Grown, b) + size_of::<f64>();
        const BOOLS: &'static [(&'static str, usize)] = &[("d", offset_of!(Grown, d))];
    }

    /// An 8-aligned buffer of `n` bytes filled with `fill`.
    fn buffer(n: usize, fill: u8) -> Vec<u64> {
        vec![u64::from_ne_bytes([fill; 8]); n.div_ceil(8)]
    }

    #[test]
    fn an_older_size_takes_the_defaults_of_the_fields_it_lacks() {
        let mut buf = buffer(size_of::<Grown>(), 0xa5);
        let p = buf.as_mut_ptr().cast::<Grown>();
        // SAFETY: `buf` holds size_of::<Grown>() bytes, 8-aligned.
        unsafe {
            (*p).size = Grown::FIRST_SIZE as u32;
            (*p).a = 7;
            (*p).b = 2.5;
        }
        // `c` and `d` hold 0xa5 garbage past the declared size: ignored.
        // SAFETY: the struct's declared `size` bytes are readable.
        let v = unsafe { read(p.cast_const(), "o") }.expect("a first-version struct");
        assert_eq!(
            v,
            Grown {
                size: size_of::<Grown>() as u32,
                a: 7,
                b: 2.5,
                c: 0,
                d: false,
            }
        );
    }

    #[test]
    fn init_sized_writes_exactly_size_bytes() {
        let n = size_of::<Grown>() + 16;
        let mut buf = buffer(n, 0xa5);
        let p = buf.as_mut_ptr().cast::<Grown>();
        init_sized(p, Grown::FIRST_SIZE, "o").expect("the first version's size");
        // SAFETY: `buf` has n readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) };
        assert_eq!(&bytes[..4], &(Grown::FIRST_SIZE as u32).to_ne_bytes());
        assert!(bytes[4..Grown::FIRST_SIZE].iter().all(|&b| b == 0));
        assert!(bytes[Grown::FIRST_SIZE..].iter().all(|&b| b == 0xa5));
        // A newer header's larger struct: the bytes past ours are zeroed
        // (their defaults), nothing past its size is touched.
        let mut buf = buffer(n, 0xa5);
        let p = buf.as_mut_ptr().cast::<Grown>();
        init_sized(p, n - 8, "o").expect("a newer header's size");
        // SAFETY: as above.
        let bytes = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), n) };
        assert_eq!(&bytes[..4], &((n - 8) as u32).to_ne_bytes());
        assert!(bytes[4..n - 8].iter().all(|&b| b == 0));
        assert!(bytes[n - 8..].iter().all(|&b| b == 0xa5));
        // SAFETY: n - 8 bytes are readable.
        let v = unsafe { read(p.cast_const(), "o") }.expect("what init wrote reads back");
        assert_eq!(v, Grown::default());
    }

    #[test]
    fn bad_sizes_are_refused_without_a_write() {
        let mut buf = buffer(64, 0xa5);
        let p = buf.as_mut_ptr().cast::<Grown>();
        for size in [
            0,
            3,
            Grown::FIRST_SIZE - 1,
            NETEV_OPTIONS_SIZE_MAX as usize + 1,
        ] {
            let e = init_sized(p, size, "o").expect_err("a bad size");
            assert_eq!(e.code, crate::error::Status::NETEV_ERR_INVALID_ARGUMENT);
            assert!(buf.iter().all(|&w| w == u64::from_ne_bytes([0xa5; 8])));
        }
        let e = init_sized(std::ptr::null_mut::<Grown>(), 16, "o").expect_err("NULL");
        assert_eq!(e.code, crate::error::Status::NETEV_ERR_NULL_ARGUMENT);
        for size in [0u32, 3, Grown::FIRST_SIZE as u32 - 1, u32::MAX] {
            // SAFETY: `buf` has 64 bytes; a refused size reads only `size`.
            unsafe { p.cast::<u32>().write(size) };
            // SAFETY: read stops at the size check.
            let e = unsafe { read(p.cast_const(), "o") }.expect_err("a bad size");
            assert_eq!(e.code, crate::error::Status::NETEV_ERR_INVALID_ARGUMENT);
        }
        // SAFETY: NULL is the defaults.
        let v = unsafe { read(std::ptr::null::<Grown>(), "o") }.expect("NULL");
        assert_eq!(v, Grown::default());
    }

    #[test]
    fn a_newer_header_s_unknown_fields_must_be_zero() {
        let n = size_of::<Grown>() + 16;
        let mut buf = buffer(n, 0);
        let p = buf.as_mut_ptr().cast::<Grown>();
        init_sized(p, n, "o").expect("a newer header's size");
        // SAFETY: `buf` has n bytes; the struct is within them.
        unsafe { (*p).c = 9 };
        // SAFETY: n bytes are readable.
        let v = unsafe { read(p.cast_const(), "o") }.expect("zeros past ours");
        assert_eq!(v.c, 9);
        // SAFETY: byte n - 1 is inside `buf`.
        unsafe { p.cast::<u8>().add(n - 1).write(1) };
        // SAFETY: n bytes are readable.
        let e = unsafe { read(p.cast_const(), "o") }.expect_err("a field unknown here");
        assert_eq!(e.code, crate::error::Status::NETEV_ERR_INVALID_ARGUMENT);
        assert!(
            e.message.contains(&format!("byte {}", n - 1)),
            "{}",
            e.message
        );
    }

    #[test]
    fn a_bool_that_is_not_0_or_1_is_refused() {
        let mut buf = buffer(size_of::<Grown>(), 0);
        let p = buf.as_mut_ptr().cast::<Grown>();
        init_sized(p, size_of::<Grown>(), "o").expect("init");
        // SAFETY: the byte of `d` is inside `buf`.
        unsafe { p.cast::<u8>().add(offset_of!(Grown, d)).write(2) };
        // SAFETY: the struct is readable.
        let e = unsafe { read(p.cast_const(), "o") }.expect_err("bool 2");
        assert!(e.message.contains("o.d is 2"), "{}", e.message);
        // Past the declared size the same byte is not read at all.
        // SAFETY: as above.
        unsafe { p.cast::<u32>().write(Grown::FIRST_SIZE as u32) };
        // SAFETY: as above.
        let v = unsafe { read(p.cast_const(), "o") }.expect("d is past size");
        assert!(!v.d);
    }

    /// init_sized writes zeros, so each Default must be zeros: the same
    /// fields as a zeroed struct with its size (Versioned's contract).
    #[test]
    fn defaults_are_zero_bytes() {
        let mut o = netev_connection_options {
            no_delay: true,
            ..Default::default()
        };
        init_sized(&raw mut o, size_of::<netev_connection_options>(), "o").expect("init");
        assert!(o.same_as(&netev_connection_options::default()));
        let mut l = netev_listener_options {
            backlog: 9,
            reuse_port: true,
            ..Default::default()
        };
        init_sized(&raw mut l, size_of::<netev_listener_options>(), "l").expect("init");
        let d = netev_listener_options::default();
        assert!(
            l.size == d.size
                && l.on_connection.is_none()
                && d.on_connection.is_none()
                && l.on_error.is_none()
                && d.on_error.is_none()
                && l.on_terminate.is_none()
                && d.on_terminate.is_none()
                && l.user_data == d.user_data
                && l.bind_address == d.bind_address
                && l.backlog == d.backlog
                && l.reuse_port == d.reuse_port
                && l.connection_defaults == d.connection_defaults
                && l.dispatcher == d.dispatcher
        );
        let mut r = netev_runtime_options {
            size: 0,
            worker_threads: 5,
        };
        init_sized(&raw mut r, size_of::<netev_runtime_options>(), "r").expect("init");
        let d = netev_runtime_options::default();
        assert!(r.size == d.size && r.worker_threads == d.worker_threads);
    }

    /// The real structs: a first-version size reads back every field.
    #[test]
    fn the_real_structs_round_trip() {
        let mut o = netev_connection_options::default();
        init_sized(&raw mut o, size_of::<netev_connection_options>(), "o").expect("init");
        o.no_delay = true;
        o.send_buffer_limit = 5;
        o.dispatcher = 42;
        // SAFETY: a whole struct.
        let v = unsafe { read(&raw const o, "o") }.expect("read");
        assert!(v.same_as(&o));
        let l = netev_listener_options {
            reuse_port: true,
            ..Default::default()
        };
        // SAFETY: a whole struct.
        let v = unsafe { read(&raw const l, "l") }.expect("read");
        assert!(v.reuse_port && v.connection_defaults.is_null());
        let r = netev_runtime_options {
            size: 8,
            worker_threads: 3,
        };
        // SAFETY: a whole struct.
        let v = unsafe { read(&raw const r, "r") }.expect("read");
        assert_eq!(v.worker_threads, 3);
    }
}
