//! Figure 6, time to alert: from a port closing to the notification, with real
//! processes: a coordinator, three `portwatch-agent run` processes in three
//! private regions (so loopback targets are allowed), monitors at a 60 s
//! interval with a 3 s timeout (quorum 2 of 3), and a webhook receiver on
//! loopback as the tenant's default channel. The `IncidentOpened` event on the
//! admin `WatchEvents` stream is recorded too; when the coordinator refuses the
//! webhook channel (notifications not built), the event is the alert.
//!
//! Each agent resolves the monitor's name through its own DNS server (the
//! `portwatch-testdns` crate) to its own loopback address, so the port can go
//! away for one region and not the others. Four scenarios:
//! - **refused**: the port closes for every region (SYNs get a RST);
//! - **timed out**: every region's listener is replaced by one whose accept
//!   queue is full, so SYNs are dropped, as behind a firewall;
//! - **confirm**: refused for r0 only; r1 and r2 pass their scheduled check and
//!   drop SYNs right after it, so only the coordinator's fast confirmation
//!   (check-now to r1 and r2) can open the incident before their next
//!   scheduled check a whole interval later;
//! - **no-confirm**: the confirm scenario again, on a second coordinator
//!   started with `fast_confirmation = false`, so r1 and r2 report the outage
//!   only at their next scheduled check. This measures what confirmation saves
//!   (expected: one interval + one timeout); a sample takes over a minute, so
//!   the samples (1 by default, `--runs N`) run at once on different monitors,
//!   each giving up two minutes after its check instant; `--quick` skips it.
//!
//! Every region checks a monitor at the same aligned instants, so a port that
//! closes is seen at the next one; the bench closes each port a little before
//! its monitor's next instant (computed with the agent's own `next_aligned`)
//! instead of waiting up to a minute per sample, and reports both
//! port-closed→alert and first-failing-check→alert. Goal: first failing check
//! → notification ≤ timeout + 1 s (the no-confirm samples are the baseline,
//! not held to it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use portwatch_agent::scheduler::next_aligned;
use portwatch_e2e::{Admin, AgentProc, Coordinator, OPERATOR_TOKEN, Setup};
use portwatch_proto::v1;
use portwatch_testdns::{Answer, DnsServer};
use serde_json::json;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::runtime::Runtime;
use tokio::task::JoinHandle;

use crate::Opts;
use crate::report::{Table, emit, f, met, note};
use crate::stats::median;
use crate::world::PLANS;

const INTERVAL_MS: u64 = 60_000;
const TIMEOUT_MS: u64 = 3_000;
const REGIONS: usize = 3;
/// The port closes this long before the monitor's next aligned check.
const LEAD_MS: u64 = 2_000;
const GOAL_MS: u64 = TIMEOUT_MS + 1_000;
/// In the confirm scenario, r1 and r2 go silent this long after the check instant.
const CONFIRM_AFTER_MS: u64 = 25;
/// A no-confirm sample with no alert this long after its check instant gives up
/// (expected after one interval + one timeout, 63 s).
const NO_CONFIRM_GIVE_UP_MS: u64 = 120_000;

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn now_ms() -> u64 {
    ms(SystemTime::now())
}

/// Signed milliseconds from `a` to `b`.
fn delta_ms(a: SystemTime, b: SystemTime) -> i64 {
    match b.duration_since(a) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// A webhook receiver: records when each POST body arrived, answers 200.
struct Hooks {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<(SystemTime, String)>>>,
    task: JoinHandle<()>,
}

impl Drop for Hooks {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Hooks {
    async fn start() -> anyhow::Result<Hooks> {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        let addr = l.local_addr()?;
        let got: Arc<Mutex<Vec<(SystemTime, String)>>> = Arc::default();
        let sink = got.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let sink = sink.clone();
                tokio::spawn(async move {
                    let read = tokio::time::timeout(Duration::from_secs(5), read_request(&mut s));
                    if let Ok(Some(body)) = read.await {
                        sink.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((SystemTime::now(), body));
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                        )
                        .await;
                });
            }
        });
        Ok(Hooks { addr, got, task })
    }

    /// When a webhook saying `monitor_id`'s incident opened arrived.
    fn opened(&self, monitor_id: &str) -> Option<SystemTime> {
        let got = self.got.lock().unwrap_or_else(|e| e.into_inner());
        got.iter().find_map(|(at, body)| {
            let v: serde_json::Value = serde_json::from_str(body).ok()?;
            let event = v.get("event")?.as_str()?;
            let id = v.get("incident")?.get("monitor_id")?.as_str()?;
            (id == monitor_id && event.contains("open")).then_some(*at)
        })
    }
}

/// Reads one HTTP/1.1 request; returns its body (bounded to 1 MiB).
async fn read_request(s: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 1 << 20 {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
        .min(1 << 20);
    while buf.len() < head_end + len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = (head_end + len).min(buf.len());
    Some(String::from_utf8_lossy(&buf[head_end..end]).into_owned())
}

/// How the port goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    Refused,
    TimedOut,
    Confirm,
    /// Confirm's port behaviour on a coordinator with `fast_confirmation = false`.
    NoConfirm,
}

impl Scenario {
    const ROTATION: [Scenario; 3] = [Scenario::Confirm, Scenario::Refused, Scenario::TimedOut];

    fn name(self) -> &'static str {
        match self {
            Scenario::Refused => "refused",
            Scenario::TimedOut => "timed out",
            Scenario::Confirm => "confirm (r0 refused; r1, r2 silent after T)",
            Scenario::NoConfirm => "no-confirm (the same, fast_confirmation = false)",
        }
    }
}

/// How one region's listener goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Gone {
    Refused,
    Silent,
}

/// One monitored port as one region sees it: a listener that accepts and drops
/// until it is taken away.
struct Port {
    addr: SocketAddr,
    accepting: Option<JoinHandle<()>>,
    /// What keeps a silent port silent: the full listener and its filler.
    silent: Option<(Socket, Vec<tokio::net::TcpStream>)>,
}

impl Port {
    async fn open(addr: SocketAddr) -> anyhow::Result<Port> {
        let l = TcpListener::bind(addr).await?;
        let addr = l.local_addr()?;
        let accepting = tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                drop(s);
            }
        });
        Ok(Port {
            addr,
            accepting: Some(accepting),
            silent: None,
        })
    }

    /// Takes the port away. The accepting task owns the listener: aborting it closes it.
    async fn close(&mut self, how: Gone) -> anyhow::Result<()> {
        if let Some(t) = self.accepting.take() {
            t.abort();
            let _ = t.await;
        }
        if how == Gone::Silent {
            // Backlog 0 holds one connection; with it queued and never accepted,
            // every further SYN is dropped: a timeout without root or netem.
            let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
            s.set_reuse_address(true)?;
            s.bind(&self.addr.into())
                .with_context(|| format!("rebinding {}", self.addr))?;
            s.listen(0)?;
            let filler = tokio::time::timeout(
                Duration::from_millis(200),
                tokio::net::TcpStream::connect(self.addr),
            )
            .await
            .map_err(|_| anyhow::anyhow!("filling the accept queue of {}: timed out", self.addr))?
            .with_context(|| format!("filling the accept queue of {}", self.addr))?;
            self.silent = Some((s, vec![filler]));
        }
        Ok(())
    }
}

/// The same port on each region's own loopback address (127.0.0.10, .11, …).
async fn ports_per_region() -> anyhow::Result<Vec<Port>> {
    for _ in 0..50 {
        let first = Port::open(SocketAddr::from(([127, 0, 0, 10], 0))).await?;
        let port = first.addr.port();
        let mut all = vec![first];
        for i in 1..REGIONS {
            let host = 10 + u8::try_from(i)?;
            match Port::open(SocketAddr::from(([127, 0, 0, host], port))).await {
                Ok(p) => all.push(p),
                Err(_) => break,
            }
        }
        if all.len() == REGIONS {
            return Ok(all);
        }
    }
    bail!("no port free on every region's address")
}

/// One sample.
struct Sample {
    monitor_id: String,
    scenario: Scenario,
    closed_at: SystemTime,
    /// The first aligned check after the close.
    check_at: SystemTime,
    /// An alert after this does not count: the sample gave up.
    give_up_at: SystemTime,
    event_at: Option<SystemTime>,
    hook_at: Option<SystemTime>,
    /// Down results seen (by outcome name) and how many were check-now confirmations.
    outcomes: Vec<String>,
    confirmations: usize,
}

/// A coordinator, three agents in three private regions (each with its own DNS
/// server), a webhook receiver as the tenant's default channel, a watcher of
/// `IncidentOpened` events, and monitors that are up in every region.
///
/// Fields drop in order: the agents before the coordinator, the temp dir last.
struct Rig {
    tenant: Admin,
    hooks: Hooks,
    /// Whether the coordinator accepted the webhook channel (else the event is the alert).
    via_webhook: bool,
    events: Arc<Mutex<HashMap<String, SystemTime>>>,
    watcher: JoinHandle<()>,
    /// Per monitor, its port on each region's address.
    ports: Vec<Vec<Port>>,
    ids: Vec<String>,
    _agents: Vec<AgentProc>,
    _dns: Vec<DnsServer>,
    _coord: Coordinator,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

impl Rig {
    /// Starts everything; `extra` is top-level coordinator TOML (before the plans).
    async fn start(
        coord_bin: &Path,
        agent_bin: &Path,
        extra: &str,
        monitors: usize,
    ) -> anyhow::Result<Rig> {
        let dir = tempfile::tempdir().context("temp dir")?;
        let coord_dir = dir.path().join("coordinator");
        std::fs::create_dir_all(&coord_dir)?;
        let coord = Coordinator::start(
            coord_bin,
            &coord_dir,
            // Top-level keys before the plans table.
            &format!("allow_private_channel_targets = true\n{extra}{PLANS}"),
        );
        let mut op = coord.admin(OPERATOR_TOKEN).await;
        let (tenant_id, tenant_token) =
            Setup::tenant(&mut op, "alerts", v1::Plan::Enterprise).await;
        let regions: Vec<String> = (0..REGIONS).map(|i| format!("r{i}")).collect();
        let mut tokens = Vec::new();
        for r in &regions {
            Setup::region(&mut op, r, &tenant_id).await;
            tokens.push(Setup::agent_token(&mut op, r).await);
        }
        let mut tenant = coord.admin(&tenant_token).await;

        let hooks = Hooks::start().await?;
        let channel = tenant
            .create_channel(v1::CreateChannelRequest {
                tenant_id: String::new(),
                channel: Some(v1::Channel {
                    name: "bench webhook".into(),
                    is_default: true,
                    config: Some(v1::channel::Config::Webhook(v1::WebhookConfig {
                        url: format!("http://{}/hook", hooks.addr),
                        secret: "bench-webhook-secret-0123456789abcdef".into(),
                    })),
                    ..Default::default()
                }),
            })
            .await;
        let via_webhook = match &channel {
            Ok(_) => true,
            Err(e) => {
                note(format!(
                    "time-to-alert: webhook channel refused ({}: {}); measuring IncidentOpened events",
                    e.code(),
                    e.message()
                ));
                false
            }
        };

        let events: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
        let mut stream = tenant
            .watch_events(v1::WatchEventsRequest::default())
            .await
            .context("WatchEvents")?
            .into_inner();
        let sink = events.clone();
        let watcher = tokio::spawn(async move {
            while let Ok(Some(e)) = stream.message().await {
                if let Some(v1::event::Kind::IncidentOpened(i)) = e.kind {
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(i.monitor_id)
                        .or_insert_with(SystemTime::now);
                }
            }
        });

        // One DNS server per region: the same name, a different loopback address.
        let mut dns = Vec::new();
        for _ in 0..REGIONS {
            dns.push(DnsServer::start().await.context("starting a DNS server")?);
        }
        let agents: Vec<AgentProc> = tokens
            .iter()
            .zip(&dns)
            .enumerate()
            .map(|(i, (t, d))| {
                AgentProc::start(
                    agent_bin,
                    &coord,
                    t,
                    &dir.path().join(format!("agent{i}")),
                    &format!(
                        "allow_private_targets = true\nnameservers = [\"{}\"]\n",
                        d.addr()
                    ),
                )
            })
            .collect();

        let mut ports: Vec<Vec<Port>> = Vec::new();
        let mut ids = Vec::new();
        for i in 0..monitors {
            let per_region = ports_per_region().await?;
            let name = format!("svc-{i}.alerts.bench.test");
            for (d, p) in dns.iter().zip(&per_region) {
                d.set(&name, Answer::Addrs(vec![p.addr.ip()]));
            }
            let port = per_region.first().map_or(0, |p| p.addr.port());
            let m = tenant
                .create_monitor(v1::CreateMonitorRequest {
                    name: format!("alert {i}"),
                    host: name,
                    port: u32::from(port),
                    regions: regions.clone(),
                    interval_ms: INTERVAL_MS,
                    timeout_ms: TIMEOUT_MS as u32,
                    ..Default::default()
                })
                .await
                .context("creating a monitor")?
                .into_inner();
            ids.push(m.id);
            ports.push(per_region);
        }
        // Every monitor's first (immediate) check must have come back up everywhere.
        let until = std::time::Instant::now() + Duration::from_secs(30);
        for id in &ids {
            loop {
                let st = tenant
                    .get_monitor_status(v1::GetMonitorStatusRequest {
                        id: id.clone(),
                        ..Default::default()
                    })
                    .await
                    .context("GetMonitorStatus")?
                    .into_inner();
                let up = st
                    .regions
                    .iter()
                    .filter(|r| r.state == v1::RegionState::Up as i32)
                    .count();
                if up == REGIONS {
                    break;
                }
                if std::time::Instant::now() >= until {
                    bail!("monitor {id}: not up in every region within 30 s");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(Rig {
            tenant,
            hooks,
            via_webhook,
            events,
            watcher,
            ports,
            ids,
            _agents: agents,
            _dns: dns,
            _coord: coord,
            _dir: dir,
        })
    }

    /// The monitors by their next aligned check instant (ms), soonest first,
    /// each instant far enough away to close the port `LEAD_MS` before it.
    fn by_next_check(&self) -> Vec<(u64, usize)> {
        let earliest = now_ms() + LEAD_MS + 1_500;
        let mut plan: Vec<(u64, usize)> = self
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (next_aligned(id, INTERVAL_MS, earliest), i))
            .collect();
        plan.sort_unstable();
        plan
    }

    /// Plays `scenario` on each chosen monitor (check instant, monitor index),
    /// waits for every alert or each sample's give-up time, then reads the
    /// down results each monitor stored.
    async fn play(
        &mut self,
        chosen: &[(u64, usize)],
        scenario_of: impl Fn(usize) -> Scenario,
        give_up_at: impl Fn(u64) -> u64,
    ) -> anyhow::Result<Vec<Sample>> {
        // Every port change, in time order: (when, monitor, regions, how).
        let mut actions: Vec<(u64, usize, Vec<usize>, Gone)> = Vec::new();
        let mut samples = Vec::new();
        for (k, (t, i)) in chosen.iter().enumerate() {
            let scenario = scenario_of(k);
            let close_at = t.saturating_sub(LEAD_MS);
            let all: Vec<usize> = (0..REGIONS).collect();
            match scenario {
                Scenario::Refused => actions.push((close_at, *i, all, Gone::Refused)),
                Scenario::TimedOut => actions.push((close_at, *i, all, Gone::Silent)),
                Scenario::Confirm | Scenario::NoConfirm => {
                    actions.push((close_at, *i, vec![0], Gone::Refused));
                    // After r1's and r2's scheduled check at T has passed, before
                    // r0's result can have reached the coordinator (batch wait 50 ms).
                    actions.push((
                        t + CONFIRM_AFTER_MS,
                        *i,
                        (1..REGIONS).collect(),
                        Gone::Silent,
                    ));
                }
            }
            samples.push(Sample {
                monitor_id: self.ids[*i].clone(),
                scenario,
                closed_at: UNIX_EPOCH + Duration::from_millis(close_at),
                check_at: UNIX_EPOCH + Duration::from_millis(*t),
                give_up_at: UNIX_EPOCH + Duration::from_millis(give_up_at(*t)),
                event_at: None,
                hook_at: None,
                outcomes: Vec::new(),
                confirmations: 0,
            });
        }
        actions.sort_by_key(|a| a.0);
        for (at, i, regions_gone, how) in actions {
            tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
            // One after the other: each close takes a millisecond or so on loopback.
            if let Some(per_region) = self.ports.get_mut(i) {
                for (r, p) in per_region.iter_mut().enumerate() {
                    if regions_gone.contains(&r) {
                        p.close(how).await?;
                    }
                }
            }
        }
        // Bounded: every sample gives up at its own time.
        loop {
            let ev = self
                .events
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let now = SystemTime::now();
            let mut waiting = false;
            for s in &mut samples {
                let in_time = |t: &SystemTime| *t <= s.give_up_at;
                s.event_at = ev.get(&s.monitor_id).copied().filter(in_time);
                s.hook_at = self.hooks.opened(&s.monitor_id).filter(in_time);
                let done = s.event_at.is_some() && (!self.via_webhook || s.hook_at.is_some());
                waiting |= !done && now < s.give_up_at;
            }
            if !waiting {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        for s in &mut samples {
            let page = self
                .tenant
                .list_results(v1::ListResultsRequest {
                    monitor_id: s.monitor_id.clone(),
                    since: Some(portwatch_proto::time::to_timestamp(s.closed_at)),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .context("ListResults")?
                .into_inner();
            for r in page
                .results
                .iter()
                .filter(|r| r.outcome != v1::Outcome::Ok as i32)
            {
                let name = v1::Outcome::try_from(r.outcome)
                    .map_or("?".into(), |o| o.as_str_name().to_lowercase());
                s.outcomes.push(format!("{}:{name}", r.region));
                if r.immediate {
                    s.confirmations += 1;
                }
            }
        }
        Ok(samples)
    }
}

/// What became of the no-confirm samples.
enum NoConfirm {
    Measured(Vec<Sample>),
    Skipped(&'static str),
    Failed(String),
}

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let coord_bin = opts.daemon("portwatch-coordinator")?;
    let agent_bin = opts.daemon("portwatch-agent")?;
    let (candidates, max_wait_ms) = if opts.quick {
        (6, 20_000)
    } else {
        (12, 30_000)
    };
    let no_confirm_samples = opts.runs.unwrap_or(1);
    rt.block_on(async move {
        // With fast confirmation (the default): refused, timed out, confirm.
        let (samples, via_webhook) = {
            let mut rig = Rig::start(&coord_bin, &agent_bin, "", candidates).await?;
            let plan = rig.by_next_check();
            let horizon = now_ms() + max_wait_ms;
            let chosen: Vec<(u64, usize)> = plan
                .iter()
                .enumerate()
                .filter(|(k, (t, _))| *k < 3 || *t <= horizon)
                .map(|(_, p)| *p)
                .collect();
            note(format!(
                "time-to-alert: {} samples; the last check instant is {:.1} s away; alert via {}",
                chosen.len(),
                chosen.last().map_or(0, |(t, _)| t.saturating_sub(now_ms())) as f64 / 1000.0,
                if rig.via_webhook {
                    "webhook"
                } else {
                    "event stream"
                }
            ));
            let last_check = chosen.last().map_or(0, |(t, _)| *t);
            let samples = rig
                .play(
                    &chosen,
                    |k| Scenario::ROTATION[k % Scenario::ROTATION.len()],
                    |_| last_check + TIMEOUT_MS + 20_000,
                )
                .await?;
            (samples, rig.via_webhook)
        };

        // Without it: a second coordinator with `fast_confirmation = false`.
        let no_confirm = if opts.quick {
            NoConfirm::Skipped("--quick (a sample takes over a minute)")
        } else if no_confirm_samples == 0 {
            NoConfirm::Skipped("--runs 0")
        } else {
            match no_confirm(&coord_bin, &agent_bin, no_confirm_samples).await {
                Ok(s) => NoConfirm::Measured(s),
                Err(e) => {
                    note(format!("time-to-alert: no-confirm failed: {e:#}"));
                    NoConfirm::Failed(format!("{e:#}"))
                }
            }
        };
        report(&samples, &no_confirm, via_webhook);
        Ok(())
    })
}

/// Most no-confirm samples taken at once (one monitor each).
const NO_CONFIRM_MAX: usize = 10;

/// The confirm scenario on a coordinator with `fast_confirmation = false`:
/// `n` samples on `n` monitors at once (their check instants differ), each
/// giving up `NO_CONFIRM_GIVE_UP_MS` after its check instant.
async fn no_confirm(coord_bin: &Path, agent_bin: &Path, n: usize) -> anyhow::Result<Vec<Sample>> {
    if n > NO_CONFIRM_MAX {
        note(format!(
            "time-to-alert: no-confirm: {n} samples asked, taking {NO_CONFIRM_MAX}"
        ));
    }
    let n = n.min(NO_CONFIRM_MAX);
    // Enough monitors that the n soonest check instants come within ~15 s.
    let mut rig = Rig::start(
        coord_bin,
        agent_bin,
        "fast_confirmation = false\n",
        4 * n + 2,
    )
    .await?;
    let chosen: Vec<(u64, usize)> = rig.by_next_check().into_iter().take(n).collect();
    note(format!(
        "time-to-alert: no-confirm (fast_confirmation = false): {} samples; the last check instant is {:.1} s away; each gives up {} s after it",
        chosen.len(),
        chosen.last().map_or(0, |(t, _)| t.saturating_sub(now_ms())) as f64 / 1000.0,
        NO_CONFIRM_GIVE_UP_MS / 1000
    ));
    rig.play(
        &chosen,
        |_| Scenario::NoConfirm,
        |t| t + NO_CONFIRM_GIVE_UP_MS,
    )
    .await
}

/// Milliseconds from T to `alert`, or None.
fn after(from: SystemTime, alert: Option<SystemTime>) -> Option<i64> {
    alert.map(|a| delta_ms(from, a))
}

fn report(samples: &[Sample], no_confirm: &NoConfirm, via_webhook: bool) {
    let mut table = Table::new(
        format!(
            "time-to-alert: {} s interval, {} s timeout, {REGIONS} regions (quorum 2), port closed {} s before the next check (T)",
            INTERVAL_MS / 1000,
            TIMEOUT_MS / 1000,
            LEAD_MS / 1000
        ),
        &[
            "scenario",
            "closed→alert ms",
            "T→event ms",
            "T→webhook ms",
            "event→webhook ms",
            "down results (region:outcome)",
            "confirmations",
            "without confirmation ms",
        ],
    );
    let opt = |v: Option<i64>| v.map_or("—".into(), |x| x.to_string());
    let alert_of = |s: &Sample| if via_webhook { s.hook_at } else { s.event_at };
    let measured: &[Sample] = match no_confirm {
        NoConfirm::Measured(s) => s,
        _ => &[],
    };
    let mut rows = Vec::new();
    let mut worst: Option<i64> = None;
    let mut all_seen = true;
    for s in samples.iter().chain(measured) {
        let close_to_alert = after(s.closed_at, alert_of(s));
        let check_to_event = after(s.check_at, s.event_at);
        let check_to_hook = after(s.check_at, s.hook_at);
        let event_to_hook = match (s.event_at, s.hook_at) {
            (Some(e), Some(h)) => Some(delta_ms(e, h)),
            _ => None,
        };
        let check_to_alert = after(s.check_at, alert_of(s));
        // Only confirmation brings r1 and r2 in before their next scheduled check.
        let without = (s.scenario == Scenario::Confirm).then_some(INTERVAL_MS + TIMEOUT_MS);
        // The no-confirm samples are the baseline, not the goal.
        if s.scenario != Scenario::NoConfirm {
            match check_to_alert {
                Some(x) => worst = Some(worst.map_or(x, |w| w.max(x))),
                None => all_seen = false,
            }
        }
        let without_cell = match (s.scenario, check_to_alert) {
            (Scenario::Confirm, _) => {
                format!("≥ {} (bound; see no-confirm)", INTERVAL_MS + TIMEOUT_MS)
            }
            (Scenario::NoConfirm, Some(_)) => "this row".into(),
            (Scenario::NoConfirm, None) => {
                format!("no alert within {} s", NO_CONFIRM_GIVE_UP_MS / 1000)
            }
            _ => "same".into(),
        };
        table.row(vec![
            s.scenario.name().into(),
            opt(close_to_alert),
            opt(check_to_event),
            opt(check_to_hook),
            opt(event_to_hook),
            s.outcomes.join(" "),
            s.confirmations.to_string(),
            without_cell,
        ]);
        rows.push(json!({
            "monitor_id": s.monitor_id,
            "scenario": s.scenario.name(),
            "closed_to_alert_ms": close_to_alert,
            "check_to_event_ms": check_to_event,
            "check_to_webhook_ms": check_to_hook,
            "event_to_webhook_ms": event_to_hook,
            "down_results": s.outcomes,
            "confirmations": s.confirmations,
            "without_confirmation_ms_at_least": without,
        }));
    }
    let ok = all_seen && worst.is_some_and(|w| w <= GOAL_MS as i64);
    let mut goal = Table::new(
        "time-to-alert: goal",
        &["goal", "measured (worst sample)", "met"],
    );
    goal.row(vec![
        format!(
            "first failing check → {} ≤ timeout + 1 s = {} ms",
            if via_webhook {
                "webhook"
            } else {
                "IncidentOpened event"
            },
            GOAL_MS
        ),
        worst.map_or("no alert".into(), |w| format!("{} ms", f(w as f64, 0))),
        met(ok),
    ]);

    // With and without fast confirmation: the same port behaviour, T → alert.
    let confirm: Vec<i64> = samples
        .iter()
        .filter(|s| s.scenario == Scenario::Confirm)
        .filter_map(|s| after(s.check_at, alert_of(s)))
        .collect();
    let without: Vec<Option<i64>> = measured
        .iter()
        .map(|s| after(s.check_at, alert_of(s)))
        .collect();
    let seen: Vec<i64> = without.iter().flatten().copied().collect();
    let med = |v: &[i64]| {
        (!v.is_empty()).then(|| median(&v.iter().map(|x| *x as f64).collect::<Vec<_>>()))
    };
    let list = |v: &[i64]| {
        v.iter()
            .map(|x| format!("{} ms", f(*x as f64, 0)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut versus = Table::new(
        "time-to-alert: r0 refused, r1 and r2 silent after T; T → alert, with and without fast confirmation",
        &["coordinator", "samples", "T→alert ms", "median ms"],
    );
    versus.row(vec![
        "fast_confirmation = true (default)".into(),
        confirm.len().to_string(),
        list(&confirm),
        med(&confirm).map_or("—".into(), |m| f(m, 0)),
    ]);
    let (without_cells, no_confirm_json) = match no_confirm {
        NoConfirm::Measured(_) => (
            vec![
                without.len().to_string(),
                without
                    .iter()
                    .map(|x| {
                        x.map_or(
                            format!("no alert within {} s", NO_CONFIRM_GIVE_UP_MS / 1000),
                            |v| format!("{} ms", f(v as f64, 0)),
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                med(&seen).map_or("—".into(), |m| f(m, 0)),
            ],
            json!({
                "fast_confirmation": false,
                "samples": without.len(),
                "check_to_alert_ms": without,
                "median_ms": med(&seen),
                "bound_ms": INTERVAL_MS + TIMEOUT_MS,
                "give_up_ms": NO_CONFIRM_GIVE_UP_MS,
            }),
        ),
        NoConfirm::Skipped(why) => (
            vec!["0".into(), format!("skipped: {why}"), "—".into()],
            json!({ "fast_confirmation": false, "skipped": why }),
        ),
        NoConfirm::Failed(e) => (
            vec!["0".into(), format!("failed: {e}"), "—".into()],
            json!({ "fast_confirmation": false, "error": e }),
        ),
    };
    let mut row = vec!["fast_confirmation = false (no-confirm)".to_string()];
    row.extend(without_cells);
    versus.row(row);
    emit(
        "time-to-alert",
        &[table, versus, goal],
        json!({
            "alert_via": if via_webhook { "webhook" } else { "watch_events" },
            "interval_ms": INTERVAL_MS,
            "timeout_ms": TIMEOUT_MS,
            "regions": REGIONS,
            "lead_ms": LEAD_MS,
            "samples": rows,
            "confirm_median_ms": med(&confirm),
            "no_confirm": no_confirm_json,
            "worst_check_to_alert_ms": worst,
            "goal_ms": GOAL_MS,
            "met": ok,
        }),
    );
}
