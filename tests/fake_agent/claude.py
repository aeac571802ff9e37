#!/usr/bin/env python3
"""A stand-in for `claude -p [PROMPT] --output-format stream-json --verbose [--resume ID] ...`.

It reproduces what baton relies on in the real Claude Code CLI (checked against 2.1.332):

* `-p`/`--print` is a flag, the prompt a positional argument. Any argument starting with `-`
  is an option (`error: unknown option '-x'` if unknown) unless it follows `--`. A piped
  stdin is read to its end and is the prompt, byte for byte; with a prompt argument too, the
  prompt is the argument, a newline, and stdin. No prompt from either is an error.

* stdout carries one JSON object per line: `system`/`init` (session_id, cwd, model, tools,
  permissionMode), `assistant` messages (text and `tool_use` items), `user` tool results,
  `system`/`permission_denied`, and a final `result` with the real field set (subtype,
  is_error, result, session_id, num_turns, duration_ms, total_cost_usd, usage,
  permission_denials; error subtypes carry `errors` and no `result`).
* `total_cost_usd` is the session's cumulative cost: a resumed session reports what it cost
  before plus what this run cost, as the real CLI does.
* API errors and a missing login arrive as `subtype: "success"`, `is_error: true`, exit 1.
* `--resume` of an unknown session prints "No conversation found with session ID: ..." to
  stderr and an `error_during_execution` result, exit 1, without an `init` line. Resuming
  from another cwd fails the same way (stricter than the real CLI, which moves the session;
  baton must never depend on that).
* stream-json without --verbose, an unknown flag or a missing -p is an error on stderr with
  empty stdout and exit 1.

Sessions live in $HOME/.claude-fake/sessions/<id>.json (cwd, conversation, cumulative cost);
the file is written before any model work so a session killed mid-run can be resumed.
Every invocation is appended to $FAKE_AGENT_LOG (default $HOME/.claude-fake/invocations.jsonl)
as {argv, cwd, pid, prompt, resume, session_id, options} before any work starts.

Behaviour is chosen by markers in the prompt:
  [[say:TEXT]]          the final result text (default "ok: <prompt without markers>")
  [[fail-once]]         the first run of this step fails (is_error, exit 1), later runs succeed;
                        counted in $HOME/.claude-fake/counters/<thread>-<step>
  [[fail-times:N]]      like fail-once, for the first N runs
  [[api-error]]         every run fails like a persistent 500 from the API
  [[not-logged-in]]     fails like a missing login
  [[max-turns]]         ends with subtype error_max_turns (errors[], no result)
  [[deny:TOOL]]         uses TOOL; denied unless --permission-mode bypassPermissions or
                        --allowedTools names it (and --disallowedTools does not)
  [[tool:TOOL:ARG]]     uses TOOL with ARG (Bash: command, others: file_path)
  [[tools:N]]           uses Bash N times (a chatty agent)
  [[wait-file:PATH]]    waits until PATH exists (in prompt order with the tool markers)
  [[sleep:S]]           sleeps S seconds after the init line (and after logging)
  [[sleep-first:S]]     the same, only in a new session (not when resuming)
  [[crash]]             exits with status 3 after the init line, without a result
  [[echo-history]]      the result lists the earlier user messages of the session
  [[cost:X]]            this run costs X USD (default 0.01)
  [[json:VALUE]]        with --json-schema: the value the StructuredOutput tool is called with
                        (default {"answer": <result text>}); it comes back as the result's
                        `structured_output`, as the real CLI reports it

With --max-budget-usd X, a run that would bring the session's cost past X ends with subtype
error_max_budget_usd (is_error, errors[], exit 1), as the real CLI does.
"""

import json
import os
import re
import sys
import time
import uuid

PRINT_FLAGS = {"-p", "--print"}
KNOWN_VALUE_FLAGS = {
    "--output-format", "--resume", "-r", "--model", "--permission-mode",
    "--max-turns", "--append-system-prompt", "--system-prompt", "--json-schema",
    "--max-budget-usd",
}
LIST_FLAGS = {"--allowedTools", "--allowed-tools", "--disallowedTools", "--disallowed-tools"}
BOOL_FLAGS = {"--verbose"}
TOOLS = ["Task", "Bash", "Edit", "Glob", "Grep", "Read", "Write", "WebFetch"]
MARKER = re.compile(r"\[\[([a-z-]+)(?::((?:[^\]]|\](?!\]))*))?\]\]")


def fail_early(message):
    """An error before the run starts: stderr only, empty stdout, exit 1."""
    sys.stderr.write(message + "\n")
    sys.exit(1)


def parse_args(argv):
    opts = {"allowed_tools": [], "disallowed_tools": [], "verbose": False, "print": False}
    positional = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--":
            positional.extend(argv[i + 1:])
            break
        if not a.startswith("-"):
            positional.append(a)
            i += 1
        elif a in PRINT_FLAGS:
            opts["print"] = True
            i += 1
        elif a in BOOL_FLAGS:
            opts["verbose"] = True
            i += 1
        elif a in KNOWN_VALUE_FLAGS:
            if i + 1 >= len(argv):
                fail_early(f"error: option '{a} <value>' argument missing")
            key = {"-r": "resume"}.get(a, a[2:].replace("-", "_"))
            opts[key] = argv[i + 1]
            i += 2
        elif a in LIST_FLAGS:
            key = "allowed_tools" if "allowed" in a.lower() and "dis" not in a.lower() else "disallowed_tools"
            i += 1
            while i < len(argv) and not argv[i].startswith("--"):
                opts[key].extend(t for t in re.split(r"[ ,]+", argv[i]) if t)
                i += 1
        else:
            fail_early(f"error: unknown option '{a}'")
    if not opts["print"]:
        fail_early("error: this stand-in only supports --print")
    parts = positional[:1]
    opts["stdin"] = not sys.stdin.isatty()
    if opts["stdin"]:
        piped = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
        if piped:
            parts.append(piped)
    if parts:
        opts["prompt"] = "\n".join(parts)
    if "prompt" not in opts:
        fail_early("Error: Input must be provided either through stdin or as a prompt argument when using --print")
    if opts.get("output_format") == "stream-json" and not opts["verbose"]:
        fail_early("Error: When using --print, --output-format=stream-json requires --verbose")
    return opts


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fake_home():
    return os.path.join(os.environ.get("HOME", "/tmp"), ".claude-fake")


def markers(prompt):
    return [(m.group(1), m.group(2)) for m in MARKER.finditer(prompt)]


def marker(found, name):
    for k, v in found:
        if k == name:
            return v if v is not None else ""
    return None


def tool_permitted(tool, opts):
    def names(lst):
        return {t.split("(", 1)[0] for t in lst}
    if tool in names(opts["disallowed_tools"]):
        return False
    if opts.get("permission_mode") == "bypassPermissions":
        return True
    return tool in names(opts["allowed_tools"])


def main():
    started = time.time()
    opts = parse_args(sys.argv[1:])
    prompt = opts["prompt"]
    found = markers(prompt)
    cwd = os.getcwd()
    home = fake_home()
    sessions = os.path.join(home, "sessions")
    os.makedirs(sessions, exist_ok=True)
    resume = opts.get("resume")
    log_path = os.environ.get("FAKE_AGENT_LOG") or os.path.join(home, "invocations.jsonl")

    def log(session_id, outcome):
        entry = {
            "argv": sys.argv[1:], "cwd": cwd, "pid": os.getpid(), "prompt": prompt,
            "resume": resume, "session_id": session_id, "outcome": outcome,
            "options": {k: v for k, v in opts.items() if k not in ("prompt", "verbose", "print", "stdin")},
            "prompt_from_stdin": opts["stdin"],
            "cmdline": open("/proc/self/cmdline", "rb").read().decode("utf-8", "replace"),
            "env": {k: os.environ.get(k) for k in ("BATON_THREAD_ID", "BATON_STEP_ID", "BATON_ATTEMPT")},
            "stdin": stdin_target(),
        }
        with open(log_path, "a") as f:
            f.write(json.dumps(entry) + "\n")

    def error_result(subtype, errors, session_id, turns=0, cost=0.0):
        emit({"type": "result", "subtype": subtype, "is_error": True, "duration_ms": 0,
              "duration_api_ms": 0, "num_turns": turns, "session_id": session_id,
              "total_cost_usd": cost, "usage": usage(0, 0), "permission_denials": [],
              "errors": errors, "uuid": str(uuid.uuid4())})

    if resume is not None:
        path = os.path.join(sessions, resume + ".json")
        session = None
        if os.path.exists(path):
            with open(path) as f:
                session = json.load(f)
        if session is None or session["cwd"] != cwd:
            msg = f"No conversation found with session ID: {resume}"
            log(None, "no-conversation")
            error_result("error_during_execution", [msg], resume)
            sys.stderr.write(msg + "\n")
            sys.exit(1)
        session_id = resume
    else:
        session_id = str(uuid.uuid4())
        path = os.path.join(sessions, session_id + ".json")
        session = {"cwd": cwd, "messages": [], "cost": 0.0}

    history = [m["text"] for m in session["messages"] if m["role"] == "user"]
    session["messages"].append({"role": "user", "text": prompt})
    save(path, session)
    log(session_id, "started")

    model = opts.get("model") or "claude-sonnet-fake"
    emit({"type": "system", "subtype": "init", "cwd": cwd, "session_id": session_id,
          "tools": TOOLS, "mcp_servers": [], "model": model,
          "permissionMode": opts.get("permission_mode") or "default",
          "apiKeySource": "ANTHROPIC_API_KEY", "claude_code_version": "2.1.332-fake",
          "uuid": str(uuid.uuid4())})

    def assistant(content):
        emit({"type": "assistant", "message": {"id": "msg_" + uuid.uuid4().hex[:12],
              "type": "message", "role": "assistant", "model": model, "content": content,
              "stop_reason": None, "usage": usage(10, 5)},
              "parent_tool_use_id": None, "session_id": session_id, "uuid": str(uuid.uuid4())})

    def tool_result(tool_use_id, text, is_error):
        emit({"type": "user", "message": {"role": "user", "content": [
              {"tool_use_id": tool_use_id, "type": "tool_result", "content": text,
               "is_error": is_error}]},
              "parent_tool_use_id": None, "session_id": session_id, "uuid": str(uuid.uuid4())})

    sleep = marker(found, "sleep")
    if sleep:
        time.sleep(float(sleep))
    sleep = marker(found, "sleep-first")
    if sleep and resume is None:
        time.sleep(float(sleep))
    if marker(found, "crash") is not None:
        sys.exit(3)

    cost = float(marker(found, "cost") or 0.01)
    turns = 1
    denials = []

    def use_tool(name, arg):
        nonlocal turns
        tid = "toolu_" + uuid.uuid4().hex[:20]
        key = "command" if name == "Bash" else "file_path"
        tool_input = {key: arg, "description": f"fake {name}"}
        assistant([{"type": "tool_use", "id": tid, "name": name, "input": tool_input}])
        turns += 1
        return tid, tool_input

    for k, v in found:
        if k == "tool" and v:
            name, _, arg = v.partition(":")
            tid, _ = use_tool(name, arg)
            tool_result(tid, f"fake {name} ran", False)
        elif k == "wait-file" and v:
            while not os.path.exists(v):
                time.sleep(0.05)
        elif k == "tools":
            for n in range(int(v or 1)):
                tid, _ = use_tool("Bash", f"echo chatty {n}")
                tool_result(tid, f"chatty {n}", False)
        elif k == "deny" and v:
            tid, tool_input = use_tool(v, "touch made-by-fake.txt")
            if tool_permitted(v, opts):
                tool_result(tid, f"fake {v} ran", False)
            else:
                denials.append({"tool_name": v, "tool_use_id": tid, "tool_input": tool_input})
                emit({"type": "system", "subtype": "permission_denied", "tool_name": v,
                      "tool_use_id": tid, "session_id": session_id, "uuid": str(uuid.uuid4())})
                tool_result(tid, f"{v} needs approval. Claude Code asks before this tool runs.", True)

    structured = {}

    def finish(text, is_error, code, subtype="success"):
        session["cost"] = round(session["cost"] + cost, 10)
        session["messages"].append({"role": "assistant", "text": text})
        save(path, session)
        result = {"type": "result", "subtype": subtype, "is_error": is_error,
                  "duration_ms": int((time.time() - started) * 1000), "duration_api_ms": 5,
                  "num_turns": turns, "session_id": session_id,
                  "total_cost_usd": session["cost"], "usage": usage(10 * turns, 5 * turns),
                  "permission_denials": denials, "uuid": str(uuid.uuid4())}
        if subtype == "success":
            result["result"] = text
            if "value" in structured:
                result["structured_output"] = structured["value"]
        else:
            result["errors"] = [text]
        emit(result)
        sys.exit(code)

    if marker(found, "api-error") is not None:
        text = ("API Error: 500 fake internal error. This is a server-side issue, usually "
                "temporary — try again in a moment.")
        assistant([{"type": "text", "text": text}])
        cost = 0.0
        finish(text, True, 1)
    if marker(found, "not-logged-in") is not None:
        text = "Not logged in · Please run /login"
        assistant([{"type": "text", "text": text}])
        cost = 0.0
        finish(text, True, 1)
    if marker(found, "max-turns") is not None:
        finish(f"Reached maximum number of turns ({opts.get('max_turns', 1)})", True, 1,
               subtype="error_max_turns")
    fail = marker(found, "fail-times")
    if fail is None and marker(found, "fail-once") is not None:
        fail = "1"
    if fail is not None:
        counters = os.path.join(home, "counters")
        os.makedirs(counters, exist_ok=True)
        key = "{}-{}".format(os.environ.get("BATON_THREAD_ID", "none"),
                             os.environ.get("BATON_STEP_ID", "none"))
        counter = os.path.join(counters, key)
        n = int(open(counter).read()) if os.path.exists(counter) else 0
        with open(counter, "w") as f:
            f.write(str(n + 1))
        if n < int(fail or 1):
            text = f"fake failure {n + 1} of {fail}"
            assistant([{"type": "text", "text": text}])
            finish(text, True, 1)

    budget = opts.get("max_budget_usd")
    if budget is not None and session["cost"] + cost > float(budget):
        finish(f"Reached maximum budget (${budget})", True, 1, subtype="error_max_budget_usd")

    say = marker(found, "say")
    if say is not None:
        text = say
    else:
        text = "ok: " + MARKER.sub("", prompt).strip()
    if marker(found, "echo-history") is not None:
        text += "\nhistory: " + " | ".join(MARKER.sub("", h).strip() for h in history)
    if opts.get("json_schema") is not None:
        # The real CLI offers a StructuredOutput tool; its input is the structured output.
        given = marker(found, "json")
        value = json.loads(given) if given is not None else {"answer": text}
        tid = "toolu_" + uuid.uuid4().hex[:20]
        assistant([{"type": "tool_use", "id": tid, "name": "StructuredOutput", "input": value}])
        tool_result(tid, "Structured output provided successfully", False)
        structured["value"] = value
    assistant([{"type": "text", "text": text}])
    finish(text, False, 0)


def usage(inp, out):
    return {"input_tokens": inp, "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0, "output_tokens": out,
            "server_tool_use": {"web_search_requests": 0}, "service_tier": "standard"}


def stdin_target():
    """What fd 0 is: "/dev/null", "closed", or a path such as "pipe:[123]"."""
    try:
        return os.readlink("/proc/self/fd/0")
    except OSError:
        return "closed"


def save(path, session):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(session, f)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
