//! Smoke test of the benchmark binary: `portwatch-bench --quick` runs the cheap
//! figures (no coordinator or agent processes needed) and prints, for each, one
//! JSON line that parses and names its figure. No timing is asserted: numbers
//! from a loaded test machine (and a debug build) mean nothing.

use std::process::Command;

const CHEAP: [&str; 4] = ["cpu-per-check", "burst", "scheduler", "timing-truth"];

#[test]
fn quick_run_prints_one_json_line_per_cheap_figure() {
    let out = Command::new(env!("CARGO_BIN_EXE_portwatch-bench"))
        .args(["--quick", "--only", &CHEAP.join(",")])
        // Keep the debug build's scheduler phase short.
        .args(["--monitors", "10000", "--window", "2"])
        .output()
        .expect("run portwatch-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "portwatch-bench failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    let mut seen = Vec::new();
    for line in stdout.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        let name = v["bench"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"bench\" key: {line}"))
            .to_string();
        assert!(v.get("error").is_none(), "{name} failed: {line}");
        assert!(
            v.get("met").is_some_and(|m| m.is_boolean()),
            "{name}: no goal verdict: {line}"
        );
        if name == "scheduler" {
            // The same-run baseline made real handshakes, all of them answered.
            let paced = &v["paced_raw"];
            assert!(
                paced["checks_per_s"].as_f64().is_some_and(|r| r > 0.0),
                "scheduler: no paced raw baseline: {line}"
            );
            assert_eq!(paced["failed"].as_u64(), Some(0), "{line}");
        }
        seen.push(name);
    }
    assert_eq!(seen, CHEAP, "one JSON line per figure, in order");
    // Tables are printed too.
    assert!(stdout.contains("## cpu-per-check"), "{stdout}");
}
