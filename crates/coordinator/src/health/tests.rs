//! The gRPC health services follow the coordinator's conditions: one bad
//! condition makes every service not serving until all are fine again.

use super::*;
use tonic_health::pb::HealthCheckRequest;

async fn status(server: &impl tonic_health::pb::health_server::Health, service: &str) -> i32 {
    server
        .check(tonic::Request::new(HealthCheckRequest {
            service: service.into(),
        }))
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
}

#[tokio::test]
async fn any_bad_condition_makes_every_service_not_serving_until_all_are_fine() {
    let reporter = HealthReporter::new();
    let server = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    let health = Health::new(reporter).await;
    let admin = "portwatch.v1.AdminService";
    let agent = "portwatch.v1.AgentService";
    let serving = ServingStatus::Serving as i32;
    let not = ServingStatus::NotServing as i32;
    for s in ["", admin, agent] {
        assert_eq!(status(&server, s).await, serving, "{s:?} at start");
    }
    health.set(STORE_WRITABLE, Some("disk full".into())).await;
    health.set("loop", Some("stopped".into())).await;
    for s in ["", admin, agent] {
        assert_eq!(status(&server, s).await, not, "{s:?} with two bad");
    }
    health.set(STORE_WRITABLE, None).await;
    assert_eq!(status(&server, admin).await, not, "one still bad");
    assert_eq!(health.problems().await, [("loop", "stopped".to_string())]);
    health.set("loop", None).await;
    for s in ["", admin, agent] {
        assert_eq!(status(&server, s).await, serving, "{s:?} all fine again");
    }
    assert!(health.problems().await.is_empty());
}
