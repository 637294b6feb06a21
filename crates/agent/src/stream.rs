//! The agent's side of `AgentService.Connect`: connect, say hello, take the
//! assignments, send spooled results in batches, apply acks, answer check-now
//! and drain, heartbeat; reconnect with exponential backoff and jitter.
//!
//! Guarantees: results leave the spool only when the coordinator acknowledges
//! them; after every (re)connect, everything unacknowledged is sent again from
//! the coordinator's acknowledged sequence; a bounded window of batches is in
//! flight at once.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use portwatch_proto::v1;
use portwatch_proto::v1::agent_message::Msg as AgentMsg;
use portwatch_proto::v1::agent_service_client::AgentServiceClient;
use portwatch_proto::v1::coordinator_message::Msg as CoordMsg;
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{info, warn};

use crate::config::Config;
use crate::runner::Runner;
use crate::spool::Spool;

/// Batches sent and not yet acknowledged, at most.
const WINDOW_BATCHES: u64 = 8;
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Largest coordinator message accepted (a snapshot of ~3M assignments).
const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;
/// How long a shutdown waits for the last acknowledgements.
const FINAL_ACK_WAIT: Duration = Duration::from_secs(5);

/// Everything a session needs.
pub struct Link {
    pub config: Config,
    pub agent_id: String,
    pub spool: Spool,
    pub runner: Arc<Runner>,
    pub spooled: Arc<Notify>,
}

enum End {
    /// The coordinator asked us to go away for a while.
    Drain(Duration),
    /// Our own shutdown, after the final send.
    Stopped,
}

/// Builds the channel endpoint (TLS with the configured CA and optional client cert).
pub fn endpoint(config: &Config) -> anyhow::Result<Endpoint> {
    let mut ep = Endpoint::from_shared(config.coordinator.clone())
        .with_context(|| format!("coordinator: {:?} is not a valid URL", config.coordinator))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if config.coordinator.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).with_context(|| format!("ca: reading {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(name) = &config.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        if let Some((cert, key)) = &config.client_identity {
            let c = std::fs::read(cert)
                .with_context(|| format!("client_cert: reading {}", cert.display()))?;
            let k = std::fs::read(key)
                .with_context(|| format!("client_key: reading {}", key.display()))?;
            tls = tls.identity(Identity::from_pem(c, k));
        }
        ep = ep
            .tls_config(tls)
            .context("tls: building the client configuration")?;
    }
    Ok(ep)
}

/// Runs sessions until `stop`; reconnects with backoff and jitter in between.
pub async fn run(link: Link, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(250);
    loop {
        if stop.is_cancelled() {
            return;
        }
        let started = tokio::time::Instant::now();
        match session(&link, &stop).await {
            Ok(End::Stopped) => return,
            Ok(End::Drain(delay)) => {
                info!(?delay, "coordinator asked us to drain; reconnecting later");
                backoff = Duration::from_millis(250);
                sleep_or_stop(delay, &stop).await;
            }
            Err(e) => {
                // A session that lived a while resets the backoff.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = Duration::from_millis(250);
                }
                let jitter = Duration::from_millis(
                    u64::from(rand::random::<u16>()) % (backoff.as_millis() as u64 / 2 + 1),
                );
                let wait = backoff + jitter;
                warn!(error = %format!("{e:#}"), ?wait, "coordinator session ended; reconnecting");
                metrics::counter!("portwatch_agent_reconnects_total").increment(1);
                sleep_or_stop(wait, &stop).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(d) => {}
        () = stop.cancelled() => {}
    }
}

fn bearer(token: &str) -> anyhow::Result<MetadataValue<tonic::metadata::Ascii>> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| anyhow!("token: not valid ASCII"))
}

async fn session(link: &Link, stop: &CancellationToken) -> anyhow::Result<End> {
    let channel: Channel = endpoint(&link.config)?
        .connect()
        .await
        .context("connecting to the coordinator")?;
    let auth = bearer(&link.config.token)?;
    let mut client =
        AgentServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", auth.clone());
            Ok(req)
        })
        // A snapshot of 100k assignments is about 7 MB: far over tonic's 4 MiB default.
        .max_decoding_message_size(MAX_MESSAGE_BYTES);
    let (tx, rx) = mpsc::channel::<v1::AgentMessage>(64);
    let revision = link.spool.revision()?;
    let hello = v1::Hello {
        agent_id: link.agent_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        capabilities: vec![
            "address-policy-all".into(),
            "tcp-rtt".into(),
            "check-now".into(),
        ],
        assignment_revision: revision,
        last_seq: link.spool.last_seq(),
        hostname: hostname(),
    };
    tx.send(v1::AgentMessage {
        msg: Some(AgentMsg::Hello(hello)),
    })
    .await
    .map_err(|_| anyhow!("stream closed"))?;
    let mut inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .context("opening the agent stream")?
        .into_inner();

    let welcome = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
        Ok(Ok(Some(v1::CoordinatorMessage {
            msg: Some(CoordMsg::Welcome(w)),
        }))) => w,
        Ok(Ok(Some(_))) => bail!("the coordinator did not start with a welcome"),
        Ok(Ok(None)) => bail!("the coordinator closed the stream"),
        Ok(Err(status)) => bail!("coordinator: {} ({:?})", status.message(), status.code()),
        Err(_) => bail!("no welcome within 10 s"),
    };
    info!(region = %welcome.region, acked_seq = welcome.acked_seq, "connected to the coordinator");
    off_runtime(&link.spool, welcome.acked_seq, |spool, up_to| {
        spool.ack(*up_to).map(drop)
    })
    .await?;
    let mut acked = welcome.acked_seq;
    // Everything after the coordinator's acknowledged sequence is (re)sent.
    let mut cursor = welcome.acked_seq;
    let batch = link.config.batch_size;
    let window = WINDOW_BATCHES * batch as u64;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(
        welcome.heartbeat_interval_ms.max(100),
    )));
    let mut poll = tokio::time::interval(Duration::from_millis(200));

    loop {
        // Send while the window allows.
        while cursor.saturating_sub(acked) < window {
            let pending = link.spool.pending(cursor, batch)?;
            let Some(last) = pending.last().map(|r| r.seq) else {
                break;
            };
            tx.send(v1::AgentMessage {
                msg: Some(AgentMsg::Results(v1::ResultBatch { results: pending })),
            })
            .await
            .map_err(|_| anyhow!("stream closed while sending"))?;
            cursor = last;
        }
        tokio::select! {
            m = inbound.message() => {
                let m = match m {
                    Ok(Some(m)) => m,
                    Ok(None) => bail!("the coordinator closed the stream"),
                    Err(status) => bail!("coordinator: {} ({:?})", status.message(), status.code()),
                };
                match m.msg {
                    Some(CoordMsg::Snapshot(s)) => {
                        let s = off_runtime(&link.spool, s, |spool, s| spool.save_snapshot(s)).await?;
                        link.runner.apply_snapshot(&s.assignments);
                        info!(assignments = s.assignments.len(), "assignment snapshot");
                        drop(s);
                        tokio::task::spawn_blocking(crate::memory::release_free_pages).await?;
                    }
                    Some(CoordMsg::Update(u)) => {
                        let u = off_runtime(&link.spool, u, |spool, u| spool.apply_update(u)).await?;
                        link.runner.apply_update(&u);
                    }
                    Some(CoordMsg::Ack(a)) => {
                        off_runtime(&link.spool, a.up_to_seq, |spool, up_to| spool.ack(*up_to).map(drop)).await?;
                        acked = acked.max(a.up_to_seq);
                        if a.refused > 0 {
                            warn!(refused = a.refused, "the coordinator refused results (monitor no longer assigned here?)");
                        }
                        metrics::gauge!("portwatch_agent_spool_depth").set(link.spool.depth() as f64);
                    }
                    Some(CoordMsg::CheckNow(c)) => link.runner.check_now(&c.monitor_ids),
                    Some(CoordMsg::Drain(d)) => {
                        finish(link, &tx, &mut inbound, &mut cursor, &mut acked).await;
                        return Ok(End::Drain(Duration::from_millis(u64::from(d.reconnect_after_ms.max(100)))));
                    }
                    Some(CoordMsg::Welcome(_)) | None => {}
                }
            }
            () = link.spooled.notified() => {}
            _ = poll.tick() => {}
            _ = heartbeat.tick() => {
                let hb = v1::Heartbeat {
                    sent_at: Some(portwatch_proto::time::to_timestamp(std::time::SystemTime::now())),
                    in_flight: link.runner.in_flight(),
                    spool_depth: link.spool.depth(),
                    dropped_total: link.spool.dropped_total(),
                    schedule_lag_p99_us: link.runner.lag_p99_us(),
                    assignments: u32::try_from(link.runner.assignments()).unwrap_or(u32::MAX),
                };
                tx.send(v1::AgentMessage { msg: Some(AgentMsg::Heartbeat(hb)) }).await.map_err(|_| anyhow!("stream closed"))?;
            }
            () = stop.cancelled() => {
                finish(link, &tx, &mut inbound, &mut cursor, &mut acked).await;
                return Ok(End::Stopped);
            }
        }
    }
}

/// Sends whatever is left in the spool and waits (bounded) for its acks.
async fn finish(
    link: &Link,
    tx: &mpsc::Sender<v1::AgentMessage>,
    inbound: &mut tonic::Streaming<v1::CoordinatorMessage>,
    cursor: &mut u64,
    acked: &mut u64,
) {
    let deadline = tokio::time::Instant::now() + FINAL_ACK_WAIT;
    loop {
        while let Ok(pending) = link.spool.pending(*cursor, link.config.batch_size) {
            let Some(last) = pending.last().map(|r| r.seq) else {
                break;
            };
            if tx
                .send(v1::AgentMessage {
                    msg: Some(AgentMsg::Results(v1::ResultBatch { results: pending })),
                })
                .await
                .is_err()
            {
                return;
            }
            *cursor = last;
        }
        if *acked >= *cursor {
            return;
        }
        match tokio::time::timeout_at(deadline, inbound.message()).await {
            Ok(Ok(Some(v1::CoordinatorMessage {
                msg: Some(CoordMsg::Ack(a)),
            }))) => {
                let _ = link.spool.ack(a.up_to_seq);
                *acked = (*acked).max(a.up_to_seq);
            }
            Ok(Ok(Some(_))) => {}
            _ => {
                warn!(
                    unacknowledged = cursor.saturating_sub(*acked),
                    "stopping with results not yet acknowledged; they stay in the spool"
                );
                return;
            }
        }
    }
}

/// Runs a spool call on a blocking thread (sled writes of a large snapshot or
/// acknowledgement take long enough to stall the checks on the runtime's
/// workers) and hands `value` back.
async fn off_runtime<T, F>(spool: &Spool, value: T, call: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&Spool, &T) -> Result<(), crate::spool::SpoolError> + Send + 'static,
{
    let spool = spool.clone();
    tokio::task::spawn_blocking(move || call(&spool, &value).map(|()| value))
        .await
        .context("spool task")?
        .map_err(anyhow::Error::from)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
