"""The binding at interpreter exit: netev is shut down before the
interpreter finalizes, and nothing of it runs Python code afterwards (a
thread that does is ended with pthread_exit, through netev's frames: an
abort). Each case runs in its own interpreter; every run is bounded."""

import subprocess
import sys

import pytest


def run_script(script, *args):
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, timeout=60)


EXIT_WITH_DAEMON_THREADS = """
import threading, time, netev
listener = netev.Listener.open(0, bind_address="127.0.0.1",
                               connection_options={"on_data": lambda c, e: c.send(e.data)})
port = listener.port
def ping_pong():  # callbacks on netev's I/O threads, forever
    netev.Connection.open("127.0.0.1", port, on_data=lambda c, e: c.send(e.data),
                          on_connection=lambda c, e: c.send(b"p"))
def opener():
    while True:
        try:
            ping_pong()
            time.sleep(0.001)
        except Exception:  # RuntimeShutdown once exiting: try again, as a careless host would
            pass
for _ in range(3):
    threading.Thread(target=opener, daemon=True).start()
time.sleep(0.3)
print("exiting", flush=True)
"""


def test_exit_while_daemon_threads_keep_opening():
    """At exit the binding shuts netev down, and no open after that starts
    it again: no callback reaches the finalizing interpreter (which would
    end netev's thread with pthread_exit, an abort)."""
    for _ in range(3):
        run_ = run_script(EXIT_WITH_DAEMON_THREADS)
        assert run_.returncode == 0, (run_.returncode, run_.stderr.decode()[-2000:])
        assert run_.stdout == b"exiting\n"


CALLBACK_THAT_NEVER_RETURNS = """
import sys, time, netev
def on_data(c, e):
    if sys.argv[1] == "sleeping":
        while True:
            time.sleep(0.01)
    while True:
        pass
listener = netev.Listener.open(0, bind_address="127.0.0.1", connection_options={"on_data": on_data})
c = netev.Connection.open("127.0.0.1", listener.port)
c.send(b"x")
time.sleep(0.3)
print("exiting", flush=True)
"""


@pytest.mark.parametrize("how", ["sleeping", "spinning"])
def test_exit_while_a_callback_never_returns(how):
    """A callback looping forever on one of netev's threads: at exit the
    binding raises SystemExit inside it (after 5 s), netev stops, and the
    interpreter exits 0."""
    r = run_script(CALLBACK_THAT_NEVER_RETURNS, how)
    assert r.returncode == 0, (r.returncode, r.stderr.decode()[-2000:])
    assert r.stdout == b"exiting\n"
    assert b"SystemExit" in r.stderr  # reported as the callback's exception
