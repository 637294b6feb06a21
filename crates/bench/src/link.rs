//! A lean agent for the coordinator figures: the real `AgentService.Connect`
//! stream over TLS, with none of an agent's checking, only its sending.
//!
//! Why not the harness's `FakeAgent`: it applies every message by hand and
//! decodes with tonic's default 4 MiB message limit, which a 100k-monitor
//! snapshot exceeds. This one keeps a window of result batches in flight
//! (pipelined: it never waits for one ack before sending the next batch, as the
//! real agent's stream does not either), timestamps every ack as it arrives, and
//! sends heartbeats so that a slow phase never looks like a dead agent.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use portwatch_e2e::{Bearer, Coordinator};
use portwatch_proto::v1;
use portwatch_proto::v1::agent_message::Msg as AgentMsg;
use portwatch_proto::v1::agent_service_client::AgentServiceClient;
use portwatch_proto::v1::coordinator_message::Msg as CoordMsg;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// The decode limit of a [`Link`]: room for any snapshot the figures build.
pub const BIG_MESSAGES: usize = 1 << 30;

/// One connected agent stream.
pub struct Link {
    pub tx: mpsc::Sender<v1::AgentMessage>,
    /// `(up_to_seq, when the ack arrived)`.
    pub acks: mpsc::UnboundedReceiver<(u64, Instant)>,
    /// Encoded size of the first snapshot message.
    pub snapshot_bytes: usize,
    pub next_seq: u64,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Link {
    /// Connects, says hello and waits (bounded) for the welcome and the snapshot.
    /// `max_decode`: the client's message size limit (None: tonic's default).
    pub async fn connect(
        coord: &Coordinator,
        token: &str,
        agent_id: &str,
        max_decode: Option<usize>,
    ) -> anyhow::Result<Link> {
        let mut client =
            AgentServiceClient::with_interceptor(coord.channel().await, Bearer::new(token));
        if let Some(limit) = max_decode {
            client = client.max_decoding_message_size(limit);
        }
        let (tx, rx) = mpsc::channel::<v1::AgentMessage>(1024);
        tx.send(v1::AgentMessage {
            msg: Some(AgentMsg::Hello(v1::Hello {
                agent_id: agent_id.into(),
                version: "portwatch-bench".into(),
                capabilities: vec![],
                assignment_revision: 0,
                last_seq: 0,
                hostname: "bench".into(),
                status: None,
            })),
        })
        .await
        .context("queueing hello")?;
        let mut inbound = client
            .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("opening the agent stream")?
            .into_inner();

        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        let mut welcome = None;
        let mut snapshot = None;
        while welcome.is_none() || snapshot.is_none() {
            let m = tokio::time::timeout_at(deadline, inbound.message())
                .await
                .context("no welcome and snapshot within 120 s")?
                .context("reading the agent stream")?
                .context("the coordinator closed the stream")?;
            match m.msg {
                Some(CoordMsg::Welcome(w)) => welcome = Some(w),
                Some(CoordMsg::Snapshot(s)) => snapshot = Some(s),
                _ => {}
            }
        }
        let (Some(welcome), Some(snapshot)) = (welcome, snapshot) else {
            bail!("no welcome or no snapshot");
        };
        let snapshot_bytes = v1::CoordinatorMessage {
            msg: Some(CoordMsg::Snapshot(snapshot.clone())),
        }
        .encoded_len();

        let (ack_tx, acks) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Ok(Some(m)) = inbound.message().await {
                if let Some(CoordMsg::Ack(a)) = m.msg
                    && ack_tx.send((a.up_to_seq, Instant::now())).is_err()
                {
                    return;
                }
            }
        });
        let beat = tx.downgrade();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let Some(tx) = beat.upgrade() else { return };
                let hb = v1::AgentMessage {
                    msg: Some(AgentMsg::Heartbeat(v1::Heartbeat::default())),
                };
                if tx.send(hb).await.is_err() {
                    return;
                }
            }
        });
        let next_seq = welcome.acked_seq + 1;
        Ok(Link {
            tx,
            acks,
            snapshot_bytes,
            next_seq,
            tasks: vec![reader, heartbeat],
        })
    }

    /// Sends what `plan` says for `monitors`, pipelined. Every monitor in a
    /// batch is distinct when `monitors.len() >= batch`, so each result becomes
    /// its region's latest and consensus runs on it.
    pub async fn pump(&mut self, monitors: &[String], plan: &Plan) -> anyhow::Result<Pumped> {
        let Plan {
            start,
            total,
            batch,
            window,
            pace,
            deadline,
        } = *plan;
        if monitors.is_empty() || batch == 0 {
            bail!("nothing to send");
        }
        let mut out = Pumped::default();
        let mut unacked: VecDeque<(u64, Instant, u64)> = VecDeque::new();
        let mut sent = 0u64;
        let mut cursor = start;
        let t0 = Instant::now();
        let mut last_ack = t0;
        loop {
            while unacked.len() < window && sent < total && Instant::now() < deadline {
                if let Some(rate) = pace.filter(|r| *r > 0.0) {
                    let due = t0 + Duration::from_secs_f64(sent as f64 / rate);
                    if due > Instant::now() {
                        // Wait for the pace, but keep reading acks meanwhile.
                        if unacked.is_empty() {
                            tokio::time::sleep_until(due.into()).await;
                        } else {
                            break;
                        }
                    }
                }
                let n = (total - sent).min(batch as u64) as usize;
                let at = SystemTime::now();
                let mut results = Vec::with_capacity(n);
                for _ in 0..n {
                    let id = &monitors[cursor % monitors.len()];
                    cursor += 1;
                    results.push(v1::SequencedResult {
                        seq: self.next_seq,
                        result: Some(portwatch_e2e::result(id, v1::Outcome::Ok, at)),
                    });
                    self.next_seq += 1;
                }
                let last = self.next_seq - 1;
                self.tx
                    .send(v1::AgentMessage {
                        msg: Some(AgentMsg::Results(v1::ResultBatch { results })),
                    })
                    .await
                    .context("the agent stream closed")?;
                unacked.push_back((last, Instant::now(), n as u64));
                sent += n as u64;
            }
            if unacked.is_empty() {
                break;
            }
            let wait = match pace {
                // Paced: come back when the next batch is due, ack or not.
                Some(rate) if rate > 0.0 && sent < total => {
                    let due = t0 + Duration::from_secs_f64(sent as f64 / rate);
                    due.saturating_duration_since(Instant::now())
                        .max(Duration::from_micros(100))
                }
                _ => Duration::from_secs(60),
            };
            let (up_to, at) = match tokio::time::timeout(wait, self.acks.recv()).await {
                Ok(ack) => ack.context("the agent stream ended")?,
                Err(_) if wait < Duration::from_secs(60) => continue,
                Err(_) => bail!("no ack within 60 s"),
            };
            while let Some(&(last, sent_at, n)) = unacked.front() {
                if last > up_to {
                    break;
                }
                unacked.pop_front();
                out.acked += n;
                out.latencies_us.push(
                    u64::try_from(at.duration_since(sent_at).as_micros()).unwrap_or(u64::MAX),
                );
                last_ack = at;
            }
        }
        out.first_send = Some(t0);
        out.last_ack = Some(last_ack);
        Ok(out)
    }
}

/// What one [`Link::pump`] sends.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Index of the first monitor (round-robin from there).
    pub start: usize,
    /// Results to send.
    pub total: u64,
    /// Results per batch, each batch checked "now".
    pub batch: usize,
    /// Batches unacknowledged at most.
    pub window: usize,
    /// At most this many results per second (None: as fast as the window allows).
    pub pace: Option<f64>,
    /// Stop sending at this instant.
    pub deadline: Instant,
}

/// What one [`Link::pump`] achieved.
#[derive(Debug, Default)]
pub struct Pumped {
    /// Results acknowledged (durable at the coordinator).
    pub acked: u64,
    /// Per batch: send to ack, µs.
    pub latencies_us: Vec<u64>,
    pub first_send: Option<Instant>,
    pub last_ack: Option<Instant>,
}
