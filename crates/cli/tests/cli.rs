//! `portwatch` as a real process against a real coordinator process (TLS, temp
//! sled dir) on loopback: every subcommand, JSON output parsed, tables checked
//! for what a person reads, error messages and exit codes, `apply` idempotence
//! and `--dry-run`. Results come from hand-driven agents (`FakeAgent`), so
//! states and incidents are deterministic.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use portwatch_e2e::{
    Coordinator, FakeAgent, HttpReceiver, OPERATOR_TOKEN, Proc, Pty, TestCert, eventually,
};
use portwatch_proto::v1;
use serde_json::Value;

const PLANS: &str = "[plans.enterprise]\nport_monitors = true\nmax_monitors = 100\nmin_interval = \"1s\"\n\n[plans.free]\nport_monitors = false\nmax_monitors = 5\nmin_interval = \"5m\"\n";

fn cli_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portwatch"))
}

/// A binary built beside the CLI in the target directory.
fn sibling(name: &str) -> PathBuf {
    let mut p = cli_bin().to_path_buf();
    p.set_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        p.display()
    );
    p
}

/// What one CLI run printed and how it ended.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "{self:?}");
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "{self:?}");
        &self.stdout
    }

    fn failed(&self, code: i32, needles: &[&str]) {
        assert_eq!(self.code, code, "{self:?}");
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "stderr lacks {n:?}: {}",
                self.stderr
            );
        }
    }
}

/// Runs a command with a bounded wait; a hung process is killed and fails the test.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Out {
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null());
    let child = cmd.spawn().expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(o)) => Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Ok(Err(e)) => panic!("waiting for the CLI: {e}"),
        Err(_) => {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("{cmd:?} did not finish within {timeout:?}")
        }
    }
}

/// The CLI pointed at one coordinator with one token (through the environment
/// variables a user would export).
#[derive(Clone)]
struct Cli {
    addr: String,
    ca: PathBuf,
    token: String,
    tenant: Option<String>,
}

impl Cli {
    fn new(coord: &Coordinator, token: &str) -> Cli {
        Cli {
            addr: format!("https://{}", coord.addr),
            ca: coord.cert.cert.clone(),
            token: token.to_string(),
            tenant: None,
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(cli_bin());
        cmd.args(args)
            .env_clear()
            .env("PORTWATCH_ADDR", &self.addr)
            .env("PORTWATCH_CA", &self.ca)
            .env("PORTWATCH_TLS_SERVER_NAME", "localhost")
            .env("PORTWATCH_TOKEN", &self.token);
        if let Some(t) = &self.tenant {
            cmd.env("PORTWATCH_TENANT", t);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Out {
        run_bounded(self.command(args), Duration::from_secs(30))
    }

    /// Runs with `--output json` and parses stdout (exit 0 required).
    fn json(&self, args: &[&str]) -> Value {
        let mut all = vec!["--output", "json"];
        all.extend_from_slice(args);
        self.run(&all).json()
    }
}

/// A coordinator, an enterprise tenant "acme" and a free tenant "cheap", three
/// public regions with an agent token each.
struct World {
    coord: Coordinator,
    op: Cli,
    tenant: Cli,
    free: Cli,
    agent_tokens: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

async fn world() -> World {
    world_with("").await
}

/// A world whose coordinator config starts with `extra` (top-level keys).
async fn world_with(extra: &str) -> World {
    let w = portwatch_e2e::World::builder()
        .coordinator_bin(sibling("portwatch-coordinator"))
        .config(extra)
        .plans(PLANS)
        .other_tenant("cheap", v1::Plan::Free)
        .public_regions(&["eu", "us", "ap"])
        .start()
        .await;
    World {
        op: Cli::new(&w.coord, OPERATOR_TOKEN),
        tenant: Cli::new(&w.coord, &w.tenant_token),
        free: Cli::new(&w.coord, w.token_of("cheap")),
        agent_tokens: w
            .regions
            .iter()
            .map(|r| (r.name.clone(), r.token.clone()))
            .collect(),
        coord: w.coord,
        dir: w.dir,
    }
}

async fn agents(w: &World) -> Vec<FakeAgent> {
    let mut v = Vec::new();
    for (region, token) in &w.agent_tokens {
        let a = FakeAgent::connect(&w.coord, token, &format!("agent-{region}"))
            .await
            .expect("agent connects");
        a.keepalive();
        v.push(a);
    }
    v
}

fn monitor_names(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|m| m["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_manage_tenants_regions_and_agent_tokens() {
    let w = world().await;

    let me = w.op.json(&["whoami"]);
    assert_eq!(me["operator"], true);
    assert_eq!(w.tenant.run(&["whoami"]).ok().trim(), "tenant acme");

    // tenant add / list / set-plan
    let created = w.op.json(&[
        "tenant", "add", "globex", "--name", "Globex", "--plan", "pro",
    ]);
    assert_eq!(created["tenant"]["id"], "globex");
    assert_eq!(created["tenant"]["plan"], "pro");
    let globex_token = created["token"].as_str().unwrap().to_string();
    assert!(globex_token.starts_with("pwt_"), "{created}");
    let globex = Cli::new(&w.coord, &globex_token);
    assert_eq!(globex.json(&["whoami"])["tenant_id"], "globex");

    let tenants = w.op.json(&["tenant", "list"]);
    let ids: Vec<&str> = tenants
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", "cheap", "globex"]);
    let table = w.op.run(&["tenant", "list"]).ok().to_string();
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("globex  Globex"), "{table}");

    let t = w.op.json(&["tenant", "set-plan", "globex", "enterprise"]);
    assert_eq!(t["plan"], "enterprise");
    assert_eq!(t["min_interval_ms"], 1000);

    // region add (public and private), regions
    let r =
        w.op.json(&["region", "add", "sa", "--description", "São Paulo"]);
    assert_eq!(r["private"], false);
    let r =
        w.op.json(&["region", "add", "globex-dc", "--owner", "globex"]);
    assert_eq!(r["owner_tenant_id"], "globex");
    let out = w.op.run(&["region", "add", "lab", "--owner", "nobody"]);
    out.failed(1, &["owner_tenant_id: no such tenant"]);

    let all = w.op.json(&["regions"]);
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ap", "eu", "globex-dc", "sa", "us"]);
    // A tenant sees the public regions and its own private ones only.
    let theirs = w.tenant.json(&["regions"]);
    assert!(
        theirs
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["name"] != "globex-dc")
    );
    assert!(
        globex
            .json(&["regions"])
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "globex-dc")
    );

    // agent-token create / list / revoke; agents
    let tok =
        w.op.json(&["agent-token", "create", "sa", "--description", "probe 1"]);
    let secret = tok["token"].as_str().unwrap().to_string();
    let token_id = tok["token_id"].as_str().unwrap().to_string();
    assert!(secret.starts_with("pwa_"));
    let listed = w.op.json(&["agent-token", "list", "--region", "sa"]);
    assert_eq!(listed[0]["id"], token_id.as_str());
    assert_eq!(listed[0]["revoked"], false);
    assert!(
        !listed.to_string().contains(&secret),
        "secrets are never listed"
    );

    assert_eq!(w.op.json(&["agents"]), Value::Array(vec![]));
    let agent = FakeAgent::connect(&w.coord, &secret, "probe-sa-1")
        .await
        .expect("agent connects");
    agent.keepalive();
    let listed = w.op.json(&["agents", "--region", "sa"]);
    assert_eq!(listed[0]["agent_id"], "probe-sa-1");
    assert_eq!(listed[0]["online"], true);
    let table = w.op.run(&["agents"]).ok().to_string();
    assert!(table.contains("probe-sa-1  sa"), "{table}");

    w.op.run(&["agent-token", "revoke", &token_id]).ok();
    let listed = w.op.json(&["agent-token", "list", "--region", "sa"]);
    assert_eq!(listed[0]["revoked"], true);
    assert!(
        FakeAgent::connect(&w.coord, &secret, "probe-sa-2")
            .await
            .is_err(),
        "a revoked token no longer connects"
    );
    drop(agent);

    // region rm, then it is gone.
    w.op.run(&["region", "rm", "sa"]).ok();
    w.op.run(&["region", "rm", "sa"])
        .failed(1, &["name: no such region"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_are_created_listed_shown_updated_paused_and_deleted() {
    let w = world().await;
    let t = &w.tenant;

    let m = t.json(&[
        "monitor",
        "add",
        "--host",
        "DB.Example.com",
        "--port",
        "5432",
        "--regions",
        "eu,us,ap",
        "--name",
        "db",
        "--interval",
        "30s",
        "--timeout",
        "2s",
        "--consensus",
        "unanimous",
        "--family",
        "ipv4",
        "--address-policy",
        "all",
        "--close-mode",
        "rst",
    ]);
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(m["host"], "db.example.com");
    assert_eq!(m["port"], 5432);
    assert_eq!(m["regions"], serde_json::json!(["eu", "us", "ap"]));
    assert_eq!(m["interval_ms"], 30_000);
    assert_eq!(m["timeout_ms"], 2_000);
    assert_eq!(m["consensus"], "unanimous");
    assert_eq!(m["family"], "ipv4");
    assert_eq!(m["address_policy"], "all");
    assert_eq!(m["close_mode"], "rst");
    assert_eq!(m["paused"], false);

    // Defaults, and a table for people.
    let out = t.run(&[
        "monitor",
        "add",
        "--host",
        "web.example.com",
        "--port",
        "443",
        "--regions",
        "eu",
    ]);
    let text = out.ok();
    assert!(text.starts_with("created monitor mon"), "{text}");
    assert!(text.contains("web.example.com:443"), "{text}");
    assert!(text.contains("interval        1m"), "{text}");

    let list = t.json(&["monitor", "list"]);
    assert_eq!(monitor_names(&list), ["db", "web.example.com:443"]);
    let table = t.run(&["monitor", "ls"]).ok().to_string();
    let header = table.lines().next().unwrap();
    assert!(header.starts_with("ID "), "{table}");
    for col in ["NAME", "TARGET", "REGIONS", "INTERVAL", "CONSENSUS"] {
        assert!(header.contains(col), "{header}");
    }
    // Columns line up: every row's TARGET starts where the header's does.
    let at = header.find("TARGET").unwrap();
    for line in table.lines().skip(1) {
        let prefix: String = line.chars().take(at).collect();
        let rest: String = line.chars().skip(at).collect();
        assert!(prefix.ends_with("  "), "{table}");
        assert!(!rest.starts_with(' '), "{table}");
    }

    // show, by id and by name
    let shown = t.json(&["monitor", "show", &id]);
    assert_eq!(shown["monitor"]["name"], "db");
    assert_eq!(shown["status"]["quorum"], 3, "unanimous over three regions");
    assert_eq!(shown["status"]["regions"].as_array().unwrap().len(), 3);
    assert_eq!(shown["status"]["regions"][0]["state"], "unknown");
    assert_eq!(
        t.json(&["monitor", "show", "db"])["monitor"]["id"],
        id.as_str()
    );

    // update: only the given flags change.
    let u = t.json(&[
        "monitor",
        "update",
        "db",
        "--interval",
        "10s",
        "--regions",
        "eu,us",
    ]);
    assert_eq!(u["interval_ms"], 10_000);
    assert_eq!(u["regions"], serde_json::json!(["eu", "us"]));
    assert_eq!(u["consensus"], "unanimous");
    assert_eq!(u["generation"], 2);
    t.run(&["monitor", "update", "db"])
        .failed(2, &["nothing to change"]);

    // pause / resume
    assert_eq!(t.json(&["monitor", "pause", "db"])["paused"], true);
    let st = t.json(&["status"]);
    let db = st
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "db")
        .unwrap();
    assert_eq!(db["overall"], "paused");
    assert_eq!(t.json(&["monitor", "resume", &id])["paused"], false);
    // For people: one line saying what happened, not the settings table.
    let paused = t.run(&["monitor", "pause", "db"]).ok().to_string();
    assert_eq!(paused, format!("paused monitor {id} (db)\n"));
    let resumed = t.run(&["monitor", "resume", "db"]).ok().to_string();
    assert_eq!(resumed, format!("resumed monitor {id} (db)\n"));

    // rm
    let gone = t.json(&["monitor", "rm", "db"]);
    assert_eq!(gone["deleted"], id.as_str());
    t.run(&["monitor", "show", &id])
        .failed(1, &["no monitor with the id or name", &id, "not_found"]);
    assert_eq!(
        monitor_names(&t.json(&["monitor", "list"])),
        ["web.example.com:443"]
    );

    // The operator acts on a tenant's monitors with --tenant.
    let mut op = w.op.clone();
    op.run(&["monitor", "list"])
        .failed(2, &["tenant_id: required for the operator"]);
    op.tenant = Some("acme".into());
    assert_eq!(
        monitor_names(&op.json(&["monitor", "list"])),
        ["web.example.com:443"]
    );
    let ok = op.run(&["--tenant", "cheap", "--output", "json", "monitor", "list"]);
    assert_eq!(ok.json(), Value::Array(vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_results_incidents_and_watch_follow_the_agents() {
    let w = world().await;
    let t = &w.tenant;
    // watch, as a real process streaming JSON lines, from before the monitor
    // exists: it sees the monitor's regions get their first state.
    let mut watch = Proc::spawn_merged("watch", t.command(&["--output", "json", "watch"]));
    watch.wait_line("watching events", Duration::from_secs(10));

    let m = t.json(&[
        "monitor",
        "add",
        "--host",
        "db.example.com",
        "--port",
        "5432",
        "--regions",
        "eu,us,ap",
        "--name",
        "db",
        "--interval",
        "2s",
        "--timeout",
        "1s",
    ]);
    let id = m["id"].as_str().unwrap().to_string();
    let mut ag = agents(&w).await;

    for a in &mut ag {
        a.report_acked(&id, v1::Outcome::Ok).await;
    }
    let st = t.json(&["status"]);
    assert_eq!(st[0]["overall"], "up", "{st}");
    let states: Vec<&str> = st[0]["regions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["up", "up", "up"]);
    let line = t.run(&["status"]).ok().to_string();
    assert!(line.contains("eu ✓  us ✓  ap ✓"), "{line}");

    // Two of three regions refused: quorum, incident.
    ag[0].report_acked(&id, v1::Outcome::Refused).await;
    ag[1].report_acked(&id, v1::Outcome::Refused).await;
    let open = eventually("an open incident", Duration::from_secs(10), || {
        let v = t.json(&["incidents", "--open"]);
        async move { (!v.as_array().unwrap().is_empty()).then_some(v) }
    })
    .await;
    assert_eq!(open[0]["monitor_name"], "db");
    assert_eq!(open[0]["open"], true);
    assert_eq!(open[0]["reason"], "refused");
    let incident_id = open[0]["id"].as_str().unwrap().to_string();
    let table = t.run(&["incidents", "--open"]).ok().to_string();
    assert!(table.contains("Connection refused"), "{table}");
    assert!(table.contains("open"), "{table}");

    let st = t.json(&["status"]);
    assert_eq!(st[0]["overall"], "down");
    assert_eq!(st[0]["open_incident_id"], incident_id.as_str());
    assert!(
        t.run(&["status"]).ok().contains("eu ✗  us ✗  ap ✓"),
        "marks per region"
    );

    // monitor show: per-region table and sparkline.
    let shown = t.run(&["monitor", "show", "db"]).ok().to_string();
    for needle in [
        "state: down",
        "REGION",
        "CONNECT MS",
        "CHECKED AT",
        "Connection refused",
        "1.2",
        "SPARKLINE",
        "▁✗",
    ] {
        assert!(shown.contains(needle), "{needle:?} in\n{shown}");
    }
    let shown = t.json(&["monitor", "show", "db"]);
    assert_eq!(shown["recent"]["eu"]["sparkline"], "▁✗");
    assert_eq!(shown["recent"]["ap"]["sparkline"], "▁");
    let regions = &shown["status"]["regions"];
    assert_eq!(
        (&regions[0]["region"], &regions[2]["region"]),
        (&"eu".into(), &"ap".into())
    );
    assert_eq!(regions[2]["connect_ms"], 1.234);
    assert_eq!(
        regions[0]["connect_ms"],
        Value::Null,
        "a refused check never connected: {shown}"
    );

    // Recovery: every region up closes it.
    for a in &mut ag {
        a.report_acked(&id, v1::Outcome::Ok).await;
    }
    eventually("the incident closed", Duration::from_secs(10), || {
        let v = t.json(&["incidents", "--open"]);
        async move { v.as_array().unwrap().is_empty().then_some(()) }
    })
    .await;
    let all = t.json(&["incidents"]);
    assert_eq!(all[0]["open"], false);
    assert!(all[0]["closed_at"].is_string());
    assert_eq!(
        t.json(&["incidents", "--monitor", "db"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // results: all eight in the last hour, the newest one by --limit, per region.
    let rs = t.json(&["results", "db", "--since", "1h"]);
    assert_eq!(rs.as_array().unwrap().len(), 8, "{rs}");
    assert_eq!(rs[0]["outcome"], "ok");
    let newest = t.json(&["results", &id, "--limit", "1"]);
    assert_eq!(newest.as_array().unwrap().len(), 1);
    assert_eq!(newest[0]["outcome"], "ok");
    let eu = t.json(&["results", "db", "--region", "eu", "--limit", "0"]);
    let outcomes: Vec<&str> = eu
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["ok", "refused", "ok"]);
    let old = t.json(&["results", "db", "--since", "2h", "--until", "1h"]);
    assert_eq!(old, Value::Array(vec![]));
    let table = t.run(&["results", "db"]).ok().to_string();
    assert!(table.contains("203.0.113.10:5432"), "{table}");

    // The watcher saw a region get its first state (from no state at all: null,
    // never "unknown(0)"), then the incident open and close, as JSON lines.
    let first = watch.wait_line("\"region_state\"", Duration::from_secs(10));
    let ev: Value = serde_json::from_str(&first).expect("one JSON object per line");
    assert!(!first.contains("unknown("), "{first}");
    assert_eq!(ev["from"], Value::Null, "{first}");
    assert!(ev["to"].is_string(), "{first}");
    let opened = watch.wait_line("\"incident_opened\"", Duration::from_secs(10));
    assert!(!opened.contains("unknown("), "{opened}");
    let ev: Value = serde_json::from_str(&opened).expect("one JSON object per line");
    assert_eq!(ev["incident"]["id"], incident_id.as_str());
    watch.wait_line("\"incident_closed\"", Duration::from_secs(10));
    assert_eq!(
        watch.terminate(Duration::from_secs(5)).map(|s| s.success()),
        Some(false),
        "SIGTERM ends watch"
    );

    // watch for one monitor, in a table, ends cleanly on Ctrl-C (SIGINT).
    let mut human = Proc::spawn_merged("watch", t.command(&["watch", "--monitor", "db"]));
    human.wait_line("watching events", Duration::from_secs(10));
    ag[2].report_acked(&id, v1::Outcome::TimedOut).await;
    let line = human.wait_line("region ap", Duration::from_secs(10));
    assert!(line.contains("db  up -> down"), "{line}");
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(human.child.id() as i32, libc::SIGINT);
    }
    let status = eventually("watch exits", Duration::from_secs(5), || {
        let s = human.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    assert_eq!(
        status.code(),
        Some(130),
        "Ctrl-C ends watch as a shell reports SIGINT"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_servers_message_and_documented_exit_codes() {
    let w = world().await;

    // 1: refused by the plan, with the plan named.
    w.free
        .run(&[
            "monitor",
            "add",
            "--host",
            "db.example.com",
            "--port",
            "5432",
            "--regions",
            "eu",
        ])
        .failed(
            1,
            &[
                "plan: the free plan does not include port monitors; basic or above is required",
                "failed_precondition",
            ],
        );
    // 1: operator-only, not found, already exists, bad token.
    w.tenant
        .run(&["tenant", "list"])
        .failed(1, &["only the operator may list tenants"]);
    // The name or id the user gave is repeated, not the server's "id: ...".
    w.tenant.run(&["monitor", "show", "mon-nope"]).failed(
        1,
        &["no monitor with the id or name \"mon-nope\"", "not_found"],
    );
    let by_name = w.tenant.run(&["monitor", "show", "orders db"]);
    by_name.failed(1, &["no monitor with the id or name \"orders db\""]);
    assert!(
        !by_name.stderr.contains("id: no such monitor"),
        "{by_name:?}"
    );
    w.op.run(&["tenant", "add", "acme", "--plan", "basic"])
        .failed(1, &["already exists"]);
    let mut wrong = w.tenant.clone();
    wrong.token = "pwt_not-a-real-token".into();
    wrong.run(&["status"]).failed(1, &["unauthenticated"]);

    // 2: the server's INVALID_ARGUMENT, naming the field.
    w.tenant
        .run(&[
            "monitor",
            "add",
            "--host",
            "bad host",
            "--port",
            "22",
            "--regions",
            "eu",
        ])
        .failed(2, &["host:", "invalid_argument"]);
    w.tenant
        .run(&[
            "monitor",
            "add",
            "--host",
            "x.example.com",
            "--port",
            "22",
            "--regions",
            "mars",
        ])
        .failed(2, &["regions: unknown region \"mars\""]);
    // 2: usage errors found by the CLI itself.
    w.tenant
        .run(&[
            "monitor",
            "add",
            "--host",
            "x.example.com",
            "--regions",
            "eu",
        ])
        .failed(2, &["--port"]);
    w.tenant
        .run(&[
            "monitor",
            "add",
            "--host",
            "x.example.com",
            "--port",
            "70000",
            "--regions",
            "eu",
        ])
        .failed(2, &["70000 is not a TCP port; must be 1-65535"]);
    w.tenant
        .run(&[
            "monitor",
            "add",
            "--host",
            "x.example.com",
            "--port",
            "0",
            "--regions",
            "eu",
        ])
        .failed(2, &["0 is not a TCP port; must be 1-65535"]);
    w.tenant
        .run(&[
            "monitor",
            "add",
            "--host",
            "x.example.com",
            "--port",
            "22",
            "--regions",
            "eu",
            "--interval",
            "soon",
        ])
        .failed(2, &["--interval", "30s"]);
    w.tenant.run(&["frobnicate"]).failed(2, &["frobnicate"]);
    let mut no_token = w.tenant.clone();
    no_token.token = String::new();
    no_token.run(&["status"]).failed(2, &["--token"]);
    let mut no_ca = w.tenant.command(&["status"]);
    no_ca.env_remove("PORTWATCH_CA");
    run_bounded(no_ca, Duration::from_secs(10)).failed(2, &["--ca"]);
    let mut remote_plain = w.tenant.clone();
    remote_plain.addr = "http://192.0.2.1:7400".into();
    remote_plain.run(&["status"]).failed(2, &["loopback"]);

    // 3: nothing listening, or a certificate from another CA.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut nowhere = w.tenant.clone();
    nowhere.addr = format!("https://127.0.0.1:{port}");
    nowhere
        .run(&["status"])
        .failed(3, &["cannot connect", "refused"]);
    let other = w.dir.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let mut stranger = w.tenant.clone();
    stranger.ca = TestCert::generate(&other).cert;
    stranger
        .run(&["status"])
        .failed(3, &["cannot connect", "certificate"]);

    // Channels: whatever the coordinator says is shown, and a refusal exits non-zero.
    let add = w.tenant.run(&[
        "--output",
        "json",
        "channel",
        "add",
        "webhook",
        "--url",
        "https://hooks.example.com/portwatch",
        "--secret",
        "0123456789abcdef0123456789abcdef",
        "--name",
        "ops hook",
    ]);
    if add.code == 0 {
        let ch = add.json();
        let id = ch["id"].as_str().unwrap().to_string();
        assert_eq!(ch["kind"], "webhook");
        assert!(!add.stdout.contains("0123456789abcdef0123456789abcdef"));
        let list = w.tenant.json(&["channel", "list"]);
        assert_eq!(list[0]["id"], id.as_str());
        w.tenant.run(&["channel", "rm", &id]).ok();
        assert_eq!(w.tenant.json(&["channel", "list"]), Value::Array(vec![]));
    } else {
        assert_ne!(add.code, 0);
        assert!(!add.stderr.trim().is_empty(), "{add:?}");
        w.tenant
            .run(&["channel", "list"])
            .failed(1, &["unimplemented"]);
    }
    let test = w.tenant.run(&["channel", "test", "chan-nope"]);
    assert_eq!(test.code, 1, "{test:?}");
    assert!(test.stderr.starts_with("portwatch: "), "{test:?}");

    // --addr without a port means the coordinator's 7400, not https' 443.
    let mut no_port = w.tenant.clone();
    no_port.addr = "https://127.0.0.2".into();
    let out = no_port.run(&["status"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("https://127.0.0.2:7400"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_is_idempotent_and_dry_run_changes_nothing() {
    let w = world().await;
    let t = &w.tenant;
    let file = w.dir.path().join("monitors.toml");
    let first = r#"
# Monitors of acme, as code.
[[monitor]]
name = "web"
host = "Web.Example.com."
port = 443
regions = ["eu", "us", "ap"]
interval = "30s"

[[monitor]]
name = "db"
host = "db.example.com"
port = 5432
regions = ["eu", "us"]
consensus = "unanimous"
timeout = "2s"

[[monitor]]
name = "legacy"
host = "legacy.example.com"
port = 22
regions = ["eu"]
paused = true
"#;
    std::fs::write(&file, first).unwrap();
    let path = file.to_str().unwrap();

    // Dry run: the plan, and nothing stored.
    let plan = t.json(&["apply", "-f", path, "--dry-run"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["create"].as_array().unwrap().len(), 3);
    assert_eq!(t.json(&["monitor", "list"]), Value::Array(vec![]));
    let text = t.run(&["apply", "-f", path, "--dry-run"]).ok().to_string();
    assert!(
        text.contains("+ create \"web\": web.example.com:443 from eu,us,ap, every 30s"),
        "{text}"
    );
    assert!(
        text.contains("plan: 3 to create, 0 to update, 0 to delete, 0 unchanged"),
        "{text}"
    );
    assert!(text.contains("dry run: nothing changed"), "{text}");

    // Apply, then apply again: nothing to do, nothing touched.
    let done = t.run(&["apply", "-f", path]).ok().to_string();
    assert!(done.contains("applied: 3 change(s)"), "{done}");
    let before = t.json(&["monitor", "list"]);
    assert_eq!(before.as_array().unwrap().len(), 3);
    let legacy = before
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "legacy")
        .unwrap();
    assert_eq!(legacy["paused"], true);
    let again = t.json(&["apply", "-f", path]);
    assert_eq!(again["unchanged"].as_array().unwrap().len(), 3, "{again}");
    for k in ["create", "update", "delete", "applied"] {
        assert_eq!(again[k], Value::Array(vec![]), "{k}: {again}");
    }
    assert_eq!(
        t.json(&["monitor", "list"]),
        before,
        "a second apply changes nothing"
    );

    // A changed file: one update, one delete, one create, one resume.
    let second = r#"
[[monitor]]
name = "web"
host = "web.example.com"
port = 443
regions = ["eu", "us", "ap"]
interval = "1m"

[[monitor]]
name = "db"
host = "db.example.com"
port = 5432
regions = ["eu", "us"]

[[monitor]]
name = "cache"
host = "cache.example.com"
port = 6379
regions = ["ap"]
"#;
    std::fs::write(&file, second).unwrap();
    let plan = t.json(&["apply", "-f", path, "--dry-run", "--prune"]);
    assert_eq!(plan["update"][0]["name"], "web");
    assert_eq!(plan["update"][0]["changes"][0]["field"], "interval");
    assert_eq!(plan["update"][0]["changes"][0]["from"], "30s");
    assert_eq!(plan["update"][0]["changes"][0]["to"], "1m");
    assert_eq!(plan["delete"][0]["name"], "legacy");
    assert_eq!(plan["create"][0]["name"], "cache");
    assert_eq!(
        plan["unchanged"][0]["name"], "db",
        "omitted keys are not managed"
    );
    assert_eq!(
        t.json(&["monitor", "list"]),
        before,
        "dry run changed nothing"
    );
    let text = t
        .run(&["apply", "-f", path, "--dry-run", "--prune"])
        .ok()
        .to_string();
    assert!(text.contains("~ update \"web\""), "{text}");
    assert!(text.contains("interval: 30s -> 1m"), "{text}");
    assert!(text.contains("- delete \"legacy\""), "{text}");

    t.run(&["apply", "-f", path, "--prune"]).ok();
    let after = t.json(&["monitor", "list"]);
    let mut names = monitor_names(&after);
    names.sort();
    assert_eq!(names, ["cache", "db", "web"]);
    let web = after
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "web")
        .unwrap();
    assert_eq!(web["interval_ms"], 60_000);
    let db = after
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "db")
        .unwrap();
    assert_eq!(db["consensus"], "unanimous");
    let again = t.json(&["apply", "-f", path]);
    assert_eq!(again["applied"], Value::Array(vec![]), "{again}");

    // Bad input: exit 2, nothing changed, even when only one entry is wrong.
    std::fs::write(
        &file,
        format!("{second}\n[[monitor]]\nname = \"bad\"\nhost = \"x.example.com\"\nport = 22\nregions = [\"eu\"]\ninterval = \"often\"\n"),
    )
    .unwrap();
    t.run(&["apply", "-f", path])
        .failed(2, &["monitor 4 (\"bad\"): interval"]);
    std::fs::write(&file, "[[monitor]]\nname = \"x\"\nhots = \"typo\"\n").unwrap();
    t.run(&["apply", "-f", path]).failed(2, &["hots"]);
    t.run(&["apply", "-f", "/nonexistent/monitors.toml"])
        .failed(2, &["/nonexistent/monitors.toml"]);
    assert_eq!(t.json(&["monitor", "list"]), after);

    // A refusal by the server stops the run with its message (exit 1).
    std::fs::write(
        &file,
        "[[monitor]]\nname = \"x\"\nhost = \"x.example.com\"\nport = 22\nregions = [\"eu\"]\n",
    )
    .unwrap();
    w.free.run(&["apply", "-f", path]).failed(
        1,
        &[
            "creating \"x\"",
            "the free plan does not include port monitors",
        ],
    );
}

#[test]
fn completions_and_man_pages_are_generated() {
    let run = |args: &[&str]| {
        let mut cmd = Command::new(cli_bin());
        cmd.args(args).env_clear();
        run_bounded(cmd, Duration::from_secs(10))
    };
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run(&["completions", shell]);
        assert!(out.ok().contains("portwatch"), "{shell}");
    }
    assert!(run(&["completions", "bash"]).ok().contains("agent-token"));
    let man = run(&["man"]);
    assert!(
        man.ok().starts_with(".ie") || man.stdout.contains(".TH portwatch"),
        "{}",
        man.stdout
    );
    assert!(man.stdout.contains("apply"));
    let dir = tempfile::tempdir().unwrap();
    let pages = run(&["man", "--dir", dir.path().to_str().unwrap()]);
    let listed = pages.ok();
    for page in [
        "portwatch.1",
        "portwatch-monitor-add.1",
        "portwatch-apply.1",
    ] {
        assert!(dir.path().join(page).exists(), "{page} in {listed}");
    }
    // Every page says how it exits and what it reads from the environment.
    for needle in [
        ".SH \"EXIT STATUS\"",
        "cannot reach the coordinator",
        ".SH ENVIRONMENT",
        "PORTWATCH_ADDR",
        "PORTWATCH_WEBHOOK_SECRET",
        ".SH EXAMPLES",
    ] {
        assert!(man.stdout.contains(needle), "{needle:?} in\n{}", man.stdout);
    }
    let add = std::fs::read_to_string(dir.path().join("portwatch-monitor-add.1")).unwrap();
    for needle in [
        ".SH \"EXIT STATUS\"",
        ".SH ENVIRONMENT",
        "PORTWATCH_TOKEN",
        ".SH EXAMPLES",
        ".SH \"GLOBAL OPTIONS\"",
    ] {
        assert!(
            add.contains(needle),
            "{needle:?} in portwatch-monitor-add.1:\n{add}"
        );
    }

    let help = run(&["--help"]);
    assert!(help.ok().contains("Exit codes:"), "{}", help.stdout);
    assert!(help.stdout.contains("3    cannot reach the coordinator"));
    assert!(help.stdout.contains("130  interrupted"));
}

/// The sections of `--help` output: heading line → the lines under it.
fn help_sections(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            out.push((line.trim_end_matches(':').to_string(), String::new()));
        } else if let Some((_, body)) = out.last_mut() {
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[test]
fn help_shows_connection_flags_apart_examples_and_help_for_every_flag() {
    let help = |args: &[&str]| {
        let mut cmd = Command::new(cli_bin());
        cmd.args(args).arg("--help").env_clear();
        run_bounded(cmd, Duration::from_secs(10)).ok().to_string()
    };
    let global = [
        "--addr",
        "--token",
        "--ca",
        "--tls-server-name",
        "--client-cert",
        "--client-key",
        "--tenant",
        "--output",
    ];
    for command in [
        &["monitor", "add"][..],
        &["status"],
        &["results"],
        &["apply"],
        &["channel", "add", "webhook"],
    ] {
        let text = help(command);
        let sections = help_sections(&text);
        let own = sections
            .iter()
            .find(|(h, _)| h == "Options")
            .map(|(_, b)| b.as_str())
            .unwrap_or_default();
        let inherited = sections
            .iter()
            .find(|(h, _)| h == "Global options")
            .map(|(_, b)| b.as_str())
            .unwrap_or_else(|| panic!("{command:?}: no \"Global options\" in\n{text}"));
        for flag in global {
            assert!(
                !own.contains(&format!("{flag} ")) && !own.contains(&format!("{flag} <")),
                "{command:?}: {flag} among the command's own options:\n{text}"
            );
            assert!(
                inherited.contains(flag),
                "{command:?}: {flag} missing:\n{text}"
            );
        }
        assert!(
            sections.iter().any(|(h, _)| h == "Examples"),
            "{command:?}: no examples:\n{text}"
        );
    }
    // The webhook's own flags say what they are.
    let webhook = help(&["channel", "add", "webhook"]);
    for needle in [
        "--url <URL>",
        "Where to POST",
        "--secret <SECRET>",
        "HMAC-SHA256 key",
    ] {
        assert!(webhook.contains(needle), "{needle:?}:\n{webhook}");
    }
}

/// Waits for the "listening on" line of a coordinator process; returns host:port.
fn listening(proc: &mut Proc, scheme: &str) -> String {
    let line = proc.wait_line(
        &format!("listening on {scheme}://"),
        Duration::from_secs(20),
    );
    line.rsplit("://").next().unwrap().trim().to_string()
}

#[test]
fn dev_certs_give_working_tls_and_mtls_and_plaintext_stays_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let run = |args: &[&str], env: &[(&str, &Path)]| {
        let mut cmd = Command::new(cli_bin());
        cmd.args(args).env_clear();
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_bounded(cmd, Duration::from_secs(20))
    };
    let out = run(
        &[
            "--output",
            "json",
            "dev-certs",
            "--out",
            certs.to_str().unwrap(),
            "--san",
            "coord.test",
        ],
        &[],
    );
    let v = out.json();
    assert_eq!(
        v["server_names"],
        serde_json::json!(["localhost", "127.0.0.1", "::1", "coord.test"])
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.join("server.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private keys are not world-readable");
    }
    run(&["dev-certs", "--out", certs.to_str().unwrap()], &[])
        .failed(2, &["already exists", "--force"]);

    // A coordinator with the dev server certificate, requiring client certificates.
    let mut cmd = Command::new(sibling("portwatch-coordinator"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--operator-token",
        OPERATOR_TOKEN,
    ])
    .arg("--data-dir")
    .arg(dir.path().join("data"))
    .arg("--tls-cert")
    .arg(certs.join("server.pem"))
    .arg("--tls-key")
    .arg(certs.join("server.key"))
    .arg("--client-ca")
    .arg(certs.join("ca.pem"));
    let mut coord = Proc::spawn("coordinator", cmd);
    let addr = listening(&mut coord, "https");
    let url = format!("https://{addr}");
    let base = [
        "--addr",
        url.as_str(),
        "--token",
        OPERATOR_TOKEN,
        "--output",
        "json",
    ];
    fn with<'a>(base: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        a.push("whoami");
        a
    }
    let ca = certs.join("ca.pem");
    let cert = certs.join("client.pem");
    let key = certs.join("client.key");
    // The IP SAN verifies without --tls-server-name; the client certificate is required.
    let ok = run(
        &with(&base, &[]),
        &[
            ("PORTWATCH_CA", &ca),
            ("PORTWATCH_CLIENT_CERT", &cert),
            ("PORTWATCH_CLIENT_KEY", &key),
        ],
    );
    assert_eq!(ok.json()["operator"], true);
    run(&with(&base, &[]), &[("PORTWATCH_CA", &ca)]).failed(3, &["client certificate"]);
    run(
        &with(&base, &["--client-cert", cert.to_str().unwrap()]),
        &[("PORTWATCH_CA", &ca)],
    )
    .failed(2, &["--client-key"]);
    coord.terminate(Duration::from_secs(10));

    // Plaintext: only with insecure_plaintext on loopback, and http:// only to loopback.
    let mut cmd = Command::new(sibling("portwatch-coordinator"));
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--operator-token",
        OPERATOR_TOKEN,
        "--insecure-plaintext",
    ])
    .arg("--data-dir")
    .arg(dir.path().join("data-plain"));
    let mut plain = Proc::spawn("coordinator", cmd);
    let addr = listening(&mut plain, "http");
    let url = format!("http://{addr}");
    let out = run(&["--addr", &url, "--token", OPERATOR_TOKEN, "whoami"], &[]);
    assert_eq!(out.ok().trim(), "operator");
    // https:// to a plaintext server is a connection failure, never a silent downgrade.
    let tls_url = format!("https://{addr}");
    run(
        &["--addr", &tls_url, "--token", OPERATOR_TOKEN, "whoami"],
        &[("PORTWATCH_CA", &ca)],
    )
    .failed(3, &["cannot connect"]);
    plain.terminate(Duration::from_secs(10));
}

/// Runs the CLI with its stdin on a terminal where `typed` is typed; bounded.
fn run_at_terminal(mut cmd: Command, typed: &str, timeout: Duration) -> Out {
    let pty = Pty::open();
    cmd.stdin(pty.terminal())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("spawn");
    drop(cmd);
    pty.type_text(typed);
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(Ok(o)) => Out {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        _ => {
            // SAFETY: signalling our own child.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            panic!("the CLI at a terminal did not finish within {timeout:?}")
        }
    }
}

fn monitors_file(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| {
            format!(
                "[[monitor]]\nname = \"{n}\"\nhost = \"{n}.example.com\"\nport = 443\nregions = [\"eu\"]\n\n"
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_deletes_only_with_prune_and_asks_before_deleting_more_than_a_few() {
    let w = world().await;
    let t = &w.tenant;
    let file = w.dir.path().join("monitors.toml");
    let path = file.to_str().unwrap();
    let five = ["a", "b", "c", "d", "e"];
    std::fs::write(&file, monitors_file(&five)).unwrap();
    t.run(&["apply", "-f", path]).ok();
    let names = |t: &Cli| {
        let mut n = monitor_names(&t.json(&["monitor", "list"]));
        n.sort();
        n
    };
    assert_eq!(names(t), five);

    // A truncated file without --prune deletes nothing; the plan says what it keeps.
    std::fs::write(&file, monitors_file(&["a"])).unwrap();
    let out = t.run(&["apply", "-f", path]).ok().to_string();
    assert!(out.contains("4 not in the file (kept)"), "{out}");
    assert!(out.contains("keep \"e\""), "{out}");
    assert_eq!(names(t), five);
    let plan = t.json(&["apply", "-f", path]);
    assert_eq!(plan["kept"].as_array().map(Vec::len), Some(4), "{plan}");
    assert_eq!(plan["delete"], Value::Array(vec![]));

    // --prune deleting more than 3, not at a terminal, without --yes: nothing changes.
    let out = t.run(&["apply", "-f", path, "--prune"]);
    out.failed(2, &["--prune would delete 4", "--yes", "nothing changed"]);
    assert!(
        out.stdout.contains("- delete \"b\""),
        "the plan is shown: {out:?}"
    );
    assert_eq!(names(t), five);
    // An empty file with --prune: the same, and it says "all of them".
    std::fs::write(&file, "").unwrap();
    t.run(&["apply", "-f", path, "--prune"])
        .failed(2, &["delete 5 of the tenant's 5 monitors, all of them"]);
    assert_eq!(names(t), five);

    // At a terminal: asked; anything but "yes" changes nothing (exit 1).
    std::fs::write(&file, monitors_file(&["a"])).unwrap();
    let no = run_at_terminal(
        t.command(&["apply", "-f", path, "--prune"]),
        "no\n",
        Duration::from_secs(30),
    );
    no.failed(
        1,
        &["Type \"yes\" to go on", "not confirmed; nothing changed"],
    );
    assert_eq!(names(t), five);
    let yes = run_at_terminal(
        t.command(&["apply", "-f", path, "--prune"]),
        "yes\n",
        Duration::from_secs(30),
    );
    assert_eq!(yes.code, 0, "{yes:?}");
    assert!(yes.stdout.contains("applied: 4 change(s)"), "{yes:?}");
    assert_eq!(names(t), ["a"]);

    // A few (at most 3) are deleted with --prune alone; everything needs --yes.
    std::fs::write(&file, monitors_file(&five)).unwrap();
    t.run(&["apply", "-f", path]).ok();
    std::fs::write(&file, monitors_file(&["a", "b", "c"])).unwrap();
    t.run(&["apply", "-f", path, "--prune"]).ok();
    assert_eq!(names(t), ["a", "b", "c"]);
    std::fs::write(&file, "").unwrap();
    t.run(&["apply", "-f", path, "--prune"])
        .failed(2, &["--yes"]);
    t.run(&["apply", "-f", path, "--prune", "--yes"]).ok();
    assert_eq!(names(t), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_channel_test_says_so_once() {
    let w = world_with("allow_private_channel_targets = true\n").await;
    let receiver = HttpReceiver::start(|_, _| (500, "receiver broke".to_string())).await;
    let add = w.tenant.json(&[
        "channel",
        "add",
        "webhook",
        "--url",
        &receiver.url("/hook"),
        "--secret",
        "0123456789abcdef0123456789abcdef",
    ]);
    let id = add["id"].as_str().expect("channel id").to_string();
    let out = w.tenant.run(&["channel", "test", &id]);
    assert_eq!(out.code, 1, "{out:?}");
    assert_eq!(
        out.stdout, "",
        "the failure is said on stderr only: {out:?}"
    );
    assert_eq!(
        out.stderr.matches("receiver broke").count(),
        1,
        "said once: {out:?}"
    );
    assert!(out.stderr.contains("not accepted"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_says_the_coordinator_went_away_not_mtls() {
    let mut w = world().await;
    let mut watch = Proc::spawn_merged("watch", w.tenant.command(&["watch"]));
    watch.wait_line("watching events", Duration::from_secs(10));
    w.coord.proc.kill9();
    let status = eventually("watch exits", Duration::from_secs(20), || {
        let s = watch.child.try_wait().ok().flatten();
        async move { s }
    })
    .await;
    let mut said = String::new();
    while let Ok(line) = watch.lines.recv_timeout(Duration::from_millis(500)) {
        said.push_str(&line);
        said.push('\n');
    }
    assert_eq!(status.code(), Some(3), "{said}");
    assert!(said.contains("coordinator"), "{said}");
    assert!(
        said.contains("lost the connection") || said.contains("ended the event stream"),
        "{said}"
    );
    for wrong in ["client_ca", "--client-cert", "mTLS"] {
        assert!(!said.contains(wrong), "blames {wrong:?}: {said}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_prints_the_clis_and_the_coordinators() {
    let w = world().await;
    let want = env!("CARGO_PKG_VERSION");
    let text = w.tenant.run(&["version"]).ok().to_string();
    assert!(
        text.contains(&format!("portwatch {want} (this CLI)")),
        "{text}"
    );
    assert!(
        text.contains(&format!("portwatch-coordinator {want} at https://")),
        "{text}"
    );
    let v = w.tenant.json(&["version"]);
    assert_eq!((&v["cli"], &v["coordinator"]), (&want.into(), &want.into()));

    // Without a coordinator: the CLI's version, then why the other is missing.
    let mut away = w.tenant.clone();
    away.addr = "https://127.0.0.1:9".into();
    let out = away.run(&["version"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stdout.contains(&format!("portwatch {want}")), "{out:?}");
    assert!(out.stderr.contains("the coordinator's version"), "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bash_completion_completes_monitor_names() {
    let w = world().await;
    let t = &w.tenant;
    for name in ["db", "dns", "web"] {
        t.run(&[
            "monitor",
            "add",
            "--host",
            "x.example.com",
            "--port",
            "5432",
            "--regions",
            "eu",
            "--name",
            name,
        ])
        .ok();
    }
    let script = w.dir.path().join("portwatch.bash");
    std::fs::write(&script, t.run(&["completions", "bash"]).ok()).unwrap();
    // What bash does on TAB: COMP_WORDS/COMP_CWORD, then the registered function.
    let complete = |words: &[&str]| {
        let mut all = vec!["portwatch"];
        all.extend_from_slice(words);
        let quoted: Vec<String> = all.iter().map(|w| format!("'{w}'")).collect();
        let program = format!(
            "source '{}'\nCOMP_WORDS=({})\nCOMP_CWORD={}\n\
             f=$(complete -p portwatch | sed 's/.*-F \\([^ ]*\\).*/\\1/')\n\
             \"$f\" portwatch '{}' '{}'\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n",
            script.display(),
            quoted.join(" "),
            all.len() - 1,
            all[all.len() - 1],
            all[all.len() - 2],
        );
        // The shell's PORTWATCH_* settings, as the tenant exported them.
        let cmd = t.command(&[]);
        let mut bash = Command::new("bash");
        bash.arg("-c").arg(program).env_clear();
        for (k, v) in cmd.get_envs() {
            if let Some(v) = v {
                bash.env(k, v);
            }
        }
        // `portwatch` on PATH, as for a user who installed it.
        let bin_dir = cli_bin().parent().expect("the target dir");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![bin_dir.to_path_buf()];
        dirs.extend(std::env::split_paths(&path));
        bash.env("PATH", std::env::join_paths(dirs).expect("PATH"));
        let out = run_bounded(bash, Duration::from_secs(20));
        let mut got: Vec<String> = out.ok().lines().map(str::to_string).collect();
        got.retain(|l| !l.is_empty());
        got.sort();
        got
    };
    assert_eq!(complete(&["monitor", "show", ""]), ["db", "dns", "web"]);
    assert_eq!(complete(&["monitor", "rm", "d"]), ["db", "dns"]);
    assert_eq!(complete(&["results", "w"]), ["web"]);
    assert_eq!(complete(&["incidents", "--monitor", "dn"]), ["dns"]);
    assert_eq!(
        complete(&["--tenant", "acme", "monitor", "pause", "we"]),
        ["web"]
    );
    // Everything else is still clap's completion.
    assert!(complete(&["monitor", "sh"]).contains(&"show".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_life_commands_tag_show_first_steps_ack_mute_maintain_and_route() {
    let w = world().await;
    let t = &w.tenant;
    let m = t.json(&[
        "monitor",
        "add",
        "--host",
        "db.example.com",
        "--port",
        "5432",
        "--regions",
        "eu,us,ap",
        "--name",
        "db",
        "--interval",
        "2s",
        "--timeout",
        "1s",
        "--tags",
        "db,tier:1",
        "--recover-after",
        "2",
        "--degraded-after",
        "300ms",
        "--remind-every",
        "10m",
    ]);
    assert_eq!(m["tags"], serde_json::json!(["db", "tier:1"]));
    assert_eq!(m["recover_after"], 2);
    assert_eq!(m["degraded_after_ms"], 300);
    assert_eq!(m["remind_every_ms"], 600_000);
    let id = m["id"].as_str().unwrap().to_string();
    assert_eq!(
        monitor_names(&t.json(&["monitor", "list", "--tag", "db"])),
        ["db"]
    );
    assert!(
        t.json(&["monitor", "list", "--tag", "web"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        t.json(&["status", "--tag", "tier:1"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    t.run(&["monitor", "list", "--tag", "Not A Tag"])
        .failed(2, &["tag: "]);

    // Down: `monitor show` says what to try first; ack with a note.
    let mut ag = agents(&w).await;
    for a in &mut ag {
        a.report_acked(&id, v1::Outcome::Ok).await;
    }
    ag[0].report_acked(&id, v1::Outcome::Refused).await;
    ag[1].report_acked(&id, v1::Outcome::Refused).await;
    let open = eventually("an open incident", Duration::from_secs(10), || {
        let v = t.json(&["incidents", "--open"]);
        async move { (!v.as_array().unwrap().is_empty()).then_some(v) }
    })
    .await;
    let incident = open[0]["id"].as_str().unwrap().to_string();
    let shown = t.run(&["monitor", "show", "db"]).ok().to_string();
    assert!(shown.contains("what to try first:"), "{shown}");
    assert!(shown.contains("systemctl status"), "{shown}");
    assert!(shown.contains("nc -zv db.example.com 5432"), "{shown}");
    let acked = t.json(&["incident", "ack", &incident, "--note", "restarting it"]);
    assert!(
        acked["acknowledged_by"]
            .as_str()
            .is_some_and(|b| b.starts_with("token ")),
        "{acked}"
    );
    assert_eq!(acked["acknowledged_note"], "restarting it");
    let kinds: Vec<&str> = acked["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"acknowledged") && kinds.contains(&"opened"),
        "{kinds:?}"
    );
    let text = t.run(&["incident", "show", &incident]).ok().to_string();
    assert!(text.contains("acknowledged by token "), "{text}");
    assert!(text.contains("timeline:"), "{text}");
    t.run(&["incident", "ack", "inc-nope"])
        .failed(1, &["no such incident"]);

    // Mute, maintenance windows.
    let muted = t
        .run(&["monitor", "mute", "db", "--for", "2h"])
        .ok()
        .to_string();
    assert!(muted.starts_with("muted monitor "), "{muted}");
    let weekly = t.json(&[
        "maintenance",
        "add",
        "--name",
        "sunday upgrades",
        "--tags",
        "db",
        "--weekly",
        "sun",
        "--at",
        "02:00",
        "--for",
        "2h",
        "--tz",
        "Europe/Berlin",
    ]);
    assert!(weekly["next_start"].is_string(), "{weekly}");
    let listed = t.json(&["maintenance", "list"]);
    let list = listed.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        list[0]["active"], true,
        "the mute is in force and listed first"
    );
    let table = t.run(&["maintenance", "list"]).ok().to_string();
    assert!(
        table.contains("in force") && table.contains("weekly sun 02:00"),
        "{table}"
    );
    t.run(&[
        "maintenance",
        "add",
        "--all",
        "--weekly",
        "sun",
        "--at",
        "02:00",
        "--for",
        "2h",
        "--tz",
        "Mars/Olympus",
    ])
    .failed(2, &["window.weekly.time_zone: "]);
    let wid = weekly["id"].as_str().unwrap();
    t.run(&["maintenance", "rm", wid]).ok();
    assert_eq!(
        t.json(&["maintenance", "list"]).as_array().unwrap().len(),
        1
    );

    // Routing rules: bad input is refused before or by the coordinator.
    t.run(&["routing", "set", "--rule", "tags=db"])
        .failed(2, &["--rule 1: channels=… is required"]);
    t.run(&["routing", "set", "--rule", "tags=db;channels=ch-nope"])
        .failed(2, &["rules.channel_ids: unknown channel"]);
    assert!(
        t.run(&["routing", "list"])
            .ok()
            .contains("no routing rules")
    );
}
