//! What an operator sees from the two daemons before anything else works:
//! their logs and their start-up errors, from real processes.
//!
//! - logs written to a file or a pipe (journald, `> agent.log`) carry no ANSI
//!   colour codes; on a terminal they are coloured unless `NO_COLOR` is set;
//! - a second agent on the same `data_dir` stops with one sentence saying that
//!   another agent is using the directory, not a raw `WouldBlock` error twice;
//! - a bad config file is reported with one prefix (`config file PATH: …`);
//! - both daemons print man pages with EXIT STATUS and ENVIRONMENT.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portwatch_e2e::{OPERATOR_TOKEN, Pty, TestCert};
use support::*;

const ESC: char = '\u{1b}';

/// `portwatch-agent run` against a coordinator that is not there: it starts,
/// logs at INFO and keeps retrying, which is all these tests need.
fn agent_command(dir: &Path, data_dir: &Path) -> Command {
    let cert = TestCert::generate(dir);
    let mut cmd = Command::new(agent_bin());
    cmd.arg("run")
        .arg("--coordinator")
        .arg("https://127.0.0.1:9")
        .arg("--token")
        .arg("pwa_not-used-here")
        .arg("--ca")
        .arg(&cert.cert)
        .arg("--data-dir")
        .arg(data_dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    cmd
}

/// Kills a child when dropped, even when an assertion fails first.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `read()` contains `needle`; returns what it read.
fn wait_text(what: &str, needle: &str, timeout: Duration, read: impl Fn() -> String) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let text = read();
        if text.contains(needle) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no {needle:?} within {timeout:?}; got:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn logs_are_plain_text_in_a_file_or_pipe_and_coloured_only_on_a_terminal_without_no_color() {
    let dir = tempfile::tempdir().unwrap();

    // The agent's stderr redirected to a file, as `2> agent.log` would.
    let log = dir.path().join("agent.log");
    let mut cmd = agent_command(dir.path(), &dir.path().join("spool-file"));
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let agent = Running(cmd.spawn().expect("start the agent"));
    let text = wait_text("agent log file", "agent running", WAIT, || {
        std::fs::read_to_string(&log).unwrap_or_default()
    });
    drop(agent);
    assert!(!text.contains(ESC), "ANSI codes in a log file:\n{text:?}");
    assert!(text.contains(" INFO "), "{text}");

    // The coordinator's stderr through a pipe, as journald or `| tee` gets it.
    let mut cmd = Command::new(coordinator_bin());
    cmd.args(["--listen", "127.0.0.1:0", "--insecure-plaintext"])
        .arg("--data-dir")
        .arg(dir.path().join("coordinator"))
        .arg("--operator-token")
        .arg(OPERATOR_TOKEN)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut coord = Running(cmd.spawn().expect("start the coordinator"));
    let stderr = coord.0.stderr.take().expect("piped stderr");
    let piped = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = piped.clone();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(mut s) = sink.lock() {
                s.push_str(&line);
                s.push('\n');
            }
        }
    });
    let text = wait_text(
        "coordinator log pipe",
        "coordinator listening",
        WAIT,
        || piped.lock().map(|s| s.clone()).unwrap_or_default(),
    );
    drop(coord);
    assert!(!text.contains(ESC), "ANSI codes in piped logs:\n{text:?}");

    // On a terminal: coloured, unless NO_COLOR says otherwise.
    for (no_color, coloured) in [(None, true), (Some("1"), false)] {
        let pty = Pty::open();
        let mut cmd = agent_command(dir.path(), &dir.path().join(format!("spool-{coloured}")));
        cmd.stderr(pty.terminal());
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let agent = Running(cmd.spawn().expect("start the agent"));
        drop(cmd);
        let text = pty.wait_for("agent running", WAIT);
        drop(agent);
        assert_eq!(
            text.contains(ESC),
            coloured,
            "NO_COLOR={no_color:?} on a terminal:\n{text:?}"
        );
    }
}

#[test]
fn a_second_agent_on_the_same_data_dir_says_another_agent_is_using_it() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("spool");
    let log = dir.path().join("first.log");
    let mut cmd = agent_command(dir.path(), &data_dir);
    cmd.stderr(std::fs::File::create(&log).unwrap());
    let _first = Running(cmd.spawn().expect("start the first agent"));
    wait_text("first agent", "agent running", WAIT, || {
        std::fs::read_to_string(&log).unwrap_or_default()
    });

    let second = agent_command(dir.path(), &data_dir)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the second agent");
    let pid = second.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(second.wait_with_output());
    });
    let Ok(Ok(out)) = rx.recv_timeout(WAIT) else {
        // SAFETY: signalling our own child.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
        panic!("the second agent kept running on a data_dir in use");
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(
        stderr
            .matches("another agent is using this directory")
            .count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&data_dir.display().to_string()), "{stderr}");
    for raw in ["WouldBlock", "os error", "could not acquire lock"] {
        assert!(!stderr.contains(raw), "raw error {raw:?} shown: {stderr}");
    }
}

#[test]
fn both_daemons_have_man_pages_with_exit_status_and_environment() {
    let run = |bin: &Path, args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .expect("run the daemon");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coordinator = run(&coordinator_bin(), &["--man"]);
    let dir = tempfile::tempdir().unwrap();
    let listed = run(
        &agent_bin(),
        &["man", "--dir", dir.path().to_str().unwrap()],
    );
    let agent = std::fs::read_to_string(dir.path().join("portwatch-agent.8")).unwrap();
    let agent_run = std::fs::read_to_string(dir.path().join("portwatch-agent-run.8")).unwrap();
    let agent_check = std::fs::read_to_string(dir.path().join("portwatch-agent-check.8")).unwrap();
    assert_eq!(
        run(&agent_bin(), &["man"]),
        agent,
        "stdout is the main page"
    );
    for (page, text, wanted) in [
        (
            "portwatch-coordinator.8",
            &coordinator,
            &[
                "PORTWATCH_DATA_DIR",
                "PORTWATCH_OPERATOR_TOKEN",
                "bad configuration",
            ][..],
        ),
        (
            "portwatch-agent.8",
            &agent,
            &["portwatch\\-agent\\-run(8)"][..],
        ),
        (
            "portwatch-agent-run.8",
            &agent_run,
            &["PORTWATCH_AGENT_DATA_DIR", "PORTWATCH_COORDINATOR"][..],
        ),
        (
            "portwatch-agent-check.8",
            &agent_check,
            &["the port is reachable"][..],
        ),
    ] {
        for needle in [".TH ", ".SH \"EXIT STATUS\"", ".SH ENVIRONMENT", "NO_COLOR"]
            .iter()
            .chain(wanted)
        {
            assert!(text.contains(needle), "{page}: no {needle:?}:\n{text}");
        }
        assert!(
            listed.contains(page) || page.starts_with("portwatch-coordinator"),
            "{listed}"
        );
    }
}
