//! The live event stream (`WatchEvents`). Subscribed at the call, filtered
//! per caller: a tenant sees its own incidents and region changes only; probe
//! region changes are the operator's. A receiver that falls behind skips
//! what it missed; a revoked token's stream ends within a second.

use portwatch_proto::v1;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{AdminApi, Call, EventStream, Scope, internal};
use crate::auth::Caller;
use crate::store::Store;

/// Who may see which live events.
struct EventFilter {
    /// `None`: every tenant (the operator without a tenant_id).
    tenant: Option<String>,
    monitor: Option<String>,
    /// Probe-region changes are the operator's business only.
    probe_regions: bool,
}

impl EventFilter {
    fn admit(&self, store: &Store, e: v1::Event) -> Option<Result<v1::Event, Status>> {
        use v1::event::Kind;
        let tenant_ok = |t: &str| self.tenant.as_deref().is_none_or(|want| want == t);
        let monitor_ok = |m: &str| self.monitor.as_deref().is_none_or(|want| want == m);
        let keep = match &e.kind {
            Some(
                Kind::IncidentOpened(i)
                | Kind::IncidentClosed(i)
                | Kind::IncidentFlapping(i)
                | Kind::IncidentAcknowledged(i),
            ) => tenant_ok(&i.tenant_id) && monitor_ok(&i.monitor_id),
            Some(Kind::RegionState(c)) => {
                monitor_ok(&c.monitor_id)
                    && match &self.tenant {
                        None => true,
                        // The event names only the monitor; its owner decides.
                        Some(t) => match store.get_monitor(&c.monitor_id) {
                            Ok(Some(m)) => &m.tenant_id == t,
                            Ok(None) => false,
                            Err(err) => return Some(Err(internal(err))),
                        },
                    }
            }
            Some(Kind::ProbeRegion(_)) => self.probe_regions,
            None => false,
        };
        keep.then_some(Ok(e))
    }
}

impl AdminApi {
    pub(super) async fn watch_events(
        &self,
        request: Request<v1::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        // Scoped below: the operator may watch every tenant at once.
        let Call {
            caller,
            token_hash: hash,
            ..
        } = self.begin(&request, Scope::Anyone)?;
        let req = request.into_inner();
        let filter = if caller == Caller::Operator
            && req.tenant_id.is_empty()
            && req.monitor_id.is_empty()
        {
            EventFilter {
                tenant: None,
                monitor: None,
                probe_regions: true,
            }
        } else {
            let tenant_id = self.tenant_scope(&caller, &req.tenant_id)?;
            let monitor = if req.monitor_id.is_empty() {
                None
            } else {
                Some(
                    self.owned_monitor(&tenant_id, "monitor_id", &req.monitor_id)?
                        .id,
                )
            };
            EventFilter {
                tenant: Some(tenant_id),
                probe_regions: caller == Caller::Operator && monitor.is_none(),
                monitor,
            }
        };
        let store = self.store().clone();
        // Subscribed now: every event after this call is considered. A receiver
        // that falls behind skips what it missed rather than ending the stream.
        let mut events = self.hub.subscribe();
        let (tx, rx) = mpsc::channel(64);
        let auth = self.auth.clone();
        tokio::spawn(async move {
            // A revoked token's stream ends within a second of the revocation.
            let revoked = auth.revoked(&hash);
            tokio::pin!(revoked);
            loop {
                let item = tokio::select! {
                    status = &mut revoked => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                    () = tx.closed() => return,
                    e = events.recv() => match e {
                        Ok(e) => filter.admit(&store, e),
                        Err(broadcast::error::RecvError::Lagged(_)) => None,
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                };
                if let Some(item) = item
                    && tx.send(item).await.is_err()
                {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
