//! baton runs durable, resumable multi-step workflows for AI coding agents and serves them to
//! MCP hosts over stdio.
//!
//! A workflow is a DAG of steps — headless Claude Code runs, commands and shell scripts — wired
//! by dependencies and `{step.output}` templates. Every step boundary is committed to the store
//! before anything depends on it, so completed work survives failures, `kill -9`, reboots and
//! host restarts; an interrupted workflow resumes from its last completed step.
//!
//! # Layout
//! - [`api`]: the vocabulary every front-end shares — thread ids, statuses, events, views.
//! - [`workflow`]: the pure model — parsing, validation, DAG, templates, retry policy. No I/O.
//! - [`store`]: the source of truth behind one interface (SQLite backend): every transaction
//!   and every query.
//! - [`engine`]: the pure scheduler and the drivers around it, executors, leases, recovery,
//!   the one event stream, status and monitor views.
//! - [`mcp`]: the MCP front-end — tools, progress notifications, resources, tasks.
//! - [`saved`]: saved workflows — definition files in the project's and the user's
//!   workflows folders, started by name.
//! - [`cli`]: the terminal front-end (`baton run`, `status`, `list`, …).
//! - [`http`]: the operator surface — REST API, server-sent events, dashboard, health and
//!   metrics.
//!
//! Front-ends are thin over the same engine; `main` owns the process lifecycle (signals,
//! shutdown) and runs them. Several processes may share one database.
//! `docs/architecture.md` has the path of a workflow through these layers.

pub mod api;
pub mod cli;
pub mod engine;
pub mod http;
pub mod mcp;
pub mod saved;
pub mod store;
pub mod workflow;
