//! netev: event-driven TCP and UDP for C hosts, modelled on 4D's TCPConnection,
//! TCPListener, TCPEvent, UDPSocket and UDPEvent classes.
//!
//! The safe core (`connection`, `dispatch`, `runtime`, …) is usable from
//! Rust; `ffi` is the C ABI described by `include/netev.h`.

pub mod abi;
pub mod connection;
pub mod dispatch;
pub mod error;
pub mod event;
pub mod ffi;
pub mod fork;
pub mod framing;
pub mod io_loop;
pub mod listener;
pub mod log;
pub mod registry;
pub mod runtime;
pub mod send_queue;
pub mod sync;
pub mod tls;
pub mod udp;

/// Major version of the netev this header belongs to; netev_version()
/// gives the loaded library's.
pub const NETEV_VERSION_MAJOR: u32 = 0;
/// Minor version of this header's netev; before 1.0 each minor is its own
/// ABI (`libnetev.so.0.MINOR`).
pub const NETEV_VERSION_MINOR: u32 = 2;
/// Patch version of this header's netev.
pub const NETEV_VERSION_PATCH: u32 = 0;

/// "MAJOR.MINOR.PATCH", NUL-terminated for `netev_version`.
pub(crate) const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

#[cfg(test)]
mod tests {
    #[test]
    fn version_constants_match_the_package() {
        let v = format!(
            "{}.{}.{}\0",
            super::NETEV_VERSION_MAJOR,
            super::NETEV_VERSION_MINOR,
            super::NETEV_VERSION_PATCH
        );
        assert_eq!(v, super::VERSION);
    }
}
