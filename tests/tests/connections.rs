//! The coordinator's listener under connections that never authenticate, with
//! the real binaries as separate processes (issue 13, item 7).
//!
//! What it proves:
//! - hundreds of idle TCP connections and half-sent TLS ClientHellos, from
//!   other loopback source addresses, neither stop a real agent's results from
//!   being acknowledged nor the real `portwatch` CLI from answering, on a
//!   coordinator limited to 1,024 open files (a shell's or a service manager's
//!   default); the per-source cap refuses the excess at once, and every one of
//!   them is closed by the TLS handshake deadline (before the listener existed,
//!   about a thousand such connections used up the descriptors, and every new
//!   client, the CLI included, hung);
//! - a connection lives past `unauthenticated_idle_timeout` only once a request
//!   on it carried a token its API accepts: a silent TLS connection, health
//!   checks, a wrong token, and an agent token on the admin API do not count;
//!   a tenant's admin call and an agent's stream do.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use portwatch_e2e::{AgentProc, Coordinator, FakeAgent, OPERATOR_TOKEN, eventually, metric_value};
use portwatch_proto::v1;
use portwatch_proto::v1::admin_service_client::AdminServiceClient;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tonic::Code;

/// The listener's settings in these tests: short deadlines, a small per-source cap.
const HANDSHAKE_AND_CAP: &str = "tls_handshake_timeout = \"5s\"\nunauthenticated_idle_timeout = \"6s\"\nmax_connections_per_ip = 50\n";

/// RLIMIT_NOFILE of the coordinator in the flood test.
const COORDINATOR_OPEN_FILES: u64 = 1024;

/// Idle (nothing sent) and half-ClientHello connections, per source address.
const IDLE_SOURCES: [&str; 5] = [
    "127.0.0.2",
    "127.0.0.3",
    "127.0.0.4",
    "127.0.0.5",
    "127.0.0.6",
];
const HALF_HELLO_SOURCES: [&str; 3] = ["127.0.0.7", "127.0.0.8", "127.0.0.9"];
const PER_SOURCE: usize = 160;

/// A TLS record header announcing a 512-byte ClientHello, and 6 bytes of it.
const HALF_CLIENT_HELLO: [u8; 11] = [
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
];

/// This test process holds well over a thousand sockets.
fn raise_own_open_file_limit(need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    assert!(
        lim.rlim_cur >= need,
        "this test needs RLIMIT_NOFILE >= {need}; the hard limit is {}",
        lim.rlim_cur
    );
}

/// What became of one connection attempt.
enum Attempt {
    Connected(TcpStream),
    /// Reset before `connect` returned: refused at once.
    Reset,
    /// No handshake within 2 s (a full accept queue drops SYNs), or another error.
    Failed,
}

/// A TCP connection to `to` from source address `src`.
async fn connect_from(src: &str, to: SocketAddr) -> Attempt {
    let Ok(s) = TcpSocket::new_v4() else {
        return Attempt::Failed;
    };
    let Ok(ip) = src.parse() else {
        return Attempt::Failed;
    };
    if s.bind(SocketAddr::new(ip, 0)).is_err() {
        return Attempt::Failed;
    }
    match tokio::time::timeout(Duration::from_secs(2), s.connect(to)).await {
        Ok(Ok(s)) => Attempt::Connected(s),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Attempt::Reset,
        _ => Attempt::Failed,
    }
}

/// Connections opened by a flood: those still held, and how many were
/// reset while connecting.
#[derive(Default)]
struct Flood {
    held: Vec<TcpStream>,
    reset: usize,
}

impl Flood {
    fn attempts(&self) -> usize {
        self.held.len() + self.reset
    }
}

/// Opens `n` connections from each source; `half_hello` sends the start of a
/// ClientHello on each. Gives up on a source after 3 failed connects.
async fn flood(f: &mut Flood, sources: &[&str], n: usize, to: SocketAddr, half_hello: bool) {
    for src in sources {
        let mut failed = 0;
        for _ in 0..n {
            match connect_from(src, to).await {
                Attempt::Connected(mut s) => {
                    if half_hello {
                        // A refused connection may already be reset: that is fine.
                        let _ = s.write_all(&HALF_CLIENT_HELLO).await;
                    }
                    f.held.push(s);
                }
                Attempt::Reset => f.reset += 1,
                Attempt::Failed => {
                    failed += 1;
                    if failed == 3 {
                        break;
                    }
                }
            }
        }
    }
}

/// How many of `conns` the server has closed (FIN or RST) by `deadline`.
async fn closed_by(conns: Vec<TcpStream>, deadline: tokio::time::Instant) -> usize {
    let mut set = tokio::task::JoinSet::new();
    for mut s in conns {
        set.spawn(async move {
            let mut buf = [0u8; 512];
            loop {
                match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                    Err(_) => return false,
                    Ok(Ok(0)) | Ok(Err(_)) => return true,
                    Ok(Ok(_)) => continue,
                }
            }
        });
    }
    let mut closed = 0;
    while let Some(r) = set.join_next().await {
        if r.unwrap_or(false) {
            closed += 1;
        }
    }
    closed
}

/// The real `portwatch` CLI, bounded in time: (succeeded, stdout, stderr).
fn cli(coord: &Coordinator, token: &str, args: &[&str]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(daemon("portwatch"));
    cmd.args(args)
        .env_clear()
        .env("PORTWATCH_ADDR", format!("https://{}", coord.addr))
        .env("PORTWATCH_CA", &coord.cert.cert)
        .env("PORTWATCH_TOKEN", token)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("run portwatch");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("portwatch output");
            return (
                false,
                String::from_utf8_lossy(&out.stdout).into_owned(),
                format!(
                    "no answer within 20 s; {}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("portwatch output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn coordinator_metric(coord: &Coordinator, name: &str) -> f64 {
    metric_value(&coord.metrics_text().await, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_half_open_connections_lock_out_neither_the_agent_nor_the_cli() {
    let attackers = (IDLE_SOURCES.len() + HALF_HELLO_SOURCES.len()) * PER_SOURCE;
    raise_own_open_file_limit(attackers as u64 + 512);
    // A tenant, a private region with a real agent, and a monitor it checks every second.
    let World {
        coord,
        tenant_token,
        mut tenant,
        regions,
        dir,
        ..
    } = World::builder()
        .config(HANDSHAKE_AND_CAP)
        .open_file_limit(COORDINATOR_OPEN_FILES)
        .private_regions(1)
        .start()
        .await;
    assert!(
        (attackers as u64) > COORDINATOR_OPEN_FILES,
        "the flood must be larger than the coordinator's descriptors"
    );
    let agent_token = regions[0].token.clone();
    let mut door = doors(&["127.0.0.1"]).remove(0);
    door.open().await;
    let agent = AgentProc::start(
        &agent_bin(),
        &coord,
        &agent_token,
        &dir.path().join("agent"),
        "allow_private_targets = true\n",
    );
    let regions = vec!["r0".to_string()];
    let m = create_monitor(
        &mut tenant,
        monitor("web", "127.0.0.1", door.port(), &regions, 1000),
    )
    .await;
    more_results(&tenant, &m.id, &regions, 2).await;
    let agent_reconnects = metric_value(
        &agent.metrics_text().await,
        "portwatch_agent_reconnects_total",
    )
    .unwrap_or(0.0);
    let (ok, out, err) = cli(&coord, OPERATOR_TOKEN, &["whoami"]);
    assert!(ok && out.trim() == "operator", "before: {out} {err}");

    // The flood: idle connections, then half ClientHellos, from 8 other addresses.
    let started = tokio::time::Instant::now();
    let mut f = Flood::default();
    flood(&mut f, &IDLE_SOURCES, PER_SOURCE, coord.addr, false).await;
    flood(&mut f, &HALF_HELLO_SOURCES, PER_SOURCE, coord.addr, true).await;
    let opened = started.elapsed();
    let attempts = f.attempts();
    eprintln!(
        "flood: {attempts} connections in {opened:?}: {} held, {} reset while connecting",
        f.held.len(),
        f.reset
    );
    assert!(
        attempts > COORDINATOR_OPEN_FILES as usize,
        "only {attempts} connections opened ({} reset while connecting)",
        f.reset
    );

    // While they are held: the CLI answers, and the agent's results keep being
    // acknowledged and stored.
    for (token, args, want) in [
        (OPERATOR_TOKEN, vec!["whoami"], "operator"),
        (tenant_token.as_str(), vec!["status"], "web"),
    ] {
        let (ok, out, err) = cli(&coord, token, &args);
        assert!(
            ok && out.contains(want),
            "`portwatch {}` while {attempts} connections were opened: {out} {err}",
            args.join(" "),
        );
    }
    more_results(&tenant, &m.id, &regions, 2).await;

    // The caps held: at most 50 per source were admitted (the clients on
    // 127.0.0.1 are the few others), and the excess was refused at once.
    let text = coord.metrics_text().await;
    let open = metric_value(&text, "portwatch_connections_open").unwrap_or(f64::MAX);
    let sources = (IDLE_SOURCES.len() + HALF_HELLO_SOURCES.len()) as f64;
    assert!(
        open <= sources * 50.0 + 10.0,
        "{open} connections open during the flood"
    );
    let refused = metric_value(
        &text,
        "portwatch_connections_refused_total{reason=\"per_ip_limit\"}",
    )
    .unwrap_or(0.0);
    // Unless opening took longer than the handshake deadline (slots freed
    // meanwhile), everything over 50 per source was refused.
    if opened < Duration::from_secs(5) {
        assert!(
            refused >= attempts as f64 - sources * 50.0,
            "{refused} refused of {attempts} from {sources} sources"
        );
    } else {
        assert!(refused > 0.0, "nothing refused");
    }

    // Every one of them is closed by the handshake deadline (5 s from its
    // accept), none stays.
    let deadline = started + opened + Duration::from_secs(5 + 15);
    let total = f.held.len();
    let closed = closed_by(f.held, deadline).await;
    assert_eq!(closed, total, "connections the coordinator left open");
    let timed_out = coordinator_metric(
        &coord,
        "portwatch_connections_closed_total{reason=\"tls_handshake_timeout\"}",
    )
    .await;
    assert!(
        timed_out >= sources * 50.0 - 1.0,
        "{timed_out} handshakes timed out"
    );
    eventually("the flood's connections all released", WAIT, || async {
        let open = coordinator_metric(&coord, "portwatch_connections_open").await;
        (open <= 10.0).then_some(())
    })
    .await;

    // After it: the agent never lost its stream, and the CLI still answers.
    more_results(&tenant, &m.id, &regions, 1).await;
    assert_eq!(
        metric_value(
            &agent.metrics_text().await,
            "portwatch_agent_reconnects_total"
        )
        .unwrap_or(0.0),
        agent_reconnects,
        "the agent's stream was cut"
    );
    let (ok, out, err) = cli(&coord, OPERATOR_TOKEN, &["whoami"]);
    assert!(ok && out.trim() == "operator", "after: {out} {err}");
}

/// A raw TLS client trusting the test coordinator's certificate.
fn tls_connector(coord: &Coordinator) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    portwatch_e2e::crypto();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(coord.cert.cert_pem.as_bytes()).expect("pem"))
        .expect("root");
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

type HealthClient = tonic_health::pb::health_client::HealthClient<tonic::transport::Channel>;

/// A health `Watch` stream opened on `channel` (after its first answer).
async fn health_watch(
    channel: tonic::transport::Channel,
) -> tonic::Streaming<tonic_health::pb::HealthCheckResponse> {
    let mut health = HealthClient::new(channel);
    let mut stream = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health watch")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("first health answer in time")
        .expect("health answer");
    assert!(first.is_some(), "health answers SERVING first");
    stream
}

/// Whether the stream's connection was cut by `deadline` (the stream fails
/// or ends); it sends nothing else while the coordinator stays healthy.
async fn cut_by(
    stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
    deadline: tokio::time::Instant,
) -> bool {
    loop {
        match tokio::time::timeout_at(deadline, stream.message()).await {
            Err(_) => return false,
            Ok(Ok(Some(_))) => continue,
            Ok(Ok(None)) | Ok(Err(_)) => return true,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_request_with_a_token_its_api_accepts_keeps_a_connection_open() {
    let idle = Duration::from_secs(3);
    let mut w = World::start(
        1,
        &format!(
            "unauthenticated_idle_timeout = \"{}s\"\nmax_connections_per_ip = 64\n",
            idle.as_secs()
        ),
    )
    .await;
    let agent_token = w.regions[0].token.clone();
    // The world's tenant client has made no call yet: make it authenticate.
    w.tenant
        .list_monitors(v1::ListMonitorsRequest::default())
        .await
        .expect("list monitors");
    let before = coordinator_metric(
        &w.coord,
        "portwatch_connections_closed_total{reason=\"unauthenticated_idle\"}",
    )
    .await;
    let started = tokio::time::Instant::now();

    // Connections that never authenticate.
    let mut silent_tls = tls_connector(&w.coord)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            TcpStream::connect(w.coord.addr).await.expect("connect"),
        )
        .await
        .expect("TLS handshake");
    let mut health_only = health_watch(w.coord.channel().await).await;
    let wrong_token = w.coord.channel().await;
    let mut bad = AdminServiceClient::with_interceptor(
        wrong_token.clone(),
        portwatch_e2e::Bearer::new("pwt_not-a-token-of-this-coordinator"),
    );
    let e = bad
        .who_am_i(v1::WhoAmIRequest::default())
        .await
        .expect_err("an unknown token is refused");
    assert_eq!(e.code(), Code::Unauthenticated);
    let mut after_bad_token = health_watch(wrong_token).await;
    let agent_on_admin = w.coord.channel().await;
    let mut wrong_api = AdminServiceClient::with_interceptor(
        agent_on_admin.clone(),
        portwatch_e2e::Bearer::new(&agent_token),
    );
    let e = wrong_api
        .who_am_i(v1::WhoAmIRequest::default())
        .await
        .expect_err("an agent token cannot call the admin API");
    assert_eq!(e.code(), Code::PermissionDenied);
    let mut after_agent_token = health_watch(agent_on_admin).await;

    // Connections that did authenticate: a tenant's admin call, an agent's stream.
    let tenant_channel = w.coord.channel().await;
    let mut tenant = AdminServiceClient::with_interceptor(
        tenant_channel.clone(),
        portwatch_e2e::Bearer::new(&w.tenant_token),
    );
    tenant
        .who_am_i(v1::WhoAmIRequest::default())
        .await
        .expect("whoami");
    let mut after_tenant_call = health_watch(tenant_channel).await;
    let mut agent = FakeAgent::connect(&w.coord, &agent_token, "agent-kept")
        .await
        .expect("agent connects");
    agent.keepalive();

    // The unauthenticated ones are cut at the deadline, not before.
    let bound = started + idle + Duration::from_secs(15);
    let mut buf = [0u8; 64];
    let silent_cut = loop {
        match tokio::time::timeout_at(bound, silent_tls.read(&mut buf)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => continue,
        }
    };
    assert!(silent_cut, "a silent TLS connection stays open");
    assert!(started.elapsed() >= idle, "cut before the deadline");
    for (what, stream) in [
        ("health checks only", &mut health_only),
        ("a refused token, then health", &mut after_bad_token),
        (
            "an agent token on the admin API, then health",
            &mut after_agent_token,
        ),
    ] {
        assert!(
            cut_by(stream, bound).await,
            "{what}: the connection stays open"
        );
    }
    let closed = coordinator_metric(
        &w.coord,
        "portwatch_connections_closed_total{reason=\"unauthenticated_idle\"}",
    )
    .await;
    assert!(
        closed >= before + 4.0,
        "closed for idleness: {before} -> {closed}"
    );

    // Well past the deadline the authenticated ones are still there.
    let past = started + idle * 2 + Duration::from_secs(1);
    assert!(
        !cut_by(&mut after_tenant_call, past).await,
        "the tenant's connection was cut"
    );
    let m = create_monitor(
        &mut tenant,
        monitor("kept", "127.0.0.1", 9, &w.names(1), 1000),
    )
    .await;
    agent
        .pump_until(Duration::from_secs(5), |a| a.assigned.contains_key(&m.id))
        .await
        .expect("the agent's stream still carries assignments");
    agent.report_acked(&m.id, v1::Outcome::Refused).await;
    assert!(
        !cut_by(&mut after_tenant_call, tokio::time::Instant::now()).await,
        "the tenant's connection was cut"
    );
    w.op.who_am_i(v1::WhoAmIRequest::default())
        .await
        .expect("the operator's client still works");
}
