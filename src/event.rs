//! The event handed to host callbacks, and its type names.

use crate::error::{Error, netev_status};
use crate::registry::netev_connection;
use std::ffi::c_char;
use std::net::SocketAddr;
use std::ptr;

/// What happened. Each callback slot receives only its own type.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum netev_event_type {
    /// "connection": established (or, on a listener, incoming).
    NETEV_EVENT_CONNECTION = 1,
    /// "data": bytes received (on a UDP socket: one datagram).
    NETEV_EVENT_DATA = 2,
    /// "error": the connection failed (TERMINATE follows); on a UDP
    /// socket, one send or lookup failed and the socket goes on.
    NETEV_EVENT_ERROR = 3,
    /// "close": closed properly (the peer finished, or we closed).
    NETEV_EVENT_CLOSE = 4,
    /// "terminate": about to be released; always the last event.
    NETEV_EVENT_TERMINATE = 5,
    /// "drain": after a refused send, buffered outgoing bytes fell to half
    /// the limit.
    NETEV_EVENT_DRAIN = 6,
    /// "end": the peer finished sending (its write side is shut down).
    NETEV_EVENT_END = 7,
}

pub use netev_event_type as EventType;

impl EventType {
    /// The 4D name, NUL-terminated, for any integer a host may pass.
    pub fn name_of(value: i32) -> &'static str {
        match value {
            1 => "connection\0",
            2 => "data\0",
            3 => "error\0",
            4 => "close\0",
            5 => "terminate\0",
            6 => "drain\0",
            7 => "end\0",
            _ => "unknown\0",
        }
    }
}

/// Length of `netev_event.ip`: room for any IPv6 text form and its NUL.
pub const NETEV_IP_TEXT_LEN: usize = 46;

/// One event of a connection, listener or UDP socket, borrowed by the
/// callback that receives it: copy what must outlive the callback.
#[allow(non_camel_case_types)]
#[repr(C)]
pub struct netev_event {
    /// What happened; each callback slot receives only its own type.
    pub r#type: netev_event_type,
    /// The connection concerned (the UDP socket's handle for UDP events);
    /// 0 for listener-only events.
    pub connection: netev_connection,
    /// DATA only: the bytes, borrowed until the callback returns; NULL otherwise.
    pub data: *const u8,
    /// DATA only: how many bytes `data` holds (0 for an empty frame or
    /// datagram); 0 otherwise.
    pub data_len: usize,
    /// Remote IP as text ("" when unknown; a UDP DATA's sender, "" on UDP
    /// ERROR and TERMINATE, whose message names the destination). An IPv4
    /// peer is never shown in its IPv4-mapped IPv6 form.
    pub ip: [c_char; NETEV_IP_TEXT_LEN],
    /// Remote port (0 when unknown).
    pub port: u16,
    /// ERROR only: the status; NETEV_OK otherwise.
    pub error: netev_status,
    /// ERROR only: errno, or 0.
    pub os_error: i32,
    /// ERROR only: borrowed text until the callback returns; "" otherwise, never NULL.
    pub message: *const c_char,
}

/// The remote end of a connection, formatted once when it becomes known.
#[derive(Clone, Copy)]
pub struct Remote {
    pub ip: [c_char; NETEV_IP_TEXT_LEN],
    pub port: u16,
}

impl Remote {
    pub const UNKNOWN: Remote = Remote {
        ip: [0; NETEV_IP_TEXT_LEN],
        port: 0,
    };

    pub fn new(addr: SocketAddr) -> Remote {
        let ip = match addr.ip() {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(std::net::IpAddr::V4)
                .unwrap_or(std::net::IpAddr::V6(v6)),
            v4 => v4,
        };
        let mut r = Remote {
            ip: [0; NETEV_IP_TEXT_LEN],
            port: addr.port(),
        };
        // Formatted on the stack: an accept costs no allocation for it.
        let mut text = [0u8; NETEV_IP_TEXT_LEN];
        let mut w = &mut text[..];
        let _ = std::io::Write::write_fmt(&mut w, format_args!("{ip}"));
        let len = NETEV_IP_TEXT_LEN - w.len();
        for (d, s) in r.ip.iter_mut().zip(&text[..len.min(NETEV_IP_TEXT_LEN - 1)]) {
            *d = *s as c_char;
        }
        r
    }

    /// "ip:port", with an IPv6 address in brackets.
    pub fn endpoint(&self) -> String {
        let ip = self.ip_string();
        match ip.contains(':') {
            true => format!("[{ip}]:{}", self.port),
            false => format!("{ip}:{}", self.port),
        }
    }

    pub fn ip_string(&self) -> String {
        let bytes: Vec<u8> = self
            .ip
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

const EMPTY: &[u8; 1] = b"\0";

impl netev_event {
    /// An event with no data and no error.
    pub fn new(ty: EventType, connection: u64, remote: &Remote) -> Self {
        netev_event {
            r#type: ty,
            connection,
            data: ptr::null(),
            data_len: 0,
            ip: remote.ip,
            port: remote.port,
            error: netev_status::NETEV_OK,
            os_error: 0,
            message: EMPTY.as_ptr().cast(),
        }
    }

    /// Points the event at `data`; the caller keeps it alive while the event is used.
    pub fn with_data(mut self, data: &[u8]) -> Self {
        // An empty slice's pointer is dangling, not NULL: keep NULL for
        // events without data, as the header promises.
        if !data.is_empty() {
            self.data = data.as_ptr();
            self.data_len = data.len();
        }
        self
    }

    /// Fills the error fields; `message` must be NUL-terminated and outlive the event's use.
    pub fn with_error(mut self, e: &Error, message: &std::ffi::CStr) -> Self {
        self.error = e.code;
        self.os_error = e.os_error;
        self.message = message.as_ptr();
        self
    }

    /// The data as a slice (empty for non-DATA events).
    pub fn data(&self) -> &[u8] {
        if self.data.is_null() {
            &[]
        } else {
            // SAFETY: `data`/`data_len` are only set by `with_data` from a live
            // slice that outlives every use of the event.
            unsafe { std::slice::from_raw_parts(self.data, self.data_len) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_ipv4_is_shown_as_ipv4() {
        let r = Remote::new("[::ffff:127.0.0.1]:80".parse().unwrap());
        assert_eq!(r.ip_string(), "127.0.0.1");
        let r = Remote::new("[::1]:80".parse().unwrap());
        assert_eq!(r.ip_string(), "::1");
        assert_eq!(r.port, 80);
    }

    #[test]
    fn names() {
        assert_eq!(EventType::name_of(1), "connection\0");
        assert_eq!(EventType::name_of(7), "end\0");
        assert_eq!(EventType::name_of(0), "unknown\0");
        assert_eq!(EventType::name_of(i32::MIN), "unknown\0");
    }
}
