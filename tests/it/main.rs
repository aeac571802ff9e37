//! Integration tests: the real binary over stdio JSON-RPC, real SQLite files, real processes.

mod util;

mod agent;
mod cancel;
mod cli;
mod claude_e2e;
mod mcp_native;
mod protocol;
mod recovery;
mod resume;
mod stall;
mod tools;
