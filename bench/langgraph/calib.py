"""What the Python baselines (LangGraph, DBOS) share: a percentile and the raw-commit floor
measured from Python's sqlite3 in the same run."""

import os
import sqlite3
import statistics
import time


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
