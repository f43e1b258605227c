#!/usr/bin/env python3
"""Runs netev's benchmark suite: every echo server through every load mode,
interleaved round by round, and prints one table per mode.

See benches/README.md. Python 3 standard library only.
"""

import argparse
import datetime
import os
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PLAIN_MODES = ["pingpong1", "pingpong", "bulk1", "bulk8", "connect", "idle"]
# TLS modes: servers with --cert/--key against tls_loadgen, and compared
# with tokio + tokio-rustls rather than libuv (see benches/README.md).
TLS_MODES = ["tls_bulk1", "tls_bulk8", "tls_handshake"]
# Framing (issue 12): netev's length-prefix framing against netev echoing
# the same byte stream unframed, i.e. a host that splits nothing.
FRAMED_MODES = ["framed"]
# UDP (issue 13): echo servers on one UDP socket against loadgen's udp mode,
# 64-byte and 1400-byte datagrams; compared with libuv, and with a raw
# recvmmsg/sendmmsg loop as the floor.
UDP_MODES = ["udp64", "udp1400"]
MODES = PLAIN_MODES + TLS_MODES + FRAMED_MODES + UDP_MODES
TLS_BASE = "tokio-rustls"
FRAMED_BASE = "netev"


def base_server(mode):
    """The server a mode's ratio column divides by."""
    if mode in FRAMED_MODES:
        return FRAMED_BASE
    return TLS_BASE if mode in TLS_MODES else "libuv"


def kind_of(mode):
    if mode in UDP_MODES:
        return "udp"
    return "tls" if mode in TLS_MODES else "framed" if mode in FRAMED_MODES else "plain"


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def sh(cmd, **kw):
    log("+ " + " ".join(cmd))
    subprocess.run(cmd, check=True, **kw)


def cargo_target():
    """cargo's target directory, as cargo has it: CARGO_TARGET_DIR when set."""
    return os.path.abspath(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"))


def build(args, tls, tokio_needed=True):
    """Builds libnetev, the C programs and, when a mode uses it, tokio_echo;
    with `tls` also tls_loadgen and a CA with a localhost certificate;
    returns their paths."""
    if args.lib_dir:
        lib_dir = os.path.abspath(args.lib_dir)
    else:
        sh(["cargo", "build", "--release", "--quiet"], cwd=ROOT)
        lib_dir = os.path.join(cargo_target(), "release")
    tokio = None
    if not (tls or tokio_needed):
        pass  # the UDP and framing modes run no tokio server
    elif args.tokio_bin:
        tokio = os.path.abspath(args.tokio_bin)
    else:
        sh(["cargo", "build", "--release", "--quiet", "--example", "tokio_echo"], cwd=ROOT)
        tokio = os.path.join(cargo_target(), "release", "examples", "tokio_echo")
    tls_loadgen = None
    if tls and args.tls_loadgen_bin:
        tls_loadgen = os.path.abspath(args.tls_loadgen_bin)
    elif tls:
        sh(["cargo", "build", "--release", "--quiet", "--example", "tls_loadgen"], cwd=ROOT)
        tls_loadgen = os.path.join(cargo_target(), "release", "examples", "tls_loadgen")
    if not os.path.exists(os.path.join(lib_dir, "libnetev.so")):
        sys.exit(f"run.py: {lib_dir}/libnetev.so is missing")
    try:
        uv_cflags = subprocess.run(["pkg-config", "--cflags", "libuv"], check=True, capture_output=True,
                                   text=True).stdout.split()
        uv_libs = subprocess.run(["pkg-config", "--libs", "libuv"], check=True, capture_output=True,
                                 text=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        sys.exit("run.py: libuv not found by pkg-config: install libuv1-dev and pkg-config "
                 "(.ci/run installs them)")
    out = os.path.abspath(args.build_dir)
    os.makedirs(os.path.join(out, "lib"), exist_ok=True)
    # Snapshot the library, tokio_echo and tls_loadgen: a cargo build
    # elsewhere during a long run must not change what is measured halfway
    # through.
    shutil.copy2(os.path.join(lib_dir, "libnetev.so"), os.path.join(out, "lib", "libnetev.so"))
    lib_dir = os.path.join(out, "lib")
    if tokio:
        shutil.copy2(tokio, os.path.join(out, "tokio_echo"))
        tokio = os.path.join(out, "tokio_echo")
    if tls_loadgen:
        shutil.copy2(tls_loadgen, os.path.join(out, "tls_loadgen"))
        tls_loadgen = os.path.join(out, "tls_loadgen")
    cc = os.environ.get("CC", "cc")
    base = [cc, "-O2", "-g", "-std=c11", "-Wall", "-Wextra", "-Werror"]
    progs = {
        "loadgen": base + [os.path.join(HERE, "loadgen.c")],
        "epoll_echo": base + [os.path.join(HERE, "epoll_echo.c")],
        "raw_udp_echo": base + [os.path.join(HERE, "raw_udp_echo.c")],
        "uv_echo": base + uv_cflags + [os.path.join(HERE, "uv_echo.c")] + uv_libs,
        "netev_echo": base + ["-I" + os.path.join(ROOT, "include"), os.path.join(HERE, "netev_echo.c"),
                              "-L" + lib_dir, "-Wl,-rpath," + lib_dir, "-lnetev", "-pthread"],
    }
    paths = {}
    for name, cmd in progs.items():
        path = os.path.join(out, name)
        sh(cmd[:1] + ["-o", path] + cmd[1:])
        paths[name] = path
    paths["tokio_echo"] = tokio
    if tls:
        paths["tls_loadgen"] = tls_loadgen
        paths["tls"] = make_certs(os.path.join(out, "tls"))
    return paths


def make_certs(where):
    """A fresh CA and localhost server certificate (EC P-256) for this run,
    made by the TLS tests' own script."""
    if not shutil.which("openssl"):
        sys.exit("run.py: the TLS modes need the openssl command (Debian: apt-get install openssl)")
    shutil.rmtree(where, ignore_errors=True)
    sh(["sh", os.path.join(ROOT, "tests", "c", "tls_certs.sh"), where], stdout=subprocess.DEVNULL)
    return {"ca": os.path.join(where, "ca.pem"), "cert": os.path.join(where, "server.pem"),
            "key": os.path.join(where, "server.key")}


def server_commands(paths, pinned, kind="plain"):
    n = paths["netev_echo"]
    if kind == "udp":
        # One UDP socket each; "raw" is the recvmmsg/sendmmsg floor.
        servers = [("netev", [n, "--udp", "0"])]
        if pinned:
            servers.append(("netev-w1", [n, "--workers", "1", "--udp", "0"]))
        servers += [
            ("netev-dispatcher", [n, "--dispatcher", "--udp", "0"]),
            ("libuv", [paths["uv_echo"], "--udp", "0"]),
            ("raw", [paths["raw_udp_echo"], "0"]),
        ]
        return servers
    if kind == "framed":
        servers = [("netev", [n, "0"]), ("netev-framed", [n, "--framing", "0"])]
        if pinned:
            servers += [("netev-w1", [n, "--workers", "1", "0"]),
                        ("netev-w1-framed", [n, "--workers", "1", "--framing", "0"])]
        return servers
    if kind == "tls":
        # The same servers with a certificate; libuv, epoll and plain tokio
        # have no TLS here: tokio-rustls is the floor.
        cert = ["--cert", paths["tls"]["cert"], "--key", paths["tls"]["key"]]
        servers = [("netev", [n] + cert + ["0"])]
        if pinned:
            servers.append(("netev-w1", [n, "--workers", "1"] + cert + ["0"]))
        servers += [
            ("netev-dispatcher", [n, "--dispatcher"] + cert + ["0"]),
            (TLS_BASE, [paths["tokio_echo"]] + cert + ["0"]),
        ]
        return servers
    servers = [("netev", [n, "0"])]
    if pinned:
        servers.append(("netev-w1", [n, "--workers", "1", "0"]))
    servers += [
        ("netev-dispatcher", [n, "--dispatcher", "0"]),
        ("libuv", [paths["uv_echo"], "0"]),
        ("epoll", [paths["epoll_echo"], "0"]),
        ("tokio", [paths["tokio_echo"], "0"]),
    ]
    return servers


def read_line(proc, timeout, what):
    """The next line of proc's stdout, or exit with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what}: no output within {timeout} s")
        r, _, _ = select.select([proc.stdout], [], [], left)
        if r:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{what}: ended early (exit {proc.wait()})")
            return line.strip()


def vmrss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def parse_result(text, what):
    for line in reversed(text.splitlines()):
        if line.startswith("result "):
            return {k: float(v) if v.replace(".", "", 1).isdigit() else v
                    for k, v in (kv.split("=", 1) for kv in line.split()[1:])}
    raise RuntimeError(f"{what}: no result line in: {text!r}")


def run_one(name, argv, mode, pinned, args, paths):
    srv_pin = ["taskset", "-c", "0"] if pinned else []
    gen_pin = ["taskset", "-c", "1"] if pinned else []
    what = f"{name} {mode}{' pinned' if pinned else ''}"
    srv = subprocess.Popen(srv_pin + argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        first = read_line(srv, 20, what + " (server start)")
        if not first.startswith("port "):
            raise RuntimeError(f"{what}: server printed {first!r}, expected 'port N'")
        port = first.split()[1]
        gen = [paths["loadgen"]]
        common = ["--port", port, "--server-pid", str(srv.pid)]
        timing = ["--duration", str(args.duration), "--warmup", str(args.warmup)]
        if mode in ("pingpong", "pingpong1"):
            conns = "1" if mode == "pingpong1" else "50"
            cmd = gen + ["pingpong", "--conns", conns, "--size", "64"] + common + timing
        elif mode in ("bulk1", "bulk8"):
            cmd = gen + ["bulk", "--conns", mode[4:]] + common + timing
        elif mode == "connect":
            cmd = gen + ["connect"] + common + timing
        elif mode in ("tls_bulk1", "tls_bulk8"):
            cmd = [paths["tls_loadgen"], "bulk", "--conns", mode[8:], "--ca", paths["tls"]["ca"]] + common + timing
        elif mode == "tls_handshake":
            cmd = [paths["tls_loadgen"], "handshake", "--ca", paths["tls"]["ca"]] + common + timing
        elif mode == "framed":
            # 64-byte payloads behind a 4-byte length prefix, to every server
            cmd = gen + ["pingpong", "--conns", "50", "--size", "68", "--prefix"] + common + timing
        elif mode in UDP_MODES:
            # 8 sockets x 8 datagrams in flight: 64 at most, which the
            # server's default receive buffer (about 208 KiB) holds even at
            # 1400 bytes, so a busy server slows the load rather than
            # losing it.
            cmd = gen + ["udp", "--size", mode[3:], "--conns", "8", "--inflight", "8"] + common + timing
        if mode != "idle":
            p = subprocess.run(gen_pin + cmd, capture_output=True, text=True, timeout=args.duration * 4 + 60)
            if p.returncode != 0:
                raise RuntimeError(f"{what}: loadgen failed (exit {p.returncode}): {p.stderr.strip()}")
            res = parse_result(p.stdout, what)
        else:
            before = vmrss_kib(srv.pid)
            lg = subprocess.Popen(gen_pin + gen + ["idle", "--conns", str(args.idle_conns)] + common,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            line = read_line(lg, 120, what + " (loadgen)")
            if not line.startswith("ready"):
                raise RuntimeError(f"{what}: loadgen printed {line!r}")
            time.sleep(0.2)  # let the server finish its last callbacks
            after = vmrss_kib(srv.pid)
            out, err = lg.communicate("\n", timeout=60)
            if lg.returncode != 0:
                raise RuntimeError(f"{what}: loadgen failed (exit {lg.returncode}): {err.strip()}")
            res = {"rss_before_kib": before, "rss_after_kib": after,
                   "kib_per_conn": (after - before) / args.idle_conns}
    finally:
        if srv.poll() is None:
            srv.send_signal(signal.SIGTERM)
        try:
            _, serr = srv.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            srv.kill()
            _, serr = srv.communicate()
            raise RuntimeError(f"{what}: server did not exit within 20 s of SIGTERM")
    if srv.returncode != 0:
        raise RuntimeError(f"{what}: server exited {srv.returncode} after SIGTERM: {serr.strip()}")
    return res


# What each mode's table shows: (key, heading, format, ratio to libuv?)
COLUMNS = {
    "pingpong": [("cpu_us_per_rt", "server CPU µs/round trip", "{:.2f}", True),
                 ("rt_per_s", "round trips/s", "{:,.0f}", True),
                 ("p50_us", "p50 µs", "{:.0f}", False),
                 ("p99_us", "p99 µs", "{:.0f}", False),
                 ("p999_us", "p99.9 µs", "{:.0f}", False)],
    "bulk1": [("cpu_ms_per_gib", "server CPU ms/GiB", "{:.0f}", True),
              ("mib_per_s", "MiB/s echoed", "{:,.0f}", True)],
    "connect": [("cpu_us_per_conn", "server CPU µs/connection", "{:.1f}", True),
                ("conns_per_s", "connections/s", "{:,.0f}", True)],
    "idle": [("rss_before_kib", "VmRSS before KiB", "{:,.0f}", False),
             ("rss_after_kib", "VmRSS after KiB", "{:,.0f}", False),
             ("kib_per_conn", "KiB/connection", "{:.2f}", True)],
}
COLUMNS["bulk8"] = COLUMNS["bulk1"]
COLUMNS["pingpong1"] = COLUMNS["framed"] = COLUMNS["pingpong"]
COLUMNS["tls_bulk1"] = COLUMNS["tls_bulk8"] = COLUMNS["bulk1"]
COLUMNS["udp64"] = COLUMNS["udp1400"] = [
    ("cpu_us_per_dgram", "server CPU µs/datagram", "{:.2f}", True),
    ("dgrams_per_s", "datagrams/s", "{:,.0f}", True),
    ("p50_us", "p50 µs", "{:.0f}", False),
    ("p99_us", "p99 µs", "{:.0f}", False),
    ("lost", "lost", "{:.0f}", False)]
COLUMNS["tls_handshake"] = [("cpu_us_per_handshake", "server CPU µs/handshake", "{:.1f}", True),
                            ("handshakes_per_s", "handshakes/s", "{:,.0f}", True)]
TITLES = {
    "pingpong1": "ping-pong: 1 connection, 64-byte messages",
    "pingpong": "ping-pong: 50 connections, 64-byte messages",
    "bulk1": "bulk: 1 connection streaming, every byte echoed and checked",
    "bulk8": "bulk: 8 connections streaming",
    "connect": "connect: connect, 1 byte each way, close (16 at a time)",
    "idle": "idle: server memory for {n} idle connections",
    "tls_bulk1": "TLS bulk: 1 connection, every byte echoed and checked",
    "tls_bulk8": "TLS bulk: 8 connections",
    "tls_handshake": "TLS handshakes: connect, full handshake (no resumption), 1 byte each way, close (16 at a time)",
    "udp64": "UDP echo: 64-byte datagrams, 8 sockets x 8 in flight, every reply checked",
    "udp1400": "UDP echo: 1400-byte datagrams, 8 sockets x 8 in flight, every reply checked",
    "framed": "framing: ping-pong, 50 connections, 64-byte payloads with a 4-byte length prefix "
              "(netev: echoed unframed; -framed: cut into frames and echoed with send_frame)",
}


def cell(values, fmt):
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def table(results, mode, servers, args):
    cols = COLUMNS[mode]
    head = ["server"]
    for key, title, fmt, ratio in cols:
        head.append(title)
        if ratio:
            head.append("×" + base_server(mode))
    rows = []
    base = results.get(base_server(mode), [])
    for name in servers:
        runs = results.get(name, [])
        if not runs:
            continue
        row = [name]
        for key, title, fmt, ratio in cols:
            vals = [r[key] for r in runs]
            row.append(cell(vals, fmt))
            if ratio:
                bvals = [r[key] for r in base]
                b = statistics.median(bvals) if bvals else 0
                row.append(f"{statistics.median(vals) / b:.2f}" if b else "–")
        rows.append(row)
    widths = [max(len(r[i]) for r in [head] + rows) for i in range(len(head))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                        for i, (c, w) in enumerate(zip(r, widths))) + " |")
    return "\n".join(lines)


def med(results, server, mode, key):
    runs = results.get(mode, {}).get(server, [])
    return statistics.median([r[key] for r in runs]) if runs else None


def targets(res, modes):
    """The issue's targets, checked on the pinned pass: the plain ones when
    a plain mode ran, the TLS ones when a TLS mode ran."""
    out = []

    def check(label, value, limit, ok):
        if value is None or limit is None:
            out.append(f"- {label}: not measured")
        else:
            out.append(f"- {label}: {value:.3g} vs {limit:.3g} → {'MET' if ok(value, limit) else 'NOT MET'}")

    if any(m in PLAIN_MODES for m in modes):
        cpu_rows = (("pingpong1", "cpu_us_per_rt", "CPU µs/round trip (pingpong 1)"),
                    ("pingpong", "cpu_us_per_rt", "CPU µs/round trip (pingpong 50)"),
                    ("bulk1", "cpu_ms_per_gib", "CPU ms/GiB (bulk 1)"),
                    ("bulk8", "cpu_ms_per_gib", "CPU ms/GiB (bulk 8)"),
                    ("connect", "cpu_us_per_conn", "CPU µs/connection (connect)"))
        for variant in ("netev", "netev-w1"):
            for mode, key, what in cpu_rows:
                check(f"{variant} {what} ≤ libuv", med(res, variant, mode, key), med(res, "libuv", mode, key),
                      lambda v, b: v <= b)
            for mode in ("pingpong1", "pingpong"):
                for key in ("p50_us", "p99_us", "p999_us"):
                    check(f"{variant} {mode} {key} ≤ libuv", med(res, variant, mode, key),
                          med(res, "libuv", mode, key), lambda v, b: v <= b)
            check(f"{variant} KiB per idle connection ≤ 0.5", med(res, variant, "idle", "kib_per_conn"), 0.5,
                  lambda v, b: v <= b)
        for mode, key, what in cpu_rows:
            b = med(res, "libuv", mode, key)
            check(f"netev-dispatcher {what} ≤ 1.3 × libuv", med(res, "netev-dispatcher", mode, key),
                  b * 1.3 if b else None, lambda v, lim: v <= lim)
    if any(m in TLS_MODES for m in modes):
        # Issue 11: what netev adds to tokio + tokio-rustls (same provider)
        # costs at most 10 %.
        tls_rows = (("tls_bulk1", "cpu_ms_per_gib", "TLS CPU ms/GiB (bulk 1)"),
                    ("tls_bulk8", "cpu_ms_per_gib", "TLS CPU ms/GiB (bulk 8)"),
                    ("tls_handshake", "cpu_us_per_handshake", "TLS CPU µs/handshake"))
        for variant in ("netev", "netev-w1"):
            for mode, key, what in tls_rows:
                b = med(res, TLS_BASE, mode, key)
                check(f"{variant} {what} ≤ 1.1 × {TLS_BASE}", med(res, variant, mode, key),
                      b * 1.1 if b else None, lambda v, lim: v <= lim)
    if any(m in UDP_MODES for m in modes):
        # Issue 13: a netev UDP echo costs no more CPU per datagram than
        # libuv's, and at most 1.3 x the raw recvmmsg/sendmmsg loop.
        for variant in ("netev", "netev-w1"):
            for mode in UDP_MODES:
                if mode not in modes:
                    continue
                v = med(res, variant, mode, "cpu_us_per_dgram")
                check(f"{variant} CPU µs/datagram ({mode}) ≤ libuv", v, med(res, "libuv", mode, "cpu_us_per_dgram"),
                      lambda v, b: v <= b)
                raw = med(res, "raw", mode, "cpu_us_per_dgram")
                check(f"{variant} CPU µs/datagram ({mode}) ≤ 1.3 × raw", v, raw * 1.3 if raw else None,
                      lambda v, lim: v <= lim)
    if "framed" in modes:
        # Issue 12: framing costs at most 10 % over the same stream unframed.
        for variant in ("netev", "netev-w1"):
            b = med(res, variant, "framed", "cpu_us_per_rt")
            check(f"{variant}-framed CPU µs/message ≤ 1.1 × {variant} unframed",
                  med(res, f"{variant}-framed", "framed", "cpu_us_per_rt"), b * 1.1 if b else None,
                  lambda v, lim: v <= lim)
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=float, default=5.0, help="measured seconds per run (default 5)")
    ap.add_argument("--warmup", type=float, default=None, help="seconds before measuring (default 0.5)")
    ap.add_argument("--idle-conns", type=int, default=10000)
    ap.add_argument("--passes", default="pinned,unpinned", help="pinned, unpinned or both (default both)")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--servers", default=None, help="comma-separated subset of the servers")
    ap.add_argument("--quick", action="store_true", help="smoke test: tiny durations, 1 round")
    ap.add_argument("--build-dir", default=os.path.join(cargo_target(), "benches"))
    ap.add_argument("--lib-dir", help="use this libnetev.so directory instead of cargo build --release")
    ap.add_argument("--tokio-bin", help="use this tokio_echo instead of cargo build --release --example")
    ap.add_argument("--tls-loadgen-bin", help="use this tls_loadgen instead of cargo build --release --example")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.duration, args.idle_conns = 1, 0.2, 200
        if args.warmup is None:
            args.warmup = 0.05
    if args.warmup is None:
        args.warmup = 0.5
    modes = args.modes.split(",")
    passes = args.passes.split(",")
    for m in modes:
        if m not in MODES:
            sys.exit(f"run.py: unknown mode {m}")
    if "pinned" in passes and (os.cpu_count() or 1) < 2:
        log("run.py: fewer than 2 CPUs: no pinned pass")
        passes = [p for p in passes if p != "pinned"]
    if "pinned" in passes and not shutil.which("taskset"):
        sys.exit("run.py: taskset (util-linux) is needed for the pinned pass")

    # Both sides inherit the raised descriptor limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.idle_conns + 1000
    if hard < need:
        # Raising the hard limit takes CAP_SYS_RESOURCE (root, as in CI);
        # without it the check below says what is missing.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            hard = need
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.idle_conns + 100:
        sys.exit(f"run.py: RLIMIT_NOFILE hard limit {hard} is below --idle-conns {args.idle_conns} + 100")

    tls = any(m in TLS_MODES for m in modes)
    paths = build(args, tls, tokio_needed=any(m in PLAIN_MODES for m in modes))
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    all_results = {}
    for pss in passes:
        pinned = pss == "pinned"
        res = all_results.setdefault(pss, {})
        for rnd in range(args.rounds):
            for mode in modes:
                servers = server_commands(paths, pinned, kind_of(mode))
                if args.servers:
                    keep = args.servers.split(",")
                    servers = [s for s in servers if s[0] in keep]
                if not servers:
                    continue
                k = rnd % len(servers)
                for name, argv in servers[k:] + servers[:k]:  # a different server goes first each round
                    log(f"[{pss} round {rnd + 1}/{args.rounds}] {mode} {name}")
                    r = run_one(name, argv, mode, pinned, args, paths)
                    res.setdefault(mode, {}).setdefault(name, []).append(r)
    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]

    cpu_model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    print(f"netev benchmarks — {started:%Y-%m-%d %H:%M} UTC, {time.monotonic() - t0:.0f} s")
    print(f"command: benches/run.sh {' '.join(sys.argv[1:])}".rstrip())
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                             text=True).stdout.strip() or "unknown"
    except OSError:
        rev = "unknown"
    print(f"netev: git {rev}")
    print(f"machine: nproc {os.cpu_count()}, {cpu_model}, kernel {os.uname().release}")
    print(f"load average before: {' '.join(load_before)}, after: {' '.join(load_after)}")
    ratios = []
    if any(m in PLAIN_MODES + UDP_MODES for m in modes):
        ratios.append("×libuv: median ÷ libuv's median")
    if tls:
        ratios.append(f"×{TLS_BASE} (TLS modes): median ÷ {TLS_BASE}'s median")
    if "framed" in modes:
        ratios.append("×netev (framing): median ÷ unframed netev's median (the targets pair -w1 with -w1)")
    ratios = "; ".join(ratios)
    print(f"rounds {args.rounds}, {args.duration:g} s measured per run (after {args.warmup:g} s warm-up); "
          f"cells: median (min–max over rounds); {ratios}")
    for pss, res in all_results.items():
        where = ("pinned: server on CPU 0, load generator on CPU 1" if pss == "pinned"
                 else "unpinned: server and load generator free to use every core")
        print(f"\n## {where}")
        for mode in modes:
            if mode in res:
                servers = [s for s, _ in server_commands(paths, pss == "pinned", kind_of(mode))]
                print(f"\n### {TITLES[mode].format(n=args.idle_conns)}\n")
                print(table(res[mode], mode, servers, args))
        if pss == "pinned":
            print("\n### targets (pinned)\n")
            print(targets(res, modes))
    sys.stdout.flush()


if __name__ == "__main__":
    try:
        main()
    except RuntimeError as e:
        sys.exit(f"run.py: {e}")
    except subprocess.CalledProcessError as e:
        sys.exit(f"run.py: {' '.join(e.cmd)} failed (exit {e.returncode})")
