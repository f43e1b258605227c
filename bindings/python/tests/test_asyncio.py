"""The binding in asyncio: awaitables for connected, drained and closed; a
listener's accepted connections as an async iterator; blocking calls
refused inside a running loop; listeners freed when dropped. Loopback
only; every wait is bounded by LIMIT (and each test by asyncio.wait_for)."""

import asyncio
import gc
import os
import socket
import threading

import pytest

import netev

LIMIT = 20.0


@pytest.fixture(scope="module", autouse=True)
def runtime():
    yield
    netev.shutdown_runtime(10)


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 60))


def echo(conn, ev):
    conn.send(ev.data)


def port_is_free(port):
    """A plain socket can listen on 127.0.0.1:port (with SO_REUSEADDR, as
    a server would: connections on the port do not count, a listener does)."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def end_iteration(listener, it, clients):
    """Terminates the listener: the iteration `it` ends; then releases
    everything."""
    listener.terminate()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(it.__anext__(), LIMIT)
    for c in clients:
        c.release()
    listener.release()


class Attached:
    """A dispatcher attached to the running loop for the block."""

    async def __aenter__(self):
        self.d = netev.Dispatcher()
        self.d.attach(asyncio.get_running_loop())
        return self.d

    async def __aexit__(self, *exc):
        self.d.release()


def test_echo_server_as_coroutines():
    """A server that takes connections with `async for` and a client that
    awaits connected, drained and closed, every callback on the loop's
    thread; each client gets its own bytes back exactly."""

    async def main():
        loop_thread = threading.get_ident()
        threads = set()

        def on_data(conn, ev):
            threads.add(threading.get_ident())
            conn.send(ev.data)

        async with Attached() as d:
            listener = netev.Listener.open(
                0, bind_address="127.0.0.1", dispatcher=d, connection_options={"on_data": on_data}
            )
            served = []

            async def serve():
                async for conn in listener:
                    served.append(conn)

            server = asyncio.ensure_future(serve())

            async def client(i):
                got = bytearray()
                c = netev.Connection.open(
                    "127.0.0.1", listener.port, dispatcher=d, on_data=lambda c, e: got.extend(e.data)
                )
                await c.wait_connected()
                payload = os.urandom(50_000 + i)
                c.send(payload)
                while len(got) < len(payload):
                    await asyncio.sleep(0)  # the loop runs the dispatcher meanwhile
                c.shutdown()
                await c.wait_closed()
                assert c.terminated
                c.release()
                return bytes(got) == payload

            results = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(5))), LIMIT)
            assert results == [True] * 5
            assert len(served) == 5
            assert all(conn.listener is listener for conn in served)
            listener.terminate()
            await asyncio.wait_for(server, LIMIT)  # the iteration ends at TERMINATE
            listener.release()
            assert threads == {loop_thread}

    run(main())


def test_accepted_in_order_then_the_iteration_ends():
    async def main():
        async with Attached() as d:
            listener = netev.Listener.open(0, bind_address="127.0.0.1", dispatcher=d)
            it = listener.accepted()
            clients = []
            for _ in range(3):
                c = netev.Connection.open("127.0.0.1", listener.port, dispatcher=d)
                await c.wait_connected()
                clients.append(c)
            got = [await asyncio.wait_for(it.__anext__(), LIMIT) for _ in range(3)]
            # Accepted in the order they connected: each one's peer port is
            # the client's local port.
            assert [g.port for g in got] == [c.local_port for c in clients]
            for g in got:
                await g.wait_connected()  # already: at once
            await end_iteration(listener, it, clients)

    run(main())


def test_awaitables_without_a_dispatcher():
    """Callbacks on netev's threads: the awaitables are woken across
    threads."""

    async def main():
        listener = netev.Listener.open(0, bind_address="127.0.0.1", connection_options={"on_data": echo})
        got = bytearray()
        c = netev.Connection.open("127.0.0.1", listener.port, on_data=lambda c, e: got.extend(e.data))
        await asyncio.wait_for(c.wait_connected(), LIMIT)
        await c.drain()  # nothing refused: at once
        c.send(b"x" * 1000)
        c.shutdown()
        await asyncio.wait_for(c.wait_closed(), LIMIT)
        assert bytes(got) == b"x" * 1000
        await c.wait_connected()  # it was connected: at once, even after the end
        with pytest.raises(netev.ConnectionClosed):
            await c.drain()  # ended: nothing more can be sent
        c.release()
        listener.release()

    run(main())


def test_wait_connected_raises_the_error_that_ended_it():
    async def main():
        async with Attached() as d:
            port = free_port()
            c = netev.Connection.open("127.0.0.1", port, dispatcher=d)
            with pytest.raises(netev.ConnectionRefused):
                await asyncio.wait_for(c.wait_connected(), LIMIT)
            await asyncio.wait_for(c.wait_closed(), LIMIT)
            with pytest.raises(netev.ConnectionRefused):
                await c.wait_connected()  # again, at once
            c.release()

    run(main())


def test_drain_waits_for_the_drain_after_buffer_full():
    """The server pauses; the client sends until BufferFull; drain() does
    not return while the server reads nothing, and returns once it
    resumes; every byte arrives in order."""

    async def main():
        async with Attached() as d:
            received = bytearray()
            server_conns = []

            def on_connection(listener, ev):
                return {"on_data": lambda c, e: received.extend(e.data)}

            listener = netev.Listener.open(0, bind_address="127.0.0.1", dispatcher=d, on_connection=on_connection)
            it = listener.accepted()
            limit = 64 * 1024
            c = netev.Connection.open("127.0.0.1", listener.port, dispatcher=d, send_buffer_limit=limit)
            server = await asyncio.wait_for(it.__anext__(), LIMIT)
            server_conns.append(server)
            server.pause()
            await c.wait_connected()
            sent = bytearray()
            chunk = bytes(range(256)) * 64  # 16 KiB
            refused = 0
            for _ in range(10_000):  # bounded: the kernel's buffers fill long before
                try:
                    c.send(chunk)
                    sent.extend(chunk)
                except netev.BufferFull:
                    refused += 1
                    break
                await asyncio.sleep(0)
            assert refused == 1
            # Paused server: no DRAIN can come, so drain() must not return.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(c.drain(), 0.3)
            server.resume()
            await asyncio.wait_for(c.drain(), LIMIT)
            assert c.buffered_amount <= limit // 2
            c.send(b"after the drain")
            sent.extend(b"after the drain")
            c.shutdown()
            for _ in range(int(LIMIT * 100)):
                if len(received) >= len(sent):
                    break
                await asyncio.sleep(0.01)
            assert bytes(received) == bytes(sent)
            await asyncio.wait_for(c.wait_closed(), LIMIT)
            c.release()
            listener.release()

    run(main())


def test_blocking_calls_refused_inside_a_running_loop():
    async def main():
        async with Attached() as d:
            listener = netev.Listener.open(0, bind_address="127.0.0.1", dispatcher=d)
            c = netev.Connection.open("127.0.0.1", listener.port, dispatcher=d)
            with pytest.raises(RuntimeError, match="would block the running asyncio loop"):
                c.wait(1)
            with pytest.raises(RuntimeError, match="would block"):
                c.wait()
            with pytest.raises(RuntimeError, match="would block"):
                d.run(1)
            c.wait(0)  # does not block: allowed, no RuntimeError
            d.run(0)
            await c.wait_connected()
            c.close()
            await asyncio.wait_for(c.wait_closed(), LIMIT)
            c.release()
            listener.release()

    run(main())
    # Outside a loop the same calls block as before.
    d = netev.Dispatcher()
    assert d.run(0.01) == 0
    d.release()


def test_accept_queue_is_bounded_by_backlog():
    """Accepted connections nobody takes from the iteration: at most
    `backlog` wait; the rest are rejected (their clients see the end)."""

    async def main():
        async with Attached() as d:
            listener = netev.Listener.open(0, bind_address="127.0.0.1", dispatcher=d, backlog=2)
            it = listener.accepted()
            clients = [netev.Connection.open("127.0.0.1", listener.port, dispatcher=d) for _ in range(5)]
            ended = [asyncio.ensure_future(c.wait_closed()) for c in clients]
            # 3 rejected clients end; the 2 waiting ones stay open.
            for _ in range(int(LIMIT * 100)):
                if sum(f.done() for f in ended) == 3:
                    break
                await asyncio.sleep(0.01)
            assert sum(f.done() for f in ended) == 3
            taken = [await asyncio.wait_for(it.__anext__(), LIMIT) for _ in range(2)]
            open_ports = sorted(c.local_port for c, f in zip(clients, ended) if not f.done())
            assert sorted(t.port for t in taken) == open_ports
            await end_iteration(listener, it, clients)

    run(main())


def test_dropped_listener_frees_its_port():
    """A Listener dropped without release() is released: its port is free,
    even while a connection it accepted lives on (and keeps working)."""
    done = threading.Event()
    got = bytearray()
    listener = netev.Listener.open(
        0, bind_address="127.0.0.1", connection_options={"on_data": echo}, on_terminate=lambda l, e: done.set()
    )
    port = listener.port
    c = netev.Connection.open("127.0.0.1", port, on_data=lambda c, e: got.extend(e.data))
    c.send(b"before")
    for _ in range(int(LIMIT * 100)):
        if len(got) == 6:
            break
        threading.Event().wait(0.01)
    assert bytes(got) == b"before"
    assert not port_is_free(port)
    del listener
    gc.collect()
    assert done.wait(LIMIT)  # its TERMINATE still reached on_terminate
    assert port_is_free(port)
    c.send(b" after")  # the accepted connection goes on
    for _ in range(int(LIMIT * 100)):
        if len(got) == 12:
            break
        threading.Event().wait(0.01)
    assert bytes(got) == b"before after"
    c.release()


@pytest.mark.parametrize(
    "options, error",
    [
        ({"length_prefix_bytes": 3}, netev.InvalidArgument),
        ({"framing": "delimiter"}, netev.InvalidArgument),
        ({"delimiter": b"x" * 17}, netev.InvalidArgument),
        ({"framing": "sideways"}, netev.InvalidArgument),
        ({"send_buffer_limit": -1}, netev.InvalidArgument),
        ({"idle_timeout": float("nan")}, netev.InvalidArgument),
        ({"keepalive": -1.0}, netev.InvalidArgument),
        ({"send_buffer_limit": 2**64 + 3000}, netev.InvalidArgument),  # no silent wrap
        ({"max_frame": 2**64}, netev.InvalidArgument),
        ({"send_buffer_limit": "10"}, TypeError),  # no silent conversion
        ({"length_prefix_bytes": 1.5}, TypeError),
        ({"idle_timeout": "1"}, TypeError),
        ({"bind_port": 70000}, TypeError),  # a client's option
        ({"bind_address": "127.0.0.1"}, TypeError),
        ({"server_name": "example.test"}, TypeError),
        ({"on_data": 5}, TypeError),
        ({"no_such_option": 1}, TypeError),
    ],
)
def test_listener_connection_options_checked_at_open(options, error):
    port = free_port()
    with pytest.raises(error):
        netev.Listener.open(port, bind_address="127.0.0.1", connection_options=options)
    assert port_is_free(port)  # nothing was left bound


def test_listener_refuses_client_tls_config_as_connection_default():
    cfg = netev.TlsConfig.client()
    try:
        with pytest.raises(netev.InvalidArgument):
            netev.Listener.open(0, bind_address="127.0.0.1", connection_options={"tls": cfg})
    finally:
        cfg.release()


@pytest.mark.parametrize("backlog, error", [(-1, netev.InvalidArgument), (2**32, netev.InvalidArgument), ("8", TypeError)])
def test_listener_backlog_checked(backlog, error):
    with pytest.raises(error):
        netev.Listener.open(0, bind_address="127.0.0.1", backlog=backlog)


def test_a_given_up_wait_loses_nothing_and_the_iteration_goes_on():
    """A timed-out __anext__ ends only that wait: the next one gets the
    connection that came meanwhile, and `break` then a new iteration
    continue with the same queue."""

    async def main():
        async with Attached() as d:
            listener = netev.Listener.open(0, bind_address="127.0.0.1", dispatcher=d)
            it = listener.accepted()
            for _ in range(3):
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(it.__anext__(), 0.01)
            c1 = netev.Connection.open("127.0.0.1", listener.port, dispatcher=d)
            await c1.wait_connected()
            got = await asyncio.wait_for(it.__anext__(), LIMIT)
            assert got.port == c1.local_port
            c2 = netev.Connection.open("127.0.0.1", listener.port, dispatcher=d)
            await c2.wait_connected()
            async for conn in listener:  # a second iteration, same queue
                assert conn.port == c2.local_port
                break
            for c in (got, conn, c1, c2):
                c.release()
            listener.release()

    run(main())


def test_a_taken_connection_stays_valid_until_released():
    """The queue and the taker hold a reference: a connection that ended
    before it was taken still answers (address, port, errors), and
    release() gives it back once."""

    async def main():
        async with Attached() as d:
            listener = netev.Listener.open(0, bind_address="127.0.0.1", dispatcher=d)
            it = listener.accepted()
            c = netev.Connection.open("127.0.0.1", listener.port, dispatcher=d)
            await c.wait_connected()
            client_port = c.local_port  # 0 once it ended
            c.close()
            await c.wait_closed()
            server = await asyncio.wait_for(it.__anext__(), LIMIT)
            await asyncio.wait_for(server.wait_closed(), LIMIT)  # it ended: the peer closed
            assert server.terminated
            assert (server.address, server.port) == ("127.0.0.1", client_port)
            server.release()
            with pytest.raises(netev.InvalidHandle):
                server.release()  # no reference left
            c.release()
            listener.release()

    run(main())


def test_dispatcher_run_with_any_wait_refused_inside_a_loop():
    async def main():
        async with Attached() as d:
            for timeout in (-1, -0.5, float("-inf"), 1, None, float("inf")):
                with pytest.raises(RuntimeError, match="would block"):
                    d.run(timeout)
            assert d.run(0) >= 0

    run(main())
