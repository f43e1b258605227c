"""Tests of the Python binding: loopback only, every wait bounded.

Run with NETEV_LIB naming libnetev.so and PYTHONPATH=bindings/python
(tests/python.rs does both under `cargo test`)."""

import asyncio
import ctypes
import errno
import gc
import math
import random
import shutil
import socket
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import pytest

import netev

REPO = Path(__file__).resolve().parents[3]
LIMIT = 20.0  # seconds any single wait in these tests may take


@pytest.fixture(scope="session", autouse=True)
def runtime():
    yield
    netev.shutdown_runtime(10)


def wait_until(pred, timeout=LIMIT, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def pump_until(dispatcher, pred, timeout=LIMIT):
    """Runs a dispatcher on this thread until pred() holds."""
    deadline = time.monotonic() + timeout
    while not pred() and time.monotonic() < deadline:
        dispatcher.run(0.05)
    return pred()


def collapse(types):
    """["data", "data", ...] -> one "data": pieces are arbitrary."""
    out = []
    for t in types:
        if not (t == "data" and out and out[-1] == "data"):
            out.append(t)
    return out


class Recorder:
    """Connection callbacks recording every event (any thread)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.events = []
        self.threads = set()
        self.data = bytearray()
        self.done = threading.Event()

    def record(self, conn, ev):
        with self.lock:
            self.events.append(ev)
            self.threads.add(threading.get_ident())
            if ev.type == "data":
                self.data += ev.data
        if ev.type == "terminate":
            self.done.set()

    def callbacks(self, **override):
        cbs = {name: self.record for name in netev._CALLBACK_NAMES}
        cbs.update(override)
        return cbs

    @property
    def types(self):
        with self.lock:
            return [e.type for e in self.events]


def echo_on_data(conn, ev):
    conn.send(ev.data)


def echo_listener(dispatcher=None, recorders=None, **kw):
    """A listener on 127.0.0.1 echoing every byte; each accepted
    connection's events go to a new Recorder appended to `recorders`."""

    def on_connection(listener, ev):
        assert ev.type == "connection"
        if recorders is None:
            return {"on_data": echo_on_data}
        rec = Recorder()
        recorders.append(rec)

        def on_data(conn, e):
            rec.record(conn, e)
            conn.send(e.data)

        return rec.callbacks(on_data=on_data)

    return netev.Listener.open(
        0, bind_address="127.0.0.1", on_connection=on_connection, dispatcher=dispatcher, **kw
    )


# -- layout -------------------------------------------------------------------


_OPTIONS = (
    (netev.netev_connection_options, "netev_connection_options"),
    (netev.netev_listener_options, "netev_listener_options"),
    (netev.netev_runtime_options, "netev_runtime_options"),
    (netev.netev_udp_options, "netev_udp_options"),
)


def test_options_size_matches_ctypes():
    """The plain initialiser writes the library's sizeof: this binding's
    structs mirror this version's header."""
    for struct, name in _OPTIONS:
        o = struct()
        assert getattr(netev.lib, name + "_init")(ctypes.byref(o)) == 0
        assert o.size == ctypes.sizeof(struct), name


def test_sized_init_writes_exactly_size_bytes():
    """_sized writes the given size (the binding's own struct) and no byte
    past it; a larger (newer) struct gets zeros, the defaults, past the
    library's fields; a size below the first version or NULL is refused."""
    for struct, name in _OPTIONS:
        init = getattr(netev.lib, name + "_init_sized")
        n = ctypes.sizeof(struct)
        buf = (ctypes.c_uint8 * (n + 64))(*([0xA5] * (n + 64)))
        assert init(ctypes.cast(buf, ctypes.POINTER(struct)), n + 32) == 0, name
        data = bytes(buf)
        assert int.from_bytes(data[:4], sys.byteorder) == n + 32, name
        assert data[n : n + 32] == bytes(32), name
        assert data[n + 32 :] == b"\xa5" * 32, name
        o = struct.from_buffer_copy(data[:n])
        for field, ctype in struct._fields_[1:]:
            value = getattr(o, field)
            assert not value, (name, field, value)
        assert init(ctypes.cast(buf, ctypes.POINTER(struct)), 3) == netev.Status.ERR_INVALID_ARGUMENT
        assert init(None, n) == netev.Status.ERR_NULL_ARGUMENT


def test_struct_layout_matches_header(tmp_path):
    """sizeof and every field's offset, as a C compiler sees include/netev.h."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler")
    structs = [
        netev.netev_event,
        netev.netev_connection_options,
        netev.netev_listener_options,
        netev.netev_error_info,
        netev.netev_runtime_options,
        netev.netev_connection_stats,
        netev.netev_tls_options,
        netev.netev_udp_options,
    ]
    lines = ["#include <stddef.h>", "#include <stdio.h>", '#include "netev.h"', "int main(void) {"]
    expected = []
    for s in structs:
        name = s.__name__
        lines.append(f'  printf("{name} %zu\\n", sizeof(struct {name}));')
        expected.append(f"{name} {ctypes.sizeof(s)}")
        for field, _ in s._fields_:
            lines.append(f'  printf("{name}.{field} %zu\\n", offsetof(struct {name}, {field}));')
            expected.append(f"{name}.{field} {getattr(s, field).offset}")
    lines += ["  return 0;", "}"]
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "layout"
    subprocess.run([cc, "-std=c11", "-I", str(REPO / "include"), str(src), "-o", str(exe)], check=True, timeout=60)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=30).stdout
    assert out.split("\n")[:-1] == expected


def test_every_header_function_is_declared():
    import re

    header = (REPO / "include" / "netev.h").read_text()
    declared = set(re.findall(r"^(?:const )?[a-z_]+(?: [a-z_]+)? \*?(netev_[a-z_]+)\(", header, re.M))
    assert len(declared) > 30
    assert declared == set(netev._SIGNATURES)


def test_names_and_version():
    assert netev.version().count(".") == 2
    assert netev.status_name(8) == "NETEV_ERR_CONNECTION_REFUSED"
    assert netev.status_name(999) == "NETEV_UNKNOWN_STATUS"
    assert [netev._type_name(i) for i in range(1, 8)] == [
        "connection",
        "data",
        "error",
        "close",
        "terminate",
        "drain",
        "end",
    ]
    for status, cls in netev._EXCEPTIONS.items():
        assert cls.status == status
        assert isinstance(netev.error_for(status), cls)
        assert netev.error_for(status).name == netev.status_name(status)


# -- echo ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 1000, 65536 * 3 + 7, 2 * 1024 * 1024 + 1])
def test_echo_round_trip(size):
    payload = random.Random(size).randbytes(size)
    rec = Recorder()
    with echo_listener() as listener:
        conn = netev.Connection.open("127.0.0.1", listener.port, no_delay=True, **rec.callbacks())
        with conn:
            # In pieces, then our end: the server shuts its side once the
            # echo is out, so the client sees every byte, then the end.
            for i in range(0, size, 100_000):
                conn.send(payload[i : i + 100_000])
            conn.shutdown()
            assert rec.done.wait(LIMIT), rec.types
            assert bytes(rec.data) == payload
            assert collapse(rec.types) == ["connection", "data", "end", "close", "terminate"]
            assert conn.terminated
            assert conn.errors == []
    # Without a dispatcher the callbacks ran on netev's threads.
    assert threading.get_ident() not in rec.threads


def test_full_event_sequence_both_sides():
    client = Recorder()
    servers = []
    with echo_listener(recorders=servers) as listener:
        got = bytearray()

        def on_data(conn, ev):
            client.record(conn, ev)
            got.extend(ev.data)
            if len(got) >= 4:
                conn.shutdown()

        conn = netev.Connection.open("127.0.0.1", listener.port, **client.callbacks(on_data=on_data))
        conn.send(b"ping")
        assert conn.wait(LIMIT)  # ends at shutdown, called from on_data
        assert client.done.wait(LIMIT), client.types
        assert wait_until(lambda: servers and servers[0].done.is_set())
        assert collapse(client.types) == ["connection", "data", "end", "close", "terminate"]
        assert collapse(servers[0].types) == ["connection", "data", "end", "close", "terminate"]
        first = client.events[0]
        assert (first.ip, first.port) == ("127.0.0.1", listener.port)
        assert first.error == 0 and first.message == "" and first.data == b""
        assert servers[0].events[0].ip == "127.0.0.1"
        conn.release()


def test_properties():
    accepted = []
    seen = threading.Event()

    def on_connection(listener, ev):
        def on_conn(conn, e):
            accepted.append((conn, conn.listener_handle, conn.address, conn.port))
            seen.set()

        return {"on_connection": on_conn}

    with netev.Listener.open(0, bind_address="127.0.0.1", on_connection=on_connection) as listener:
        with netev.Connection.open("127.0.0.1", listener.port, no_delay=True) as conn:
            assert conn.address == "127.0.0.1"
            assert conn.port == listener.port
            assert conn.no_delay is True
            assert conn.closed is False
            assert conn.listener_handle == 0
            assert isinstance(conn.buffered_amount, int)
            assert seen.wait(LIMIT)
            server_conn, listener_handle, address, port = accepted[0]
            assert server_conn.listener is listener
            assert listener_handle == listener.handle
            assert address == "127.0.0.1" and port != 0
            conn.shutdown()
            assert conn.closed is True
            assert conn.wait(LIMIT)
            assert "client" in repr(conn)


# -- errors -------------------------------------------------------------------


def free_port():
    """A loopback port nobody listens on (a listener's, terminated)."""
    listener = netev.Listener.open(0, bind_address="127.0.0.1")
    port = listener.port
    listener.terminate()  # the port is free when this returns
    listener.release()
    return port


def test_refused_connection():
    rec = Recorder()
    conn = netev.Connection.open("127.0.0.1", free_port(), **rec.callbacks())
    assert conn.wait(LIMIT)  # a failed connect ends the wait
    assert rec.done.wait(LIMIT)
    assert rec.types == ["error", "terminate"]
    err = rec.events[0]
    assert err.error == netev.Status.ERR_CONNECTION_REFUSED
    assert err.error_name == "NETEV_ERR_CONNECTION_REFUSED"
    assert err.os_error == errno.ECONNREFUSED
    assert err.message
    assert isinstance(err.exception(), netev.ConnectionRefused)
    errors = conn.errors
    assert len(errors) == 1
    assert errors[0].code == netev.Status.ERR_CONNECTION_REFUSED
    assert errors[0].name == "NETEV_ERR_CONNECTION_REFUSED"
    assert errors[0].os_error == errno.ECONNREFUSED
    assert errors[0].message and errors[0].component
    assert conn.closed
    conn.release()


def test_bad_input_raises_the_right_exception():
    with pytest.raises(netev.InvalidArgument) as e:
        netev.Connection.open("127.0.0.1", 0)
    assert e.value.status == netev.Status.ERR_INVALID_ARGUMENT
    assert e.value.name == "NETEV_ERR_INVALID_ARGUMENT"
    assert e.value.message
    assert isinstance(e.value, ValueError)
    with pytest.raises(netev.InvalidArgument):
        netev.Connection.open("127.0.0.1", 70000)
    with pytest.raises(netev.InvalidArgument):
        netev.Connection.open("127.0.0.1", 9, idle_timeout=math.nan)
    with pytest.raises(netev.InvalidArgument):
        netev.Connection.open("127.0.0.1", 9, connection_timeout=-1)
    with pytest.raises(netev.InvalidArgument):
        netev.Connection.open("", 9)
    with pytest.raises(netev.InvalidArgument):
        netev.Connection.open("bad\0name", 9)
    with pytest.raises(TypeError):
        netev.Listener.open(0, connection_options={"on_dta": print})
    with pytest.raises(netev.InvalidArgument):
        netev.Listener.open(0, bind_address="not an ip")
    with pytest.raises(netev.InvalidHandle):
        netev.Connection.open("127.0.0.1", 9, dispatcher=2**63)
    # Nothing of a failed open stays registered.
    assert not any(
        isinstance(e.conn, netev.Connection) and e.conn.handle == 0 for e in netev._conn_registry.values()
    )


def test_nan_timeouts_and_released_handles():
    with echo_listener() as listener:
        rec = Recorder()
        conn = netev.Connection.open("127.0.0.1", listener.port, **rec.callbacks())
        with pytest.raises(netev.InvalidArgument):
            conn.wait(math.nan)
        conn.release()
        # The handle stays usable inside the last callbacks (CLOSE,
        # TERMINATE), which run in the background, then is invalid.
        assert rec.done.wait(LIMIT)

        def invalid():
            try:
                conn.closed  # noqa: B018
            except netev.InvalidHandle:
                return True
            return False

        assert wait_until(invalid)
        with pytest.raises(netev.InvalidHandle):
            conn.send(b"x")
        with pytest.raises(netev.InvalidHandle):
            conn.port  # noqa: B018
        with pytest.raises(netev.InvalidHandle):
            conn.release()  # a double release
        with netev.Dispatcher() as d:
            with pytest.raises(netev.InvalidArgument):
                d.run(math.nan)
        with pytest.raises(netev.InvalidHandle):
            d.run(0)
        with pytest.raises(netev.InvalidHandle):
            d.fileno()
    # A released listener's handle is invalid once its TERMINATE returned.
    assert wait_until(lambda: listener.terminated)

    def invalid():
        try:
            listener.port  # noqa: B018
        except netev.InvalidHandle:
            return True
        return False

    assert wait_until(invalid)


def test_address_in_use():
    with echo_listener() as listener:
        with pytest.raises(netev.AddressInUse):
            netev.Listener.open(listener.port, bind_address="127.0.0.1")


def test_wait_times_out_and_send_after_shutdown():
    with netev.Listener.open(0, bind_address="127.0.0.1") as listener:  # never answers
        with netev.Connection.open("127.0.0.1", listener.port) as conn:
            start = time.monotonic()
            assert conn.wait(0.3) is False
            assert conn.wait(0) is False
            assert 0.25 <= time.monotonic() - start < 5
            conn.shutdown()
            with pytest.raises(netev.ConnectionClosed):
                conn.send(b"late")
            assert conn.wait(LIMIT) is True


def test_buffer_full_then_drain():
    """A peer that reads nothing: send refuses past the limit, DRAIN follows
    once it reads."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(LIMIT)
    drained = threading.Event()
    try:
        with netev.Connection.open(
            "127.0.0.1", srv.getsockname()[1], send_buffer_limit=64 * 1024, on_drain=lambda c, e: drained.set()
        ) as conn:
            peer, _ = srv.accept()
            chunk = b"x" * 16 * 1024
            with pytest.raises(netev.BufferFull):
                for _ in range(100_000):  # bounded: kernel buffers are a few MiB
                    conn.send(chunk)
            assert not drained.is_set()
            peer.settimeout(1)
            deadline = time.monotonic() + LIMIT
            while not drained.is_set() and time.monotonic() < deadline:
                try:
                    peer.recv(1 << 20)
                except socket.timeout:
                    pass
            assert drained.is_set()
            peer.close()
    finally:
        srv.close()


# -- callbacks: threads, lifetime, exceptions ------------------------------------


def test_dispatcher_keeps_callbacks_on_this_thread():
    client = Recorder()
    servers = []
    with netev.Dispatcher() as d:
        with echo_listener(dispatcher=d, recorders=servers) as listener:
            conn = netev.Connection.open("127.0.0.1", listener.port, dispatcher=d, **client.callbacks())
            conn.send(b"hello from the main thread")
            conn.shutdown()
            assert pump_until(d, lambda: client.done.is_set() and servers and servers[0].done.is_set())
            assert bytes(client.data) == b"hello from the main thread"
            assert client.threads == {threading.get_ident()}
            assert servers[0].threads == {threading.get_ident()}
            assert collapse(client.types) == ["connection", "data", "end", "close", "terminate"]
            conn.release()


def test_wait_runs_the_dispatcher():
    client = Recorder()
    got = bytearray()

    def on_data(conn, ev):
        client.record(conn, ev)
        got.extend(ev.data)
        if len(got) >= 5:
            conn.shutdown()  # ends the wait below

    with netev.Dispatcher() as d:
        with echo_listener(dispatcher=d) as listener:
            conn = netev.Connection.open("127.0.0.1", listener.port, dispatcher=d, **client.callbacks(on_data=on_data))
            conn.send(b"hello")
            assert conn.wait(LIMIT)  # runs every callback, the server's too, here
            assert bytes(got) == b"hello"
            assert client.threads == {threading.get_ident()}
            conn.release()


def test_asyncio_integration():
    async def main():
        loop = asyncio.get_running_loop()
        received = loop.create_future()
        terminated = loop.create_future()
        threads = set()
        buf = bytearray()
        payload = b"asyncio " * 1000

        def on_data(conn, ev):
            threads.add(threading.get_ident())
            buf.extend(ev.data)
            if len(buf) >= len(payload) and not received.done():
                received.set_result(bytes(buf))  # safe: we run on the loop's thread

        def on_terminate(conn, ev):
            threads.add(threading.get_ident())
            terminated.set_result(ev.type)

        d = netev.Dispatcher()
        d.attach(loop)
        try:
            with echo_listener(dispatcher=d) as listener:
                conn = netev.Connection.open(
                    "127.0.0.1", listener.port, dispatcher=d, on_data=on_data, on_terminate=on_terminate
                )
                conn.send(payload)
                ticks = 0

                async def ticker():  # the loop stays free meanwhile
                    nonlocal ticks
                    while True:
                        ticks += 1
                        await asyncio.sleep(0.001)

                t = asyncio.ensure_future(ticker())
                assert await asyncio.wait_for(received, LIMIT) == payload
                conn.shutdown()
                assert await asyncio.wait_for(terminated, LIMIT) == "terminate"
                t.cancel()
                assert ticks > 0
                assert threads == {threading.get_ident()}
                conn.release()
        finally:
            d.release()  # detaches from the loop first
        assert d._loop is None

    asyncio.run(asyncio.wait_for(main(), 60))


class CountingCallback:
    def __init__(self, sink):
        self.sink = sink

    def __call__(self, conn, ev):
        self.sink.extend(ev.data)


def test_callbacks_stay_alive_until_terminate():
    sink = bytearray()
    done = threading.Event()
    with echo_listener() as listener:
        cb = CountingCallback(sink)
        ref = weakref.ref(cb)
        # Only the binding holds the callables from here on.
        conn = netev.Connection.open(
            "127.0.0.1",
            listener.port,
            on_data=cb,
            on_terminate=lambda c, e: done.set(),
        )
        del cb
        for i in range(20):
            gc.collect()
            conn.send(b"%04d" % i)
            time.sleep(0.005)
        gc.collect()
        assert ref() is not None
        assert wait_until(lambda: len(sink) == 80)
        conn.shutdown()
        assert done.wait(LIMIT)
        assert bytes(sink) == b"".join(b"%04d" % i for i in range(20))
        # TERMINATE gave the callables back (user_data_free runs after it).
        assert wait_until(lambda: (gc.collect(), ref() is None)[1])
        conn.release()


def test_unreferenced_connection_runs_to_its_end():
    done = threading.Event()
    sink = bytearray()
    with echo_listener() as listener:

        def start():
            c = netev.Connection.open(
                "127.0.0.1", listener.port, on_data=lambda c, e: sink.extend(e.data), on_terminate=lambda c, e: done.set()
            )
            c.send(b"fire and forget")
            c.shutdown()

        start()
        gc.collect()
        assert done.wait(LIMIT)
        assert bytes(sink) == b"fire and forget"


def test_callback_exception_is_reported_not_propagated(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    done = threading.Event()

    def bad(conn, ev):
        raise ValueError("boom in on_data")

    with echo_listener() as listener:
        conn = netev.Connection.open("127.0.0.1", listener.port, on_data=bad, on_terminate=lambda c, e: done.set())
        conn.send(b"x")
        assert wait_until(lambda: conn.callback_errors)
        conn.shutdown()
        assert done.wait(LIMIT)  # the connection went on to its end
        assert isinstance(conn.callback_errors[0], ValueError)
        assert reported and isinstance(reported[0].exc_value, ValueError)
        assert "on_data" in reported[0].err_msg
        assert reported[0].object is conn
        conn.release()


def test_listener_rejects_and_reports():
    reported = []
    calls = []

    def on_connection(listener, ev):
        calls.append(ev)
        if len(calls) == 1:
            return None  # reject
        raise RuntimeError("boom in on_connection")  # rejects too

    old_hook = sys.unraisablehook
    sys.unraisablehook = reported.append
    try:
        with netev.Listener.open(0, bind_address="127.0.0.1", on_connection=on_connection) as listener:
            for _ in range(2):
                rec = Recorder()
                conn = netev.Connection.open("127.0.0.1", listener.port, **rec.callbacks())
                assert rec.done.wait(LIMIT)
                assert rec.types[-1] == "terminate"
                assert "data" not in rec.types
                conn.release()
            assert len(calls) == 2 and calls[0].ip == "127.0.0.1" and calls[0].connection != 0
            assert wait_until(lambda: listener.callback_errors)
            assert isinstance(listener.callback_errors[0], RuntimeError)
    finally:
        sys.unraisablehook = old_hook
    assert any(isinstance(r.exc_value, RuntimeError) for r in reported)


def test_listener_terminate_frees_the_port():
    terminated = []
    listener = netev.Listener.open(0, bind_address="127.0.0.1", on_terminate=lambda l, e: terminated.append(e.type))
    port = listener.port
    listener.terminate()
    assert wait_until(lambda: terminated == ["terminate"])
    assert listener.terminated
    listener.terminate()  # harmless again
    listener.release()
    with netev.Listener.open(port, bind_address="127.0.0.1") as again:
        assert again.port == port


def test_keyboard_interrupt_from_a_dispatched_callback_is_raised_by_run():
    def on_error(conn, ev):
        raise KeyboardInterrupt

    with netev.Dispatcher() as d:
        conn = netev.Connection.open("127.0.0.1", free_port(), dispatcher=d, on_error=on_error)
        with pytest.raises(KeyboardInterrupt):
            deadline = time.monotonic() + LIMIT
            while time.monotonic() < deadline:
                d.run(0.05)
        conn.release()


def test_shutdown_runtime_ends_everything_and_restarts():
    rec = Recorder()
    terminated = threading.Event()
    listener = netev.Listener.open(0, bind_address="127.0.0.1", on_terminate=lambda l, e: terminated.set())
    conn = netev.Connection.open("127.0.0.1", listener.port, **rec.callbacks())
    assert wait_until(lambda: "connection" in rec.types)
    netev.shutdown_runtime(10)
    assert rec.done.is_set() and terminated.is_set()
    assert rec.types[-1] == "terminate"
    conn.release()
    listener.release()
    # A later open starts afresh.
    with echo_listener() as l2:
        assert l2.port != 0
