"""LangGraph + SqliteSaver baseline for baton's benchmarks (issue 6).

A chain of N no-op nodes checkpointed by SqliteSaver on a file database in WAL mode with
synchronous=FULL, invoked with durability="sync" (every checkpoint committed before the next
node runs) — the closest LangGraph equivalent of baton's one durable commit per step
boundary. Measures sequential and 100-concurrent runs, commits per workflow and database
bytes per workflow, plus a raw-commit calibration from Python's sqlite3 in the same run.

    python bench.py --dir DIR --json OUT.json
    python bench.py --compare langgraph.json baton.json
"""

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from typing import TypedDict

from importlib.metadata import version
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calib import raw_commit, sequential_and_concurrent  # noqa: E402


class State(TypedDict):
    n: int


def noop(state: State) -> dict:
    return {"n": state["n"] + 1}


def true_node(state: State) -> dict:
    subprocess.run(["/bin/true"], check=True)
    return {"n": state["n"] + 1}


def build(saver: SqliteSaver, steps: int, node=noop):
    g = StateGraph(State)
    for i in range(steps):
        g.add_node(f"s{i}", node)
    g.add_edge(START, "s0")
    for i in range(steps - 1):
        g.add_edge(f"s{i}", f"s{i + 1}")
    g.add_edge(f"s{steps - 1}", END)
    return g.compile(checkpointer=saver)


class Counted:
    """A SqliteSaver on a WAL + synchronous=FULL file, counting COMMIT statements."""

    def __init__(self, path: str):
        self.commits = 0
        self.conn = sqlite3.connect(path, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.set_trace_callback(self._trace)
        self.saver = SqliteSaver(self.conn)
        self.saver.setup()

    def _trace(self, sql: str) -> None:
        if sql.lstrip().upper().startswith("COMMIT"):
            self.commits += 1


def db_bytes(path: str) -> int:
    c = sqlite3.connect(path)
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    wal = path + "-wal"
    return os.path.getsize(path) + (os.path.getsize(wal) if os.path.exists(wal) else 0)


def invoke(app, durability: str) -> float:
    t = time.perf_counter()
    out = app.invoke({"n": 0}, {"configurable": {"thread_id": str(uuid.uuid4())}},
                     durability=durability)
    assert out["n"] > 0
    return (time.perf_counter() - t) * 1000


def run(dirname: str) -> dict:
    res = {"langgraph_version": version("langgraph"),
           "checkpoint_sqlite_version": version("langgraph-checkpoint-sqlite")}
    res["raw_commit_p50_ms"] = raw_commit(dirname)

    path = os.path.join(dirname, "lg-10.db")
    db = Counted(path)
    app = build(db.saver, 10)
    for _ in range(5):
        invoke(app, "sync")
    base = db_bytes(path)
    ran = sequential_and_concurrent(res, lambda: invoke(app, "sync"), lambda: db.commits)
    res["bytes_per_wf"] = (db_bytes(path) - base) / ran

    # Growth with workflow length (superlinear in LangGraph: each checkpoint stores the
    # channel versions of the whole graph).
    path50 = os.path.join(dirname, "lg-50.db")
    db50 = Counted(path50)
    app50 = build(db50.saver, 50)
    invoke(app50, "sync")
    base50 = db_bytes(path50)
    for _ in range(40):
        invoke(app50, "sync")
    res["bytes_per_wf_50"] = (db_bytes(path50) - base50) / 40

    # Command steps: a 100-node chain whose nodes each run /bin/true, against 100 bare
    # spawns from Python in the same run; the overhead is what a step costs above its spawn.
    pathc = os.path.join(dirname, "lg-cmd.db")
    dbc = Counted(pathc)
    appc = build(dbc.saver, 100, true_node)
    invoke(appc, "sync")
    chain, spawns = [], []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(100):
            subprocess.run(["/bin/true"], check=True)
        spawns.append((time.perf_counter() - t) * 1000)
        chain.append(invoke(appc, "sync"))
    res["cmd_chain100_ms"] = statistics.median(chain)
    res["cmd_spawn100_ms"] = statistics.median(spawns)
    res["cmd_overhead_ms_per_step"] = (res["cmd_chain100_ms"] - res["cmd_spawn100_ms"]) / 100
    return res


def show(r: dict) -> None:
    print(f"LangGraph {r['langgraph_version']} + langgraph-checkpoint-sqlite "
          f"{r['checkpoint_sqlite_version']} (WAL, synchronous=FULL, durability=sync)")
    print(f"  raw commit (python sqlite3) p50     {r['raw_commit_p50_ms']:.3f} ms")
    print(f"  10-node workflow, sequential         p50 {r['seq_ms_per_wf_p50']:.2f} ms / "
          f"p95 {r['seq_ms_per_wf_p95']:.2f} ms")
    print(f"  per step                             {r['seq_ms_per_step']:.3f} ms = "
          f"{r['seq_ms_per_step'] / r['raw_commit_p50_ms']:.1f}x raw commit")
    print(f"  commits per workflow                 {r['commits_per_wf']:.1f}")
    print(f"  sequential throughput                {r['seq_wf_per_s']:.0f} wf/s")
    print(f"  100 concurrent (threads)             {r['conc100_wf_per_s']:.0f} wf/s, latency "
          f"p50 {r['conc100_p50_ms']:.0f} / p95 {r['conc100_p95_ms']:.0f} ms")
    print(f"  DB bytes per 10-node workflow        {r['bytes_per_wf']:.0f} B")
    print(f"  DB bytes per 50-node workflow        {r['bytes_per_wf_50']:.0f} B")
    print(f"  100-node chain of /bin/true          {r['cmd_chain100_ms']:.1f} ms against "
          f"{r['cmd_spawn100_ms']:.1f} ms for 100 spawns: "
          f"{r['cmd_overhead_ms_per_step']:.3f} ms per step above the spawn")


def compare(lg: dict, bt: dict, dboses: list) -> None:
    rows = [
        ("ms per 10-step workflow (p50)", lg["seq_ms_per_wf_p50"], bt["baton_seq_ms_per_wf"]),
        ("ms per step", lg["seq_ms_per_step"], bt["baton_seq_ms_per_step"]),
        ("commits per workflow", lg["commits_per_wf"], bt["baton_commits_per_wf"]),
        ("sequential wf/s", lg["seq_wf_per_s"], bt["baton_seq_wf_per_s"]),
        ("100 concurrent wf/s", lg["conc100_wf_per_s"], bt["baton_conc100_wf_per_s"]),
        ("100 concurrent p95 ms", lg["conc100_p95_ms"], bt["baton_conc100_p95_ms"]),
        ("DB bytes per 10-step workflow", lg["bytes_per_wf"], bt["baton_bytes_per_wf"]),
    ]
    print("\n| same run | LangGraph + SqliteSaver | baton | LangGraph / baton |")
    print("|---|---|---|---|")
    for name, a, b in rows:
        print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")
    print(f"| raw commit p50 ms (python / rust) | {lg['raw_commit_p50_ms']:.3f} | "
          f"{bt['raw_commit_p50_ms']:.3f} | |")
    print(f"| command step: ms above its spawn (100-step chain of /bin/true) | "
          f"{lg['cmd_overhead_ms_per_step']:.3f} | {bt['baton_cmd_overhead_ms']:.3f} | "
          f"{lg['cmd_overhead_ms_per_step'] / bt['baton_cmd_overhead_ms']:.2f}x |")
    ratio = lg["seq_ms_per_step"] / bt["baton_seq_ms_per_step"]
    verdict = "met" if ratio >= 5 else "MISSED"
    print(f"\nno-op steps: baton per step is {ratio:.1f}x lower than LangGraph "
          f"(target >= 5x): {verdict}")
    ratio = lg["cmd_overhead_ms_per_step"] / bt["baton_cmd_overhead_ms"]
    verdict = "met" if ratio >= 5 else "MISSED"
    print(f"command steps: baton's overhead above the spawn is {ratio:.1f}x lower than "
          f"LangGraph's (target >= 5x): {verdict}")
    for db in dboses:
        print(f"\n| same run | DBOS {db['dbos_version']} (SQLite, journal_mode={db['journal_mode']}) "
              f"| baton | DBOS / baton |")
        print("|---|---|---|---|")
        for name, a, b in [
            ("ms per 10-step workflow (p50)", db["seq_ms_per_wf_p50"], bt["baton_seq_ms_per_wf"]),
            ("ms per step", db["seq_ms_per_step"], bt["baton_seq_ms_per_step"]),
            ("commits per workflow", db["commits_per_wf"], bt["baton_commits_per_wf"]),
            ("sequential wf/s", db["seq_wf_per_s"], bt["baton_seq_wf_per_s"]),
            ("100 concurrent wf/s", db["conc100_wf_per_s"], bt["baton_conc100_wf_per_s"]),
            ("100 concurrent p95 ms", db["conc100_p95_ms"], bt["baton_conc100_p95_ms"]),
            ("DB bytes per 10-step workflow", db["bytes_per_wf"], bt["baton_bytes_per_wf"]),
        ]:
            print(f"| {name} | {a:.3f} | {b:.3f} | {a / b:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir")
    ap.add_argument("--json")
    ap.add_argument("--compare", nargs=2, metavar=("LANGGRAPH_JSON", "BATON_JSON"))
    ap.add_argument("--dbos", nargs="*", default=[], metavar="DBOS_JSON",
                    help="with --compare: DBOS's figures too")
    a = ap.parse_args()
    if a.compare:
        with open(a.compare[0]) as f:
            lg = json.load(f)
        with open(a.compare[1]) as f:
            bt = json.load(f)
        dboses = []
        for path in a.dbos:
            with open(path) as f:
                dboses.append(json.load(f))
        compare(lg, bt, dboses)
        return
    if not a.dir:
        sys.exit("--dir is required")
    r = run(a.dir)
    show(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2)


if __name__ == "__main__":
    main()
