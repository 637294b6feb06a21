//! The deployment files in `deploy/`, exercised for real:
//! - `local.sh --smoke` runs the whole local deployment (coordinator, three
//!   agents, targets, monitors, an incident and its recovery) and must report
//!   "up from all three regions", within a bounded time, leaving no process and
//!   no temp dir behind; its interactive mode prints export lines that make
//!   `portwatch status` work in a second shell, and stops cleanly on Ctrl-C;
//! - the example configs start the real daemons (with only paths and secrets
//!   overridden by environment variables) and document every config key;
//! - the systemd units carry the hardening the issue asks for (and pass
//!   `systemd-analyze verify` where it is installed).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portwatch_e2e::{OPERATOR_TOKEN, Proc, TestCert};

fn cli_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_portwatch"))
}

fn bin_dir() -> PathBuf {
    let dir = cli_bin().parent().expect("target dir").to_path_buf();
    for b in ["portwatch-coordinator", "portwatch-agent"] {
        assert!(
            dir.join(b).exists(),
            "{b} is missing in {}: run `cargo build --workspace --bins` first",
            dir.display()
        );
    }
    dir
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// `deploy/local.sh` in its own process group, output collected.
struct Script {
    child: Child,
    output: Arc<Mutex<String>>,
    tmp: tempfile::TempDir,
}

impl Script {
    fn start(args: &[&str]) -> Script {
        Self::start_with(args, &[])
    }

    /// `start` with environment variables set.
    fn start_with(args: &[&str], env: &[(&str, &Path)]) -> Script {
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let tmp = tempfile::tempdir().unwrap();
        // PostgreSQL runs as its own user when we are root: it must reach the work directory.
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(deploy_dir().join("local.sh"))
            .args(args)
            .arg("--bin-dir")
            .arg(bin_dir())
            .env("TMPDIR", tmp.path())
            .env_remove("PORTWATCH_TENANT")
            .env_remove("PORTWATCH_OUTPUT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own group, so everything it started can be signalled (and, on
            // timeout, killed) at once, as a terminal's Ctrl-C would.
            .process_group(0);
        let mut child = cmd.spawn().expect("start deploy/local.sh");
        let output = Arc::new(Mutex::new(String::new()));
        let readers: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout")),
            Box::new(child.stderr.take().expect("stderr")),
        ];
        for r in readers {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    if let Ok(mut o) = out.lock() {
                        o.push_str(&line);
                        o.push('\n');
                    }
                }
            });
        }
        Script { child, output, tmp }
    }

    fn pgid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid")
    }

    fn text(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }

    fn signal_group(&self, sig: i32) {
        // SAFETY: signalling the process group we created.
        unsafe {
            libc::kill(-self.pgid(), sig);
        }
    }

    /// Waits for the script to exit; on timeout kills its whole group and fails.
    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() >= deadline {
                self.signal_group(libc::SIGKILL);
                let _ = self.child.wait();
                panic!(
                    "deploy/local.sh did not finish within {timeout:?}; output:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_output(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.text().contains(needle) {
            if Instant::now() >= deadline || matches!(self.child.try_wait(), Ok(Some(_))) {
                self.signal_group(libc::SIGKILL);
                let _ = self.child.wait();
                panic!(
                    "no {needle:?} from deploy/local.sh; output:\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Nothing of the deployment is left: no process in its group, no process
    /// mentioning its temp dir, and the temp dir's contents removed.
    fn assert_nothing_left(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // SAFETY: signal 0 only checks whether the group has members.
            let alive = unsafe { libc::kill(-self.pgid(), 0) } == 0;
            let mentions = processes_mentioning(self.tmp.path());
            if !alive && mentions.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                self.signal_group(libc::SIGKILL);
                panic!(
                    "processes left running (group alive: {alive}): {mentions:?}\n{}",
                    self.text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let left: Vec<_> = std::fs::read_dir(self.tmp.path())
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "temp files left behind: {left:?}");
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// Command lines of live processes that contain `path`.
fn processes_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.filter_map(Result::ok) {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(cmdline);
            }
        }
    }
    found
}

#[test]
fn local_deployment_smoke_reports_up_from_three_regions_and_cleans_up() {
    let mut s = Script::start(&["--smoke"]);
    let status = s.wait(Duration::from_secs(100));
    let out = s.text();
    assert!(status.success(), "exit {status:?}; output:\n{out}");
    for needle in [
        "ok: every monitor up from all three regions",
        "local-a ✓  local-b ✓  local-c ✓",
        "ok: an open incident for db",
        "Connection refused",
        "ok: the db incident closed",
        "SMOKE OK",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in:\n{out}");
    }
    s.assert_nothing_left();
}

#[test]
fn local_cluster_survives_the_active_coordinator_killed_and_cleans_up() {
    let pg_bin = portwatch_e2e::external::ensure_server_binaries()
        .unwrap_or_else(|e| panic!("PostgreSQL's server programs: {e}"));
    let mut s = Script::start_with(&["--cluster", "--smoke"], &[("PORTWATCH_PG_BIN", &pg_bin)]);
    let status = s.wait(Duration::from_secs(150));
    let out = s.text();
    assert!(status.success(), "exit {status:?}; output:\n{out}");
    for needle in [
        "three coordinators on it",
        "ok: every monitor up from all three regions",
        "ok: the db incident closed",
        "killing the active coordinator",
        "ok: another coordinator active and answering",
        "ok: every monitor up, seen by the new active coordinator",
        "ok: an open incident for cache",
        "SMOKE OK: three coordinators on PostgreSQL",
        "stopping PostgreSQL",
    ] {
        assert!(out.contains(needle), "{needle:?} missing in:\n{out}");
    }
    s.assert_nothing_left();
}

#[test]
fn local_deployment_stops_cleanly_on_ctrl_c() {
    let mut s = Script::start(&[]);
    s.wait_output("live events below", Duration::from_secs(100));
    // The tour's first step: paste the printed export lines into a second shell
    // that has no portwatch on PATH, then run the CLI by name.
    let exports: Vec<String> = s
        .text()
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("export "))
        .map(str::to_string)
        .collect();
    assert!(
        exports.iter().any(|l| l.starts_with("export PATH=")),
        "no PATH line among {exports:?}"
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{}\nportwatch status", exports.join("\n")))
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", s.tmp.path())
        .current_dir(s.tmp.path())
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("web"),
        "the printed export lines do not give a working `portwatch status`: {out:?}"
    );
    std::thread::sleep(Duration::from_millis(500));
    // What a terminal does on Ctrl-C: SIGINT to the foreground process group.
    s.signal_group(libc::SIGINT);
    let status = s.wait(Duration::from_secs(20));
    let code = status.code();
    assert!(
        matches!(code, Some(0 | 130)),
        "exit {status:?}; output:\n{}",
        s.text()
    );
    assert!(s.text().contains("stopping"), "{}", s.text());
    s.assert_nothing_left();
}

/// Runs the CLI against `addr` as the operator; stdout on success.
fn operator_cli(addr: &str, ca: &Path, args: &[&str]) -> String {
    let out = Command::new(cli_bin())
        .args(args)
        .env_clear()
        .env("PORTWATCH_ADDR", format!("https://{addr}"))
        .env("PORTWATCH_CA", ca)
        .env("PORTWATCH_TLS_SERVER_NAME", "localhost")
        .env("PORTWATCH_TOKEN", OPERATOR_TOKEN)
        .output()
        .expect("run portwatch");
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn example_configs_start_the_real_daemons() {
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::generate(dir.path());
    let bins = bin_dir();

    // The coordinator with deploy/coordinator.example.toml; only paths, addresses
    // and the secret come from the environment (as the systemd unit does).
    let mut cmd = Command::new(bins.join("portwatch-coordinator"));
    cmd.arg("--config")
        .arg(deploy_dir().join("coordinator.example.toml"))
        .env_clear()
        .env("PORTWATCH_LISTEN", "127.0.0.1:0")
        .env("PORTWATCH_METRICS_LISTEN", "127.0.0.1:0")
        .env("PORTWATCH_DATA_DIR", dir.path().join("coordinator"))
        .env("PORTWATCH_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("PORTWATCH_TLS_CERT", &cert.cert)
        .env("PORTWATCH_TLS_KEY", &cert.key);
    let mut coord = Proc::spawn("coordinator", cmd);
    let line = coord.wait_line("listening on https://", Duration::from_secs(20));
    let addr = line.rsplit("https://").next().unwrap().trim().to_string();

    operator_cli(&addr, &cert.cert, &["region", "add", "example"]);
    let token_json = operator_cli(
        &addr,
        &cert.cert,
        &["--output", "json", "agent-token", "create", "example"],
    );
    let v: serde_json::Value = serde_json::from_str(&token_json).unwrap();
    let token = v["token"].as_str().unwrap().to_string();

    // The agent with deploy/agent.example.toml.
    let mut cmd = Command::new(bins.join("portwatch-agent"));
    cmd.arg("run")
        .arg("--config")
        .arg(deploy_dir().join("agent.example.toml"))
        .env_clear()
        .env("PORTWATCH_COORDINATOR", format!("https://{addr}"))
        .env("PORTWATCH_AGENT_TOKEN", &token)
        .env("PORTWATCH_CA", &cert.cert)
        .env("PORTWATCH_TLS_SERVER_NAME", "localhost")
        .env("PORTWATCH_AGENT_DATA_DIR", dir.path().join("agent"))
        .env("PORTWATCH_AGENT_METRICS_LISTEN", "127.0.0.1:0");
    let mut agent = Proc::spawn("agent", cmd);
    agent.wait_line("running", Duration::from_secs(20));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let agents = operator_cli(&addr, &cert.cert, &["--output", "json", "agents"]);
        let v: serde_json::Value = serde_json::from_str(&agents).unwrap();
        if v[0]["region"] == "example" && v[0]["online"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "agent never online: {agents}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let a = agent.terminate(Duration::from_secs(15));
    assert!(
        a.is_some_and(|s| s.success()),
        "agent stops on SIGTERM: {a:?}"
    );
    let c = coord.terminate(Duration::from_secs(15));
    assert!(
        c.is_some_and(|s| s.success()),
        "coordinator stops on SIGTERM: {c:?}"
    );
}

/// The keys of a daemon's config file: the fields of the struct that
/// `FileConfig` names in its config.rs (`pub type FileConfig = Args;`, the
/// flags' struct read from TOML), less those the file skips (`#[serde(skip)]`).
fn file_config_keys(source: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(source).unwrap();
    let alias = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("pub type FileConfig = "))
        .and_then(|l| l.strip_suffix(';'))
        .expect("FileConfig in config.rs");
    let start = text
        .find(&format!("pub struct {alias} {{"))
        .expect("the FileConfig struct in config.rs");
    let body = &text[start..];
    let end = body.find("\n}").expect("end of FileConfig");
    let mut keys = Vec::new();
    let mut skipped = false;
    for line in body[..end].lines().skip(1).map(str::trim) {
        if line.starts_with("#[serde(skip") {
            skipped = true;
        } else if let Some(field) = line.strip_prefix("pub ") {
            if !skipped {
                keys.extend(field.split(':').next().map(str::to_string));
            }
            skipped = false;
        }
    }
    keys
}

#[test]
fn example_configs_document_every_key() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (daemon, example) in [
        ("coordinator", "coordinator.example.toml"),
        ("agent", "agent.example.toml"),
    ] {
        let keys = file_config_keys(&crates.join(daemon).join("src/config.rs"));
        assert!(keys.len() > 10, "{daemon}: {keys:?}");
        let text = std::fs::read_to_string(deploy_dir().join(example)).unwrap();
        for key in keys {
            let documented = text.lines().any(|l| {
                let l = l.trim_start_matches('#').trim();
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("[{key}."))
            });
            assert!(documented, "{example} does not document `{key}`");
        }
    }
}

#[test]
fn systemd_units_are_hardened() {
    for unit in ["portwatch-coordinator.service", "portwatch-agent.service"] {
        let path = deploy_dir().join("systemd").join(unit);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().map(str::trim).collect();
        for directive in [
            "User=portwatch",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "ProtectHome=yes",
            // Empty: no capability at all; a TCP connect needs none.
            "CapabilityBoundingSet=",
            "AmbientCapabilities=",
        ] {
            assert!(lines.contains(&directive), "{unit}: {directive}");
        }
        for prefix in [
            "StateDirectory=portwatch-",
            "RestrictAddressFamilies=AF_INET AF_INET6",
            "ExecStart=/usr/local/bin/portwatch-",
            "KillSignal=SIGTERM",
        ] {
            assert!(
                lines.iter().any(|l| l.starts_with(prefix)),
                "{unit}: {prefix}"
            );
        }
        assert!(
            text.contains("--config /etc/portwatch/"),
            "{unit} reads its config from /etc/portwatch"
        );
    }

    // Where systemd's own checker exists, it must accept the units (pointed at
    // the binaries we built, since it checks that ExecStart exists).
    let Ok(probe) = Command::new("systemd-analyze").arg("--version").output() else {
        return;
    };
    if !probe.status.success() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut units = Vec::new();
    for unit in ["portwatch-coordinator.service", "portwatch-agent.service"] {
        let text = std::fs::read_to_string(deploy_dir().join("systemd").join(unit)).unwrap();
        let local = text.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
        let path = dir.path().join(unit);
        std::fs::write(&path, local).unwrap();
        units.push(path);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
