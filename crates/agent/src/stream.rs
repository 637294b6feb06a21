//! The agent's side of `AgentService.Connect`: connect, say hello, take the
//! assignments, send spooled results in batches, apply acks, answer check-now
//! and drain, heartbeat; reconnect with exponential backoff and jitter, to
//! the next of the configured coordinator addresses (see `failover`).
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
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::failover::{self, Candidate, InUse, Pacing};
use crate::loops::{self, Loop};
use crate::runner::Runner;
use crate::spool::Spool;

/// Batches sent and not yet acknowledged, at most.
const WINDOW_BATCHES: u64 = 8;
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

/// Builds the channel endpoint to one candidate address (TLS with the
/// configured CA, the entry's name or `tls_server_name`, and the optional
/// client cert).
pub fn endpoint(config: &Config, to: &Candidate) -> anyhow::Result<Endpoint> {
    let url = to.url();
    let mut ep = Endpoint::from_shared(url.clone())
        .with_context(|| format!("coordinator: {url:?} is not a valid URL"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .tcp_nodelay(true);
    if to.entry.https {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &config.ca {
            let pem = std::fs::read(ca).with_context(|| format!("ca: reading {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(name) = to.tls_name(config.tls_server_name.as_deref()) {
            tls = tls.domain_name(name);
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

/// Runs sessions until `stop`, with the configured coordinators in turn: the
/// next address after a failed connect or an ended session; a backoff with
/// jitter after each full round of failures ([`failover::Pacing`]); after a
/// Drain, the given delay and then preferably another address.
pub async fn run(link: Link, stop: CancellationToken) {
    loops::running(Loop::Stream);
    let mut pacing = Pacing::default();
    let mut in_use = InUse::default();
    // The address tried last: the next round starts after it.
    let mut last = None;
    'rounds: loop {
        if stop.is_cancelled() {
            return;
        }
        let candidates = failover::round(failover::resolve(&link.config.coordinators).await, last);
        let size = candidates.len();
        if size == 0 {
            let wait = failover::with_jitter(pacing.round_failed());
            warn!(?wait, "no coordinator address resolved; trying again");
            sleep_or_stop(wait, &stop).await;
            continue;
        }
        for to in candidates {
            if stop.is_cancelled() {
                return;
            }
            last = Some(to.addr);
            let started = tokio::time::Instant::now();
            // A panic inside a session (a bug) ends that session, not the stream.
            let outcome = loops::catch(session(&link, &stop, &to, &mut in_use))
                .await
                .unwrap_or_else(|panic| {
                    loops::step_failed(Loop::Stream, &panic);
                    Err(anyhow!("the session {panic}"))
                });
            match outcome {
                Ok(End::Stopped) => return,
                Ok(End::Drain(delay)) => {
                    info!(?delay, coordinator = %to, "coordinator asked us to drain; reconnecting later, preferably elsewhere");
                    pacing.drained();
                    sleep_or_stop(delay, &stop).await;
                    continue 'rounds;
                }
                Err(e) => {
                    metrics::counter!("portwatch_agent_reconnects_total").increment(1);
                    let lasted = started.elapsed();
                    match pacing.failed(size, lasted) {
                        None => {
                            warn!(error = %format!("{e:#}"), coordinator = %to, "coordinator session ended; trying the next address");
                            // After a long session, the names are resolved afresh.
                            if lasted > failover::LIVED {
                                continue 'rounds;
                            }
                        }
                        Some(wait) => {
                            let wait = failover::with_jitter(wait);
                            warn!(error = %format!("{e:#}"), coordinator = %to, ?wait, "coordinator session ended; reconnecting");
                            sleep_or_stop(wait, &stop).await;
                            continue 'rounds;
                        }
                    }
                }
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

async fn session(
    link: &Link,
    stop: &CancellationToken,
    to: &Candidate,
    in_use: &mut InUse,
) -> anyhow::Result<End> {
    let channel: Channel = endpoint(&link.config, to)?
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
    // A spool that cannot be read now must not keep us from connecting: the
    // coordinator then sends its whole set, as to an agent without a cache.
    let revision = link.spool.revision().unwrap_or_else(|e| {
        loops::step_failed(Loop::Stream, &format!("reading the cached revision: {e}"));
        0
    });
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
        status: Some(heartbeat_now(link)),
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
    info!(region = %welcome.region, acked_seq = welcome.acked_seq, coordinator = %to, "connected to the coordinator");
    in_use.connected(to);
    let mut acks = Acks::default();
    // Everything after the coordinator's acknowledged sequence is (re)sent.
    let mut acked = match acks.accept(link, welcome.acked_seq).await {
        Some(up_to) => up_to,
        // Not to be believed: send everything the spool holds; the
        // coordinator drops what it already has by sequence number.
        None => match link.spool.oldest_seq() {
            Ok(Some(oldest)) => oldest - 1,
            Ok(None) => link.spool.durable_seq(),
            Err(e) => {
                loops::step_failed(Loop::Stream, &format!("reading the spool: {e}"));
                0
            }
        },
    };
    let mut cursor = acked;
    let batch = link.config.batch_size;
    let window = WINDOW_BATCHES * batch as u64;
    let mut heartbeat = tokio::time::interval(Duration::from_millis(u64::from(
        welcome.heartbeat_interval_ms.max(100),
    )));
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    // The spool's epoch this session has seen, and whether the cached
    // assignments missed a change while the spool could not store.
    let mut epoch = link.spool.epoch();
    let mut resync = false;

    loop {
        // Send while the window allows.
        while cursor.saturating_sub(acked) < window {
            let pending = match link.spool.pending(cursor, batch) {
                Ok(p) => p,
                Err(e) => {
                    loops::step_failed(Loop::Stream, &format!("reading results to send: {e}"));
                    break;
                }
            };
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
        if link.spool.epoch() != epoch {
            // Reopened after a failure: deletions that never reached the disk
            // are back; apply the acknowledgement again.
            epoch = link.spool.epoch();
            if acked > 0 {
                acks.accept(link, acked).await;
            }
        }
        // The cache missed a snapshot or an update (the spool failing, or the
        // change lost with its blocking task): a new session brings the whole set.
        if resync && link.spool.fault().is_none() {
            bail!(
                "re-syncing the cached assignments, which missed a change while the spool could not store"
            );
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
                        // Probing follows the coordinator even when the cache cannot.
                        let s = match off_runtime(&link.spool, s, |spool, s| spool.save_snapshot(s)).await {
                            Ok(s) => Some(s),
                            Err((e, s)) => {
                                loops::step_failed(Loop::Stream, &format!("caching the assignment snapshot: {e:#}"));
                                // Worth a fresh snapshot once the spool stores again (not
                                // for a set the spool refuses as invalid: it would be the same).
                                resync |= s.is_none() || link.spool.fault().is_some();
                                s
                            }
                        };
                        if let Some(s) = s {
                            link.runner.apply_snapshot(&s.assignments);
                            info!(assignments = s.assignments.len(), "assignment snapshot");
                        }
                        if let Err(e) = tokio::task::spawn_blocking(crate::memory::release_free_pages).await {
                            loops::step_failed(Loop::MemoryTrim, &e);
                        }
                    }
                    Some(CoordMsg::Update(u)) => {
                        let u = match off_runtime(&link.spool, u, |spool, u| spool.apply_update(u)).await {
                            Ok(u) => Some(u),
                            Err((e, u)) => {
                                loops::step_failed(Loop::Stream, &format!("caching an assignment update: {e:#}"));
                                // Worth a fresh snapshot once the spool stores again (not
                                // for a set the spool refuses as invalid: it would be the same).
                                resync |= u.is_none() || link.spool.fault().is_some();
                                u
                            }
                        };
                        if let Some(u) = u {
                            link.runner.apply_update(&u);
                        }
                    }
                    Some(CoordMsg::Ack(a)) => {
                        if let Some(up_to) = acks.accept(link, a.up_to_seq).await {
                            acked = acked.max(up_to);
                        }
                        if a.refused > 0 {
                            warn!(refused = a.refused, "the coordinator refused results (monitor no longer assigned here?)");
                        }
                        metrics::gauge!("portwatch_agent_spool_depth").set(link.spool.depth() as f64);
                    }
                    Some(CoordMsg::CheckNow(c)) => link.runner.check_now(&c.monitor_ids),
                    Some(CoordMsg::Drain(d)) => {
                        finish(link, &tx, &mut inbound, &mut cursor, &mut acked, &mut acks).await;
                        return Ok(End::Drain(Duration::from_millis(u64::from(d.reconnect_after_ms.max(100)))));
                    }
                    Some(CoordMsg::Welcome(_)) | None => {}
                }
            }
            () = link.spooled.notified() => {}
            _ = poll.tick() => {}
            _ = heartbeat.tick() => {
                let hb = heartbeat_now(link);
                tx.send(v1::AgentMessage { msg: Some(AgentMsg::Heartbeat(hb)) }).await.map_err(|_| anyhow!("stream closed"))?;
            }
            () = stop.cancelled() => {
                finish(link, &tx, &mut inbound, &mut cursor, &mut acked, &mut acks).await;
                return Ok(End::Stopped);
            }
        }
    }
}

/// What the agent tells the coordinator about itself.
fn heartbeat_now(link: &Link) -> v1::Heartbeat {
    v1::Heartbeat {
        sent_at: Some(portwatch_proto::time::to_timestamp(
            std::time::SystemTime::now(),
        )),
        in_flight: link.runner.in_flight(),
        spool_depth: link.spool.depth(),
        dropped_total: link.spool.dropped_total(),
        schedule_lag_p99_us: link.runner.lag_p99_us(),
        assignments: u32::try_from(link.runner.assignments()).unwrap_or(u32::MAX),
        spool_error: link.spool.fault().unwrap_or_default(),
        unstored_total: link.spool.unstored_total(),
        loop_errors_total: loops::errors_total(),
    }
}

/// Applies the coordinator's acknowledgements to the spool.
#[derive(Default)]
struct Acks {
    /// One warning per session for acknowledgements beyond what we issued;
    /// every one is counted.
    warned_beyond: bool,
}

impl Acks {
    /// Deletes what `up_to` acknowledges and returns it, or None when it is
    /// beyond the last number this agent issued: the coordinator cannot hold
    /// results we never sent, so it is wrong about us (buggy, restored from
    /// an old backup, or not ours). Then nothing is deleted and the counter
    /// does not move (the coordinator must not be able to exhaust it); it is
    /// logged and counted, and the agent goes on. A spool that cannot apply
    /// it now is a failing step; later acknowledgements cover it.
    async fn accept(&mut self, link: &Link, up_to: u64) -> Option<u64> {
        let last_seq = link.spool.last_seq();
        if up_to > last_seq {
            metrics::counter!("portwatch_agent_acks_ignored_total").increment(1);
            if !self.warned_beyond {
                self.warned_beyond = true;
                warn!(
                    up_to,
                    last_seq,
                    "the coordinator acknowledged sequence numbers this agent never issued; ignored \
                     (if this agent's data dir was replaced under a configured agent_id, give it a new agent_id)"
                );
            } else {
                debug!(
                    up_to,
                    last_seq, "acknowledgement beyond the last issued number ignored"
                );
            }
            return None;
        }
        match off_runtime(&link.spool, up_to, |spool, up_to| {
            spool.ack(*up_to).map(drop)
        })
        .await
        {
            Ok(_) => {}
            Err((e, _)) => {
                loops::step_failed(Loop::Stream, &format!("applying an acknowledgement: {e:#}"))
            }
        }
        Some(up_to)
    }
}

/// Sends whatever is left in the spool and waits (bounded) for its acks.
async fn finish(
    link: &Link,
    tx: &mpsc::Sender<v1::AgentMessage>,
    inbound: &mut tonic::Streaming<v1::CoordinatorMessage>,
    cursor: &mut u64,
    acked: &mut u64,
    acks: &mut Acks,
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
                if let Some(up_to) = acks.accept(link, a.up_to_seq).await {
                    *acked = (*acked).max(up_to);
                }
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
/// workers) and hands `value` back, also with the error when the call fails
/// (not when the blocking task itself died with it: then it is gone).
async fn off_runtime<T, F>(
    spool: &Spool,
    value: T,
    call: F,
) -> Result<T, (anyhow::Error, Option<T>)>
where
    T: Send + 'static,
    F: FnOnce(&Spool, &T) -> Result<(), crate::spool::SpoolError> + Send + 'static,
{
    let spool = spool.clone();
    match tokio::task::spawn_blocking(move || {
        let outcome = call(&spool, &value);
        (outcome, value)
    })
    .await
    {
        Ok((Ok(()), value)) => Ok(value),
        Ok((Err(e), value)) => Err((anyhow::Error::from(e), Some(value))),
        Err(e) => Err((anyhow!("spool task: {e}"), None)),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}
