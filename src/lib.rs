//! baton runs durable, resumable multi-step workflows for AI coding agents and serves them to
//! MCP hosts over stdio.
//!
//! A workflow is a DAG of steps — headless Claude Code runs, commands and shell scripts — wired
//! by dependencies and `{step.output}` templates. Every step boundary is committed to SQLite
//! before anything depends on it, so completed work survives failures, `kill -9`, reboots and
//! host restarts; an interrupted workflow resumes from its last completed step.
//!
//! # Layout
//! - [`workflow`]: the pure model — parsing, validation, DAG, templates, retry policy. No I/O.
//! - [`store`]: the SQLite database — schema, migrations, queries, event log, group commit.
//! - [`engine`]: scheduler, executors, retries, leases, recovery, status and monitor views.
//! - [`mcp`]: the MCP server — tools, progress notifications.
//! - [`cli`]: the terminal front-end (`baton run`, `status`, `list`, …).
//!
//! The MCP server and the CLI are thin front-ends over the same engine; the store is the
//! source of truth for both, and several processes may share one database file.

pub mod cli;
pub mod engine;
pub mod mcp;
pub mod store;
pub mod workflow;
