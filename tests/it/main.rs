//! Integration tests: the real binary over stdio JSON-RPC, real SQLite files, real processes.

mod util;

mod agent;
mod cancel;
mod mcp_native;
mod recovery;
mod resume;
mod tools;
mod stall;
