"""What the Python baselines (LangGraph, DBOS) share: a percentile, the raw-commit floor
measured from Python's sqlite3 in the same run, and the measurement of one workflow shape."""

import os
import sqlite3
import statistics
import time
from concurrent.futures import ThreadPoolExecutor


def pct(xs, p):
    xs = sorted(xs)
    i = max(1, min(len(xs), int(-(-p * len(xs) // 1)))) - 1
    return xs[i]


def raw_commit(dirname: str) -> float:
    path = os.path.join(dirname, "calib.db")
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    body = "x" * 200
    xs = []
    for i in range(320):
        t = time.perf_counter()
        c.execute("INSERT INTO t (body) VALUES (?)", (body,))
        if i >= 20:
            xs.append((time.perf_counter() - t) * 1000)
    c.close()
    return statistics.median(xs)


def sequential_and_concurrent(res: dict, once, commits) -> int:
    """Runs `once` (one 10-step workflow, returning its ms) 60 times in sequence (counting
    `commits()` around them), 30 more for throughput, then 3 rounds of 100 from 100 threads;
    fills `res` and returns how many workflows ran."""
    c0 = commits()
    seq = [once() for _ in range(60)]
    res["commits_per_wf"] = (commits() - c0) / 60
    res["seq_ms_per_wf_p50"] = statistics.median(seq)
    res["seq_ms_per_wf_p95"] = pct(seq, 0.95)
    res["seq_ms_per_step"] = res["seq_ms_per_wf_p50"] / 10
    t = time.perf_counter()
    for _ in range(30):
        once()
    res["seq_wf_per_s"] = 30 / (time.perf_counter() - t)
    lat = []
    wall = 0.0
    rounds = 3
    with ThreadPoolExecutor(max_workers=100) as pool:
        for _ in range(rounds):
            t = time.perf_counter()
            lat.extend(pool.map(lambda _: once(), range(100)))
            wall += time.perf_counter() - t
    res["conc100_wf_per_s"] = 100 * rounds / wall
    res["conc100_p50_ms"] = statistics.median(lat)
    res["conc100_p95_ms"] = pct(lat, 0.95)
    return 60 + 30 + 100 * rounds
