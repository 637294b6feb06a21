//! A stock gRPC client that is not ours (scenario 14): Python `grpcio` with
//! `grpcio-reflection` (`stock_client.py` beside this file) against a real
//! coordinator process over TLS, with no portwatch `.proto` file.
//!
//! What it proves: the coordinator's reflection service describes the admin
//! API well enough for a generic client to build requests at run time, list
//! regions and monitors, create a monitor (seen afterwards by our own client),
//! get a field-named INVALID_ARGUMENT and an UNAUTHENTICATED like any client
//! would, and that the standard `grpc.health.v1.Health` service answers.
//!
//! The coordinator serves `grpc.reflection.v1` only, while grpcio-reflection's
//! descriptor database speaks `grpc.reflection.v1alpha`; the client is pointed
//! at v1 (same messages on the wire), as version-aware clients like grpcurl do.
//!
//! Needs only `python3` (with its `venv` module) on `PATH`: the test installs
//! the pinned `grpcio`, `grpcio-reflection` and `protobuf` into a virtual
//! environment under `target/` once (`portwatch_e2e::external`) and reuses it.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use portwatch_e2e::Proc;
use portwatch_e2e::external::{PythonEnv, ensure_python_grpc};
use portwatch_proto::v1;
use serde_json::Value;
use support::*;

/// Runs the stock client against `w`'s coordinator; returns what it saw.
fn run_stock_client(python: &PythonEnv, w: &World, reflection: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/stock_client.py");
    let mut cmd = Command::new(&python.python);
    cmd.arg(&script)
        .arg("--addr")
        .arg(w.coord.addr.to_string())
        .arg("--ca")
        .arg(&w.coord.cert.cert)
        .arg("--token")
        .arg(&w.tenant_token)
        .arg("--reflection")
        .arg(reflection);
    let mut client = Proc::spawn("python stock client", cmd);
    let line = client.wait_line("{\"reflection\"", Duration::from_secs(60));
    let status = client.child.wait().expect("the client exits");
    assert!(status.success(), "the python client failed: {status:?}");
    let out: Value = serde_json::from_str(&line).expect("the client's JSON");
    println!("python client saw: {out:#}");
    assert!(
        out["reflection_error"].is_null(),
        "grpcio-reflection ({reflection}) could not list the services: {}",
        out["reflection_error"]
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_python_grpc_client_uses_the_admin_api_through_reflection_and_health() {
    // First, before any process starts: the first run installs the packages.
    let python = ensure_python_grpc();
    let mut w = World::start(1, "").await;
    let req = monitor("made by rust", "db.example.com", 5432, &w.names(1), 60_000);
    let ours = create_monitor(&mut w.tenant, req).await;
    let out = run_stock_client(&python, &w, "v1");

    let services: Vec<&str> = out["services"]
        .as_array()
        .expect("services")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for want in [
        "portwatch.v1.AdminService",
        "portwatch.v1.AgentService",
        "grpc.health.v1.Health",
    ] {
        assert!(services.contains(&want), "{want} not listed: {services:?}");
    }
    assert_eq!(
        out["who_am_i"]["ok"]["tenantId"], TENANT,
        "{}",
        out["who_am_i"]
    );
    assert_eq!(
        out["regions"]["ok"]["regions"][0]["name"], "r0",
        "{}",
        out["regions"]
    );
    let created = &out["created"]["ok"];
    let id = created["id"]
        .as_str()
        .unwrap_or_else(|| panic!("CreateMonitor from python failed: {}", out["created"]));
    assert_eq!(created["consensus"], "CONSENSUS_POLICY_UNANIMOUS");
    let listed: Vec<&str> = out["monitors"]["ok"]["monitors"]
        .as_array()
        .expect("monitors")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(listed.contains(&"made by rust"), "{listed:?}");
    assert_eq!(
        out["bad_port"]["code"], "INVALID_ARGUMENT",
        "{}",
        out["bad_port"]
    );
    assert!(
        out["bad_port"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("port: ")),
        "{}",
        out["bad_port"]
    );
    assert_eq!(
        out["no_token"]["code"], "UNAUTHENTICATED",
        "{}",
        out["no_token"]
    );
    let health = &out["health"];
    for service in [
        "(server)",
        "portwatch.v1.AdminService",
        "portwatch.v1.AgentService",
    ] {
        assert_eq!(
            health[service]["ok"]["status"], "SERVING",
            "{service}: {}",
            health[service]
        );
    }
    assert_eq!(health["no.such.Service"]["code"], "NOT_FOUND");

    // What the stock client created is a real monitor, as our own client sees it.
    let got = w
        .tenant
        .get_monitor(v1::GetMonitorRequest {
            id: id.to_string(),
            ..Default::default()
        })
        .await
        .expect("the monitor python created")
        .into_inner();
    assert_eq!(
        (got.name.as_str(), got.port, got.interval_ms, got.timeout_ms),
        ("made by python", 5432, 60_000, 2_000)
    );
    assert_ne!(got.id, ours.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_reflection_as_shipped_lists_the_coordinators_services() {
    let python = ensure_python_grpc();
    let w = World::start(1, "").await;
    let out = run_stock_client(&python, &w, "v1alpha");
    let services = out["services"].as_array().cloned().unwrap_or_default();
    assert!(
        services.iter().any(|s| s == "portwatch.v1.AdminService"),
        "the shipped grpcio-reflection (v1alpha) must list the admin service: {services:?}"
    );
}
