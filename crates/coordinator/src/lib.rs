//! The portwatch coordinator: holds the monitors, ingests results from agents,
//! decides with the multi-region consensus rule whether a port is down, opens and
//! closes incidents.

pub mod consensus;
pub mod hub;
pub mod store;
