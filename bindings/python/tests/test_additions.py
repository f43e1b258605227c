"""Issue 12's connection additions through the Python binding: framing
(delimiter, length prefix, max_frame, send_frame), pause/resume, local
address and port, bind address/port, stats, zero-copy send_owned,
ProtocolError. Loopback only; every wait bounded."""

import array
import ctypes
import gc
import socket
import sys
import threading
import time
import weakref

import pytest

import netev

LIMIT = 20.0


def wait_until(pred, timeout=LIMIT, step=0.005):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Log:
    """Every event of one connection, unfolded; each DATA as one frame.
    Reads the local and peer addresses in CONNECTION, and optionally
    pauses and/or retains the connection there."""

    def __init__(self, pause=False, retain=False):
        self.lock = threading.Lock()
        self.types = []
        self.frames = []
        self.events = []
        self.pause = pause
        self.retain = retain
        self.conn = None
        self.paused_in_callback = None
        self.local = None
        self.peer = None
        self.connected = threading.Event()
        self.done = threading.Event()

    def __call__(self, conn, ev):
        if ev.type == "connection":
            self.local = (conn.local_address, conn.local_port)
            self.peer = (ev.ip, ev.port)
            if self.pause:
                conn.pause()
                self.paused_in_callback = conn.paused
            if self.retain:
                conn.retain()
            self.conn = conn
        with self.lock:
            self.types.append(ev.type)
            self.events.append(ev)
            if ev.type == "data":
                self.frames.append(ev.data)
        if ev.type == "connection":
            self.connected.set()
        if ev.type == "terminate":
            self.done.set()

    def callbacks(self, **override):
        cbs = {name: self for name in netev._CALLBACK_NAMES}
        cbs.update(override)
        return cbs

    def snapshot(self):
        with self.lock:
            return list(self.types), list(self.frames)

    @property
    def data(self):
        with self.lock:
            return b"".join(self.frames)

    def count(self, t):
        with self.lock:
            return self.types.count(t)

    def error(self):
        with self.lock:
            return next(e for e in self.events if e.type == "error")


class Accepted:
    """A listener's accepted connections: a retained Log each, in order."""

    def __init__(self, pause=False):
        self.logs = []
        self.cond = threading.Condition()
        self.pause = pause
        self.edit = None

    def on_connection(self, listener, ev):
        log = Log(pause=self.pause, retain=True)
        with self.cond:
            i = len(self.logs)
            self.logs.append(log)
            self.cond.notify_all()
        opts = log.callbacks()
        if self.edit is not None:
            opts.update(self.edit(i))
        return opts

    def get(self, i):
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.logs) > i, LIMIT)
            log = self.logs[i]
        assert log.connected.wait(LIMIT)
        return log

    def release_all(self):
        for log in self.logs:
            if log.conn is not None:
                log.conn.release()


def raw_connect(port, host="127.0.0.1"):
    s = socket.create_connection((host, port), timeout=LIMIT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_exact(s, n):
    out = bytearray()
    while len(out) < n:
        b = s.recv(n - len(out))
        assert b, f"EOF after {len(out)} of {n} bytes"
        out += b
    return bytes(out)


def read_eof(s):
    assert s.recv(1) == b""


def pattern(n, off=0):
    return bytes(((i * 7 + i // 251) & 0xFF) for i in range(off, off + n))


def big_pattern(n, off=0):
    # faster for megabytes: a repeated 251-byte cycle, shifted
    cycle = bytes((i * 7) & 0xFF for i in range(256)) * 2
    reps = n // 256 + 2
    return (cycle[off % 256 : off % 256 + 256] * reps)[:n]


# -- statuses ------------------------------------------------------------------


def test_protocol_error_status():
    assert netev.Status.ERR_PROTOCOL == 17
    assert netev.status_name(17) == "NETEV_ERR_PROTOCOL"
    e = netev.error_for(17, "m")
    assert type(e) is netev.ProtocolError
    assert e.name == "NETEV_ERR_PROTOCOL"
    assert netev._EXCEPTIONS[17] is netev.ProtocolError
    assert (netev.FRAMING_NONE, netev.FRAMING_DELIMITER, netev.FRAMING_LENGTH_PREFIX) == (0, 1, 2)


# -- framing on the accepting side, fed by a plain socket -------------------------


def test_delimiter_framing():
    acc = Accepted()
    acc.edit = lambda i: {"delimiter": b"<>"} if i == 2 else {}
    listener = netev.Listener.open(
        0,
        bind_address="127.0.0.1",
        on_connection=acc.on_connection,
        connection_options={"delimiter": b"\r\n", "max_frame": 4},
    )
    try:
        with raw_connect(listener.port) as s:
            log = acc.get(0)
            # A frame and its delimiter's first byte: read, nothing delivered.
            s.sendall(b"one\r")
            assert wait_until(lambda: log.conn.stats().bytes_received == 4)
            assert log.snapshot()[1] == []
            s.sendall(b"\ntwo\r\n\r\na\rb\r\nlast")
            assert wait_until(lambda: len(log.snapshot()[1]) == 4)
            assert log.snapshot()[1] == [b"one", b"two", b"", b"a\rb"]
            s.shutdown(socket.SHUT_WR)
            read_eof(s)  # netev ends its side too
            assert log.done.wait(LIMIT)
            types, frames = log.snapshot()
            assert frames == [b"one", b"two", b"", b"a\rb", b"last"]
            assert types == ["connection"] + ["data"] * 5 + ["end", "close", "terminate"]
            st = log.conn.stats()
            assert (st.bytes_received, st.data_events, st.bytes_sent) == (4 + 17, 5, 0)

        # max_frame exactly passes; longer: ERROR ProtocolError, nothing of it.
        with raw_connect(listener.port) as s:
            log = acc.get(1)
            s.sendall(b"abcd\r\nabcdefgh")
            assert log.done.wait(LIMIT)
            types, frames = log.snapshot()
            assert frames == [b"abcd"]
            assert types == ["connection", "data", "error", "terminate"]
            err = log.error()
            assert err.error == netev.Status.ERR_PROTOCOL
            assert isinstance(err.exception(), netev.ProtocolError)
            assert [e.code for e in log.conn.errors] == [netev.Status.ERR_PROTOCOL]

        # The accept callback's own delimiter, read by netev after it returned.
        with raw_connect(listener.port) as s:
            log = acc.get(2)
            gc.collect()
            s.sendall(b"x<>\r\n<><y")
            assert wait_until(lambda: len(log.snapshot()[1]) == 2)
            s.shutdown(socket.SHUT_WR)
            read_eof(s)
            assert log.done.wait(LIMIT)
            assert log.snapshot()[1] == [b"x", b"\r\n", b"<y"]
    finally:
        listener.release()
        acc.release_all()


def test_length_prefix_framing():
    acc = Accepted()
    listener = netev.Listener.open(
        0,
        bind_address="127.0.0.1",
        on_connection=acc.on_connection,
        connection_options={"length_prefix_bytes": 2, "max_frame": 16},
    )
    try:
        with raw_connect(listener.port) as s:
            log = acc.get(0)
            s.sendall(b"\x00\x03abc" + b"\x00\x00" + b"\x00\x05he")
            assert wait_until(lambda: log.conn.stats().bytes_received == 11)
            assert wait_until(lambda: len(log.snapshot()[1]) == 2)
            assert log.snapshot()[1] == [b"abc", b""]
            s.sendall(b"llo\x00")  # the rest, and half of the next prefix
            assert wait_until(lambda: log.conn.stats().bytes_received == 15)
            assert wait_until(lambda: len(log.snapshot()[1]) == 3)
            assert log.snapshot()[1] == [b"abc", b"", b"hello"]
            sixteen = pattern(16)
            s.sendall(b"\x10" + sixteen)
            assert wait_until(lambda: len(log.snapshot()[1]) == 4)
            # END inside a frame: ERROR ProtocolError, then TERMINATE.
            s.sendall(b"\x00\x04x")
            s.shutdown(socket.SHUT_WR)
            assert log.done.wait(LIMIT)
            types, frames = log.snapshot()
            assert frames == [b"abc", b"", b"hello", sixteen]
            assert types == ["connection"] + ["data"] * 4 + ["error", "terminate"]
            assert log.error().error == netev.Status.ERR_PROTOCOL
            st = log.conn.stats()
            assert (st.bytes_received, st.data_events) == (35, 4)

        with raw_connect(listener.port) as s:
            log = acc.get(1)
            s.sendall(b"\x00\x11" + pattern(17))
            assert log.done.wait(LIMIT)
            assert log.snapshot() == (["connection", "error", "terminate"], [])
            assert isinstance(log.error().exception(), netev.ProtocolError)
            assert log.conn.stats().data_events == 0
    finally:
        listener.release()
        acc.release_all()


# -- send_frame -------------------------------------------------------------------


def _payload(n, seed, delim):
    p = bytearray(pattern(n, seed))
    if delim:
        p = p.replace(delim[:1], b"x")
    return bytes(p)


@pytest.mark.parametrize(
    "opts, overhead, delim, max_payload",
    [
        ({"delimiter": b"\n"}, 1, b"\n", 100_000),
        ({"delimiter": b"\x00\xff\x00"}, 3, b"\x00\xff\x00", 100_000),
        ({"delimiter": "\r\n", "framing": "delimiter"}, 2, b"\r\n", 100_000),
        ({"length_prefix_bytes": 1}, 1, b"", 255),
        ({"length_prefix_bytes": 2}, 2, b"", 65535),
        ({"length_prefix_bytes": 4}, 4, b"", 100_000),
        ({"length_prefix_bytes": 8}, 8, b"", 100_000),
        ({"framing": netev.FRAMING_LENGTH_PREFIX}, 4, b"", 100_000),  # 0 = 4
        ({"framing": "length_prefix"}, 4, b"", 100_000),
    ],
)
def test_send_frame_round_trip(opts, overhead, delim, max_payload):
    """The server echoes each frame with send_frame: the client gets exactly
    the frames it sent; refused frames queue nothing."""

    def on_data(conn, ev):
        conn.send_frame(ev.data)

    listener = netev.Listener.open(
        0,
        bind_address="127.0.0.1",
        connection_options={**opts, "max_frame": 200_000, "on_data": on_data},
    )
    with listener:
        log = Log()
        sent = [b"", b"a", b"hello world", _payload(200, 1, delim), _payload(max_payload, 2, delim), b""]
        with netev.Connection.open(
            "127.0.0.1", listener.port, no_delay=True, max_frame=200_000, **opts, **log.callbacks()
        ) as conn:
            wire = 0
            for f in sent:
                conn.send_frame(f)
                wire += len(f) + overhead
                if delim:
                    with pytest.raises(netev.InvalidArgument):
                        conn.send_frame(b"a" + delim + b"b")
                    with pytest.raises(netev.InvalidArgument):
                        conn.send_frame(delim)
                elif max_payload < 100_000:
                    with pytest.raises(netev.InvalidArgument):
                        conn.send_frame(b"z" * (max_payload + 1))
            assert wait_until(lambda: len(log.snapshot()[1]) >= len(sent))
            conn.shutdown()
            assert log.done.wait(LIMIT)
            types, frames = log.snapshot()
            assert frames == sent
            assert types == ["connection"] + ["data"] * len(sent) + ["end", "close", "terminate"]
            st = conn.stats()
            assert st.bytes_sent == wire
            assert st.bytes_received == wire
            assert st.data_events == len(sent)
            assert st.buffered_amount == 0
            # bytes-likes are frames too
            with pytest.raises(netev.ConnectionClosed):
                conn.send_frame(memoryview(b"late"))


def test_send_frame_without_framing_is_refused():
    with netev.Listener.open(0, bind_address="127.0.0.1") as listener:
        with netev.Connection.open("127.0.0.1", listener.port) as conn:
            with pytest.raises(netev.InvalidArgument):
                conn.send_frame(b"x")
            conn.close()


@pytest.mark.parametrize(
    "opts, frames, wire",
    [
        ({"length_prefix_bytes": 2}, [b"hi", b""], b"\x00\x02hi\x00\x00"),
        ({"length_prefix_bytes": 8}, [b"abc"], b"\x00" * 7 + b"\x03abc"),
        ({"length_prefix_bytes": 4}, [b"q" * 258], b"\x00\x00\x01\x02" + b"q" * 258),
        ({"length_prefix_bytes": 1}, [bytearray(b"\x00\xff")], b"\x02\x00\xff"),
        ({"delimiter": b"\r\n"}, [b"hi", b"", b"x"], b"hi\r\n\r\nx\r\n"),
    ],
)
def test_send_frame_wire_bytes(opts, frames, wire):
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(LIMIT)
    try:
        with netev.Connection.open("127.0.0.1", srv.getsockname()[1], **opts) as conn:
            peer, _ = srv.accept()
            with peer:
                peer.settimeout(LIMIT)
                for f in frames:
                    conn.send_frame(f)
                assert read_exact(peer, len(wire)) == wire
                conn.shutdown()
                read_eof(peer)
    finally:
        srv.close()


def test_bad_framing_and_bind_options():
    bad = [
        {"delimiter": b""},
        {"delimiter": b"-" * 17},
        {"length_prefix_bytes": 3},
        {"framing": 3},
        {"framing": "none", "delimiter": b"\n"},
        {"framing": netev.FRAMING_NONE, "length_prefix_bytes": 2},
        {"delimiter": b"\n", "length_prefix_bytes": 2},
        {"bind_address": "localhost"},
        {"framing": "lines"},
        {"framing": 256},
        {"max_frame": -1},
        {"bind_port": 70000},
    ]
    for opts in bad:
        with pytest.raises(netev.InvalidArgument):
            netev.Connection.open("127.0.0.1", 9, **opts)
    with pytest.raises(TypeError):
        netev.Connection.open("127.0.0.1", 9, delimiter=12)
    # The longest delimiter is fine.
    with netev.Listener.open(0, bind_address="127.0.0.1") as listener:
        with netev.Connection.open("127.0.0.1", listener.port, delimiter=b"-" * 16) as conn:
            conn.close()
            assert conn.wait(LIMIT)
    # Nothing of a failed open stays registered.
    assert all(e.conn.handle != 0 for e in netev._conn_registry.values())


def test_bad_framing_in_accept_rejects_that_connection():
    """Options an accept callback returns that netev refuses: the socket is
    closed and the listener goes on."""
    calls = []

    def on_connection(listener, ev):
        calls.append(ev)
        return {"length_prefix_bytes": 3} if len(calls) == 1 else {"delimiter": b"\n"}

    with netev.Listener.open(0, bind_address="127.0.0.1", on_connection=on_connection) as listener:
        with raw_connect(listener.port) as s:
            s.settimeout(LIMIT)
            assert s.recv(1) == b""  # closed at once
        assert wait_until(lambda: [e.code for e in listener.errors] == [netev.Status.ERR_INVALID_ARGUMENT])
        log = Log()
        with netev.Connection.open("127.0.0.1", listener.port, delimiter=b"\n", **log.callbacks()) as conn:
            assert log.connected.wait(LIMIT)
            conn.send_frame(b"fine")
            conn.shutdown()
            assert log.done.wait(LIMIT)


# -- pause / resume ---------------------------------------------------------------


def test_pause_resume():
    acc = Accepted(pause=True)
    listener = netev.Listener.open(0, bind_address="127.0.0.1", on_connection=acc.on_connection)
    try:
        with raw_connect(listener.port) as s:
            log = acc.get(0)
            server = log.conn
            assert log.paused_in_callback is True
            assert server.paused is True
            # Write until the kernel's buffers are full: netev reads nothing.
            s.setblocking(False)
            written = 0
            chunk_size = 65536
            while True:
                try:
                    n = s.send(big_pattern(chunk_size, written))
                except BlockingIOError:
                    break
                written += n
                assert written < 256 << 20, "netev kept reading while paused"
            assert written > 0
            # The bounded window: nothing arrives while paused.
            time.sleep(0.3)
            assert log.count("data") == 0
            st = server.stats()
            assert (st.bytes_received, st.data_events) == (0, 0)
            server.pause()  # idempotent
            assert server.paused is True

            server.resume()
            assert server.paused is False
            server.resume()  # idempotent
            assert wait_until(lambda: len(log.data) >= written)
            assert log.data == big_pattern(written)
            assert server.stats().bytes_received == written

            # Paused from this thread; the peer sends a tail and ends.
            server.pause()
            before = log.count("data")
            s.setblocking(True)
            s.settimeout(LIMIT)
            s.sendall(b"tail")
            s.shutdown(socket.SHUT_WR)
            time.sleep(0.3)
            assert log.count("data") == before
            assert log.count("end") == 0 and log.count("close") == 0
            server.resume()
            assert log.done.wait(LIMIT)
            types, _ = log.snapshot()
            assert log.data == big_pattern(written) + b"tail"
            i = 1
            while types[i] == "data":
                i += 1
            assert types[0] == "connection" and types[i:] == ["end", "close", "terminate"]
            read_eof(s)
    finally:
        listener.release()
        acc.release_all()
    stale = netev.Connection(0xDEAD0003, refs=0)
    with pytest.raises(netev.InvalidHandle):
        stale.pause()
    with pytest.raises(netev.InvalidHandle):
        stale.resume()
    with pytest.raises(netev.InvalidHandle):
        stale.paused  # noqa: B018


# -- local address, bind ----------------------------------------------------------


def _free_port(ip):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def test_local_address_and_bind():
    acc = Accepted()
    listener = netev.Listener.open(0, bind_address="127.0.0.1", on_connection=acc.on_connection)
    try:
        log = Log()
        with netev.Connection.open("127.0.0.1", listener.port, **log.callbacks()) as conn:
            assert log.connected.wait(LIMIT)
            slog = acc.get(0)
            ip, port = log.local
            assert ip == "127.0.0.1" and port != 0
            assert log.peer == ("127.0.0.1", listener.port)
            assert slog.peer == ("127.0.0.1", port)
            assert slog.local == ("127.0.0.1", listener.port)
            assert (conn.local_address, conn.local_port) == ("127.0.0.1", port)
            assert slog.conn.port == port  # an accepted connection's port is the peer's
            assert conn.stats().rtt_us > 0  # connected: the handshake's RTT
            conn.shutdown()
            assert log.done.wait(LIMIT)
            assert slog.done.wait(LIMIT)
            assert (conn.local_address, conn.local_port) == ("", 0)
            assert (slog.conn.local_address, slog.conn.local_port) == ("", 0)
            assert conn.stats().rtt_us == 0  # ended: unknown

        bport = _free_port("127.0.0.2")
        blog = Log()
        with netev.Connection.open(
            "127.0.0.1", listener.port, bind_address="127.0.0.2", bind_port=bport, **blog.callbacks()
        ) as conn:
            assert blog.connected.wait(LIMIT)
            slog = acc.get(1)
            assert blog.local == ("127.0.0.2", bport)
            assert slog.peer == ("127.0.0.2", bport)
            assert slog.conn.address == "127.0.0.2"
            conn.shutdown()
            assert blog.done.wait(LIMIT)

        alog = Log()
        with netev.Connection.open("127.0.0.1", listener.port, bind_address="127.0.0.3", **alog.callbacks()) as conn:
            assert alog.connected.wait(LIMIT)
            slog = acc.get(2)
            ip, port = alog.local
            assert ip == "127.0.0.3" and port != 0
            assert slog.peer == ("127.0.0.3", port)
            conn.shutdown()
            assert alog.done.wait(LIMIT)
    finally:
        listener.release()
        acc.release_all()


# -- send_owned -------------------------------------------------------------------


class Frees:
    def __init__(self):
        self.lock = threading.Lock()
        self.counts = {}
        self.threads = set()

    def on_free(self, key):
        def f():
            with self.lock:
                self.counts[key] = self.counts.get(key, 0) + 1
                self.threads.add(threading.get_ident())

        return f

    def of(self, key):
        with self.lock:
            return self.counts.get(key, 0)


def _echo_listener():
    def on_data(conn, ev):
        conn.send(ev.data)

    return netev.Listener.open(
        0,
        bind_address="127.0.0.1",
        connection_options={"on_data": on_data, "send_buffer_limit": 64 << 20},
    )


def test_send_owned_echo_and_frees():
    """bytes, bytearray, memoryview slices and an array, of every size,
    mixed with copying sends: echoed byte for byte, each on_free once."""
    frees = Frees()
    log = Log()
    with _echo_listener() as listener:
        with netev.Connection.open(
            "127.0.0.1", listener.port, no_delay=True, send_buffer_limit=64 << 20, **log.callbacks()
        ) as conn:
            expect = bytearray()
            keys = []
            off = 0
            for n in (0, 1, 100, 4095, 4096, 4097, 65537, (1 << 20) + 3, 3 << 20):
                for kind in ("bytes", "bytearray", "memoryview"):
                    b = big_pattern(n, off)
                    off += n
                    if kind == "bytes":
                        obj = b
                    elif kind == "bytearray":
                        obj = bytearray(b)
                    else:  # a slice of a larger object: its own bytes only
                        obj = memoryview(b"<<" + b + b">>")[2 : 2 + n]
                    key = (n, kind)
                    keys.append(key)
                    conn.send_owned(obj, on_free=frees.on_free(key))
                    expect += b
                    sep = f"|{n}{kind}|".encode()
                    conn.send(sep)
                    expect += sep
            arr = array.array("i", range(3000))  # 12 000 bytes, not 'B'
            conn.send_owned(arr, on_free=frees.on_free("array"))
            keys.append("array")
            expect += arr.tobytes()
            conn.send_owned(b"no callback")
            expect += b"no callback"
            assert wait_until(lambda: len(log.data) >= len(expect), 60)
            assert log.data == bytes(expect)
            # Written, so freed: each exactly once.
            assert wait_until(lambda: all(frees.of(k) == 1 for k in keys))
            conn.shutdown()
            assert log.done.wait(LIMIT)
    assert all(frees.of(k) == 1 for k in keys)
    assert not netev._owned_registry


def test_send_owned_holds_the_object_until_freed():
    """A peer that reads nothing: a big buffer stays lent (its object alive
    without our reference, a bytearray not resizable); BUFFER_FULL and a
    send after close leave the next one ours; close drops the first and
    frees it once."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(LIMIT)
    frees = Frees()
    try:
        log = Log()
        with netev.Connection.open(
            "127.0.0.1", srv.getsockname()[1], send_buffer_limit=64 << 10, **log.callbacks()
        ) as conn:
            peer, _ = srv.accept()
            with peer:
                assert log.connected.wait(LIMIT)

                class Buf(bytearray):  # weak-referenceable
                    pass

                big = Buf(b"\x5a" * (32 << 20))
                gone = weakref.ref(big)
                conn.send_owned(big, on_free=frees.on_free("big"))  # into an empty queue: taken whole
                with pytest.raises(BufferError):
                    big.extend(b"x")  # exported to netev
                del big
                gc.collect()
                assert gone() is not None  # the binding holds it
                assert frees.of("big") == 0
                assert conn.buffered_amount > 0

                nxt = bytearray(b"n" * 8192)
                with pytest.raises(netev.BufferFull):
                    conn.send_owned(nxt, on_free=frees.on_free("next"))
                nxt.extend(b"!")  # not exported any more: ours again
                data = b"d" * 10000
                refs = sys.getrefcount(data)
                with pytest.raises(netev.BufferFull):
                    conn.send_owned(data, on_free=frees.on_free("data"))
                assert sys.getrefcount(data) == refs

                conn.close()
                assert log.done.wait(LIMIT)
                assert wait_until(lambda: frees.of("big") == 1)
                gc.collect()
                assert gone() is None
                with pytest.raises(netev.ConnectionClosed):
                    conn.send_owned(nxt, on_free=frees.on_free("next"))
                nxt.extend(b"!")
                assert frees.of("next") == 0 and frees.of("data") == 0
    finally:
        srv.close()
    assert frees.of("big") == 1
    assert not netev._owned_registry


def test_send_owned_refuses_what_is_no_contiguous_buffer():
    with netev.Listener.open(0, bind_address="127.0.0.1") as listener:
        with netev.Connection.open("127.0.0.1", listener.port) as conn:
            with pytest.raises(TypeError):
                conn.send_owned("text")
            with pytest.raises(BufferError):
                conn.send_owned(memoryview(b"abcdef")[::2])
            with pytest.raises(TypeError):
                conn.send_owned(b"x", on_free=3)
            conn.close()
    assert not netev._owned_registry


def test_send_owned_on_free_exception_is_reported(monkeypatch):
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(u.exc_value))
    log = Log()
    with _echo_listener() as listener:
        with netev.Connection.open("127.0.0.1", listener.port, **log.callbacks()) as conn:

            def boom():
                raise RuntimeError("from on_free")

            conn.send_owned(b"y" * 10000, on_free=boom)
            assert wait_until(lambda: len(log.data) == 10000)
            assert wait_until(lambda: len(seen) == 1)
            assert str(seen[0]) == "from on_free"
            conn.shutdown()
            assert log.done.wait(LIMIT)


def test_stats_struct_size():
    s = netev.netev_connection_stats()
    with netev.Listener.open(0, bind_address="127.0.0.1") as listener:
        with netev.Connection.open("127.0.0.1", listener.port) as conn:
            assert netev.lib.netev_connection_stats_get_sized(conn.handle, ctypes.byref(s), ctypes.sizeof(s)) == 0
            assert s.size == ctypes.sizeof(s)  # the binding mirrors this library's struct
            # a smaller (older) caller's struct: filled up to its size
            small = netev.netev_connection_stats()
            assert netev.lib.netev_connection_stats_get_sized(conn.handle, ctypes.byref(small), 16) == 0
            assert small.size == 16
            assert netev.lib.netev_connection_stats_get_sized(conn.handle, ctypes.byref(small), 3) == 2
            conn.close()
