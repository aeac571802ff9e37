"""DBOS baseline for baton's benchmarks (issue 14, target 6).

The same 10-step no-op workflow as bench/langgraph: a DBOS workflow of ten `@DBOS.step()`
functions, on DBOS's SQLite system database (its own settings: the file DBOS creates, its
IMMEDIATE transactions; DBOS records each step's result before the next runs), and with
--wal the same file in WAL mode, as baton and the LangGraph baseline use. Measures
sequential runs and 100 at once (DBOS.start_workflow from 100 threads), commits per
workflow (COMMIT statements seen by SQLite's trace callback) and database bytes per
workflow, with a raw-commit calibration from Python's sqlite3 in the same run.

    python bench.py --dir DIR --json OUT.json
"""

import argparse
import logging
import json
import os
import sqlite3
import sys
import time
from importlib.metadata import version

import sqlalchemy as sa
from dbos import DBOS

# The same calibration and measurement as the LangGraph baseline.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "langgraph"))
from calib import raw_commit, sequential_and_concurrent  # noqa: E402

COMMITS = [0]


@DBOS.step()
def noop(n: int) -> int:
    return n + 1


@DBOS.workflow()
def chain10(n: int) -> int:
    for _ in range(10):
        n = noop(n)
    return n


def file_bytes(path: str) -> int:
    total = 0
    for suffix in ("", "-wal", "-journal"):
        if os.path.exists(path + suffix):
            total += os.path.getsize(path + suffix)
    return total


def count_commits(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def trace(dbapi_conn, _record):
        def cb(sql: str) -> None:
            if sql.lstrip().upper().startswith("COMMIT"):
                COMMITS[0] += 1

        dbapi_conn.set_trace_callback(cb)


def once() -> float:
    t = time.perf_counter()
    assert chain10(0) == 10
    return (time.perf_counter() - t) * 1000


def run(dirname: str, wal: bool) -> dict:
    res = {"dbos_version": version("dbos")}
    res["raw_commit_p50_ms"] = raw_commit(dirname)
    path = os.path.join(dirname, "dbos.sqlite")
    if wal:
        # journal_mode=WAL is stored in the file, so every connection DBOS opens uses it.
        c = sqlite3.connect(path)
        c.execute("PRAGMA journal_mode=WAL")
        c.close()
    dbos_inst = DBOS(config={"name": "baton-bench", "system_database_url": f"sqlite:///{path}"})
    DBOS.launch()
    engine = dbos_inst._sys_db.engine  # noqa: SLF001
    count_commits(engine)
    engine.dispose()  # reconnect so every pooled connection is traced
    for _ in range(5):
        once()
    base = file_bytes(path)
    res["journal_mode"] = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    ran = sequential_and_concurrent(res, once, lambda: COMMITS[0])
    res["bytes_per_wf"] = (file_bytes(path) - base) / ran
    DBOS.destroy()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--json")
    ap.add_argument("--wal", action="store_true",
                    help="put the system database in WAL mode first (DBOS's default is a rollback journal)")
    args = ap.parse_args()
    logging.getLogger("dbos").setLevel(logging.WARNING)
    res = run(args.dir, args.wal)
    print(f"DBOS {res['dbos_version']} (SQLite system database, journal_mode={res['journal_mode']})")
    print(f"  raw commit (Python sqlite3, WAL+FULL) p50 {res['raw_commit_p50_ms']:.3f} ms")
    print(f"  10-step workflow, sequential: p50 {res['seq_ms_per_wf_p50']:.2f} ms "
          f"(p95 {res['seq_ms_per_wf_p95']:.2f}), {res['seq_ms_per_step']:.3f} ms per step, "
          f"{res['seq_wf_per_s']:.0f} wf/s")
    print(f"  commits per workflow: {res['commits_per_wf']:.1f}")
    print(f"  100 at once: {res['conc100_wf_per_s']:.0f} wf/s, p50 {res['conc100_p50_ms']:.1f} ms, "
          f"p95 {res['conc100_p95_ms']:.1f} ms")
    print(f"  DB bytes per workflow: {res['bytes_per_wf']:.0f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
