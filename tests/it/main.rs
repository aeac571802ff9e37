//! Integration tests: the real binary over stdio JSON-RPC, real SQLite files, real processes.

mod util;

mod cancel;
mod resume;
mod tools;
