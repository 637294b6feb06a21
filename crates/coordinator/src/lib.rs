//! The portwatch coordinator: holds the monitors, ingests results from agents,
//! decides with the multi-region consensus rule whether a port is down, opens and
//! closes incidents, and notifies through a durable outbox.

pub mod admin;
pub mod agents;
pub mod auth;
pub mod changes;
pub mod channels;
pub mod cluster;
pub mod config;
pub mod consensus;
pub mod first_steps;
pub mod flapping;
pub mod health;
pub mod hub;
pub mod ids;
pub mod listener;
pub mod loops;
pub mod maintenance;
pub mod outbox;
pub mod plans;
pub mod recovery;
pub mod render;
pub mod server;
pub mod store;
pub mod validate;
