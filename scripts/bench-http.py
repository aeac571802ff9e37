#!/usr/bin/env python3
"""HTTP surface benchmark (BENCHMARKS.md "HTTP API and event streams").

Measures, against the real binary: event latency from commit to SSE client (same process
and cross-process), 100 SSE clients on one busy workflow (server CPU and RSS), and the
dashboard's first-load size and time. Usage: scripts/bench-http.py [path/to/baton]
"""
import json, os, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request
from datetime import datetime

BIN = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/baton")

def serve(d, http=True):
    # The server runs what it starts itself (not in the per-database background worker),
    # so "same process" is one process.
    env = dict(os.environ, BATON_DB=f"{d}/baton.db", RUST_LOG="warn", BATON_IN_PROCESS="1")
    if http:
        env["BATON_HTTP"] = "127.0.0.1:0"
        try: os.remove(f"{d}/baton.http")
        except FileNotFoundError: pass
    p = subprocess.Popen([BIN, "serve"], env=env, cwd=d, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    if http:
        while not os.path.exists(f"{d}/baton.http"): time.sleep(0.02)
    return p

def base(d):
    return open(f"{d}/baton.http").read().strip().rstrip("/"), open(f"{d}/baton.token").read().strip()

def start(b, t, wf):
    req = urllib.request.Request(b + "/api/workflows", data=json.dumps({"workflow": wf}).encode(),
        headers={"Authorization": "Bearer " + t, "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req))["thread_id"]

def sse(b, t, path, on_event, until="workflow_completed"):
    host, port = b[7:].split(":")
    s = socket.create_connection((host, int(port)))
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n".encode())
    f = s.makefile("rb")
    for raw in f:
        line = raw.decode(errors="replace").rstrip("\r\n")
        if line.startswith("data: "):
            ev = json.loads(line[6:])
            on_event(ev, time.time())
            if ev.get("type") == until:
                s.close(); return

def at(ev):
    return datetime.fromisoformat(ev["at"].replace("Z", "+00:00")).timestamp()

def chain(n, cmd):
    return {"name": "bench", "steps": [dict({"id": f"s{i}", "shell": cmd}, **({"deps": [f"s{i-1}"]} if i else {})) for i in range(n)]}

def latency(runner_dir, watcher_dir, label, gate_dir):
    b, t = base(watcher_dir)
    rb, rt = base(runner_dir)
    lat = []
    ready = threading.Event()
    wid = start(rb, rt, {"name": "lat", "steps": [{"id": "gate", "shell": "while [ ! -f go ]; do sleep 0.01; done"}] + chain(60, "sleep 0.02")["steps"][1:] + [{"id": "s0", "deps": ["gate"], "shell": "true"}]})
    th = threading.Thread(target=sse, args=(b, t, f"/api/workflows/{wid}/events", lambda e, now: lat.append((now - at(e)) * 1000)))
    th.start(); time.sleep(0.5); open(f"{gate_dir}/go", "w").close(); th.join()
    lat = sorted(lat[2:])
    q = statistics.quantiles(lat, n=20)
    print(f"{label}: {len(lat)} events, p50 {statistics.median(lat):.1f} ms, p95 {q[18]:.1f} ms")

def cpu_rss(pid):
    st = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    ticks = int(st[11]) + int(st[12])
    rss = next(int(l.split()[1]) for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
    return ticks / os.sysconf("SC_CLK_TCK"), rss

with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as w:
    pa = serve(a)
    latency(a, a, "same process (commit -> SSE client)", a)
    # Cross-process: a second server on the same database watches; the first runs.
    os.makedirs(f"{a}/w", exist_ok=True)
    env = dict(os.environ, BATON_DB=f"{a}/baton.db", RUST_LOG="warn", BATON_HTTP="127.0.0.1:0")
    os.rename(f"{a}/baton.http", f"{a}/runner.http")
    pw = subprocess.Popen([BIN, "serve"], env=env, cwd=a, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    while not os.path.exists(f"{a}/baton.http"): time.sleep(0.02)
    wb = open(f"{a}/baton.http").read()
    os.rename(f"{a}/runner.http", f"{w}/baton.http"); open(f"{w}/baton.token", "w").write(open(f"{a}/baton.token").read())
    os.remove(f"{a}/go")
    latency(w, a, "cross process (commit -> SSE client of another server)", a)

    b, t = base(a)
    c0, r0 = cpu_rss(pa.pid)
    busy = chain(200, "true")
    wid = start(base(w)[0], t, busy)  # the runner (pa) runs it
    t0 = time.time()
    threads = [threading.Thread(target=sse, args=(b, t, f"/api/workflows/{wid}/events", lambda e, now: None)) for _ in range(100)]
    for th in threads: th.start()
    for th in threads: th.join()
    wall = time.time() - t0
    c1, r1 = cpu_rss(pw.pid)
    print(f"100 SSE clients on one 200-step workflow (watcher process): wall {wall:.2f} s, watcher CPU {c1:.2f} s, RSS {r1/1024:.1f} MiB")

    t0 = time.time(); size = 0
    for p in ["/", "/assets/app.js", "/assets/app.css"]:
        size += len(urllib.request.urlopen(b + p).read())
    print(f"dashboard first load: {size/1024:.1f} KiB in 3 requests, {(time.time()-t0)*1000:.1f} ms")
    for p in (pa, pw):
        p.stdin.close(); p.wait(timeout=20)
