//! The portwatch probe agent: runs the assigned TCP checks on schedule, keeps every result in a local durable spool, and streams results to the coordinator.

pub mod check_cmd;
pub mod config;
pub mod daemon;
pub mod failover;
pub mod loops;
pub mod memory;
pub mod runner;
pub mod scheduler;
pub mod spool;
pub mod stream;
pub mod writer;
