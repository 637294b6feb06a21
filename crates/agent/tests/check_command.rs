//! `portwatch-agent check` as a user runs it: a real process against real
//! listeners on loopback, reading its output and exit status.

use std::net::TcpListener;
use std::process::{Command, Output};

fn agent(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portwatch-agent"))
        .arg("check")
        .args(args)
        .output()
        .expect("run portwatch-agent")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn reachable_port_prints_success_and_exits_zero() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let out = agent(&["127.0.0.1", &port, "--allow-private"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let s = text(&out);
    assert!(
        s.contains(&format!(
            "Connection to 127.0.0.1 (127.0.0.1) {port} port [tcp] succeeded"
        )),
        "{s}"
    );
    assert!(s.contains("outcome: ok") && s.contains("kernel rtt"), "{s}");
}

#[test]
fn closed_port_prints_the_reason_and_exits_one() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let out = agent(&["127.0.0.1", &port, "--allow-private"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("failed: Connection refused"),
        "{}",
        text(&out)
    );
}

#[test]
fn json_output_is_machine_readable() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = agent(&[
        "127.0.0.1",
        &port.to_string(),
        "--allow-private",
        "--json",
        "--timeout",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["outcome"], "ok");
    assert_eq!(v["port"], port);
    assert_eq!(v["address"], format!("127.0.0.1:{port}"));
    assert!(v["connect_us"].as_u64().is_some_and(|us| us > 0));
    assert!(v["total_us"].as_u64() >= v["connect_us"].as_u64());
}

#[test]
fn loopback_is_blocked_unless_private_targets_are_allowed() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    let out = agent(&["127.0.0.1", &port]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("non-public") || text(&out).contains("Blocked"),
        "{}",
        text(&out)
    );
}

#[test]
fn bad_input_names_the_field_and_exits_two() {
    let out = agent(&["bad host!", "80"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("host:"), "{}", text(&out));

    let out = agent(&["example.com", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("port"), "{}", text(&out));

    let out = agent(&["example.com", "70000"]);
    assert_eq!(out.status.code(), Some(2), "clap refuses a port over 65535");

    let out = agent(&["example.com", "80", "--timeout", "30s"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("1s-10s"), "{}", text(&out));
}
