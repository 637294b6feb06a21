//! What the coordinator tells `grpc.health.v1.Health` and `/metrics` about
//! itself: a set of named conditions (the store takes writes, the store's
//! files are intact, every background loop is running), each either
//! fine or bad with a reason.
//!
//! Guarantees:
//! - while any condition is bad, the admin service, the agent service and the
//!   server as a whole (`""`) answer NOT_SERVING; once every condition is fine
//!   again, SERVING;
//! - `portwatch_health_condition_ok{condition}` is 1 or 0 per condition and
//!   `portwatch_serving` is 1 or 0 overall, so an operator sees why;
//! - updates are applied in the order they are made (one at a time), so a
//!   late "bad" never overwrites a newer "fine" in the health service.

use std::collections::BTreeMap;
use std::sync::Arc;

use portwatch_proto::v1::admin_service_server::AdminServiceServer;
use portwatch_proto::v1::agent_service_server::AgentServiceServer;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::admin::AdminApi;
use crate::agents::AgentApi;

/// The store takes writes (see `store::Store::subscribe`).
pub const STORE_WRITABLE: &str = "store_writable";
/// No damage was found in the store's files.
pub const STORE_INTACT: &str = "store_intact";
/// Every background loop is running and completing its rounds (`loops`).
pub const LOOPS_RUNNING: &str = "loops_running";

/// The health reporter and the conditions behind it.
pub struct Health {
    reporter: HealthReporter,
    /// Condition name -> the reason it is bad (`None`: fine).
    conditions: tokio::sync::Mutex<BTreeMap<&'static str, Option<String>>>,
}

impl Health {
    /// Starts with every service SERVING and no condition known.
    pub async fn new(reporter: HealthReporter) -> Arc<Health> {
        let health = Health {
            reporter,
            conditions: tokio::sync::Mutex::new(BTreeMap::new()),
        };
        health.apply(true).await;
        metrics::gauge!("portwatch_serving").set(1.0);
        Arc::new(health)
    }

    /// Sets one condition: `None` is fine, `Some(reason)` is bad.
    pub async fn set(&self, condition: &'static str, problem: Option<String>) {
        let mut conditions = self.conditions.lock().await;
        let was_serving = conditions.values().all(Option::is_none);
        let before = conditions.insert(condition, problem.clone());
        metrics::gauge!("portwatch_health_condition_ok", "condition" => condition)
            .set(if problem.is_none() { 1.0 } else { 0.0 });
        if before.flatten() != problem {
            match &problem {
                Some(reason) => warn!(condition, %reason, "health: condition bad"),
                None => info!(condition, "health: condition fine again"),
            }
        }
        let serving = conditions.values().all(Option::is_none);
        if serving != was_serving {
            self.apply(serving).await;
            metrics::gauge!("portwatch_serving").set(if serving { 1.0 } else { 0.0 });
            info!(
                serving,
                "health: reporting {}",
                if serving { "SERVING" } else { "NOT_SERVING" }
            );
        }
    }

    /// The bad conditions and their reasons.
    pub async fn problems(&self) -> Vec<(&'static str, String)> {
        self.conditions
            .lock()
            .await
            .iter()
            .filter_map(|(k, v)| v.clone().map(|v| (*k, v)))
            .collect()
    }

    async fn apply(&self, serving: bool) {
        let status = if serving {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        if serving {
            self.reporter
                .set_serving::<AdminServiceServer<AdminApi>>()
                .await;
            self.reporter
                .set_serving::<AgentServiceServer<AgentApi>>()
                .await;
        } else {
            self.reporter
                .set_not_serving::<AdminServiceServer<AdminApi>>()
                .await;
            self.reporter
                .set_not_serving::<AgentServiceServer<AgentApi>>()
                .await;
        }
    }
}

#[cfg(test)]
mod tests;
