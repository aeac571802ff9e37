//! Integration tests: the real binary over stdio JSON-RPC, real SQLite files, real processes.

// Helpers outside #[test] functions may fail loudly too: a failed helper is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
mod util;

mod activity;
mod agent;
mod browser;
mod budget;
mod cancel;
mod channel;
mod claude_e2e;
mod claude_host;
mod cli;
mod control_flow;
mod fan_out;
mod faults;
mod floods;
pub mod handover;
pub mod http;
mod human;
mod leases;
mod live_tail;
mod loops;
pub mod mcp_native;
mod mock_api;
mod postgres;
mod processes;
mod protocol;
mod recovery;
mod resume;
mod retention;
mod saved;
mod shell_fuzz;
mod stall;
mod steps;
mod structured;
mod studio;
mod subworkflows;
mod tools;
mod tty;
