//! `AgentService.Connect`: one bidirectional stream per probe agent.
//!
//! Guarantees:
//! - the agent's region is the one its token is bound to; whatever a result
//!   says about its region is overwritten;
//! - a batch is acknowledged only after it is durable (the store flushes before
//!   `ingest` returns), and so is the sequence number a `Welcome` carries (a
//!   flush after reading it), so an agent never deletes a result we could lose;
//! - replays are dropped by (agent, sequence number);
//! - results for monitors not checked from this region are refused, counted,
//!   and still acknowledged (so they leave the agent's spool) but never stored;
//! - while the store takes no writes, nothing is acknowledged: the agent is
//!   asked to drain and come back in a few seconds, keeping its results.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use portwatch_check::Outcome;
use portwatch_proto::time::{from_timestamp, to_timestamp};
use portwatch_proto::v1;
use portwatch_proto::v1::agent_message::Msg as AgentMsg;
use portwatch_proto::v1::coordinator_message::Msg as CoordMsg;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::auth::Auth;
use crate::hub::Hub;
use crate::store::{Ingest, Store, StoreError};

/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Most results accepted in one batch.
pub const MAX_BATCH: usize = 10_000;

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

#[tonic::async_trait]
impl v1::agent_service_server::AgentService for AgentApi {
    type ConnectStream = Pin<Box<dyn Stream<Item = Result<v1::CoordinatorMessage, Status>> + Send>>;

    async fn connect(
        &self,
        request: Request<Streaming<v1::AgentMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let region = self.auth.agent_region(request.metadata())?;
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
        let now = to_timestamp(std::time::SystemTime::now());
        let info = v1::Agent {
            agent_id: agent_id.clone(),
            region: region.clone(),
            version: hello.version.chars().take(64).collect(),
            hostname: hello.hostname.chars().take(255).collect(),
            online: true,
            connected_at: Some(now),
            last_seen: Some(now),
            assignments: 0,
            acked_seq,
            spool_depth: 0,
            dropped_total: 0,
        };
        store.put_agent(&info).map_err(StoreError::into_status)?;
        let session = self.hub.agent_connected(&region, info, tx.clone());
        info!(%region, agent_id, session, version = %hello.version, "agent connected");
        metrics::counter!("portwatch_agent_connections_total", "region" => region.clone())
            .increment(1);

        let hub = self.hub.clone();
        let span = info_span!("agent", %region, agent_id = %agent_id, session);
        tokio::spawn(
            async move {
                let outcome =
                    serve_session(&hub, &region, &agent_id, session, &mut inbound, tx).await;
                match outcome {
                    Ok(()) => info!("agent stream ended"),
                    Err(e) => warn!(error = %e, "agent stream failed"),
                }
                hub.agent_disconnected(&region, session);
                if let Ok(Some(mut a)) = hub.store().get_agent(&agent_id) {
                    a.online = false;
                    a.last_seen = Some(to_timestamp(std::time::SystemTime::now()));
                    let _ = hub.store().put_agent(&a);
                }
            }
            .instrument(span),
        );
        let out = UnboundedReceiverStream::new(rx).map(Ok::<_, Status>);
        Ok(Response::new(Box::pin(out)))
    }
}

/// Reads the agent's messages until the stream ends or the session is dropped
/// (heartbeat timeout, or the same agent reconnected).
async fn serve_session(
    hub: &Arc<Hub>,
    region: &str,
    agent_id: &str,
    session: u64,
    inbound: &mut Streaming<v1::AgentMessage>,
    tx: mpsc::UnboundedSender<v1::CoordinatorMessage>,
) -> Result<(), Status> {
    let mut alive_check = tokio::time::interval(Duration::from_millis(500));
    loop {
        let next = tokio::select! {
            m = inbound.message() => m?,
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
                let ack = match ingest_batch(hub, region, agent_id, batch).await {
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
                return Err(Status::invalid_argument("hello: sent twice on one stream"));
            }
            None => return Err(Status::invalid_argument("msg: empty agent message")),
        }
    }
}

/// Why a result was refused, or None when it is acceptable.
fn refusal(hub: &Hub, region: &str, r: Option<&v1::CheckResult>) -> Option<&'static str> {
    let Some(r) = r else {
        return Some("result missing");
    };
    if Outcome::from_wire(r.outcome, "outcome").is_err() {
        return Some("bad outcome");
    }
    if r.checked_at.as_ref().and_then(from_timestamp).is_none() {
        return Some("bad checked_at");
    }
    if !hub.monitored_in(&r.monitor_id, region) {
        return Some("not monitored from this region");
    }
    None
}

/// Stores one batch durably and builds its acknowledgement.
async fn ingest_batch(
    hub: &Arc<Hub>,
    region: &str,
    agent_id: &str,
    batch: v1::ResultBatch,
) -> Result<v1::Ack, Status> {
    if batch.results.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "results: {} in one batch; at most {MAX_BATCH}",
            batch.results.len()
        )));
    }
    let mut up_to = 0;
    let mut refused = 0u32;
    let mut accepted: Vec<(u64, v1::CheckResult)> = Vec::with_capacity(batch.results.len());
    for sr in batch.results {
        if sr.seq == 0 {
            return Err(Status::invalid_argument("results.seq: must be at least 1"));
        }
        up_to = up_to.max(sr.seq);
        match refusal(hub, region, sr.result.as_ref()) {
            Some(why) => {
                refused += 1;
                metrics::counter!("portwatch_results_refused_total", "region" => region.to_string(), "reason" => why).increment(1);
                hub.count_refused();
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
    let started = std::time::Instant::now();
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
    hub.results_stored(latest)
        .await
        .map_err(StoreError::into_status)?;
    Ok(v1::Ack {
        up_to_seq: out.acked_seq,
        refused,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_ids_are_checked() {
        assert!(valid_agent_id("eu-west-1.probe_01:a").is_ok());
        assert!(valid_agent_id("").is_err());
        assert!(valid_agent_id(&"a".repeat(129)).is_err());
        let e = valid_agent_id("bad id").unwrap_err();
        assert!(e.message().starts_with("hello.agent_id"), "{}", e.message());
    }
}
