//! `AgentService.Connect`: one bidirectional stream per probe agent.
//!
//! An agent is untrusted input: a private region's agent runs on a tenant's own
//! machine, so everything it sends is checked here, exactly like an admin
//! request. Guarantees:
//! - the agent's region is the one its token is bound to; whatever a result
//!   says about its region is overwritten;
//! - an agent id belongs to the region that first used it: another region's
//!   token cannot speak for it (and so cannot touch its acknowledged sequence);
//! - a sequence number beyond what the agent can have issued is refused, never
//!   acknowledged;
//! - a batch is acknowledged only after it is durable (the store flushes before
//!   `ingest` returns), and so is the sequence number a `Welcome` carries (a
//!   flush after reading it), so an agent never deletes a result we could lose;
//! - replays are dropped by (agent, sequence number);
//! - results for monitors not checked from this region, results stamped in the
//!   future (beyond the clock-skew allowance) or from before their monitor
//!   existed, and malformed ones are refused, counted, and still acknowledged
//!   (so they leave the agent's spool) but never stored; strings are bounded;
//! - a protocol error ends the stream with its status and a message saying why;
//!   a revoked token ends it within a second; a bug in handling one agent ends
//!   that agent's stream (INTERNAL), never the coordinator.
//! - while the store takes no writes, nothing is acknowledged: the agent is
//!   asked to drain and come back in a few seconds, keeping its results.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures_util::FutureExt;
use portwatch_check::Outcome;
use portwatch_proto::convert::OutcomeFromWire;
use portwatch_proto::time::{from_timestamp, to_timestamp};
use portwatch_proto::v1;
use portwatch_proto::v1::agent_message::Msg as AgentMsg;
use portwatch_proto::v1::coordinator_message::Msg as CoordMsg;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::auth::{AgentGrant, Auth};
use crate::hub::Hub;
use crate::store::{Ingest, Store, StoreError};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most results accepted in one batch.
pub const MAX_BATCH: usize = 10_000;
/// Longest `detail` kept from a result, in characters; longer is cut.
pub const MAX_DETAIL_CHARS: usize = 1024;
/// Longest `detail` kept from one address attempt, in characters.
const MAX_ATTEMPT_DETAIL_CHARS: usize = 256;
/// Most address attempts kept from one result.
const MAX_ATTEMPTS: usize = 64;
/// Longest address ("ip:port"; the longest IPv6 form with a port is 47).
const MAX_ADDRESS_LEN: usize = 64;
/// Longest timing an honest check reports: the longest deadline (10 s), with room.
const MAX_TIMING_US: u64 = 60_000_000;
/// Sequence numbers an agent can issue per second, with a wide margin (one
/// agent makes at most tens of thousands of checks a second). A batch may
/// reach this far past what the agent said it had issued when it said hello.
const MAX_SEQ_PER_SECOND: u64 = 1_000_000;

/// The agent stream service.
pub struct AgentApi {
    hub: Arc<Hub>,
    auth: Auth,
}

impl AgentApi {
    pub fn new(hub: Arc<Hub>, auth: Auth) -> AgentApi {
        AgentApi { hub, auth }
    }
}

/// Checks an agent id: 1..=128 chars of `[A-Za-z0-9._:-]`.
pub fn valid_agent_id(id: &str) -> Result<(), Status> {
    if id.is_empty() || id.len() > 128 {
        return Err(Status::invalid_argument(
            "hello.agent_id: must be 1-128 characters",
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(Status::invalid_argument(format!(
            "hello.agent_id: invalid character {c:?}; use letters, digits, '.', '_', '-', ':'"
        )));
    }
    Ok(())
}

/// How soon an agent sent away while the store takes no writes comes back.
const STORE_DOWN_RECONNECT_MS: u32 = 2_000;

/// After a drain, reads (and drops) what the agent still sends until it goes
/// quiet, at most [`LINGER_MAX`]: an agent that drains first sends what it has
/// and then waits for the stream to end; ending it under its feet would be an
/// error to it, and its reconnect backoff would grow.
async fn linger(inbound: &mut Streaming<v1::AgentMessage>) {
    let deadline = tokio::time::Instant::now() + LINGER_MAX;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(LINGER_QUIET, inbound.message()).await {
            Ok(Ok(Some(_))) => {}
            _ => return,
        }
    }
}

/// How long a drained agent is given to send what it has.
const LINGER_MAX: Duration = Duration::from_secs(3);
/// Silence that shows a drained agent has sent everything.
const LINGER_QUIET: Duration = Duration::from_millis(300);

/// The drain that sends an agent away while the store takes no writes.
fn store_down(store: &Store) -> v1::Drain {
    v1::Drain {
        reason: format!(
            "the coordinator's store takes no writes ({}); keep results in the spool and \
             reconnect",
            store.state().cause
        ),
        reconnect_after_ms: STORE_DOWN_RECONNECT_MS,
    }
}

fn msg(m: CoordMsg) -> v1::CoordinatorMessage {
    v1::CoordinatorMessage { msg: Some(m) }
}

/// What one session has promised about its sequence numbers.
struct SeqLimit {
    /// What the agent had issued when it said hello (or what we had
    /// acknowledged, if more).
    base: u64,
    since: Instant,
}

impl SeqLimit {
    /// The highest sequence number this agent can have issued by now.
    fn ceiling(&self) -> u64 {
        let secs = self.since.elapsed().as_secs().saturating_add(1);
        self.base
            .saturating_add(MAX_SEQ_PER_SECOND.saturating_mul(secs))
    }
}

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for AgentApi {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let grant = self.auth.agent(request.metadata())?;
        if !self.hub.is_active() {
            return Err(self.hub.standby_status());
        }
        let region = grant.region.clone();
        let store = self.hub.store();
        let reg = store
            .get_region(&region)
            .map_err(StoreError::into_status)?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "region {region:?} of this token no longer exists"
                ))
            })?;
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
            Ok(Ok(Some(v1::AgentMessage {
                msg: Some(AgentMsg::Hello(h)),
            }))) => h,
            Ok(Ok(Some(_))) => {
                return Err(Status::invalid_argument(
                    "hello: the first message must be a Hello",
                ));
            }
            Ok(Ok(None)) => return Err(Status::cancelled("stream closed before hello")),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(Status::deadline_exceeded("hello: none within 10 s")),
        };
        valid_agent_id(&hello.agent_id)?;
        let agent_id = hello.agent_id.clone();
        // The id belongs to the region that first used it: a token of another
        // region (another tenant's, perhaps) must not speak for this agent.
        if let Some(known) = store
            .get_agent(&agent_id)
            .map_err(|e| Status::internal(e.to_string()))?
            && known.region != region
        {
            warn!(%region, agent_id, owner_region = %known.region, "refused an agent id registered to another region");
            metrics::counter!("portwatch_agent_hello_refused_total", "reason" => "agent id of another region").increment(1);
            return Err(Status::permission_denied(format!(
                "hello.agent_id: {agent_id:?} is registered to another region; \
                 an agent keeps its id for life (start it with a new data_dir for a new region)"
            )));
        }
        let acked_seq = store
            .acked_seq(&agent_id)
            .map_err(StoreError::into_status)?;
        // The agent deletes what the Welcome acknowledges, so it must be
        // durable: what was read before a flush is durable once it returns. A
        // store that cannot flush acknowledges nothing (and drains it below).
        let acked_seq = match store.flush().await {
            Ok(()) => acked_seq,
            Err(_) => 0,
        };

        let (tx, rx) = mpsc::unbounded_channel();
        let settings = self.hub.settings();
        let _ = tx.send(msg(CoordMsg::Welcome(v1::Welcome {
            region: region.clone(),
            acked_seq,
            heartbeat_interval_ms: u32::try_from(settings.heartbeat_interval.as_millis())
                .unwrap_or(u32::MAX),
            heartbeat_timeout_ms: u32::try_from(settings.heartbeat_timeout.as_millis())
                .unwrap_or(u32::MAX),
            allow_private_targets: !reg.owner_tenant_id.is_empty(),
        })));
        if !store.is_writable() {
            // Nothing it sends could be stored: it keeps its results and its
            // cached assignments, and comes back soon (a drain, not an error,
            // so its reconnect backoff does not grow while the disk is full).
            let _ = tx.send(msg(CoordMsg::Drain(store_down(store))));
            tokio::spawn(async move {
                linger(&mut inbound).await;
                drop(tx);
            });
            let out = UnboundedReceiverStream::new(rx).map(Ok::<_, Status>);
            return Ok(Response::new(Box::pin(out)));
        }
        let now = to_timestamp(SystemTime::now());
        let status = hello.status.clone().unwrap_or_default();
        let info = v1::Agent {
            agent_id: agent_id.clone(),
            region: region.clone(),
            version: hello.version.chars().take(64).collect(),
            hostname: hello.hostname.chars().take(255).collect(),
            online: true,
            connected_at: Some(now),
            last_seen: Some(now),
            acked_seq,
            token_id: grant.token_id.clone(),
            // As the agent reports itself on connecting; later heartbeats update it.
            spool_depth: status.spool_depth,
            dropped_total: status.dropped_total,
            spool_error: status.spool_error.chars().take(512).collect(),
            unstored_total: status.unstored_total,
            loop_errors_total: status.loop_errors_total,
            ..Default::default()
        };
        store.put_agent(&info).map_err(StoreError::into_status)?;
        let session = self.hub.agent_connected(&region, info, tx.clone());
        if let Some(status) = &hello.status {
            self.hub.agent_seen(&region, session, Some(status));
        }
        info!(%region, agent_id, session, version = %hello.version, "agent connected");
        metrics::counter!("portwatch_agent_connections_total", "region" => region.clone())
            .increment(1);

        let hub = self.hub.clone();
        let auth = self.auth.clone();
        let limit = SeqLimit {
            base: hello.last_seq.max(acked_seq),
            since: Instant::now(),
        };
        // The stream's last word: why it ended, when it ended on an error.
        let (end_tx, end_rx) = oneshot::channel::<Status>();
        let span = info_span!("agent", %region, agent_id = %agent_id, session);
        tokio::spawn(
            async move {
                let served = std::panic::AssertUnwindSafe(serve_session(
                    &hub,
                    &auth,
                    &grant,
                    &agent_id,
                    session,
                    limit,
                    &mut inbound,
                    &tx,
                ))
                .catch_unwind()
                .await;
                let outcome = served.unwrap_or_else(|_| {
                    error!("handling this agent's stream panicked; ending it");
                    metrics::counter!("portwatch_agent_stream_panics_total").increment(1);
                    Err(Status::internal(
                        "the coordinator failed handling this stream; see its log",
                    ))
                });
                match outcome {
                    Ok(()) => info!("agent stream ended"),
                    Err(status) => {
                        warn!(code = ?status.code(), error = %status.message(), "agent stream ended with an error");
                        metrics::counter!("portwatch_agent_stream_errors_total", "code" => format!("{:?}", status.code())).increment(1);
                        let _ = end_tx.send(status);
                    }
                }
                let region = &grant.region;
                hub.agent_disconnected(region, session);
                drop(tx);
                if let Ok(Some(mut a)) = hub.store().get_agent(&agent_id) {
                    a.online = false;
                    a.last_seen = Some(to_timestamp(SystemTime::now()));
                    let _ = hub.store().put_agent(&a);
                }
            }
            .instrument(span),
        );
        let last_word = futures_util::stream::once(end_rx).filter_map(|r| r.ok().map(Err));
        let out = UnboundedReceiverStream::new(rx)
            .map(Ok::<_, Status>)
            .chain(last_word);
        Ok(Response::new(Box::pin(out)))
    }
}

/// Reads the agent's messages until the stream ends, the session is dropped
/// (heartbeat timeout, or the same agent reconnected), or its token is revoked.
#[allow(clippy::too_many_arguments)]
async fn serve_session(
    hub: &Arc<Hub>,
    auth: &Auth,
    grant: &AgentGrant,
    agent_id: &str,
    session: u64,
    limit: SeqLimit,
    inbound: &mut Streaming<v1::AgentMessage>,
    tx: &mpsc::UnboundedSender<v1::CoordinatorMessage>,
) -> Result<(), Status> {
    let region = grant.region.as_str();
    let mut alive_check = tokio::time::interval(Duration::from_millis(500));
    let revoked = auth.revoked(&grant.hash);
    tokio::pin!(revoked);
    loop {
        let next = tokio::select! {
            m = inbound.message() => m?,
            status = &mut revoked => {
                info!(token_id = %grant.token_id, "agent token revoked; ending its stream");
                return Err(status);
            }
            _ = alive_check.tick() => {
                if !hub.session_alive(region, session) {
                    debug!("session dropped by the coordinator");
                    return Ok(());
                }
                continue;
            }
        };
        let Some(message) = next else { return Ok(()) };
        hub.agent_seen(region, session, None);
        match message.msg {
            Some(AgentMsg::Results(batch)) => {
                let ack = match ingest_batch(hub, region, agent_id, session, &limit, batch).await {
                    Ok(ack) => ack,
                    Err(_) if !hub.store().is_writable() => {
                        // Not acknowledged: the batch stays in the agent's spool.
                        let _ = tx.send(msg(CoordMsg::Drain(store_down(hub.store()))));
                        linger(inbound).await;
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                if tx.send(msg(CoordMsg::Ack(ack))).is_err() {
                    return Ok(());
                }
            }
            Some(AgentMsg::Heartbeat(hb)) => hub.agent_seen(region, session, Some(&hb)),
            Some(AgentMsg::Hello(_)) => {
                return Err(Status::invalid_argument(
                    "hello: sent twice on one stream; a Hello comes only first",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "msg: an agent message with nothing in it",
                ));
            }
        }
    }
}

/// Cuts `s` to at most `max` characters (at a character boundary).
fn bound_text(s: &mut String, max: usize) {
    if let Some((cut, _)) = s.char_indices().nth(max) {
        s.truncate(cut);
    }
}

/// Why a result is refused (a metrics label), or None when it is acceptable.
/// Acceptable results have their strings bounded on the way.
fn refusal(
    hub: &Hub,
    region: &str,
    r: Option<&mut v1::CheckResult>,
    now: SystemTime,
) -> Option<&'static str> {
    let Some(r) = r else {
        return Some("result missing");
    };
    if Outcome::from_wire(r.outcome, "outcome").is_err() {
        return Some("bad outcome");
    }
    let Some(at) = r.checked_at.as_ref().and_then(from_timestamp) else {
        return Some("bad checked_at");
    };
    if r.address.len() > MAX_ADDRESS_LEN
        || r.attempts.iter().any(|a| a.address.len() > MAX_ADDRESS_LEN)
    {
        return Some("bad address");
    }
    if [
        r.dns_us,
        r.connect_us,
        r.total_us,
        r.tcp_rtt_us.unwrap_or(0),
    ]
    .iter()
    .chain(r.attempts.iter().map(|a| &a.connect_us))
    .any(|us| *us > MAX_TIMING_US)
    {
        return Some("bad timing");
    }
    let Some(created) = hub.monitor_created_in(&r.monitor_id, region) else {
        return Some("not monitored from this region");
    };
    let skew = hub.settings().clock_skew_allowance;
    if at > now + skew {
        return Some("from the future");
    }
    if at + skew < created {
        return Some("before its monitor existed");
    }
    bound_text(&mut r.detail, MAX_DETAIL_CHARS);
    r.attempts.truncate(MAX_ATTEMPTS);
    for a in &mut r.attempts {
        bound_text(&mut a.detail, MAX_ATTEMPT_DETAIL_CHARS);
    }
    None
}

/// Stores one batch durably and builds its acknowledgement.
async fn ingest_batch(
    hub: &Arc<Hub>,
    region: &str,
    agent_id: &str,
    session: u64,
    limit: &SeqLimit,
    batch: v1::ResultBatch,
) -> Result<v1::Ack, Status> {
    if batch.results.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "results: {} in one batch; at most {MAX_BATCH}",
            batch.results.len()
        )));
    }
    let ceiling = limit.ceiling();
    let mut up_to = 0;
    let mut refused = 0u32;
    let now = SystemTime::now();
    let mut accepted: Vec<(u64, v1::CheckResult)> = Vec::with_capacity(batch.results.len());
    for mut sr in batch.results {
        if sr.seq == 0 {
            return Err(Status::invalid_argument("results.seq: must be at least 1"));
        }
        if sr.seq > ceiling {
            // Acknowledging it would move this agent's sequence past anything it
            // will ever send: every later result would look like a replay.
            metrics::counter!("portwatch_results_refused_total", "region" => region.to_string(), "reason" => "sequence beyond issued").increment(1);
            return Err(Status::invalid_argument(format!(
                "results.seq: {} is beyond anything this agent can have issued \
                 (it had issued {} when it said hello); refused, not acknowledged",
                sr.seq, limit.base
            )));
        }
        up_to = up_to.max(sr.seq);
        match refusal(hub, region, sr.result.as_mut(), now) {
            Some(why) => {
                refused += 1;
                metrics::counter!("portwatch_results_refused_total", "region" => region.to_string(), "reason" => why).increment(1);
                debug!(reason = why, seq = sr.seq, "result refused");
            }
            None => {
                if let Some(mut r) = sr.result {
                    r.region = region.to_string();
                    accepted.push((sr.seq, r));
                }
            }
        }
    }
    let items: Vec<Ingest> = accepted
        .iter()
        .map(|(seq, r)| Ingest {
            seq: *seq,
            result: r,
        })
        .collect();
    let started = Instant::now();
    let out = hub
        .store()
        .ingest(agent_id, region, &items, up_to)
        .await
        .map_err(StoreError::into_status)?;
    metrics::histogram!("portwatch_store_flush_seconds").record(started.elapsed().as_secs_f64());
    metrics::counter!("portwatch_results_ingested_total", "region" => region.to_string())
        .increment(out.stored as u64);
    metrics::counter!("portwatch_results_duplicate_total").increment(out.duplicates as u64);
    let latest: Vec<v1::CheckResult> = out
        .became_latest
        .iter()
        .filter_map(|i| accepted.get(*i).map(|(_, r)| r.clone()))
        .collect();
    hub.batch_stored(region, session, out.acked_seq, u64::from(refused));
    hub.results_stored(latest)
        .await
        .map_err(StoreError::into_status)?;
    Ok(v1::Ack {
        up_to_seq: out.acked_seq,
        refused,
    })
}

#[cfg(test)]
mod tests;
