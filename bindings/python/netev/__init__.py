"""netev for Python: event-driven TCP and UDP modelled on 4D's
TCPConnection, TCPListener, TCPEvent, UDPSocket and UDPEvent, through
netev's C ABI (ctypes, standard library only). ``include/netev.h`` is the reference for every rule; this module
only maps it to Python.

Loading: the ``NETEV_LIB`` environment variable names libnetev.so when set;
otherwise the libnetev.so beside this file (what ``pip install`` and the
wheel put there), else ``target/release`` (then ``target/debug``) of the
repository this file sits in, else ``ctypes.util.find_library("netev")``
(an installed netev).

Threads: callbacks of an object opened without a dispatcher run on netev's
I/O threads (ctypes takes the GIL for them), concurrently for different
objects. Name a :class:`Dispatcher` in the options and call its
:meth:`Dispatcher.run` (or :meth:`Connection.wait`), or
:meth:`Dispatcher.attach` it to an asyncio loop, to have every callback run
on that Python thread instead.

Lifetime: the binding keeps each object's Python callables (and the object
handed to them) alive until the object's TERMINATE; the C function pointers
are module-level ctypes objects that live as long as the module. A client
connection keeps running when its last Python reference is dropped; it ends
on its own, or with close(), release() or shutdown_runtime(). A listener
and a UDP socket never end on their own: they end with terminate()/close(),
release(), a ``with`` block, or when their last Python reference is dropped
(then their port is free again, and their TERMINATE still reaches
``on_terminate``).

asyncio: :meth:`Connection.wait_connected`, :meth:`Connection.drain` and
:meth:`Connection.wait_closed` are awaitables, and ``async for connection in
listener`` takes accepted connections; they work with callbacks on any
thread, and with a :class:`Dispatcher` attached to the loop every callback
runs on the loop's thread as well. Calls that would block (``wait()``,
``Dispatcher.run()`` with a timeout) raise RuntimeError inside a running
loop.

Zero-copy sends: :meth:`Connection.send_owned` lends netev a bytes-like
object's buffer (PyObject_GetBuffer, through ``ctypes.pythonapi``: CPython)
and gives it back (PyBuffer_Release) from netev's free function, which
may run on any thread; until then the binding holds the object.

Callback exceptions: an exception raised by a callback never reaches netev.
It is appended to the object's ``callback_errors`` list (the newest 64 are
kept) and handed to ``sys.unraisablehook`` (which pytest and custom hooks
see; the default hook prints it to stderr as "Exception ignored in ...").
An exception in a listener's ``on_connection`` rejects that connection.
KeyboardInterrupt or SystemExit raised by a callback that runs inside a
binding call on a Python thread (dispatcher run, wait, release, close,
shutdown_runtime) is raised again by that call once it returns.
"""

from __future__ import annotations

import atexit
import collections
import ctypes
import ctypes.util
import itertools
import math
import numbers
import operator
import os
import sys
import threading
import time
import traceback
import weakref
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    byref,
    c_bool,
    c_char,
    c_char_p,
    c_double,
    c_int,
    c_int32,
    c_size_t,
    c_ssize_t,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from pathlib import Path

from . import _waiters

__all__ = [
    "Connection",
    "Listener",
    "UdpSocket",
    "Dispatcher",
    "Event",
    "ErrorInfo",
    "NetevError",
    "NullArgument",
    "InvalidArgument",
    "InvalidHandle",
    "ConnectionClosed",
    "BufferFull",
    "NetevTimeout",
    "WouldDeadlock",
    "ConnectionRefused",
    "ConnectionReset",
    "HostNotFound",
    "AddressInUse",
    "NetevPermissionDenied",
    "NetevIOError",
    "RuntimeShutdown",
    "InternalError",
    "TlsError",
    "ProtocolError",
    "TlsConfig",
    "Stats",
    "FRAMING_NONE",
    "FRAMING_DELIMITER",
    "FRAMING_LENGTH_PREFIX",
    "Status",
    "shutdown_runtime",
    "init_runtime",
    "version",
    "status_name",
    "log_open",
    "log_close",
    "set_log_callback",
    "lib",
]

# ---------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------


def _load() -> ctypes.CDLL:
    path = os.environ.get("NETEV_LIB")
    if path:
        return ctypes.CDLL(path)
    here = Path(__file__).resolve().parent
    repo = here.parent.parent.parent
    candidates = [here / "libnetev.so"]
    candidates += [repo / "target" / profile / "libnetev.so" for profile in ("release", "debug")]
    for candidate in candidates:
        if candidate.exists():
            return ctypes.CDLL(str(candidate))
    found = ctypes.util.find_library("netev")
    if found:
        return ctypes.CDLL(found)
    raise OSError(
        "netev: libnetev.so not found: install this package with pip (which builds it), "
        "run `cargo build --release` in its repository, or set NETEV_LIB to its path (tried "
        + ", ".join(map(str, candidates))
        + ", find_library('netev'))"
    )


lib = _load()

# ---------------------------------------------------------------------------
# Constants and structs, exactly as include/netev.h
# ---------------------------------------------------------------------------

NETEV_IP_TEXT_LEN = 46
NETEV_DEFAULT_CONNECTION_TIMEOUT_SECONDS = 30
NETEV_DEFAULT_SEND_BUFFER_LIMIT = 8 << 20
NETEV_UDP_DEFAULT_SEND_BUFFER_LIMIT = 1 << 20
#: netev_connection_options.framing: DATA carries bytes as they arrive.
FRAMING_NONE = 0
#: Each DATA is one frame, without its delimiter.
FRAMING_DELIMITER = 1
#: Each DATA is one frame's payload (after a big-endian length prefix).
FRAMING_LENGTH_PREFIX = 2


class Status:
    """The netev_status numbers (fixed forever)."""

    OK = 0
    ERR_NULL_ARGUMENT = 1
    ERR_INVALID_ARGUMENT = 2
    ERR_INVALID_HANDLE = 3
    ERR_CLOSED = 4
    ERR_BUFFER_FULL = 5
    ERR_TIMEOUT = 6
    ERR_WOULD_DEADLOCK = 7
    ERR_CONNECTION_REFUSED = 8
    ERR_CONNECTION_RESET = 9
    ERR_HOST_NOT_FOUND = 10
    ERR_ADDRESS_IN_USE = 11
    ERR_PERMISSION_DENIED = 12
    ERR_IO = 13
    ERR_SHUTDOWN = 14
    ERR_INTERNAL = 15
    ERR_TLS = 16
    ERR_PROTOCOL = 17


EVENT_CONNECTION = 1
EVENT_DATA = 2
EVENT_ERROR = 3
EVENT_CLOSE = 4
EVENT_TERMINATE = 5
EVENT_DRAIN = 6
EVENT_END = 7

# C enums (netev_status, netev_event_type) are int-sized.
c_enum = c_int
netev_connection = c_uint64
netev_listener = c_uint64
netev_dispatcher = c_uint64
netev_tls_config = c_uint64
netev_udp_socket = c_uint64


class netev_event(Structure):
    _fields_ = [
        ("type", c_enum),
        ("connection", netev_connection),
        ("data", POINTER(c_uint8)),
        ("data_len", c_size_t),
        ("ip", c_char * NETEV_IP_TEXT_LEN),
        ("port", c_uint16),
        ("error", c_enum),
        ("os_error", c_int32),
        ("message", c_char_p),
    ]


netev_connection_callback = CFUNCTYPE(None, netev_connection, POINTER(netev_event), c_void_p)
netev_user_data_free = CFUNCTYPE(None, c_void_p)


class netev_connection_options(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("on_connection", netev_connection_callback),
        ("on_data", netev_connection_callback),
        ("on_shutdown", netev_connection_callback),
        ("on_error", netev_connection_callback),
        ("on_terminate", netev_connection_callback),
        ("on_drain", netev_connection_callback),
        ("on_end", netev_connection_callback),
        ("user_data", c_void_p),
        ("user_data_free", netev_user_data_free),
        ("no_delay", c_bool),
        ("allow_half_open", c_bool),
        ("keepalive", c_double),
        ("idle_timeout", c_double),
        ("connection_timeout", c_double),
        ("send_buffer_limit", c_size_t),
        ("dispatcher", netev_dispatcher),
        # appended after 0.2.0 ("Connection additions"); a library of
        # 0.2.0 never reads them (this struct's size tells it so), one
        # without TLS refuses them non-zero
        ("bind_address", c_char_p),
        ("bind_port", c_uint16),
        ("framing", ctypes.c_uint8),
        ("length_prefix_bytes", ctypes.c_uint8),
        ("delimiter", c_void_p),
        ("delimiter_len", c_size_t),
        ("max_frame", c_size_t),
        ("tls", netev_tls_config),
        ("server_name", c_char_p),
    ]


netev_free_fn = CFUNCTYPE(None, c_void_p)


class netev_connection_stats(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("bytes_sent", c_uint64),
        ("bytes_received", c_uint64),
        ("data_events", c_uint64),
        ("buffered_amount", c_size_t),
        ("rtt_us", c_uint32),
    ]


class netev_tls_options(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("ca_file", c_char_p),
        ("ca_pem", c_char_p),
        ("cert_file", c_char_p),
        ("cert_pem", c_char_p),
        ("key_file", c_char_p),
        ("key_pem", c_char_p),
        ("alpn", c_char_p),
        ("insecure_skip_verify", c_bool),
        ("require_client_cert", c_bool),
        ("tls13_only", c_bool),
    ]


class netev_error_info(Structure):
    _fields_ = [
        ("code", c_enum),
        ("os_error", c_int32),
        ("message", c_char * 256),
        ("component", c_char * 32),
    ]


netev_accept_callback = CFUNCTYPE(
    c_bool, netev_listener, POINTER(netev_event), c_void_p, POINTER(netev_connection_options)
)
netev_listener_callback = CFUNCTYPE(None, netev_listener, POINTER(netev_event), c_void_p)


class netev_listener_options(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("on_connection", netev_accept_callback),
        ("on_error", netev_listener_callback),
        ("on_terminate", netev_listener_callback),
        ("user_data", c_void_p),
        ("bind_address", c_char_p),
        ("backlog", c_uint32),
        ("reuse_port", c_bool),
        ("connection_defaults", POINTER(netev_connection_options)),  # NULL: the defaults
        ("dispatcher", netev_dispatcher),
    ]


class netev_runtime_options(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("worker_threads", c_uint32),
    ]


netev_udp_callback = CFUNCTYPE(None, netev_udp_socket, POINTER(netev_event), c_void_p)


class netev_udp_options(Structure):
    _fields_ = [
        ("size", c_uint32),
        ("on_data", netev_udp_callback),
        ("on_error", netev_udp_callback),
        ("on_terminate", netev_udp_callback),
        ("user_data", c_void_p),
        ("user_data_free", netev_user_data_free),
        ("bind_address", c_char_p),
        ("reuse_port", c_bool),
        ("broadcast", c_bool),
        ("send_buffer_limit", c_size_t),
        ("dispatcher", netev_dispatcher),
    ]


netev_log_callback = CFUNCTYPE(None, c_char_p, c_void_p)

_P = POINTER
_SIGNATURES = {
    "netev_status_name": (c_char_p, [c_int32]),
    "netev_event_type_name": (c_char_p, [c_int32]),
    "netev_last_error_message": (c_size_t, [c_char_p, c_size_t]),
    "netev_version": (c_char_p, []),
    "netev_connection_options_init_sized": (c_enum, [_P(netev_connection_options), c_size_t]),
    "netev_connection_options_init": (c_enum, [_P(netev_connection_options)]),
    "netev_connection_open": (
        c_enum,
        [c_char_p, c_uint16, _P(netev_connection_options), _P(netev_connection)],
    ),
    "netev_connection_send": (c_enum, [netev_connection, c_void_p, c_size_t]),
    "netev_connection_shutdown": (c_enum, [netev_connection]),
    "netev_connection_wait": (c_enum, [netev_connection, c_double]),
    "netev_connection_close": (c_enum, [netev_connection]),
    "netev_connection_retain": (c_enum, [netev_connection]),
    "netev_connection_release": (c_enum, [netev_connection]),
    "netev_connection_address": (c_enum, [netev_connection, c_char_p, c_size_t, _P(c_size_t)]),
    "netev_connection_port": (c_enum, [netev_connection, _P(c_uint16)]),
    "netev_connection_closed": (c_enum, [netev_connection, _P(c_bool)]),
    "netev_connection_no_delay": (c_enum, [netev_connection, _P(c_bool)]),
    "netev_connection_listener": (c_enum, [netev_connection, _P(netev_listener)]),
    "netev_connection_user_data": (c_enum, [netev_connection, _P(c_void_p)]),
    "netev_connection_buffered_amount": (c_enum, [netev_connection, _P(c_size_t)]),
    "netev_connection_error_count": (c_enum, [netev_connection, _P(c_size_t)]),
    "netev_connection_error_at": (c_enum, [netev_connection, c_size_t, _P(netev_error_info)]),
    "netev_listener_options_init_sized": (c_enum, [_P(netev_listener_options), c_size_t]),
    "netev_listener_options_init": (c_enum, [_P(netev_listener_options)]),
    "netev_listener_open": (c_enum, [c_uint16, _P(netev_listener_options), _P(netev_listener)]),
    "netev_listener_port": (c_enum, [netev_listener, _P(c_uint16)]),
    "netev_listener_terminate": (c_enum, [netev_listener]),
    "netev_listener_release": (c_enum, [netev_listener]),
    "netev_listener_error_count": (c_enum, [netev_listener, _P(c_size_t)]),
    "netev_listener_error_at": (c_enum, [netev_listener, c_size_t, _P(netev_error_info)]),
    "netev_dispatcher_create": (c_enum, [_P(netev_dispatcher)]),
    "netev_dispatcher_run": (c_enum, [netev_dispatcher, c_double, _P(c_size_t)]),
    "netev_dispatcher_fd": (c_enum, [netev_dispatcher, _P(c_int)]),
    "netev_dispatcher_release": (c_enum, [netev_dispatcher]),
    "netev_runtime_options_init_sized": (c_enum, [_P(netev_runtime_options), c_size_t]),
    "netev_runtime_options_init": (c_enum, [_P(netev_runtime_options)]),
    "netev_runtime_init": (c_enum, [_P(netev_runtime_options)]),
    "netev_runtime_shutdown": (c_enum, [c_double]),
    "netev_log_open": (c_enum, [c_char_p]),
    "netev_log_close": (c_enum, []),
    "netev_log_set_callback": (c_enum, [netev_log_callback, c_void_p]),
    "netev_connection_tls_version": (c_enum, [netev_connection, c_char_p, c_size_t, _P(c_size_t)]),
    "netev_connection_alpn": (c_enum, [netev_connection, c_char_p, c_size_t, _P(c_size_t)]),
    "netev_connection_server_name": (c_enum, [netev_connection, c_char_p, c_size_t, _P(c_size_t)]),
    "netev_connection_peer_certificate": (c_enum, [netev_connection, c_void_p, c_size_t, _P(c_size_t)]),
    "netev_tls_options_init_sized": (c_enum, [_P(netev_tls_options), c_size_t]),
    "netev_tls_options_init": (c_enum, [_P(netev_tls_options)]),
    "netev_tls_client_config_create": (c_enum, [_P(netev_tls_options), _P(netev_tls_config)]),
    "netev_tls_server_config_create": (c_enum, [_P(netev_tls_options), _P(netev_tls_config)]),
    "netev_tls_config_release": (c_enum, [netev_tls_config]),
    "netev_connection_pause": (c_enum, [netev_connection]),
    "netev_connection_resume": (c_enum, [netev_connection]),
    "netev_connection_paused": (c_enum, [netev_connection, _P(c_bool)]),
    "netev_connection_local_address": (c_enum, [netev_connection, c_char_p, c_size_t, _P(c_size_t)]),
    "netev_connection_local_port": (c_enum, [netev_connection, _P(c_uint16)]),
    "netev_connection_send_owned": (c_enum, [netev_connection, c_void_p, c_size_t, netev_free_fn, c_void_p]),
    "netev_connection_send_frame": (c_enum, [netev_connection, c_void_p, c_size_t]),
    "netev_connection_stats_get_sized": (c_enum, [netev_connection, _P(netev_connection_stats), c_size_t]),
    "netev_udp_options_init_sized": (c_enum, [_P(netev_udp_options), c_size_t]),
    "netev_udp_options_init": (c_enum, [_P(netev_udp_options)]),
    "netev_udp_open": (c_enum, [c_uint16, _P(netev_udp_options), _P(netev_udp_socket)]),
    "netev_udp_send": (c_enum, [netev_udp_socket, c_void_p, c_size_t, c_char_p, c_uint16]),
    "netev_udp_port": (c_enum, [netev_udp_socket, _P(c_uint16)]),
    "netev_udp_join_multicast": (c_enum, [netev_udp_socket, c_char_p, c_char_p]),
    "netev_udp_leave_multicast": (c_enum, [netev_udp_socket, c_char_p, c_char_p]),
    "netev_udp_close": (c_enum, [netev_udp_socket]),
    "netev_udp_release": (c_enum, [netev_udp_socket]),
    "netev_udp_error_count": (c_enum, [netev_udp_socket, _P(c_size_t)]),
    "netev_udp_error_at": (c_enum, [netev_udp_socket, c_size_t, _P(netev_error_info)]),
}

for _name, (_restype, _argtypes) in _SIGNATURES.items():
    _fn = getattr(lib, _name)
    _fn.restype = _restype
    _fn.argtypes = _argtypes
del _name, _restype, _argtypes, _fn

# ---------------------------------------------------------------------------
# Exceptions
# ---------------------------------------------------------------------------


class NetevError(Exception):
    """A netev call failed: ``status`` is the netev_status number, ``name``
    its identifier ("NETEV_ERR_TIMEOUT"), ``message`` netev's words."""

    status = -1

    def __init__(self, status: int, message: str = ""):
        super().__init__(status, message)
        self.status = status
        self.message = message

    @property
    def name(self) -> str:
        return status_name(self.status)

    def __str__(self) -> str:
        if not self.message:
            return self.name
        if self.message.startswith(self.name):  # netev's messages often name it
            return self.message
        return f"{self.name}: {self.message}"


class NullArgument(NetevError):
    status = Status.ERR_NULL_ARGUMENT


class InvalidArgument(NetevError, ValueError):
    status = Status.ERR_INVALID_ARGUMENT


class InvalidHandle(NetevError):
    status = Status.ERR_INVALID_HANDLE


class ConnectionClosed(NetevError):
    status = Status.ERR_CLOSED


class BufferFull(NetevError):
    status = Status.ERR_BUFFER_FULL


class NetevTimeout(NetevError):
    status = Status.ERR_TIMEOUT


class WouldDeadlock(NetevError):
    status = Status.ERR_WOULD_DEADLOCK


class ConnectionRefused(NetevError):
    status = Status.ERR_CONNECTION_REFUSED


class ConnectionReset(NetevError):
    status = Status.ERR_CONNECTION_RESET


class HostNotFound(NetevError):
    status = Status.ERR_HOST_NOT_FOUND


class AddressInUse(NetevError):
    status = Status.ERR_ADDRESS_IN_USE


class NetevPermissionDenied(NetevError):
    status = Status.ERR_PERMISSION_DENIED


class NetevIOError(NetevError):
    status = Status.ERR_IO


class RuntimeShutdown(NetevError):
    status = Status.ERR_SHUTDOWN


class InternalError(NetevError):
    status = Status.ERR_INTERNAL


class TlsError(NetevError):
    """A TLS handshake, certificate or record failure, or a bad TLS
    configuration (netev's message says which)."""

    status = Status.ERR_TLS


class ProtocolError(NetevError):
    """The peer broke the connection's framing: a frame over ``max_frame``,
    or the stream ended inside a length-prefixed frame."""

    status = Status.ERR_PROTOCOL


_EXCEPTIONS = {
    cls.status: cls
    for cls in (
        NullArgument,
        InvalidArgument,
        InvalidHandle,
        ConnectionClosed,
        BufferFull,
        NetevTimeout,
        WouldDeadlock,
        ConnectionRefused,
        ConnectionReset,
        HostNotFound,
        AddressInUse,
        NetevPermissionDenied,
        NetevIOError,
        RuntimeShutdown,
        InternalError,
        TlsError,
        ProtocolError,
    )
}


def error_for(status: int, message: str = "") -> NetevError:
    """The exception instance for a status (NetevError for an unknown one)."""
    return _EXCEPTIONS.get(status, NetevError)(status, message)


def status_name(status: int) -> str:
    return lib.netev_status_name(int(status)).decode()


def version() -> str:
    """The loaded library's version, "MAJOR.MINOR.PATCH"."""
    return lib.netev_version().decode()


def _last_error_message() -> str:
    buf = ctypes.create_string_buffer(512)
    need = lib.netev_last_error_message(buf, len(buf))
    if need >= len(buf):
        buf = ctypes.create_string_buffer(need + 1)
        lib.netev_last_error_message(buf, len(buf))
    return buf.value.decode("utf-8", "replace")


# Per thread: how deep inside binding calls, and a KeyboardInterrupt or
# SystemExit raised by a callback that ran inside one of them.
_tls = threading.local()


def _call(fn, *args, ok=(Status.OK,), returned=None) -> int:
    """Calls a netev function; raises the status's exception unless it is in
    ``ok``; re-raises a KeyboardInterrupt/SystemExit from a callback that
    ran on this thread meanwhile. ``returned(status)``, if given, learns the
    status first, whatever is raised next."""
    depth = getattr(_tls, "depth", 0)
    _tls.depth = depth + 1
    try:
        status = fn(*args)
        if returned is not None:
            returned(status)
        message = _last_error_message() if status not in ok else ""
    finally:
        _tls.depth = depth
    pending = getattr(_tls, "pending", None)
    if pending is not None and depth == 0:
        _tls.pending = None
        raise pending
    if status not in ok:
        raise error_for(status, message)
    return status


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(Status.ERR_INVALID_ARGUMENT, message)


def _int(value, what: str, bits: int) -> int:
    """An int (not a str or float: no silent conversion) that fits an
    unsigned C field of ``bits`` bits, which ctypes would silently wrap."""
    try:
        v = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if not 0 <= v < (1 << bits):
        raise _bad(f"{what} {v} is out of range 0..{(1 << bits) - 1}")
    return v


def _port(port) -> int:
    return _int(port, "port", 16)


def _cstr(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a str, not {type(text).__name__}")
    try:
        b = text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise _bad(f"{what}: {e}") from None
    if b"\0" in b:
        raise _bad(f"{what} contains a NUL character")
    return b


# ---------------------------------------------------------------------------
# Events and errors
# ---------------------------------------------------------------------------

_TYPE_NAMES: dict[int, str] = {}


def _type_name(code: int) -> str:
    name = _TYPE_NAMES.get(code)
    if name is None:
        name = lib.netev_event_type_name(code).decode()
        _TYPE_NAMES[code] = name
    return name


class Event:
    """One event, copied out of netev's borrowed ``netev_event``.

    ``type`` is the 4D name ("connection", "data", "error", "close",
    "terminate", "drain", "end"); ``data`` the received bytes (b"" for
    other types); ``ip``/``port`` the remote end; ``error``, ``os_error``
    and ``message`` are set for "error" (``error`` is the status number, 0
    otherwise); ``connection`` is the connection's handle (0 for
    listener-only events; a UDP socket's handle for its events). For a UDP
    DATA event, ``ip``/``port`` are the datagram's sender."""

    __slots__ = ("type", "connection", "data", "ip", "port", "error", "os_error", "message")

    def __init__(self, type, connection=0, data=b"", ip="", port=0, error=0, os_error=0, message=""):
        self.type = type
        self.connection = connection
        self.data = data
        self.ip = ip
        self.port = port
        self.error = error
        self.os_error = os_error
        self.message = message

    @classmethod
    def _from_c(cls, p) -> "Event":
        ev = p.contents
        n = ev.data_len
        data = ctypes.string_at(ev.data, n) if n and ev.data else b""
        msg = ev.message
        return cls(
            _type_name(ev.type),
            ev.connection,
            data,
            ev.ip.decode("ascii", "replace"),
            ev.port,
            ev.error,
            ev.os_error,
            msg.decode("utf-8", "replace") if msg else "",
        )

    @property
    def error_name(self) -> str:
        return status_name(self.error)

    def exception(self) -> NetevError | None:
        """The error as an exception instance (``ConnectionRefused`` …), or None."""
        return error_for(self.error, self.message) if self.error else None

    def __repr__(self) -> str:
        parts = [f"type={self.type!r}"]
        if self.data:
            parts.append(f"data=<{len(self.data)} bytes>")
        if self.ip:
            parts.append(f"ip={self.ip!r} port={self.port}")
        if self.error:
            parts.append(f"error={self.error_name} os_error={self.os_error} message={self.message!r}")
        return f"Event({' '.join(parts)})"


ErrorInfo = collections.namedtuple("ErrorInfo", "code name os_error message component")
ErrorInfo.__doc__ = "One entry of an errors list (4D: errCode, message, componentSignature)."


def _errors(count_fn, at_fn, handle) -> list:
    n = c_size_t()
    _call(count_fn, handle, byref(n))
    out = []
    info = netev_error_info()
    for i in range(n.value):
        try:
            _call(at_fn, handle, i, byref(info))
        except InvalidArgument:  # the list moved on meanwhile (newest 64 kept)
            break
        out.append(
            ErrorInfo(
                info.code,
                status_name(info.code),
                info.os_error,
                info.message.decode("utf-8", "replace"),
                info.component.decode("utf-8", "replace"),
            )
        )
    return out


# ---------------------------------------------------------------------------
# Callback reporting and the registries
# ---------------------------------------------------------------------------

_MAX_CALLBACK_ERRORS = 64


class _Unraisable:
    """What sys.unraisablehook receives (the UnraisableHookArgs attributes)."""

    __slots__ = ("exc_type", "exc_value", "exc_traceback", "err_msg", "object")

    def __init__(self, exc, err_msg, obj):
        self.exc_type = type(exc)
        self.exc_value = exc
        self.exc_traceback = exc.__traceback__
        self.err_msg = err_msg
        self.object = obj


def _report(exc: BaseException, obj, where: str) -> None:
    """Records an exception a callback raised; never raises."""
    try:
        if not isinstance(exc, Exception) and getattr(_tls, "depth", 0) > 0:
            # KeyboardInterrupt/SystemExit inside a binding call on a Python
            # thread: raised again when that call returns.
            if getattr(_tls, "pending", None) is None:
                _tls.pending = exc
            return
        errs = getattr(obj, "callback_errors", None)
        if errs is not None:
            errs.append(exc)
            del errs[:-_MAX_CALLBACK_ERRORS]
        msg = f"Exception ignored in netev {where} callback"
        hook = sys.unraisablehook
        if hook is sys.__unraisablehook__:
            # The default hook accepts only CPython's own argument type.
            print(f"{msg}: {obj!r}", file=sys.stderr)
            traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
        else:
            hook(_Unraisable(exc, msg, obj))
    except BaseException:  # noqa: BLE001 - nothing may reach C
        pass


_tokens = itertools.count(1)
_conn_registry: dict = {}  # token -> _ConnEntry, until user_data_free
_listener_registry: dict = {}  # token -> _ListenerEntry, until TERMINATE

_CALLBACK_NAMES = ("on_connection", "on_data", "on_shutdown", "on_error", "on_terminate", "on_drain", "on_end")
_ALWAYS_DELIVERED = ("on_connection", "on_shutdown", "on_error", "on_terminate", "on_drain")
_SLOT_FOR_TYPE = {
    EVENT_CONNECTION: "on_connection",
    EVENT_DATA: "on_data",
    EVENT_ERROR: "on_error",
    EVENT_CLOSE: "on_shutdown",
    EVENT_TERMINATE: "on_terminate",
    EVENT_DRAIN: "on_drain",
    EVENT_END: "on_end",
}
_OPTION_NAMES = (
    "no_delay",
    "allow_half_open",
    "keepalive",
    "idle_timeout",
    "connection_timeout",
    "send_buffer_limit",
    "dispatcher",
    "tls",
    "server_name",
    "bind_address",
    "bind_port",
    "framing",
    "length_prefix_bytes",
    "delimiter",
    "max_frame",
)
# What only a client connection reads (netev ignores them for accepted ones).
_CLIENT_ONLY_OPTIONS = ("server_name", "bind_address", "bind_port")
_FRAMING_NAMES = {
    "none": FRAMING_NONE,
    "delimiter": FRAMING_DELIMITER,
    "length_prefix": FRAMING_LENGTH_PREFIX,
}


class _ConnEntry:
    # keep: what the C options point at (strings, the delimiter), alive
    # until user_data_free: a listener's accept callback returns options
    # that netev reads after it returned.
    __slots__ = ("conn", "callbacks", "keep")

    def __init__(self, conn, callbacks, keep=()):
        self.conn = conn
        self.callbacks = callbacks
        self.keep = keep


def _nobody():
    return None


class _Owner:
    """A registry entry's hold on the Python object that owns a handle
    (a Listener, a UdpSocket): weak, so that dropping the last reference
    of yours releases it, as a dropped Python socket closes. An event
    after that (its TERMINATE) gets an unowned stand-in of the same class."""

    __slots__ = ("_ref", "_stand_in")

    def __init__(self, obj):
        self._ref = weakref.ref(obj)
        self._stand_in = None

    def live(self):
        """The object, or None once it was collected."""
        return self._ref()

    def forget(self) -> None:
        """Called by the object's __del__ before it releases the handle:
        the events that follow get the stand-in, never the object being
        finalized (which they would bring back to life)."""
        self._ref = _nobody

    def get(self, cls, handle):
        obj = self._ref()
        if obj is None:
            obj = self._stand_in
            if obj is None:
                obj = self._stand_in = cls(handle)
                obj._owned = False
        return obj


class _ListenerEntry:
    __slots__ = ("owner", "on_connection", "on_error", "on_terminate", "defaults")

    def __init__(self, listener, on_connection, on_error, on_terminate, defaults):
        self.owner = _Owner(listener)
        self.on_connection = on_connection
        self.on_error = on_error
        self.on_terminate = on_terminate
        self.defaults = defaults


def _deliver(obj, callbacks, slots, handle, event_p, label):
    """Runs the Python callback for one C event of `obj` (a Connection or a
    UdpSocket): the handle noted if the event came before open() returned,
    TERMINATE noted, the callback's exception reported, never raised."""
    if not obj._handle:
        obj._handle = handle  # an event before open() returned
    code = event_p.contents.type
    if code == EVENT_TERMINATE:
        obj._terminated = True
    slot = slots.get(code)
    cb = callbacks.get(slot)
    if cb is not None:
        ev = Event._from_c(event_p)
        try:
            cb(obj, ev)
        except BaseException as exc:  # noqa: BLE001
            _report(exc, obj, slot if label is None else f"{label} {slot}")
    return code


def _conn_trampoline(handle, event_p, user_data):
    try:
        entry = _conn_registry.get(user_data)
        if entry is not None:
            conn = entry.conn
            code = _deliver(conn, entry.callbacks, _SLOT_FOR_TYPE, handle, event_p, None)
            if code != EVENT_DATA:
                conn._note(code, event_p)  # after the callback: awaiting coroutines come second
    except BaseException as exc:  # noqa: BLE001 - a bug here must not reach C
        _report(exc, None, "netev binding (connection)")


def _free_trampoline(user_data):
    try:
        entry = _conn_registry.pop(user_data, None)
        if entry is not None and not entry.conn._terminated:
            # Never started (accepted as netev shut down): no TERMINATE
            # will come, so its awaiters learn the end here.
            entry.conn._terminated = True
            entry.conn._note(EVENT_TERMINATE, None)
    except BaseException:  # noqa: BLE001
        pass


def _listener_trampoline(handle, event_p, user_data):
    try:
        entry = _listener_registry.get(user_data)
        if entry is None:
            return
        listener = entry.owner.get(Listener, handle)
        code = event_p.contents.type
        if code == EVENT_TERMINATE:
            with _waiters.lock:
                listener._terminated = True
            if listener._waiters is not None:
                listener._waiters.wake()  # ends the async iteration
            cb, slot = entry.on_terminate, "on_terminate"
        else:
            cb, slot = entry.on_error, "on_error"
        try:
            if cb is not None:
                cb(listener, Event._from_c(event_p))
        except BaseException as exc:  # noqa: BLE001
            _report(exc, listener, f"listener {slot}")
        finally:
            if code == EVENT_TERMINATE:
                _listener_registry.pop(user_data, None)
    except BaseException as exc:  # noqa: BLE001
        _report(exc, None, "netev binding (listener)")


def _accept_trampoline(handle, event_p, user_data, options_p):
    try:
        entry = _listener_registry.get(user_data)
        if entry is None:
            return False
        listener = entry.owner.live()
        if listener is None:
            return False  # released by its collection, in the meantime
        if listener._accepted is not None and len(listener._accepted) >= listener._accepted_limit:
            return False  # the async iteration's queue is full: the backlog's bound
        ev = Event._from_c(event_p)
        try:
            if entry.on_connection is None:
                choice = True
            else:
                choice = entry.on_connection(listener, ev)
            if choice is None or choice is False:
                return False
            if choice is True:
                spec = dict(entry.defaults)
            elif isinstance(choice, dict):
                spec = {**entry.defaults, **choice}
            else:
                raise TypeError(
                    f"listener on_connection must return a dict of connection options, "
                    f"True or None, not {type(choice).__name__}"
                )
            conn = Connection._adopt(ev.connection, listener)
            token = next(_tokens)
            opts = options_p.contents
            keep = _fill_options(opts, spec, token, conn)
            _conn_registry[token] = _ConnEntry(conn, _callbacks_of(spec), keep)
            if listener._accepted is not None:
                # The taker owns it, as a client connection: its handle
                # stays valid, even past its end, until released.
                if lib.netev_connection_retain(ev.connection) == Status.OK:
                    conn._refs = 1
                with _waiters.lock:
                    listener._accepted.append(conn)
                listener._waiters.wake()
            return True
        except BaseException as exc:  # noqa: BLE001 - rejects the connection
            _report(exc, listener, "listener on_connection")
            return False
    except BaseException as exc:  # noqa: BLE001
        _report(exc, None, "netev binding (accept)")
        return False


# The C function pointers: one of each, alive as long as the module.
_CONN_CB = netev_connection_callback(_conn_trampoline)
_FREE_CB = netev_user_data_free(_free_trampoline)
_LISTENER_CB = netev_listener_callback(_listener_trampoline)
_ACCEPT_CB = netev_accept_callback(_accept_trampoline)
_NULL_CONN_CB = netev_connection_callback()  # a NULL slot


def _new_options(struct, init_sized):
    """A new options struct, filled with the defaults by its _sized
    initialiser given this module's own ctypes size of it: so a newer
    libnetev, whose struct has grown, writes and reads only the fields this
    binding declares (the header's "Versions")."""
    opts = struct()
    _call(init_sized, byref(opts), ctypes.sizeof(struct))
    return opts


Stats = collections.namedtuple("Stats", "bytes_sent bytes_received data_events buffered_amount rtt_us")
Stats.__doc__ = """A connection's counters (netev_connection_stats): bytes written to and
read from the socket (plaintext with TLS), DATA callbacks run, bytes queued
but unsent, the kernel's smoothed RTT in microseconds (0 when unknown)."""


# -- send_owned: lending a Python buffer to netev --------------------------------


class _Py_buffer(Structure):
    """CPython's Py_buffer (unchanged since 3.3; in the stable ABI since 3.11)."""

    _fields_ = [
        ("buf", c_void_p),
        ("obj", c_void_p),
        ("len", c_ssize_t),
        ("itemsize", c_ssize_t),
        ("readonly", c_int),
        ("ndim", c_int),
        ("format", c_void_p),
        ("shape", c_void_p),
        ("strides", c_void_p),
        ("suboffsets", c_void_p),
        ("internal", c_void_p),
    ]


_PyBUF_SIMPLE = 0  # contiguous bytes, read-only is fine
# ctypes.pythonapi holds the GIL during the call and raises the Python
# error a failing PyObject_GetBuffer sets (TypeError, BufferError).
_PyObject_GetBuffer = ctypes.pythonapi.PyObject_GetBuffer
_PyObject_GetBuffer.argtypes = [ctypes.py_object, POINTER(_Py_buffer), c_int]
_PyObject_GetBuffer.restype = c_int
_PyBuffer_Release = ctypes.pythonapi.PyBuffer_Release
_PyBuffer_Release.argtypes = [POINTER(_Py_buffer)]
_PyBuffer_Release.restype = None

_owned_tokens = itertools.count(1)
# token -> (Py_buffer, on_free): from the send_owned call until netev's free
# function (or the call's failure) releases it. The Py_buffer holds a
# reference to the object.
_owned_registry: dict = {}


def _owned_free_trampoline(free_arg):
    # Any thread, with the GIL (ctypes takes it); exactly once per buffer
    # netev took.
    try:
        entry = _owned_registry.pop(free_arg, None)
        if entry is None:
            return
        view, on_free = entry
        _PyBuffer_Release(byref(view))
        if on_free is not None:
            try:
                on_free()
            except BaseException as exc:  # noqa: BLE001
                _report(exc, None, "send_owned on_free")
    except BaseException as exc:  # noqa: BLE001 - nothing may reach C
        _report(exc, None, "netev binding (send_owned free)")


# Alive as long as the module, as the other C function pointers.
_OWNED_FREE_CB = netev_free_fn(_owned_free_trampoline)


def _callbacks_of(spec: dict) -> dict:
    return {name: spec[name] for name in _CALLBACK_NAMES if spec.get(name) is not None}


def _dispatcher_handle(d) -> int:
    if d is None:
        return 0
    if isinstance(d, Dispatcher):
        return d._handle
    return int(d)


def _uint(spec: dict, name: str, bits: int) -> int | None:
    v = spec.get(name)
    return None if v is None else _int(v, name, bits)


def _fill_options(opts: netev_connection_options, spec: dict, token: int, conn) -> list:
    """Sets a (pre-initialised) netev_connection_options from keyword
    options. Returns what its pointers point at, to keep alive until netev
    copied it (the open call, or for an accepted connection the connection's
    user_data_free)."""
    keep = []
    for key in spec:
        if key not in _CALLBACK_NAMES and key not in _OPTION_NAMES:
            raise TypeError(f"unknown connection option {key!r}")
    for name in _CALLBACK_NAMES:
        cb = spec.get(name)
        if cb is not None and not callable(cb):
            raise TypeError(f"{name} must be callable")
        # The events the awaitables wait on (connected, drained, ended)
        # always reach the binding; DATA and END only when asked for.
        setattr(opts, name, _CONN_CB if (cb is not None or name in _ALWAYS_DELIVERED) else _NULL_CONN_CB)
    opts.user_data = token
    opts.user_data_free = _FREE_CB
    if "no_delay" in spec:
        opts.no_delay = bool(spec["no_delay"])
    if "allow_half_open" in spec:
        opts.allow_half_open = bool(spec["allow_half_open"])
    for name in ("keepalive", "idle_timeout", "connection_timeout"):
        seconds = spec.get(name)
        if seconds is not None:
            if not isinstance(seconds, numbers.Real):  # not "1": no silent conversion
                raise TypeError(f"{name} must be a number of seconds, not {type(seconds).__name__}")
            setattr(opts, name, float(seconds))
    limit = _uint(spec, "send_buffer_limit", 64)
    if limit is not None:
        opts.send_buffer_limit = limit
    if spec.get("dispatcher") is not None:
        d = spec["dispatcher"]
        opts.dispatcher = _dispatcher_handle(d)
        if isinstance(d, Dispatcher) and conn is not None:
            conn._dispatcher = d
    if spec.get("tls") is not None:
        t = spec["tls"]
        opts.tls = t.handle if isinstance(t, TlsConfig) else int(t)
    if spec.get("server_name") is not None:
        name = _cstr(spec["server_name"], "server_name")
        keep.append(name)
        opts.server_name = name
    if spec.get("bind_address") is not None:
        bind = _cstr(spec["bind_address"], "bind_address")
        keep.append(bind)
        opts.bind_address = bind
    port = spec.get("bind_port")
    if port is not None:
        opts.bind_port = _port(port)
    delimiter = spec.get("delimiter")
    if delimiter is not None:
        if isinstance(delimiter, str):
            delimiter = _cstr(delimiter, "delimiter")
        delimiter = bytes(memoryview(delimiter))  # bytes-like (not bytes(n): n zeros)
        if delimiter:
            buf = ctypes.create_string_buffer(delimiter, len(delimiter))
            keep.append(buf)
            opts.delimiter = ctypes.addressof(buf)
        opts.delimiter_len = len(delimiter)
    prefix = _uint(spec, "length_prefix_bytes", 8)
    if prefix is not None:
        opts.length_prefix_bytes = prefix
    framing = spec.get("framing")
    if isinstance(framing, str):
        if framing not in _FRAMING_NAMES:
            raise _bad(f"framing {framing!r}: one of {', '.join(_FRAMING_NAMES)}")
        framing = _FRAMING_NAMES[framing]
    elif framing is None:
        # From the other fields: a delimiter or a prefix size names the framing.
        if delimiter is not None:
            framing = FRAMING_DELIMITER
        elif prefix:
            framing = FRAMING_LENGTH_PREFIX
    if framing is not None:
        spec = {**spec, "framing": framing}
        opts.framing = _uint(spec, "framing", 8)
    max_frame = _uint(spec, "max_frame", 64)
    if max_frame is not None:
        opts.max_frame = max_frame
    return keep


def _refuse_in_running_loop(call: str, instead: str) -> None:
    # No running loop without asyncio imported: the common case costs a
    # dict lookup.
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio._get_running_loop() is not None:
        raise RuntimeError(f"{call} would block the running asyncio loop; {instead} instead")


def _sliced(call, timeout):
    """Runs ``call(seconds) -> status`` until it returns something other than
    a timeout, in slices of at most 0.2 s so that Ctrl-C is seen between
    them. None or a negative timeout: no limit."""
    slice_ = 0.2
    if timeout is None:
        deadline = None
    else:
        timeout = float(timeout)
        if math.isnan(timeout) or 0 <= timeout <= slice_:
            return call(timeout)
        deadline = None if timeout < 0 else time.monotonic() + timeout
    while True:
        if deadline is None:
            step = slice_
        else:
            step = min(slice_, deadline - time.monotonic())
            if step <= 0:
                return Status.ERR_TIMEOUT
        status = call(step)
        if status != Status.ERR_TIMEOUT:
            return status


# ---------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------


class Connection:
    """A TCP connection (4D's TCPConnection). Open a client with
    :meth:`Connection.open`; a listener hands accepted ones to their
    callbacks. Every callback is called as ``callback(connection, event)``.

    A client connection is owned: :meth:`release` (or leaving a ``with``
    block, or garbage collection after its end) gives the handle back, and
    closes it if still open. An accepted connection is netev's: its handle
    is valid until its TERMINATE, unless :meth:`retain` took a reference.

    In a coroutine, await :meth:`wait_connected`, :meth:`drain` (after
    BufferFull) and :meth:`wait_closed` instead of blocking; they work on
    any connection, and a :class:`Dispatcher` attached to the loop makes
    the callbacks run on the loop's thread too."""

    def __init__(self, handle: int, *, refs: int, listener=None):
        self._handle = handle
        self._refs = refs
        self._terminated = False
        self._dispatcher = None
        # Weak: a live accepted connection must not keep its Listener
        # object (and with it the listening port) from being collected.
        self._listener_ref = weakref.ref(listener) if listener is not None else None
        # What the awaitables wait on, set by _note under _waiters.lock.
        self._connected = False
        self._end = None  # (status, message) of the CLOSE or ERROR that ended it
        self._drains = 0  # DRAIN events so far
        self._drain_wanted = 0  # the DRAIN count drain() waits for
        self._waiters = None  # made by the first await
        #: Exceptions raised by this connection's callbacks (newest 64).
        self.callback_errors: list = []

    @classmethod
    def _adopt(cls, handle, listener) -> "Connection":
        conn = cls(handle, refs=0, listener=listener)
        conn._dispatcher = listener._dispatcher
        return conn

    @property
    def listener(self):
        """The :class:`Listener` that accepted this connection; None for a
        client connection, or once that Listener object was collected."""
        ref = self._listener_ref
        return ref() if ref is not None else None

    # -- asyncio ------------------------------------------------------------

    def _note(self, code: int, event_p) -> None:
        """Records an event the awaitables wait on (any thread), then wakes
        them. ``event_p`` is read only for ERROR."""
        with _waiters.lock:
            if code == EVENT_CONNECTION:
                self._connected = True
            elif code == EVENT_DRAIN:
                self._drains += 1
            elif code == EVENT_END:
                return  # not an end of the connection: the peer's FIN
            elif self._end is None:  # ERROR, CLOSE, or TERMINATE (also wakes wait_closed)
                if code == EVENT_ERROR:
                    ev = event_p.contents
                    self._end = (ev.error, ev.message.decode("utf-8", "replace") if ev.message else "")
                else:
                    self._end = (Status.ERR_CLOSED, "the connection is closed")
        waiters = self._waiters
        if waiters is not None:
            waiters.wake()

    def _until(self, check):
        with _waiters.lock:
            if self._waiters is None:
                self._waiters = _waiters.Waiters()
        return self._waiters.until(check)

    def _ended(self):
        """The outcome of a wait the connection's end interrupted."""
        status, message = self._end
        return (error_for(status, message), None)

    async def wait_connected(self) -> None:
        """Returns once the connection is established (its CONNECTION was
        delivered; over TLS, after the handshake), at once if it was.
        Raises the error that ended it before that (ConnectionRefused,
        HostNotFound, NetevTimeout, TlsError …), or ConnectionClosed."""

        def check():
            if self._connected:
                return (None, None)
            return self._ended() if self._end is not None else None

        await self._until(check)

    async def drain(self) -> None:
        """Returns once a send refused with BufferFull may be retried: at
        the DRAIN that follows the refusal (netev's queue fell to half its
        limit), or at once when no send was refused since the last DRAIN.
        Raises ConnectionClosed, or the connection's error, once it ended:
        nothing more can be sent then."""

        def check():
            if self._end is not None:
                return self._ended()
            return (None, None) if self._drains >= self._drain_wanted else None

        await self._until(check)

    async def wait_closed(self) -> None:
        """Returns once the connection's TERMINATE was delivered: its last
        callback has run. Never raises for how it ended: see
        :attr:`errors`."""
        await self._until(lambda: (None, None) if self._terminated else None)

    def _send_call(self, fn, *args, **kw) -> None:
        # A BufferFull refusal owes a DRAIN; the count read before the call
        # makes drain() wait for one that comes after the refusal, even
        # when it is delivered before this thread gets here.
        drains = self._drains
        try:
            _call(fn, self._handle, *args, **kw)
        except BufferFull:
            with _waiters.lock:
                self._drain_wanted = max(self._drain_wanted, drains + 1)
            raise

    @classmethod
    def open(
        cls,
        address: str,
        port: int,
        *,
        on_connection=None,
        on_data=None,
        on_shutdown=None,
        on_error=None,
        on_terminate=None,
        on_drain=None,
        on_end=None,
        no_delay: bool = False,
        allow_half_open: bool = False,
        keepalive: float = 0.0,
        idle_timeout: float = 0.0,
        connection_timeout: float = 0.0,
        send_buffer_limit: int = 0,
        dispatcher=None,
        tls=None,
        server_name: str | None = None,
        bind_address: str | None = None,
        bind_port: int = 0,
        framing=None,
        length_prefix_bytes: int = 0,
        delimiter=None,
        max_frame: int = 0,
    ) -> "Connection":
        """Opens a client connection (returns at once; connecting runs in
        the background). ``on_shutdown`` receives "close", as in 4D.
        ``tls``: a client :class:`TlsConfig` (CONNECTION then fires after
        the handshake; DATA is plaintext); ``server_name``: the name sent
        (SNI) and verified, default ``address``.

        ``bind_address``/``bind_port``: the local IP and port to bind before
        connecting (None/0: any).

        Framing: ``delimiter`` (bytes, or str as UTF-8; 1 to 16 bytes) makes
        each DATA one frame without it (frames may be empty; a trailing
        partial frame comes at END); ``length_prefix_bytes`` (1, 2, 4 or 8)
        makes each DATA one frame's payload after a big-endian length prefix
        (END inside a frame: ERROR ProtocolError). ``framing``
        (FRAMING_NONE/_DELIMITER/_LENGTH_PREFIX or "none"/"delimiter"/
        "length_prefix") defaults to what those two name; a length prefix of
        4 bytes is just ``framing="length_prefix"``. ``max_frame``: the
        largest frame, in bytes (0: 1 MiB); a longer one is ERROR
        ProtocolError, then TERMINATE. See :meth:`send_frame`."""
        spec = dict(
            on_connection=on_connection,
            on_data=on_data,
            on_shutdown=on_shutdown,
            on_error=on_error,
            on_terminate=on_terminate,
            on_drain=on_drain,
            on_end=on_end,
            no_delay=no_delay,
            allow_half_open=allow_half_open,
            keepalive=keepalive,
            idle_timeout=idle_timeout,
            connection_timeout=connection_timeout,
            send_buffer_limit=send_buffer_limit,
            dispatcher=dispatcher,
            tls=tls,
            server_name=server_name,
            bind_address=bind_address,
            bind_port=bind_port,
            framing=framing,
            length_prefix_bytes=length_prefix_bytes,
            delimiter=delimiter,
            max_frame=max_frame,
        )
        addr = _cstr(address, "address")
        port = _port(port)
        conn = cls(0, refs=1)
        opts = _new_options(netev_connection_options, lib.netev_connection_options_init_sized)
        token = next(_tokens)
        keep = _fill_options(opts, spec, token, conn)
        _conn_registry[token] = _ConnEntry(conn, _callbacks_of(spec), keep)
        out = netev_connection()
        try:
            _starting(lib.netev_connection_open, addr, port, byref(opts), byref(out))
        except BaseException:
            _conn_registry.pop(token, None)  # no callback ever fires
            raise
        conn._handle = out.value
        return conn

    # -- actions ------------------------------------------------------------

    @property
    def handle(self) -> int:
        return self._handle

    def send(self, data) -> None:
        """Queues a copy of ``data`` (bytes-like). Raises ConnectionClosed
        after shutdown/close, BufferFull past the send-buffer limit."""
        if not isinstance(data, bytes):
            data = bytes(data)
        self._send_call(lib.netev_connection_send, data, len(data))

    def send_owned(self, data, on_free=None) -> None:
        """Sends ``data`` without copying it: netev reads the object's own
        buffer (bytes, bytearray, a C-contiguous memoryview, array, mmap …)
        until the bytes are written or dropped (close, an error, runtime
        shutdown). The binding holds ``data`` (and a buffer export, so a
        bytearray cannot be resized) until then; a writable buffer must
        not be changed meanwhile. ``on_free()``, if given, is called once
        when netev is done with it, on any thread (maybe this one, before
        this returns). Sends under 4 KiB are copied and freed at once.

        Raises as :meth:`send` does; then netev did not take the buffer and
        ``on_free`` is never called. TypeError/BufferError for an object
        without a contiguous buffer."""
        if on_free is not None and not callable(on_free):
            raise TypeError("on_free must be callable")
        view = _Py_buffer()
        _PyObject_GetBuffer(data, byref(view), _PyBUF_SIMPLE)
        token = next(_owned_tokens)
        _owned_registry[token] = (view, on_free)
        taken = [False]

        def returned(status):
            taken[0] = status == Status.OK

        try:
            self._send_call(
                lib.netev_connection_send_owned,
                view.buf,
                view.len,
                _OWNED_FREE_CB,
                token,
                returned=returned,
            )
        finally:
            # Refused (or never called): netev never calls free_fn.
            if not taken[0] and _owned_registry.pop(token, None) is not None:
                _PyBuffer_Release(byref(view))

    def send_frame(self, data) -> None:
        """Sends ``data`` (bytes-like, copied) as one frame of the
        connection's framing: after its big-endian length prefix, or
        followed by the delimiter; all of it is queued, or none. Raises
        InvalidArgument without framing, for a payload containing the
        delimiter or too long for the prefix; ConnectionClosed, BufferFull
        as :meth:`send`."""
        if not isinstance(data, bytes):
            data = bytes(data)
        self._send_call(lib.netev_connection_send_frame, data, len(data))

    def pause(self) -> None:
        """Stops reading: no DATA or END until :meth:`resume` (a DATA
        callback already running finishes). The peer's bytes back up in the
        kernel, then block its sends. Idempotent; any thread, any callback."""
        _call(lib.netev_connection_pause, self._handle)

    def resume(self) -> None:
        """Reads again: what the pause held back comes first, in order."""
        _call(lib.netev_connection_resume, self._handle)

    @property
    def paused(self) -> bool:
        out = c_bool()
        _call(lib.netev_connection_paused, self._handle, byref(out))
        return out.value

    def stats(self) -> "Stats":
        """The connection's counters (readable after its end, until released)."""
        s = netev_connection_stats()
        _call(lib.netev_connection_stats_get_sized, self._handle, byref(s), ctypes.sizeof(s))
        return Stats(s.bytes_sent, s.bytes_received, s.data_events, s.buffered_amount, s.rtt_us)

    def shutdown(self) -> None:
        """Closes the write side once queued bytes are out; ends any wait."""
        _call(lib.netev_connection_shutdown, self._handle)

    def close(self) -> None:
        """Aborts now: CLOSE then TERMINATE follow."""
        _call(lib.netev_connection_close, self._handle)

    def wait(self, timeout: float | None = None) -> bool:
        """Waits until the connection ended or shutdown was called: True, or
        False when ``timeout`` seconds ran out (None: no limit). With a
        dispatcher, its callbacks run on this thread meanwhile. Raises
        RuntimeError inside a running asyncio loop, which it would block
        (unless ``timeout`` is 0): await :meth:`wait_closed` there."""
        if timeout != 0:
            _refuse_in_running_loop("Connection.wait()", "await connection.wait_closed()")
        status = _sliced(
            lambda t: _call(lib.netev_connection_wait, self._handle, t, ok=(Status.OK, Status.ERR_TIMEOUT)),
            timeout,
        )
        return status == Status.OK

    def retain(self) -> None:
        """Takes one more reference, given back by release()."""
        _call(lib.netev_connection_retain, self._handle)
        self._refs += 1

    def release(self) -> None:
        """Gives back one reference; the last closes a client connection
        still open (CLOSE and TERMINATE still fire) and frees the handle."""
        _call(lib.netev_connection_release, self._handle)
        if self._refs > 0:
            self._refs -= 1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._refs > 0:
            self.release()

    def __del__(self):
        try:
            while self._refs > 0 and self._handle:
                self._refs -= 1
                lib.netev_connection_release(self._handle)
        except Exception:  # noqa: BLE001 - interpreter exit
            pass

    # -- properties ---------------------------------------------------------

    @property
    def address(self) -> str:
        needed = c_size_t()
        buf = ctypes.create_string_buffer(256)
        _call(lib.netev_connection_address, self._handle, buf, len(buf), byref(needed))
        if needed.value >= len(buf):
            buf = ctypes.create_string_buffer(needed.value + 1)
            _call(lib.netev_connection_address, self._handle, buf, len(buf), byref(needed))
        return buf.value.decode("utf-8", "replace")

    @property
    def port(self) -> int:
        out = c_uint16()
        _call(lib.netev_connection_port, self._handle, byref(out))
        return out.value

    @property
    def closed(self) -> bool:
        out = c_bool()
        _call(lib.netev_connection_closed, self._handle, byref(out))
        return out.value

    @property
    def no_delay(self) -> bool:
        out = c_bool()
        _call(lib.netev_connection_no_delay, self._handle, byref(out))
        return out.value

    @property
    def buffered_amount(self) -> int:
        out = c_size_t()
        _call(lib.netev_connection_buffered_amount, self._handle, byref(out))
        return out.value

    def _string(self, fn) -> str:
        needed = c_size_t()
        buf = ctypes.create_string_buffer(256)
        _call(fn, self._handle, buf, len(buf), byref(needed))
        if needed.value >= len(buf):
            buf = ctypes.create_string_buffer(needed.value + 1)
            _call(fn, self._handle, buf, len(buf), byref(needed))
        return buf.value.decode("utf-8", "replace")

    @property
    def local_address(self) -> str:
        """The connection's own IP (getsockname); "" before the TCP connect
        completed and after the end (read it in CONNECTION to keep it)."""
        return self._string(lib.netev_connection_local_address)

    @property
    def local_port(self) -> int:
        """The connection's own port; 0 before connecting and after the end."""
        out = c_uint16()
        _call(lib.netev_connection_local_port, self._handle, byref(out))
        return out.value

    @property
    def tls_version(self) -> str:
        """"TLSv1.3" or "TLSv1.2"; "" for plain TCP or before the handshake."""
        return self._string(lib.netev_connection_tls_version)

    @property
    def alpn(self) -> str:
        """The ALPN protocol agreed on; "" when none."""
        return self._string(lib.netev_connection_alpn)

    @property
    def server_name(self) -> str:
        """Server side: the SNI name the client sent; "" when none."""
        return self._string(lib.netev_connection_server_name)

    @property
    def peer_certificate(self) -> bytes:
        """The DER of the peer's leaf certificate; b"" when none."""
        needed = c_size_t()
        _call(lib.netev_connection_peer_certificate, self._handle, None, 0, byref(needed))
        if needed.value == 0:
            return b""
        buf = ctypes.create_string_buffer(needed.value)
        _call(lib.netev_connection_peer_certificate, self._handle, buf, len(buf), byref(needed))
        return buf.raw[: min(needed.value, len(buf))]

    @property
    def listener_handle(self) -> int:
        """The accepting listener's handle; 0 for a client connection."""
        out = netev_listener()
        _call(lib.netev_connection_listener, self._handle, byref(out))
        return out.value

    @property
    def errors(self) -> list:
        """The errors list (4D's .errors): ErrorInfo entries, oldest first."""
        return _errors(lib.netev_connection_error_count, lib.netev_connection_error_at, self._handle)

    @property
    def terminated(self) -> bool:
        """True once TERMINATE was delivered."""
        return self._terminated

    def __repr__(self) -> str:
        kind = "accepted" if self.listener is not None else "client"
        state = " terminated" if self._terminated else ""
        return f"<netev.Connection {kind} handle={self._handle}{state}>"


# ---------------------------------------------------------------------------
# TLS configurations
# ---------------------------------------------------------------------------


class TlsConfig:
    """A TLS configuration (netev_tls_config): built once with
    :meth:`client` or :meth:`server`, shared by any number of connections
    (``tls=`` of :meth:`Connection.open`, or of a listener's
    ``connection_options``). Connections keep it alive: :meth:`release`
    (or a ``with`` block, or garbage collection) may come right after use.

    Paths are ``*_file``; PEM text in memory is ``*_pem`` (str or bytes).
    A client without ``ca_file``/``ca_pem`` trusts the system's store."""

    def __init__(self, handle: int):
        self._handle = handle

    @classmethod
    def _create(cls, fn, **kw) -> "TlsConfig":
        opts = _new_options(netev_tls_options, lib.netev_tls_options_init_sized)
        keep = []
        for name in ("ca_file", "ca_pem", "cert_file", "cert_pem", "key_file", "key_pem"):
            v = kw.get(name)
            if v is None:
                continue
            if isinstance(v, (bytes, bytearray)):
                b = bytes(v)
                if b"\0" in b:
                    raise _bad(f"{name} contains a NUL byte")
            else:
                b = _cstr(str(v), name)
            keep.append(b)
            setattr(opts, name, b)
        alpn = kw.get("alpn")
        if alpn is not None:
            if not isinstance(alpn, str):
                alpn = ",".join(alpn)
            opts.alpn = _cstr(alpn, "alpn")
        opts.insecure_skip_verify = bool(kw.get("insecure_skip_verify", False))
        opts.require_client_cert = bool(kw.get("require_client_cert", False))
        opts.tls13_only = bool(kw.get("tls13_only", False))
        out = netev_tls_config()
        _call(fn, byref(opts), byref(out))
        return cls(out.value)

    @classmethod
    def client(
        cls,
        *,
        ca_file=None,
        ca_pem=None,
        cert_file=None,
        cert_pem=None,
        key_file=None,
        key_pem=None,
        alpn=None,
        insecure_skip_verify: bool = False,
        tls13_only: bool = False,
    ) -> "TlsConfig":
        """A client configuration (raises TlsError for unreadable files,
        bad PEM or a key not matching its certificate, InvalidArgument for
        a missing piece). ``alpn``: "h2,http/1.1" or a list."""
        return cls._create(
            lib.netev_tls_client_config_create,
            ca_file=ca_file,
            ca_pem=ca_pem,
            cert_file=cert_file,
            cert_pem=cert_pem,
            key_file=key_file,
            key_pem=key_pem,
            alpn=alpn,
            insecure_skip_verify=insecure_skip_verify,
            tls13_only=tls13_only,
        )

    @classmethod
    def server(
        cls,
        *,
        cert_file=None,
        cert_pem=None,
        key_file=None,
        key_pem=None,
        ca_file=None,
        ca_pem=None,
        alpn=None,
        require_client_cert: bool = False,
        tls13_only: bool = False,
    ) -> "TlsConfig":
        """A server configuration: a certificate chain and its key are
        required; ``require_client_cert`` verifies clients against ``ca_*``."""
        return cls._create(
            lib.netev_tls_server_config_create,
            cert_file=cert_file,
            cert_pem=cert_pem,
            key_file=key_file,
            key_pem=key_pem,
            ca_file=ca_file,
            ca_pem=ca_pem,
            alpn=alpn,
            require_client_cert=require_client_cert,
            tls13_only=tls13_only,
        )

    @property
    def handle(self) -> int:
        return self._handle

    def release(self) -> None:
        """Gives the handle back (connections using it keep it alive)."""
        if self._handle:
            h, self._handle = self._handle, 0
            _call(lib.netev_tls_config_release, h)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __del__(self):
        try:
            if self._handle:
                lib.netev_tls_config_release(self._handle)
                self._handle = 0
        except Exception:  # noqa: BLE001 - interpreter exit
            pass

    def __repr__(self) -> str:
        return f"<netev.TlsConfig handle={self._handle}>"


# ---------------------------------------------------------------------------
# Listener
# ---------------------------------------------------------------------------


_DEFAULT_BACKLOG = 1024  # netev's, for backlog 0


class _Accepted:
    """Listener.accepted()'s iterator: a class, not an async generator,
    so that a cancelled ``__anext__`` ends only that wait."""

    __slots__ = ("_listener",)

    def __init__(self, listener):
        self._listener = listener

    def __aiter__(self):
        return self

    async def __anext__(self) -> "Connection":
        listener = self._listener
        ready = lambda: (None, None) if (listener._accepted or listener._terminated) else None  # noqa: E731
        while True:
            await listener._waiters.until(ready)
            with _waiters.lock:
                if listener._accepted:
                    return listener._accepted.popleft()
                if listener._terminated:
                    raise StopAsyncIteration
                # another iteration took it: wait again


class Listener:
    """A TCP listener (4D's TCPListener).

    ``on_connection(listener, event)`` decides on each incoming connection:
    return a dict of connection options (the keyword arguments of
    :meth:`Connection.open`: callbacks, ``no_delay`` …) to accept with them
    (merged over ``connection_options``), True to accept with
    ``connection_options`` as they are, or None/False to reject. Without
    ``on_connection`` every connection is accepted with
    ``connection_options``. Accepted connections' callbacks receive a
    :class:`Connection` whose ``listener`` is this object; they use the
    listener's dispatcher unless their options name another.

    In a coroutine, ``async for connection in listener:`` takes the
    connections accepted from then on (see :meth:`accepted`).

    The listener is owned: :meth:`release` (or leaving a ``with`` block, or
    dropping the last reference to this object) stops it and frees its
    port. The binding holds its callbacks, not the object; callbacks that
    hold it (bound methods of an object that keeps the listener) keep it
    alive until :meth:`release`."""

    def __init__(self, handle: int):
        self._handle = handle
        self._owned = True
        self._terminated = False
        self._dispatcher = None
        self._accepted = None  # connections accepted for the async iteration
        self._accepted_limit = 0
        self._waiters = None
        #: Exceptions raised by this listener's callbacks (newest 64).
        self.callback_errors: list = []

    @classmethod
    def open(
        cls,
        port: int = 0,
        *,
        on_connection=None,
        on_error=None,
        on_terminate=None,
        bind_address: str | None = None,
        backlog: int = 0,
        reuse_port: bool = False,
        dispatcher=None,
        connection_options: dict | None = None,
    ) -> "Listener":
        """Listens on ``port`` (0: a free one, see :attr:`port`).
        ``connection_options`` (keyword options of :meth:`Connection.open`)
        are checked here, by netev too: a bad one raises now
        (InvalidArgument, TypeError), not at each accept."""
        for name, cb in (("on_connection", on_connection), ("on_error", on_error), ("on_terminate", on_terminate)):
            if cb is not None and not callable(cb):
                raise TypeError(f"{name} must be callable")
        defaults = dict(connection_options or {})
        for key in _CLIENT_ONLY_OPTIONS:
            if defaults.get(key) is not None:
                raise TypeError(f"{key} is a client connection's option: accepted connections have none")
        # The defaults as C options, for netev_listener_open to check; it
        # copies them, so `keep` (a local) need only outlive the call.
        c_defaults = _new_options(netev_connection_options, lib.netev_connection_options_init_sized)
        keep = _fill_options(c_defaults, defaults, 0, None)
        c_defaults.user_data_free = netev_user_data_free()  # no user_data behind token 0
        port = _port(port)
        listener = cls(0)
        backlog = _int(backlog, "backlog", 32)
        listener._accepted_limit = backlog or _DEFAULT_BACKLOG
        if isinstance(dispatcher, Dispatcher):
            listener._dispatcher = dispatcher
        opts = _new_options(netev_listener_options, lib.netev_listener_options_init_sized)
        token = next(_tokens)
        opts.on_connection = _ACCEPT_CB
        opts.on_error = _LISTENER_CB
        opts.on_terminate = _LISTENER_CB
        opts.user_data = token
        bind = _cstr(bind_address, "bind_address") if bind_address is not None else None
        opts.bind_address = bind
        opts.backlog = backlog
        opts.reuse_port = bool(reuse_port)
        opts.dispatcher = _dispatcher_handle(dispatcher)
        opts.connection_defaults = ctypes.pointer(c_defaults)
        entry = _ListenerEntry(listener, on_connection, on_error, on_terminate, defaults)
        listener._owner = entry.owner
        _listener_registry[token] = entry
        out = netev_listener()
        try:
            _starting(lib.netev_listener_open, port, byref(opts), byref(out))
        except BaseException:
            _listener_registry.pop(token, None)
            raise
        listener._handle = out.value
        return listener

    def accepted(self) -> "_Accepted":
        """An async iterator of the connections this listener accepts
        (``async for`` on the listener is the same), in order, until its
        TERMINATE. From the first call on, every accepted connection waits
        in the listener's queue until an iteration takes it: at most
        ``backlog`` (default 1024) wait, and past that incoming connections
        are rejected, as a kernel's accept queue would. A wait given up (a
        timeout, a cancelled task) loses no connection, and the iteration
        goes on.

        Each connection arrives as soon as it is accepted: await
        :meth:`Connection.wait_connected` for its CONNECTION (over TLS, the
        handshake). ``on_connection`` and ``connection_options`` still
        decide whether and how each is accepted; give the connections their
        callbacks there (``on_data`` …). A connection taken here is yours,
        as a client connection is: its handle stays valid, even after its
        end, until you release it (:meth:`Connection.release`, a ``with``
        block, or dropping it); release does not close an accepted
        connection, which then runs to its end."""
        with _waiters.lock:
            if self._accepted is None:
                self._accepted = collections.deque()
                self._waiters = _waiters.Waiters()
        return _Accepted(self)

    def __aiter__(self) -> "_Accepted":
        return self.accepted()

    @property
    def handle(self) -> int:
        return self._handle

    @property
    def port(self) -> int:
        """The port bound (the real one when opened with 0)."""
        out = c_uint16()
        _call(lib.netev_listener_port, self._handle, byref(out))
        return out.value

    @property
    def errors(self) -> list:
        return _errors(lib.netev_listener_error_count, lib.netev_listener_error_at, self._handle)

    @property
    def terminated(self) -> bool:
        return self._terminated

    def terminate(self) -> None:
        """Stops accepting; the port is free when this returns. Accepted
        connections go on."""
        _call(lib.netev_listener_terminate, self._handle)

    def release(self) -> None:
        """Gives the handle back, terminating the listener if it runs."""
        _call(lib.netev_listener_release, self._handle)
        self._owned = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._owned:
            self.release()

    def __del__(self):
        try:
            if self._owned and self._handle:
                self._owned = False
                self._owner.forget()
                lib.netev_listener_release(self._handle)
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        state = " terminated" if self._terminated else ""
        return f"<netev.Listener handle={self._handle}{state}>"


# ---------------------------------------------------------------------------
# UDP sockets
# ---------------------------------------------------------------------------

_UDP_CALLBACK_NAMES = ("on_data", "on_error", "on_terminate")
_UDP_SLOT_FOR_TYPE = {
    EVENT_DATA: "on_data",
    EVENT_ERROR: "on_error",
    EVENT_TERMINATE: "on_terminate",
}
_udp_registry: dict = {}  # token -> _UdpEntry, until user_data_free


class _UdpEntry:
    __slots__ = ("owner", "callbacks")

    def __init__(self, sock, callbacks):
        self.owner = _Owner(sock)
        self.callbacks = callbacks


def _udp_trampoline(handle, event_p, user_data):
    try:
        entry = _udp_registry.get(user_data)
        if entry is not None:
            # the socket goes on after a callback's exception
            sock = entry.owner.get(UdpSocket, handle)
            _deliver(sock, entry.callbacks, _UDP_SLOT_FOR_TYPE, handle, event_p, "udp")
    except BaseException as exc:  # noqa: BLE001 - a bug here must not reach C
        _report(exc, None, "netev binding (udp)")


def _udp_free_trampoline(user_data):
    try:
        _udp_registry.pop(user_data, None)
    except BaseException:  # noqa: BLE001
        pass


# Alive as long as the module, as the other C function pointers.
_UDP_CB = netev_udp_callback(_udp_trampoline)
_UDP_FREE_CB = netev_user_data_free(_udp_free_trampoline)
_NULL_UDP_CB = netev_udp_callback()  # a NULL slot


class UdpSocket:
    """A UDP socket (4D's UDPSocket). Open one with :meth:`UdpSocket.open`;
    every callback is called as ``callback(sock, event)``:

    - ``on_data``: one datagram, never merged or split: ``event.data`` its
      bytes (b"" for an empty one), ``event.ip``/``event.port`` its sender;
    - ``on_error``: a send the OS refused, or a name that did not resolve
      (``event.error`` is ``Status.ERR_HOST_NOT_FOUND``); the socket goes
      on;
    - ``on_terminate``: the last event, once, after :meth:`close`,
      :meth:`release` or :func:`shutdown_runtime`.

    An exception raised by a callback is reported (``callback_errors``,
    ``sys.unraisablehook``) and the socket goes on.

    The socket is owned: :meth:`release` (or leaving a ``with`` block, or
    dropping the last reference to this object) gives the handle back and
    closes it if still open. It never ends on its own. The binding holds
    its callbacks until TERMINATE, not the object: keep a reference while
    you want datagrams. Callbacks that hold it (bound methods of an object
    that keeps the socket) keep it alive until :meth:`release`."""

    def __init__(self, handle: int):
        self._handle = handle
        self._owned = True
        self._terminated = False
        self._dispatcher = None
        #: Exceptions raised by this socket's callbacks (newest 64).
        self.callback_errors: list = []

    @classmethod
    def open(
        cls,
        port: int = 0,
        *,
        on_data=None,
        on_error=None,
        on_terminate=None,
        bind_address: str | None = None,
        reuse_port: bool = False,
        broadcast: bool = False,
        send_buffer_limit: int = 0,
        dispatcher=None,
    ) -> "UdpSocket":
        """Opens a socket bound to ``port`` (0: a free one, see
        :attr:`port`) when this returns; datagrams are read in the
        background. ``bind_address``: the local IP (None: every interface,
        IPv6 and IPv4; an IPv4 sender shows as "a.b.c.d"). ``reuse_port``:
        SO_REUSEPORT; ``broadcast``: SO_BROADCAST. ``send_buffer_limit``:
        bytes of datagrams queued but unsent before :meth:`send` raises
        BufferFull (0: 1 MiB). Raises AddressInUse, InvalidArgument (a
        bind address that is no IP), InvalidHandle (a released
        dispatcher); then no callback ever fires."""
        callbacks = {"on_data": on_data, "on_error": on_error, "on_terminate": on_terminate}
        for name, cb in callbacks.items():
            if cb is not None and not callable(cb):
                raise TypeError(f"{name} must be callable")
        port = _port(port)
        limit = _int(send_buffer_limit, "send_buffer_limit", 64)
        sock = cls(0)
        if isinstance(dispatcher, Dispatcher):
            sock._dispatcher = dispatcher
        opts = _new_options(netev_udp_options, lib.netev_udp_options_init_sized)
        token = next(_tokens)
        for name in _UDP_CALLBACK_NAMES:
            # TERMINATE is always delivered to the binding: it marks the end.
            wanted = callbacks[name] is not None or name == "on_terminate"
            setattr(opts, name, _UDP_CB if wanted else _NULL_UDP_CB)
        opts.user_data = token
        opts.user_data_free = _UDP_FREE_CB
        bind = _cstr(bind_address, "bind_address") if bind_address is not None else None
        opts.bind_address = bind
        opts.reuse_port = bool(reuse_port)
        opts.broadcast = bool(broadcast)
        opts.send_buffer_limit = limit
        opts.dispatcher = _dispatcher_handle(dispatcher)
        entry = _UdpEntry(sock, {k: v for k, v in callbacks.items() if v is not None})
        sock._owner = entry.owner
        _udp_registry[token] = entry
        out = netev_udp_socket()
        try:
            _starting(lib.netev_udp_open, port, byref(opts), byref(out))
        except BaseException:
            _udp_registry.pop(token, None)  # no callback ever fires
            raise
        sock._handle = out.value
        return sock

    @property
    def handle(self) -> int:
        return self._handle

    def send(self, data, host: str, port: int) -> None:
        """Sends a copy of ``data`` (bytes-like; b"" is an empty datagram)
        as one datagram to ``host`` (an IP literal, or a name resolved in
        the background: one that does not resolve is an ERROR event later,
        HostNotFound, and its datagrams are dropped) and ``port``.
        Datagrams leave in the order sent. To answer a DATA event:
        ``sock.send(reply, event.ip, event.port)``.

        Raises InvalidArgument (over 65 507 bytes, or 65 527 to an IPv6
        literal; port 0; an empty host), BufferFull (past
        ``send_buffer_limit``: nothing queued, and no DRAIN follows: a later
        send may succeed), ConnectionClosed (after close), an OS error
        refusing it at once (NetevPermissionDenied for a broadcast address
        without ``broadcast``)."""
        if not isinstance(data, bytes):
            data = bytes(memoryview(data))  # bytes-like (not bytes(n): n zeros)
        _call(lib.netev_udp_send, self._handle, data, len(data), _cstr(host, "host"), _port(port))

    @property
    def port(self) -> int:
        """The port bound (the real one when opened with 0)."""
        out = c_uint16()
        _call(lib.netev_udp_port, self._handle, byref(out))
        return out.value

    def join_multicast(self, group: str, interface_address: str | None = None) -> None:
        """Joins the multicast group ``group`` (an IPv4 or IPv6 multicast
        address) on the interface with IPv4 address ``interface_address``
        (None: the default interface; IPv6 groups take None only). Raises
        InvalidArgument, an OS error when the machine does not allow it,
        ConnectionClosed."""
        iface = _cstr(interface_address, "interface_address") if interface_address is not None else None
        _call(lib.netev_udp_join_multicast, self._handle, _cstr(group, "group"), iface)

    def leave_multicast(self, group: str, interface_address: str | None = None) -> None:
        """Leaves a group joined with :meth:`join_multicast`."""
        iface = _cstr(interface_address, "interface_address") if interface_address is not None else None
        _call(lib.netev_udp_leave_multicast, self._handle, _cstr(group, "group"), iface)

    def close(self) -> None:
        """Stops the socket: its port is free when this returns, queued
        datagrams are dropped, TERMINATE follows. Harmless again; the
        handle stays valid until released."""
        _call(lib.netev_udp_close, self._handle)

    def release(self) -> None:
        """Gives the handle back, closing the socket if it is open
        (TERMINATE still follows)."""
        _call(lib.netev_udp_release, self._handle)
        self._owned = False

    @property
    def errors(self) -> list:
        """The errors list: ErrorInfo entries, oldest first (the newest 64):
        names that did not resolve and every refused send."""
        return _errors(lib.netev_udp_error_count, lib.netev_udp_error_at, self._handle)

    @property
    def terminated(self) -> bool:
        """True once TERMINATE was delivered."""
        return self._terminated

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self._owned:
            self.release()

    def __del__(self):
        try:
            if self._owned and self._handle:
                self._owned = False
                self._owner.forget()
                lib.netev_udp_release(self._handle)
        except Exception:  # noqa: BLE001 - interpreter exit
            pass

    def __repr__(self) -> str:
        state = " terminated" if self._terminated else ""
        return f"<netev.UdpSocket handle={self._handle}{state}>"


# ---------------------------------------------------------------------------
# Dispatcher
# ---------------------------------------------------------------------------


class Dispatcher:
    """Runs the callbacks of the objects naming it on a thread of yours:
    the one calling :meth:`run` (or :meth:`Connection.wait`), or an asyncio
    loop's thread after :meth:`attach`."""

    def __init__(self):
        out = netev_dispatcher()
        _call(lib.netev_dispatcher_create, byref(out))
        self._handle = out.value
        self._released = False
        self._loop = None
        self._fd = None
        #: Exceptions raised by run() from the asyncio reader (newest 64).
        self.callback_errors: list = []

    @classmethod
    def create(cls) -> "Dispatcher":
        return cls()

    @property
    def handle(self) -> int:
        return self._handle

    def fileno(self) -> int:
        """A descriptor readable while callbacks are queued (netev's: never
        read, write or close it)."""
        fd = c_int()
        _call(lib.netev_dispatcher_fd, self._handle, byref(fd))
        return fd.value

    def run(self, timeout: float | None = 0) -> int:
        """Runs the queued callbacks on this thread, waiting up to
        ``timeout`` seconds for the first (None: no limit); returns how
        many ran. Inside a running asyncio loop only ``run(0)`` is allowed
        (a wait would block the loop: RuntimeError); :meth:`attach` the
        dispatcher to the loop instead."""
        if timeout is None or not (timeout == 0 or math.isnan(float(timeout))):
            # Negative waits with no limit, as None does.
            _refuse_in_running_loop("Dispatcher.run() with a timeout", "attach() the dispatcher to the loop")
        ran = c_size_t()

        def step(t):
            status = _call(lib.netev_dispatcher_run, self._handle, t, byref(ran))
            return status if ran.value else Status.ERR_TIMEOUT

        if timeout is not None and (math.isnan(float(timeout)) or float(timeout) <= 0):
            _call(lib.netev_dispatcher_run, self._handle, float(timeout), byref(ran))
            return ran.value
        _sliced(step, timeout)
        return ran.value

    # -- asyncio ------------------------------------------------------------

    def attach(self, loop=None) -> None:
        """Runs this dispatcher's callbacks from an asyncio loop (default:
        the running loop): ``loop.add_reader(fd, run(0))``. Every callback
        then runs on the loop's thread, where it may use the loop directly
        (set futures' results, create tasks)."""
        if self._loop is not None:
            raise RuntimeError("dispatcher already attached to a loop")
        if loop is None:
            import asyncio

            loop = asyncio.get_running_loop()
        fd = self.fileno()
        loop.add_reader(fd, self._on_readable)
        self._loop, self._fd = loop, fd

    def detach(self) -> None:
        """Stops running from the loop given to attach (harmless if not attached)."""
        loop, fd = self._loop, self._fd
        self._loop = self._fd = None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(fd)

    def _on_readable(self) -> None:
        try:
            self.run(0)
        except Exception as exc:  # noqa: BLE001 - keep the loop going
            _report(exc, self, "dispatcher run")

    def release(self) -> None:
        """Detaches, then releases: connections bound to it close, and their
        last callbacks run on this thread before this returns."""
        self.detach()
        self._released = True
        _call(lib.netev_dispatcher_release, self._handle)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self._released:
            self.release()

    def __del__(self):
        try:
            if not getattr(self, "_released", True) and self._loop is None:
                self._released = True
                lib.netev_dispatcher_release(self._handle)
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        return f"<netev.Dispatcher handle={self._handle}>"


# ---------------------------------------------------------------------------
# Runtime and logging
# ---------------------------------------------------------------------------


def init_runtime(worker_threads: int = 0) -> None:
    """Starts netev's runtime (optional: the first open does it)."""
    opts = _new_options(netev_runtime_options, lib.netev_runtime_options_init_sized)
    opts.worker_threads = _int(worker_threads, "worker_threads", 32)
    _starting(lib.netev_runtime_init, byref(opts))


def shutdown_runtime(timeout: float = 10.0) -> None:
    """Ends every open object (each TERMINATE runs once) and stops netev's
    threads; a later open starts afresh. Registered with atexit too (with
    10 s, after which no open can start netev again), so no callback reaches
    a finalizing interpreter: a callback still running Python after 5 s of
    it (one that never returns) gets SystemExit raised inside it."""
    _call(lib.netev_runtime_shutdown, float(timeout))


# Set at exit, before the runtime's last shutdown: from then on nothing may
# start netev again. Its threads would call into the finalizing
# interpreter, which ends such a thread with pthread_exit, an unwind
# through netev's frames that aborts the process. _starting holds the lock
# across the call, so no open that began before the flag can restart the
# runtime after the shutdown.
_exiting = False
_start_lock = threading.RLock()  # reentrant: a log callback may open too


def _starting(fn, *args) -> int:
    """_call for the calls that may start netev's runtime."""
    with _start_lock:
        if _exiting:
            raise RuntimeShutdown(Status.ERR_SHUTDOWN, "the interpreter is exiting")
        return _call(fn, *args)


def _interrupt_callbacks() -> None:
    """Raises SystemExit in every thread (but this one) that runs one of
    this module's callbacks, at its next bytecode."""
    trampolines = {
        f.__code__
        for f in (
            _conn_trampoline,
            _free_trampoline,
            _listener_trampoline,
            _accept_trampoline,
            _udp_trampoline,
            _udp_free_trampoline,
            _owned_free_trampoline,
            _log_trampoline,
        )
    }
    me = threading.get_ident()
    for ident, frame in sys._current_frames().items():
        while frame is not None and ident != me:
            if frame.f_code in trampolines:
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(SystemExit))
                break
            frame = frame.f_back


def _atexit_shutdown() -> None:
    global _exiting
    try:
        with _start_lock:
            _exiting = True
        # Every callback still to run (each end's CLOSE and TERMINATE) waits
        # for the GIL, which busy Python threads hand over once per switch
        # interval (5 ms): thousands of connections would outlast any
        # deadline. The interpreter is exiting: hand it over at once.
        sys.setswitchinterval(1e-5)
        # Waits up to 10 s in all, as shutdown_runtime() does by default.
        # A callback still running Python after 5 s (a loop that never
        # ends) gets SystemExit raised inside it, so that it returns: a
        # thread that ran Python code while the interpreter finalizes
        # would abort the process. One blocked outside Python (waiting on
        # a lock nobody releases) stays blocked, and the exit goes on.
        if lib.netev_runtime_shutdown(5.0) == Status.ERR_TIMEOUT:
            _interrupt_callbacks()
            lib.netev_runtime_shutdown(5.0)
    except Exception:  # noqa: BLE001
        pass


atexit.register(_atexit_shutdown)


def log_open(path) -> None:
    """Appends netev's lifecycle log to the file at ``path``."""
    _call(lib.netev_log_open, _cstr(os.fspath(path), "path"))


def log_close() -> None:
    _call(lib.netev_log_close)


_log_fn = None


def _log_trampoline(line, user_data):
    fn = _log_fn
    if fn is None:
        return
    try:
        fn(line.decode("utf-8", "replace") if line else "")
    except BaseException as exc:  # noqa: BLE001
        _report(exc, None, "log")


_LOG_CB = netev_log_callback(_log_trampoline)


def set_log_callback(fn) -> None:
    """Hands each log line (a str) to ``fn``, on any thread, concurrently;
    None removes it."""
    global _log_fn
    if fn is not None and not callable(fn):
        raise TypeError("the log callback must be callable")
    _log_fn = fn
    _call(lib.netev_log_set_callback, _LOG_CB if fn is not None else netev_log_callback(), None)
