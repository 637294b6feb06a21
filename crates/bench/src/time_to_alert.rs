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
//! away for one region and not the others. Three scenarios:
//! - **refused**: the port closes for every region (SYNs get a RST);
//! - **timed out**: every region's listener is replaced by one whose accept
//!   queue is full, so SYNs are dropped, as behind a firewall;
//! - **confirm**: refused for r0 only; r1 and r2 pass their scheduled check and
//!   drop SYNs right after it, so only the coordinator's fast confirmation
//!   (check-now to r1 and r2) can open the incident before their next
//!   scheduled check a whole interval later.
//!
//! Every region checks a monitor at the same aligned instants, so a port that
//! closes is seen at the next one; the bench closes each port a little before
//! its monitor's next instant (computed with the agent's own `next_aligned`)
//! instead of waiting up to a minute per sample, and reports both
//! port-closed→alert and first-failing-check→alert. Goal: first failing check
//! → notification ≤ timeout + 1 s. Without confirmation, the confirm scenario
//! would wait for r1's and r2's next scheduled check: one interval + timeout.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use portwatch_agent::scheduler::next_aligned;
use portwatch_e2e::{AgentProc, Coordinator, OPERATOR_TOKEN, Setup};
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
use crate::world::PLANS;

const INTERVAL_MS: u64 = 60_000;
const TIMEOUT_MS: u64 = 3_000;
const REGIONS: usize = 3;
/// The port closes this long before the monitor's next aligned check.
const LEAD_MS: u64 = 2_000;
const GOAL_MS: u64 = TIMEOUT_MS + 1_000;
/// In the confirm scenario, r1 and r2 go silent this long after the check instant.
const CONFIRM_AFTER_MS: u64 = 25;

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
}

impl Scenario {
    const ROTATION: [Scenario; 3] = [Scenario::Confirm, Scenario::Refused, Scenario::TimedOut];

    fn name(self) -> &'static str {
        match self {
            Scenario::Refused => "refused",
            Scenario::TimedOut => "timed out",
            Scenario::Confirm => "confirm (r0 refused; r1, r2 silent after T)",
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
    event_at: Option<SystemTime>,
    hook_at: Option<SystemTime>,
    /// Down results seen (by outcome name) and how many were check-now confirmations.
    outcomes: Vec<String>,
    confirmations: usize,
}

pub fn run(rt: &Runtime, opts: &Opts) -> anyhow::Result<()> {
    let coord_bin = opts.daemon("portwatch-coordinator")?;
    let agent_bin = opts.daemon("portwatch-agent")?;
    let (candidates, max_wait_ms) = if opts.quick {
        (6, 20_000)
    } else {
        (12, 30_000)
    };
    rt.block_on(async move {
        let dir = tempfile::tempdir().context("temp dir")?;
        let coord_dir = dir.path().join("coordinator");
        std::fs::create_dir_all(&coord_dir)?;
        let coord = Coordinator::start(
            &coord_bin,
            &coord_dir,
            // Top-level keys before the plans table.
            &format!("allow_private_channel_targets = true\n{PLANS}"),
        );
        let mut op = coord.admin(OPERATOR_TOKEN).await;
        let (tenant_id, tenant_token) = Setup::tenant(&mut op, "alerts", v1::Plan::Enterprise).await;
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
        let _agents: Vec<AgentProc> = tokens
            .iter()
            .zip(&dns)
            .enumerate()
            .map(|(i, (t, d))| {
                AgentProc::start(
                    &agent_bin,
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
        for i in 0..candidates {
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

        // Pick the monitors whose next aligned check comes soonest.
        let earliest = now_ms() + LEAD_MS + 1_500;
        let mut plan: Vec<(u64, usize)> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (next_aligned(id, INTERVAL_MS, earliest), i))
            .collect();
        plan.sort_unstable();
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
            if via_webhook { "webhook" } else { "event stream" }
        ));

        // Every port change, in time order: (when, monitor, regions, how).
        let mut actions: Vec<(u64, usize, Vec<usize>, Gone)> = Vec::new();
        let mut samples = Vec::new();
        for (k, (t, i)) in chosen.iter().enumerate() {
            let scenario = Scenario::ROTATION[k % Scenario::ROTATION.len()];
            let close_at = t.saturating_sub(LEAD_MS);
            let all: Vec<usize> = (0..REGIONS).collect();
            match scenario {
                Scenario::Refused => actions.push((close_at, *i, all, Gone::Refused)),
                Scenario::TimedOut => actions.push((close_at, *i, all, Gone::Silent)),
                Scenario::Confirm => {
                    actions.push((close_at, *i, vec![0], Gone::Refused));
                    // After r1's and r2's scheduled check at T has passed, before
                    // r0's result can have reached the coordinator (batch wait 50 ms).
                    actions.push((t + CONFIRM_AFTER_MS, *i, (1..REGIONS).collect(), Gone::Silent));
                }
            }
            samples.push(Sample {
                monitor_id: ids[*i].clone(),
                scenario,
                closed_at: UNIX_EPOCH + Duration::from_millis(close_at),
                check_at: UNIX_EPOCH + Duration::from_millis(*t),
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
            if let Some(per_region) = ports.get_mut(i) {
                for (r, p) in per_region.iter_mut().enumerate() {
                    if regions_gone.contains(&r) {
                        p.close(how).await?;
                    }
                }
            }
        }
        let last_check = chosen.last().map_or(0, |(t, _)| *t);
        let deadline_ms = last_check + TIMEOUT_MS + 20_000;
        loop {
            let ev = events.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for s in &mut samples {
                s.event_at = ev.get(&s.monitor_id).copied();
                s.hook_at = hooks.opened(&s.monitor_id);
            }
            let done = samples
                .iter()
                .all(|s| s.event_at.is_some() && (!via_webhook || s.hook_at.is_some()));
            if done || now_ms() >= deadline_ms {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        watcher.abort();

        for s in &mut samples {
            let page = tenant
                .list_results(v1::ListResultsRequest {
                    monitor_id: s.monitor_id.clone(),
                    since: Some(portwatch_proto::time::to_timestamp(s.closed_at)),
                    page_size: 1000,
                    ..Default::default()
                })
                .await
                .context("ListResults")?
                .into_inner();
            for r in page.results.iter().filter(|r| r.outcome != v1::Outcome::Ok as i32) {
                let name = v1::Outcome::try_from(r.outcome)
                    .map_or("?".into(), |o| o.as_str_name().to_lowercase());
                s.outcomes.push(format!("{}:{name}", r.region));
                if r.immediate {
                    s.confirmations += 1;
                }
            }
        }
        report(&samples, via_webhook);
        drop(ports);
        Ok(())
    })
}

fn report(samples: &[Sample], via_webhook: bool) {
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
    let mut rows = Vec::new();
    let mut worst: Option<i64> = None;
    let mut all_seen = true;
    for s in samples {
        let alert = if via_webhook { s.hook_at } else { s.event_at };
        let close_to_alert = alert.map(|a| delta_ms(s.closed_at, a));
        let check_to_event = s.event_at.map(|a| delta_ms(s.check_at, a));
        let check_to_hook = s.hook_at.map(|a| delta_ms(s.check_at, a));
        let event_to_hook = match (s.event_at, s.hook_at) {
            (Some(e), Some(h)) => Some(delta_ms(e, h)),
            _ => None,
        };
        let check_to_alert = if via_webhook {
            check_to_hook
        } else {
            check_to_event
        };
        // Only confirmation brings r1 and r2 in before their next scheduled check.
        let without = (s.scenario == Scenario::Confirm).then_some(INTERVAL_MS + TIMEOUT_MS);
        match check_to_alert {
            Some(x) => worst = Some(worst.map_or(x, |w| w.max(x))),
            None => all_seen = false,
        }
        table.row(vec![
            s.scenario.name().into(),
            opt(close_to_alert),
            opt(check_to_event),
            opt(check_to_hook),
            opt(event_to_hook),
            s.outcomes.join(" "),
            s.confirmations.to_string(),
            without.map_or("same".into(), |w| format!("≥ {w} (derived)")),
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
    emit(
        "time-to-alert",
        &[table, goal],
        json!({
            "alert_via": if via_webhook { "webhook" } else { "watch_events" },
            "interval_ms": INTERVAL_MS,
            "timeout_ms": TIMEOUT_MS,
            "regions": REGIONS,
            "lead_ms": LEAD_MS,
            "samples": rows,
            "worst_check_to_alert_ms": worst,
            "goal_ms": GOAL_MS,
            "met": ok,
        }),
    );
}
