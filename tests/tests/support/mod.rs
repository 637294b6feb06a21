//! Shared set-up of the end-to-end suite: where the daemons are, the world (one
//! coordinator process and regions owned by the test tenant, built by the
//! harness's [`World`] builder), probes (a real
//! `portwatch-agent run` process with its own DNS server, so each region can see
//! the same name resolve differently), targets whose state a test flips (open,
//! refusing, silent), the notification receivers, and the queries an on-call
//! engineer would make.
//!
//! Every wait here is bounded and says, when it gives up, what an operator would
//! have seen instead. Every process and server stops when its handle is dropped.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use portwatch_e2e::{
    Admin, AgentProc, HttpReceiver, Mail, Recorded, SmtpServer, eventually, metric_value,
};
use portwatch_proto::time::{from_timestamp, unix_micros};
use portwatch_proto::v1;
use portwatch_testdns::{Answer, DnsServer};
use serde_json::Value;
use socket2::{Domain, Protocol, SockRef, Socket, Type};

/// Plans for fast tests: enterprise allows 1 s intervals and many monitors.
#[allow(unused_imports)]
pub use portwatch_e2e::FAST_PLANS as PLANS;

/// Tenants' channels may reach the loopback receivers; retries are quick.
pub const NOTIFY: &str = "allow_private_channel_targets = true\ndelivery_retry_initial = \"200ms\"\ndelivery_retry_max = \"1s\"\ndelivery_timeout = \"5s\"\n";

/// The webhook channels' HMAC secret.
pub const SECRET: &str = "whsec-e2e-0123456789abcdef";

/// The tenant every world creates, and the world itself (the harness's builder).
#[allow(unused_imports)]
pub use portwatch_e2e::{RegionInfo, TENANT, World};

/// A generous bound for things that take a few check intervals.
pub const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- binaries

/// A daemon binary of this workspace, next to the running test in the target
/// directory.
pub use portwatch_e2e::workspace_bin as daemon;

pub fn coordinator_bin() -> PathBuf {
    daemon("portwatch-coordinator")
}

pub fn agent_bin() -> PathBuf {
    daemon("portwatch-agent")
}

// ---------------------------------------------------------------- targets

/// A TCP target on one loopback address whose behaviour the test flips:
/// refusing (bound, not listening: the kernel answers RST), open (accepts and
/// counts every handshake), or silent (the accept queue is full, so the kernel
/// drops SYNs and a check times out).
pub struct Door {
    pub addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    state: DoorState,
}

enum DoorState {
    Refusing(Socket),
    Open {
        listener: std::net::TcpListener,
        task: tokio::task::JoinHandle<()>,
    },
    Silent {
        listener: std::net::TcpListener,
        _fillers: Vec<Socket>,
    },
    Moving,
}

fn bound(addr: SocketAddr) -> io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    Ok(s)
}

impl Door {
    /// A refusing target at `addr` (the address stays reserved for the test).
    pub fn refusing(addr: SocketAddr) -> io::Result<Door> {
        Ok(Door {
            addr,
            accepted: Arc::new(AtomicU64::new(0)),
            state: DoorState::Refusing(bound(addr)?),
        })
    }

    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Handshakes accepted while open.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }

    /// A listening socket with `backlog`, nobody accepting from it.
    async fn listening(&mut self, backlog: i32) -> std::net::TcpListener {
        let listener = match std::mem::replace(&mut self.state, DoorState::Moving) {
            DoorState::Refusing(s) => {
                s.listen(backlog).expect("listen");
                s.into()
            }
            DoorState::Open { listener, task } => {
                task.abort();
                let _ = task.await;
                SockRef::from(&listener).listen(backlog).expect("listen");
                listener
            }
            DoorState::Silent { listener, .. } => {
                SockRef::from(&listener).listen(backlog).expect("listen");
                listener
            }
            DoorState::Moving => unreachable!("a door is never left moving"),
        };
        listener.set_nonblocking(true).expect("non-blocking");
        listener
    }

    /// Accepts (and counts) every handshake from now on.
    pub async fn open(&mut self) {
        let listener = self.listening(1024).await;
        let accept = tokio::net::TcpListener::from_std(listener.try_clone().expect("dup"))
            .expect("tokio listener");
        let count = self.accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                match accept.accept().await {
                    Ok((conn, _)) => {
                        count.fetch_add(1, Ordering::SeqCst);
                        drop(conn);
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
        self.state = DoorState::Open { listener, task };
    }

    /// Nothing listens any more: every connection attempt is refused.
    pub async fn refuse(&mut self) {
        if let DoorState::Open { listener, task } =
            std::mem::replace(&mut self.state, DoorState::Moving)
        {
            task.abort();
            let _ = task.await;
            drop(listener);
        }
        // The old socket is closed now; bind again to keep the address. While
        // it was free, another socket on this machine may have taken the port
        // as its ephemeral port (the range is shared); that lasts only as long
        // as that connection, so retry for a bounded time.
        let mut tries = 0;
        let socket = loop {
            match bound(self.addr) {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("bind the door again at {}: {e}", self.addr),
            }
        };
        self.state = DoorState::Refusing(socket);
    }

    /// Drains the accept queue without counting.
    fn drain(listener: &std::net::TcpListener) {
        while listener.accept().is_ok() {}
    }

    /// The accept queue is full and never drained: every SYN is dropped, so a
    /// check times out (a firewall dropping packets, as seen from the prober).
    pub async fn blackhole(&mut self) {
        let listener = self.listening(0).await;
        Self::drain(&listener);
        let mut fillers = Vec::new();
        // Backlog 0 admits one handshake into the queue; the next one is dropped.
        for _ in 0..8 {
            let s = Socket::new(
                Domain::for_address(self.addr),
                Type::STREAM,
                Some(Protocol::TCP),
            )
            .expect("socket");
            let connected = s
                .connect_timeout(&self.addr.into(), Duration::from_millis(300))
                .is_ok();
            if !connected {
                break;
            }
            fillers.push(s);
        }
        self.state = DoorState::Silent {
            listener,
            _fillers: fillers,
        };
    }

    /// Admits exactly one more handshake (it waits in the accept queue, never
    /// accepted), then drops every SYN: the next check connects, the one after
    /// times out.
    pub async fn admit_one_more(&mut self) {
        let listener = self.listening(0).await;
        Self::drain(&listener);
        self.state = DoorState::Silent {
            listener,
            _fillers: Vec::new(),
        };
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        if let DoorState::Open { task, .. } = &self.state {
            task.abort();
        }
    }
}

/// Refusing doors on one port, one per address in `ips` (loopback addresses),
/// so that one name can lead to the same port on different addresses.
pub fn doors(ips: &[&str]) -> Vec<Door> {
    let ips: Vec<IpAddr> = ips
        .iter()
        .map(|s| s.parse().expect("an IP address"))
        .collect();
    for _ in 0..50 {
        let port = std::net::TcpListener::bind(SocketAddr::new(ips[0], 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let made: io::Result<Vec<Door>> = ips
            .iter()
            .map(|ip| Door::refusing(SocketAddr::new(*ip, port)))
            .collect();
        if let Ok(doors) = made {
            return doors;
        }
    }
    panic!("no port free on every one of {ips:?} after 50 tries");
}

// ---------------------------------------------------------------- the world

/// Real agent processes for a [`World`]'s regions (the harness knows nothing
/// of the test DNS server each probe brings).
#[allow(async_fn_in_trait)] // only these tests call it
pub trait Probes {
    /// Starts an agent in region `region` (index) with its own DNS server;
    /// `label` names its data directory (the same label after a kill reuses the spool).
    async fn probe(&self, region: usize, label: &str) -> Probe;

    /// One probe per region `0..n`, labelled by region name.
    async fn probes(&self, n: usize) -> Vec<Probe>;
}

impl Probes for World {
    async fn probe(&self, region: usize, label: &str) -> Probe {
        let dns = DnsServer::start().await.expect("start a DNS server");
        // No caching: a changed answer is seen by the next check.
        dns.set_ttl(0);
        let r = &self.regions[region];
        let private = if r.private {
            "allow_private_targets = true\n"
        } else {
            ""
        };
        let agent = AgentProc::start(
            &agent_bin(),
            &self.coord,
            &r.token,
            &self.dir.path().join(format!("agent-{label}")),
            &format!("{private}nameservers = [\"{}\"]\n", dns.addr()),
        );
        Probe {
            region: r.name.clone(),
            label: label.to_string(),
            dns,
            agent,
        }
    }

    async fn probes(&self, n: usize) -> Vec<Probe> {
        let mut v = Vec::new();
        for i in 0..n {
            v.push(self.probe(i, &self.regions[i].name.clone()).await);
        }
        v
    }
}

/// A `portwatch-agent run` process and the DNS server it uses.
pub struct Probe {
    pub region: String,
    pub label: String,
    pub dns: DnsServer,
    pub agent: AgentProc,
}

impl Probe {
    /// This probe resolves `name` to `ip`.
    pub fn answer(&self, name: &str, ip: IpAddr) {
        self.dns.set(name, Answer::Addrs(vec![ip]));
    }

    /// This probe gets NXDOMAIN for `name`.
    pub fn nxdomain(&self, name: &str) {
        self.dns.set(name, Answer::NxDomain);
    }

    /// A counter or gauge from the agent's `/metrics` (labels included in `name`).
    pub async fn metric(&self, name: &str) -> f64 {
        metric_value(&self.agent.metrics_text().await, name).unwrap_or(0.0)
    }

    /// Every check this agent made, whatever the outcome.
    pub async fn checks_total(&self) -> f64 {
        let text = self.agent.metrics_text().await;
        text.lines()
            .filter(|l| l.starts_with("portwatch_agent_checks_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits until the agent has no unacknowledged result left.
    pub async fn drained(&self, timeout: Duration) {
        let what = format!(
            "agent {} ({}) spool empty (every result acknowledged)",
            self.label, self.region
        );
        eventually(&what, timeout, || async {
            let text = self.agent.metrics_text().await;
            (metric_value(&text, "portwatch_agent_spool_depth") == Some(0.0)).then_some(())
        })
        .await;
    }
}

// ---------------------------------------------------------------- requests

/// A monitor of `host:port` in `regions` with the given interval and a 1 s timeout.
pub fn monitor(
    name: &str,
    host: &str,
    port: u16,
    regions: &[String],
    interval_ms: u64,
) -> v1::CreateMonitorRequest {
    v1::CreateMonitorRequest {
        name: name.into(),
        host: host.into(),
        port: u32::from(port),
        regions: regions.to_vec(),
        interval_ms,
        timeout_ms: 1000,
        ..Default::default()
    }
}

pub async fn create_monitor(admin: &mut Admin, req: v1::CreateMonitorRequest) -> v1::Monitor {
    let what = format!("create monitor {:?}", req.name);
    admin
        .create_monitor(req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {:?} {}", e.code(), e.message()))
        .into_inner()
}

pub use portwatch_e2e::all_results as results;

pub async fn incidents(admin: &Admin, open_only: bool) -> Vec<v1::Incident> {
    admin
        .clone()
        .list_incidents(v1::ListIncidentsRequest {
            open_only,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list incidents")
        .into_inner()
        .incidents
}

pub async fn incidents_of(admin: &Admin, monitor: &str) -> Vec<v1::Incident> {
    admin
        .clone()
        .list_incidents(v1::ListIncidentsRequest {
            monitor_id: monitor.into(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list incidents")
        .into_inner()
        .incidents
}

pub async fn status(admin: &Admin, monitor: &str) -> v1::MonitorStatus {
    admin
        .clone()
        .get_monitor_status(v1::GetMonitorStatusRequest {
            id: monitor.into(),
            ..Default::default()
        })
        .await
        .expect("monitor status")
        .into_inner()
}

/// The region states of a status, by region name.
pub fn states(s: &v1::MonitorStatus) -> BTreeMap<String, v1::RegionState> {
    s.regions
        .iter()
        .map(|r| {
            (
                r.region.clone(),
                v1::RegionState::try_from(r.state).unwrap_or(v1::RegionState::Unspecified),
            )
        })
        .collect()
}

/// Waits until the monitor's status satisfies `ok`; returns it.
pub async fn wait_status(
    admin: &Admin,
    monitor: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&v1::MonitorStatus) -> bool,
) -> v1::MonitorStatus {
    let last = std::sync::Mutex::new(None);
    let found = tokio::time::timeout(
        timeout,
        eventually(what, timeout + Duration::from_secs(1), || {
            let admin = admin.clone();
            let last = &last;
            let ok = &ok;
            async move {
                let s = status(&admin, monitor).await;
                let hit = ok(&s);
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(s.clone());
                hit.then_some(s)
            }
        }),
    )
    .await;
    match found {
        Ok(s) => s,
        Err(_) => panic!(
            "{what}: not seen within {timeout:?}; the status showed {:?}",
            last.lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|s| (states(s), s.overall))
        ),
    }
}

pub use portwatch_e2e::checked_at_ms as at_ms;

pub fn ms(t: SystemTime) -> u64 {
    unix_micros(t) / 1000
}

pub fn ts_ms(ts: Option<&prost_types::Timestamp>) -> u64 {
    ts.and_then(from_timestamp)
        .map_or(0, |t| unix_micros(t) / 1000)
}

/// Panics when one check (monitor, region, checked_at) is stored twice.
pub fn assert_no_duplicates(rs: &[v1::CheckResult]) {
    let mut seen = HashSet::new();
    for r in rs {
        let key = (
            r.monitor_id.clone(),
            r.region.clone(),
            at_ms(r),
            r.immediate,
        );
        assert!(
            seen.insert(key.clone()),
            "result stored twice: monitor {} region {} checked at {} ms",
            key.0,
            key.1,
            key.2
        );
    }
}

/// Results per region.
pub fn per_region(rs: &[v1::CheckResult]) -> BTreeMap<String, Vec<v1::CheckResult>> {
    let mut m: BTreeMap<String, Vec<v1::CheckResult>> = BTreeMap::new();
    for r in rs {
        m.entry(r.region.clone()).or_default().push(r.clone());
    }
    m
}

/// Waits until every region in `regions` has stored at least `more` results of
/// `monitor` beyond what it had when called: a barrier measured in checks, for
/// "nothing else happened while the system kept checking".
pub async fn more_results(admin: &Admin, monitor: &str, regions: &[String], more: usize) {
    let base = per_region(&results(admin, monitor).await);
    let count = |m: &BTreeMap<String, Vec<v1::CheckResult>>, r: &str| m.get(r).map_or(0, Vec::len);
    let what = format!("{more} more result(s) of {monitor} from each of {regions:?}");
    eventually(&what, WAIT, || {
        let admin = admin.clone();
        let base = &base;
        async move {
            let now = per_region(&results(&admin, monitor).await);
            regions
                .iter()
                .all(|r| count(&now, r) >= count(base, r) + more)
                .then_some(())
        }
    })
    .await;
}

// ---------------------------------------------------------------- notifications

/// One notification as a receiver saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// "webhook" or "email".
    pub via: &'static str,
    /// Incident or outage id.
    pub subject_id: String,
    /// opened, resolved, offline, online.
    pub kind: String,
    pub channel_id: String,
    pub subject: String,
}

/// A real webhook receiver and a real SMTP server, registered as two channels.
pub struct Inbox {
    pub hook: HttpReceiver,
    pub smtp: SmtpServer,
    pub hook_channel: v1::Channel,
    pub mail_channel: v1::Channel,
}

pub fn webhook_channel(name: &str, url: String, default: bool) -> v1::Channel {
    v1::Channel {
        name: name.into(),
        is_default: default,
        config: Some(v1::channel::Config::Webhook(v1::WebhookConfig {
            url,
            secret: SECRET.into(),
        })),
        ..Default::default()
    }
}

pub fn email_channel(name: &str, smtp: SocketAddr, default: bool) -> v1::Channel {
    v1::Channel {
        name: name.into(),
        is_default: default,
        config: Some(v1::channel::Config::Email(v1::EmailConfig {
            smtp_host: smtp.ip().to_string(),
            smtp_port: u32::from(smtp.port()),
            tls: v1::SmtpTls::None as i32,
            username: "alerts".into(),
            password: "mail-pass".into(),
            from: "portwatch <alerts@example.com>".into(),
            to: vec!["oncall@example.com".into()],
        })),
        ..Default::default()
    }
}

pub async fn create_channel(admin: &mut Admin, c: v1::Channel) -> v1::Channel {
    let name = c.name.clone();
    admin
        .create_channel(v1::CreateChannelRequest {
            tenant_id: String::new(),
            channel: Some(c),
        })
        .await
        .unwrap_or_else(|e| panic!("create channel {name:?}: {:?} {}", e.code(), e.message()))
        .into_inner()
}

impl Inbox {
    /// Receivers on free loopback ports, registered as default channels of
    /// whoever `admin` is (the operator's own channels when it is the operator).
    pub async fn create(admin: &mut Admin, label: &str) -> Inbox {
        let hook = HttpReceiver::ok().await;
        let smtp = SmtpServer::start().await;
        Self::register(admin, label, hook, smtp).await
    }

    /// Registers receivers that may not be listening yet.
    pub async fn register(
        admin: &mut Admin,
        label: &str,
        hook: HttpReceiver,
        smtp: SmtpServer,
    ) -> Inbox {
        let hook_channel = create_channel(
            admin,
            webhook_channel(&format!("{label} hook"), hook.url("/hook"), true),
        )
        .await;
        let mail_channel = create_channel(
            admin,
            email_channel(&format!("{label} mail"), smtp.addr, true),
        )
        .await;
        Inbox {
            hook,
            smtp,
            hook_channel,
            mail_channel,
        }
    }

    /// Every notification both receivers got, in arrival order per receiver.
    pub fn notices(&self) -> Vec<Notice> {
        let mut v: Vec<Notice> = self.hook.requests().iter().map(hook_notice).collect();
        v.extend(self.smtp.mails().iter().map(mail_notice));
        v
    }

    /// Waits until both receivers together hold at least `n` notices.
    pub async fn wait(&self, n: usize, timeout: Duration) -> Vec<Notice> {
        eventually(
            &format!("{n} notification(s) at the webhook and SMTP receivers"),
            timeout,
            || {
                let got = self.notices();
                async move { (got.len() >= n).then_some(got) }
            },
        )
        .await
    }

    /// How many notices of `kind` about `subject_id` each channel got.
    pub fn count(&self, subject_id: &str, kind: &str) -> (usize, usize) {
        let all = self.notices();
        let n = |via: &str| {
            all.iter()
                .filter(|x| x.via == via && x.subject_id == subject_id && x.kind == kind)
                .count()
        };
        (n("webhook"), n("email"))
    }

    /// The webhook JSON bodies received.
    pub fn hook_bodies(&self) -> Vec<Value> {
        self.hook
            .requests()
            .iter()
            .map(|r| serde_json::from_slice(&r.body).expect("a JSON webhook body"))
            .collect()
    }
}

/// `{subject}:{kind}:{channel}` from a webhook's Idempotency-Key.
pub fn hook_notice(r: &Recorded) -> Notice {
    let key = r.header("idempotency-key").unwrap_or_default();
    let mut parts = key.splitn(3, ':');
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    Notice {
        via: "webhook",
        subject_id: parts.next().unwrap_or_default().to_string(),
        kind: parts.next().unwrap_or_default().to_string(),
        channel_id: parts.next().unwrap_or_default().to_string(),
        subject: body["subject"].as_str().unwrap_or_default().to_string(),
    }
}

/// The same from an email's Message-ID (`<{subject}.{kind}.{channel}@portwatch>`).
pub fn mail_notice(m: &Mail) -> Notice {
    let id = m.header("Message-ID").unwrap_or_default();
    let local = id
        .trim_start_matches('<')
        .split('@')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut parts = local.splitn(3, '.');
    Notice {
        via: "email",
        subject_id: parts.next().unwrap_or_default().to_string(),
        kind: parts.next().unwrap_or_default().to_string(),
        channel_id: parts.next().unwrap_or_default().to_string(),
        subject: m.header("Subject").unwrap_or_default(),
    }
}

/// Deliveries of one incident or outage, once none is pending any more.
pub async fn settled_deliveries(
    admin: &Admin,
    tenant_id: &str,
    subject: &str,
    n: usize,
) -> Vec<v1::Delivery> {
    eventually(
        &format!("{n} deliveries of {subject} delivered or failed"),
        WAIT,
        || {
            let mut a = admin.clone();
            async move {
                let ds = a
                    .list_deliveries(v1::ListDeliveriesRequest {
                        tenant_id: tenant_id.into(),
                        incident_id: subject.into(),
                        page_size: 1000,
                        ..Default::default()
                    })
                    .await
                    .expect("list deliveries")
                    .into_inner()
                    .deliveries;
                (ds.len() == n
                    && ds
                        .iter()
                        .all(|d| d.state != v1::DeliveryState::Pending as i32))
                .then_some(ds)
            }
        },
    )
    .await
}
