"""netev.TlsConfig: a TLS client and server in Python, byte-exact, the
getters, failures as TlsError / ERROR events, and bad input. Certificates
are made by tests/c/tls_certs.sh (the openssl command)."""

import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

import netev

REPO = Path(__file__).resolve().parents[3]
LIMIT = 20.0

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls") / "certs"
    subprocess.run(["sh", str(REPO / "tests/c/tls_certs.sh"), str(d)], check=True, timeout=60)
    return d


def wait_until(pred, timeout=LIMIT, step=0.01):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Recorder:
    def __init__(self):
        self.lock = threading.Lock()
        self.types = []
        self.data = bytearray()
        self.errors = []
        self.props = {}

    def __call__(self, conn, ev):
        with self.lock:
            self.types.append(ev.type)
            if ev.type == "data":
                self.data += ev.data
            if ev.type == "error":
                self.errors.append((ev.error, ev.message))
            if ev.type == "connection":
                self.props = dict(
                    version=conn.tls_version,
                    alpn=conn.alpn,
                    sni=conn.server_name,
                    cert=conn.peer_certificate,
                )

    def seq(self):
        with self.lock:
            out = []
            for t in self.types:
                if not (t == "data" and out and out[-1] == "data"):
                    out.append(t)
            return out

    @property
    def callbacks(self):
        return {k: self for k in ("on_connection", "on_data", "on_shutdown", "on_error", "on_terminate", "on_end")}


def echo_server(server_cfg):
    conns = []

    def on_data(conn, ev):
        conn.send(ev.data)

    def accept(listener, ev):
        rec = Recorder()
        conns.append(rec)
        cbs = rec.callbacks

        def data(c, e):
            rec(c, e)
            on_data(c, e)

        cbs["on_data"] = data
        return cbs

    listener = netev.Listener.open(
        0,
        bind_address="127.0.0.1",
        on_connection=accept,
        connection_options={"tls": server_cfg},
    )
    return listener, conns


def test_client_and_server_exchange_bytes(certs):
    with netev.TlsConfig.server(
        cert_file=certs / "server.pem", key_file=certs / "server.key", alpn="h2,http/1.1"
    ) as scfg:
        listener, conns = echo_server(scfg)
        ccfg = netev.TlsConfig.client(ca_pem=(certs / "ca.pem").read_bytes(), alpn=["h2"])
        rec = Recorder()
        payload = bytes((i * 7 + i // 251) & 0xFF for i in range(300_000))
        with netev.Connection.open("127.0.0.1", listener.port, tls=ccfg, server_name="localhost", **rec.callbacks) as c:
            ccfg.release()  # the connection keeps it
            c.send(payload)
            assert wait_until(lambda: len(rec.data) >= len(payload))
            assert bytes(rec.data) == payload
            assert rec.props["version"] == "TLSv1.3"
            assert rec.props["alpn"] == "h2"
            assert rec.props["sni"] == ""
            assert rec.props["cert"][:1] == b"\x30"
            c.shutdown()
            assert c.wait(LIMIT)
            assert wait_until(lambda: "terminate" in rec.seq())
        assert rec.seq() == ["connection", "data", "end", "close", "terminate"]
        assert wait_until(lambda: conns and "terminate" in conns[0].seq())
        assert conns[0].props["sni"] == "localhost"
        assert conns[0].props["alpn"] == "h2"
        assert conns[0].seq() == ["connection", "data", "end", "close", "terminate"]
        listener.release()


def test_untrusted_server_is_a_tls_error(certs):
    scfg = netev.TlsConfig.server(cert_file=certs / "self.pem", key_file=certs / "self.key")
    listener, _ = echo_server(scfg)
    ccfg = netev.TlsConfig.client(ca_file=certs / "ca.pem")
    rec = Recorder()
    with netev.Connection.open("127.0.0.1", listener.port, tls=ccfg, server_name="localhost", **rec.callbacks) as c:
        assert c.wait(LIMIT)
        assert wait_until(lambda: "terminate" in rec.seq())
        assert rec.seq() == ["error", "terminate"]
        assert rec.errors[0][0] == netev.Status.ERR_TLS
        assert "unknown issuer" in rec.errors[0][1]
        assert c.errors[0].component == "tls"
    listener.release()
    scfg.release()
    ccfg.release()


def test_bad_configs_raise(certs):
    with pytest.raises(netev.TlsError):
        netev.TlsConfig.client(ca_file=certs / "missing.pem")
    with pytest.raises(netev.InvalidArgument):
        netev.TlsConfig.server(cert_file=certs / "server.pem")
    with pytest.raises(netev.TlsError) as e:
        netev.TlsConfig.server(cert_file=certs / "server.pem", key_file=certs / "other.key")
    assert "does not match" in str(e.value)
    assert "PRIVATE KEY" not in str(e.value)
    cfg = netev.TlsConfig.client(ca_file=certs / "ca.pem")
    cfg.release()
    cfg.release()  # harmless in Python: the handle is already given back
    with pytest.raises(netev.InvalidHandle):
        netev.Connection.open("127.0.0.1", 9, tls=12345)
    server = netev.TlsConfig.server(cert_file=certs / "server.pem", key_file=certs / "server.key")
    with pytest.raises(netev.InvalidArgument):
        netev.Connection.open("127.0.0.1", 9, tls=server)
    server.release()
