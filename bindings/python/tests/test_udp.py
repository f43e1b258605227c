"""UDP sockets (issue 13) through the Python binding, against the socket
module's UDP sockets on loopback: datagram boundaries (0, 1, 1400 and
65 507 bytes) in, echoed back from the DATA callback and sent from Python,
the sender's ip and port exact both ways; a name ("localhost") and one that
does not resolve (ERROR HOST_NOT_FOUND, the socket goes on); refused input;
close freeing the port before it returns; TERMINATE once and last;
callbacks kept alive until TERMINATE; callback exceptions; a
dispatcher-bound socket whose callbacks run on this thread. Every wait
bounded."""

import errno
import gc
import select
import socket
import sys
import threading
import time
import weakref

import pytest

import netev

LIMIT = 20.0  # seconds any single wait may take
SIZES = (0, 1, 1400, 65507)
UNRESOLVABLE = "no-such-host.invalid"


def wait_until(pred, timeout=LIMIT, step=0.005):
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


def pattern(n, off=0):
    return bytes(((i * 7 + i // 251) & 0xFF) for i in range(off, off + n))


def loopback(family):
    return "127.0.0.1" if family == socket.AF_INET else "::1"


def bsd(family=socket.AF_INET, port=0):
    """A plain UDP socket bound to the loopback address of ``family``."""
    s = socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.bind((loopback(family), port))
    except BaseException:
        s.close()
        raise
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)  # room for 64 KiB datagrams
    s.settimeout(LIMIT)  # every recv bounded
    return s


def expect(peer, want, from_port):
    """The next datagram ``peer`` receives is exactly ``want``, from
    ``from_port`` on its loopback address."""
    data, addr = peer.recvfrom(65536)
    assert len(data) == len(want)
    assert data == want
    assert addr[0] == loopback(peer.family)
    assert addr[1] == from_port


def ipv6_available():
    try:
        bsd(socket.AF_INET6).close()
        return True
    except OSError:
        return False


def bind_fails(family, port):
    try:
        bsd(family, port).close()
    except OSError as e:
        return e.errno
    return 0


class Log:
    """Every event of one UDP socket, from any thread. ``also(sock, ev)``
    runs after recording (its exceptions reach the binding)."""

    def __init__(self, also=None):
        self.cond = threading.Condition()
        self.also = also
        self.events = []
        self.threads = []
        self.socks = []
        self.running = 0
        self.overlaps = 0
        self.after_terminate = 0
        self.terminates = 0

    def __call__(self, sock, ev):
        with self.cond:
            if self.running:
                self.overlaps += 1
            self.running += 1
            if self.terminates:
                self.after_terminate += 1
            self.events.append(ev)
            self.threads.append(threading.get_ident())
            self.socks.append((sock, ev.connection))
            if ev.type == "terminate":
                self.terminates += 1
        try:
            if self.also is not None:
                self.also(sock, ev)
        finally:
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def callbacks(self):
        return {"on_data": self, "on_error": self, "on_terminate": self}

    def wait(self, pred, timeout=LIMIT):
        with self.cond:
            return self.cond.wait_for(pred, timeout)

    def wait_datagrams(self, n):
        return self.wait(lambda: len(self.datagrams) >= n)

    def wait_terminated(self):
        return self.wait(lambda: self.terminates > 0 and self.running == 0)

    @property
    def types(self):
        with self.cond:
            return [e.type for e in self.events]

    @property
    def datagrams(self):
        return [e for e in self.events if e.type == "data"]

    @property
    def errors(self):
        return [e for e in self.events if e.type == "error"]

    def check_clean(self, sock):
        """Every callback got ``sock`` (and its handle in the event), one at
        a time; TERMINATE once, last."""
        with self.cond:
            assert all(s is sock and h == sock.handle for s, h in self.socks)
            assert self.overlaps == 0
            assert self.after_terminate == 0
            assert self.terminates == 1
            assert self.events[-1].type == "terminate"


def echo(sock, ev):
    if ev.type == "data":
        sock.send(ev.data, ev.ip, ev.port)


def close_and_wait(sock, log):
    sock.close()
    assert log.wait_terminated()
    assert sock.terminated
    sock.release()


# -- datagrams -------------------------------------------------------------------


def test_datagram_boundaries_in_echoed_and_sent():
    log = Log(also=echo)
    peer = bsd()
    with netev.UdpSocket.open(0, **log.callbacks()) as sock:
        port = sock.port
        assert port != 0
        bport = peer.getsockname()[1]
        for i, size in enumerate(SIZES):
            payload = pattern(size, i * 1000)
            peer.sendto(payload, ("127.0.0.1", port))
            # one at a time: the test must not rely on buffers holding
            # several 64 KiB datagrams
            assert log.wait_datagrams(i + 1), f"datagram {i} ({size} bytes) did not arrive"
            d = log.datagrams[i]
            assert len(d.data) == size and d.data == payload
            assert d.ip == "127.0.0.1" and d.port == bport
            expect(peer, payload, port)  # the echo, whole, from the socket's port
        assert len(log.datagrams) == len(SIZES)

        for i, size in enumerate(SIZES):
            payload = pattern(size, i * 1000 + 7)
            sock.send(payload, "127.0.0.1", bport)
            expect(peer, payload, port)
        # bytes-like objects
        sock.send(bytearray(b"array"), "127.0.0.1", bport)
        expect(peer, b"array", port)
        sock.send(memoryview(b"xview")[1:], "127.0.0.1", bport)
        expect(peer, b"view", port)
        assert sock.errors == []
        close_and_wait(sock, log)
    peer.close()
    assert log.types == ["data"] * len(SIZES) + ["terminate"]
    log.check_clean(sock)


@pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")
def test_ipv6_sender_on_a_dual_stack_socket():
    log = Log(also=echo)
    with netev.UdpSocket.open(0, **log.callbacks()) as sock:
        peer = bsd(socket.AF_INET6)
        peer.sendto(b"six", ("::1", sock.port))
        assert log.wait_datagrams(1)
        d = log.datagrams[0]
        assert (d.data, d.ip, d.port) == (b"six", "::1", peer.getsockname()[1])
        expect(peer, b"six", sock.port)
        peer.close()
        close_and_wait(sock, log)
    log.check_clean(sock)


def localhost_families():
    """The loopback families "localhost" has, in getaddrinfo's order."""
    out = []
    for family, *_ in socket.getaddrinfo("localhost", None, type=socket.SOCK_DGRAM):
        if family in (socket.AF_INET, socket.AF_INET6) and family not in out:
            out.append(family)
    assert out
    return out


def test_a_name_localhost():
    # Which of localhost's addresses netev uses is not the test's business:
    # a peer listens on the same port of each loopback address it has.
    families = localhost_families()
    peers = []
    for _ in range(20):
        for p in peers:
            p.close()
        peers = [bsd(families[0])]
        try:
            for f in families[1:]:
                peers.append(bsd(f, peers[0].getsockname()[1]))
        except OSError:
            continue  # that port is taken there: another one
        break
    assert len(peers) == len(families)
    log = Log()
    with netev.UdpSocket.open(0, **log.callbacks()) as sock:
        sock.send(b"by-name", "localhost", peers[0].getsockname()[1])
        ready, _, _ = select.select(peers, [], [], LIMIT)
        assert ready, "nothing arrived for localhost"
        expect(ready[0], b"by-name", sock.port)
        close_and_wait(sock, log)
    for p in peers:
        p.close()
    assert log.types == ["terminate"]


def test_a_name_that_does_not_resolve_is_an_error_and_the_socket_goes_on():
    log = Log()
    peer = bsd()
    bport = peer.getsockname()[1]
    with netev.UdpSocket.open(0, **log.callbacks()) as sock:
        sock.send(b"lost", UNRESOLVABLE, 9)
        assert log.wait(lambda: log.errors), f"no ERROR for {UNRESOLVABLE}"
        [err] = log.errors
        assert err.error == netev.Status.ERR_HOST_NOT_FOUND
        assert err.error_name == "NETEV_ERR_HOST_NOT_FOUND"
        assert isinstance(err.exception(), netev.HostNotFound)
        assert UNRESOLVABLE in err.message
        [info] = sock.errors
        assert info.code == netev.Status.ERR_HOST_NOT_FOUND
        assert info.name == "NETEV_ERR_HOST_NOT_FOUND"
        assert info.component == "dns"
        assert UNRESOLVABLE in info.message
        assert not sock.terminated

        # the socket goes on, both ways
        peer.sendto(b"still here", ("127.0.0.1", sock.port))
        assert log.wait_datagrams(1)
        d = log.datagrams[0]
        assert (d.data, d.ip, d.port) == (b"still here", "127.0.0.1", bport)
        sock.send(b"and back", "127.0.0.1", bport)
        expect(peer, b"and back", sock.port)
        close_and_wait(sock, log)
    peer.close()
    assert log.types == ["error", "data", "terminate"]
    log.check_clean(sock)


# -- refused input ------------------------------------------------------------------


def test_refused_input_raises_the_header_statuses():
    log = Log()
    with netev.UdpSocket.open(0, **log.callbacks()) as sock:
        with pytest.raises(netev.InvalidArgument):
            sock.send(bytes(65508), "127.0.0.1", 9)
        with pytest.raises(netev.InvalidArgument):
            sock.send(b"x", "127.0.0.1", 0)
        with pytest.raises(netev.InvalidArgument):
            sock.send(b"x", "", 9)
        # refused by the library: each one is in the errors list
        assert [e.code for e in sock.errors] == [netev.Status.ERR_INVALID_ARGUMENT] * 3
        # refused by the binding before any call
        with pytest.raises(netev.InvalidArgument):
            sock.send(b"x", "127.0.0.1", 65536)
        with pytest.raises(netev.InvalidArgument):
            sock.send(b"x", "127.0.0.1\0", 9)
        with pytest.raises(TypeError):
            sock.send("text", "127.0.0.1", 9)
        assert len(sock.errors) == 3
        with pytest.raises(netev.InvalidArgument):
            sock.join_multicast("127.0.0.1")
        with pytest.raises(netev.InvalidArgument):
            sock.join_multicast("239.1.2.3", "nope")
        with pytest.raises(netev.InvalidArgument):
            sock.leave_multicast("127.0.0.1")
        sock.join_multicast("239.255.1.2", "127.0.0.1")  # on the loopback interface
        sock.leave_multicast("239.255.1.2", "127.0.0.1")
        with pytest.raises(netev.InvalidArgument) as info:
            sock.send(bytes(65508), "127.0.0.1", 9)
        assert info.value.status == netev.Status.ERR_INVALID_ARGUMENT and info.value.message

        # a refused open: no callback ever fires, the binding keeps nothing
        held = len(netev._udp_registry)
        other = Log()
        with pytest.raises(netev.AddressInUse):
            netev.UdpSocket.open(sock.port, **other.callbacks())
        with pytest.raises(netev.InvalidArgument):
            netev.UdpSocket.open(0, bind_address="not-an-ip", **other.callbacks())
        with pytest.raises(netev.InvalidHandle):
            netev.UdpSocket.open(0, dispatcher=12345, **other.callbacks())
        with pytest.raises(netev.InvalidArgument):
            netev.UdpSocket.open(70000)
        with pytest.raises(netev.InvalidArgument):
            netev.UdpSocket.open(0, send_buffer_limit=-1)
        with pytest.raises(TypeError):
            netev.UdpSocket.open(0, on_data=42)
        assert len(netev._udp_registry) == held
        d = netev.Dispatcher()
        d.release()
        with pytest.raises(netev.InvalidHandle):
            netev.UdpSocket.open(0, dispatcher=d, **other.callbacks())
        assert len(netev._udp_registry) == held
        assert other.events == []
        close_and_wait(sock, log)
    assert log.types == ["terminate"]
    # released: the handle is refused
    with pytest.raises(netev.InvalidHandle):
        sock.port
    with pytest.raises(netev.InvalidHandle):
        sock.release()


# -- close, release, lifetime --------------------------------------------------------


def test_close_frees_the_port_and_terminate_comes_once_last():
    log = Log()
    sock = netev.UdpSocket.open(0, **log.callbacks())
    port = sock.port
    # taken while open (a dual-stack socket holds the IPv4 port too)
    assert bind_fails(socket.AF_INET, port) == errno.EADDRINUSE
    peer = bsd()
    peer.sendto(b"before", ("127.0.0.1", port))
    assert log.wait_datagrams(1)

    sock.close()
    assert bind_fails(socket.AF_INET, port) == 0  # right after close returned
    if ipv6_available():
        assert bind_fails(socket.AF_INET6, port) == 0
    sock.close()  # harmless again
    with pytest.raises(netev.ConnectionClosed):
        sock.send(b"late", "127.0.0.1", peer.getsockname()[1])
    with pytest.raises(netev.ConnectionClosed):
        sock.join_multicast("239.1.2.3")
    assert log.wait_terminated()
    assert sock.terminated
    assert sock.port == port  # the handle stays valid until released
    sock.release()
    peer.close()
    assert log.types == ["data", "terminate"]
    log.check_clean(sock)


def test_release_and_with_block_close_an_open_socket():
    log = Log()
    with netev.UdpSocket.open(0, **log.callbacks()) as sock:
        port = sock.port
    # leaving the block released it: closed, TERMINATE follows
    assert log.wait_terminated()
    assert bind_fails(socket.AF_INET, port) == 0
    assert log.types == ["terminate"]
    log.check_clean(sock)

    log2 = Log()
    sock2 = netev.UdpSocket.open(0, **log2.callbacks())
    sock2.release()
    assert log2.wait_terminated()
    log2.check_clean(sock2)


class Sink:
    def __init__(self, got):
        self.got = got

    def __call__(self, sock, ev):
        self.got.append((sock, ev.data))


def test_callbacks_stay_alive_until_terminate_and_dropping_the_socket_releases_it():
    """The binding holds the callables, not the socket: while the caller
    holds the socket, callables of nobody else's keep working; dropping the
    socket's last reference releases it (its port is free, on_terminate
    still runs with a stand-in), then the callables are given back."""
    got = []
    terminated = []
    done = threading.Event()
    cb = Sink(got)
    cb_ref = weakref.ref(cb)
    sock = netev.UdpSocket.open(0, on_data=cb, on_terminate=lambda s, e: (terminated.append(s), done.set()))
    port = sock.port
    sock_ref = weakref.ref(sock)
    del cb
    gc.collect()
    assert cb_ref() is not None
    peer = bsd()
    for i in range(5):
        peer.sendto(b"%d" % i, ("127.0.0.1", port))
    assert wait_until(lambda: len(got) == 5)
    assert [d for _, d in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert all(s is sock for s, _ in got)
    del got[:]
    del sock
    gc.collect()
    assert sock_ref() is None
    assert done.wait(LIMIT)
    # TERMINATE went to a stand-in (unowned, terminated, same handle), not
    # to the collected object.
    assert len(terminated) == 1 and terminated[0].terminated and not terminated[0]._owned
    assert sock_ref() is None
    # The port is free again: a plain socket binds it.
    again = bsd(port=port)
    again.close()
    peer.close()
    del terminated[:]
    assert wait_until(lambda: (gc.collect(), cb_ref() is None)[1])


def test_callback_exception_is_reported_and_the_socket_goes_on(monkeypatch):
    reported = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)

    def boom(sock, ev):
        if ev.data == b"boom":
            raise ValueError("boom in on_data")

    log = Log(also=boom)
    peer = bsd()
    with netev.UdpSocket.open(0, **log.callbacks()) as sock:
        peer.sendto(b"boom", ("127.0.0.1", sock.port))
        peer.sendto(b"fine", ("127.0.0.1", sock.port))
        assert log.wait_datagrams(2)
        assert [d.data for d in log.datagrams] == [b"boom", b"fine"]
        # callbacks of one socket never overlap: boom's report came first
        assert wait_until(lambda: sock.callback_errors)
        assert len(sock.callback_errors) == 1 and isinstance(sock.callback_errors[0], ValueError)
        assert reported and isinstance(reported[0].exc_value, ValueError)
        assert "udp on_data" in reported[0].err_msg
        assert reported[0].object is sock
        assert not sock.terminated
        sock.send(b"alive", "127.0.0.1", peer.getsockname()[1])
        expect(peer, b"alive", sock.port)
        close_and_wait(sock, log)
    peer.close()
    assert log.types == ["data", "data", "terminate"]


# -- dispatcher ----------------------------------------------------------------------


def test_dispatcher_runs_every_callback_on_this_thread():
    me = threading.get_ident()
    log = Log(also=echo)
    peer = bsd()
    bport = peer.getsockname()[1]
    with netev.Dispatcher() as d:
        sock = netev.UdpSocket.open(0, dispatcher=d, **log.callbacks())
        peer.sendto(b"ping", ("127.0.0.1", sock.port))
        sock.send(b"lost", UNRESOLVABLE, 9)
        assert log.types == []  # nothing runs until this thread dispatches
        assert pump_until(d, lambda: len(log.datagrams) == 1 and len(log.errors) == 1)
        dg = log.datagrams[0]
        assert (dg.data, dg.ip, dg.port) == (b"ping", "127.0.0.1", bport)
        expect(peer, b"ping", sock.port)  # echoed from the callback, on this thread
        assert log.errors[0].error == netev.Status.ERR_HOST_NOT_FOUND

        sock.close()
        assert log.terminates == 0  # queued for this thread
        assert pump_until(d, lambda: log.terminates == 1)
        sock.release()
        assert set(log.threads) == {me}
        log.check_clean(sock)

        # releasing the dispatcher closes its sockets: TERMINATE runs here
        log2 = Log()
        sock2 = netev.UdpSocket.open(0, dispatcher=d, **log2.callbacks())
    assert log2.types == ["terminate"]
    assert log2.threads == [me]
    with pytest.raises(netev.ConnectionClosed):
        sock2.send(b"x", "127.0.0.1", bport)
    sock2.release()
    peer.close()


def test_shutdown_runtime_terminates_an_open_socket():
    log = Log()
    sock = netev.UdpSocket.open(0, bind_address="127.0.0.1", **log.callbacks())
    netev.shutdown_runtime(10)
    assert log.types == ["terminate"]
    with pytest.raises(netev.ConnectionClosed):
        sock.send(b"x", "127.0.0.1", 9)
    sock.release()
    log.check_clean(sock)
