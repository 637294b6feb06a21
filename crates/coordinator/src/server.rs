//! Wires the coordinator together: store, hub, gRPC services (agent stream,
//! admin API, health, reflection) on the guarded listener (TLS, connection
//! caps and deadlines: `listener`), metrics, the notification outbox worker,
//! the maintenance loop, the store's recovery loop, and graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use portwatch_proto::v1::admin_service_server::AdminServiceServer;
use portwatch_proto::v1::agent_service_server::AgentServiceServer;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tracing::{error, info, warn};

use crate::admin::AdminApi;
use crate::agents::AgentApi;
use crate::auth::{Api, Auth};
use crate::channels::Senders;
use crate::cluster::{self, LeaseSettings};
use crate::config::{Config, StoreChoice};
use crate::health::Health;
use crate::hub::{Hub, HubSettings};
use crate::listener::{self, Listener};
use crate::loops::{self, Beat, Loops, supervise};
use crate::outbox::{OutboxSettings, Worker};
use crate::recovery;
use crate::store::postgres::{PgStore, redact_url};
use crate::store::{Store, StoreError};

/// How long shutdown waits for agents to drain their streams.
const DRAIN_WAIT: Duration = Duration::from_secs(3);
/// How often history is pruned to the retention window.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The outbox worker's longest wait between rounds (its idle poll).
const OUTBOX_ROUND: Duration = Duration::from_secs(5);

/// Opens the store the configuration chooses. An error names the key to fix; a PostgreSQL
/// database that cannot be reached, refuses the password or has a newer schema stops the start
/// here, before anything listens.
async fn open_store(config: &Config) -> anyhow::Result<(Store, Option<PgStore>)> {
    match &config.store {
        StoreChoice::Sled => {
            std::fs::create_dir_all(&config.data_dir)
                .with_context(|| format!("data_dir: creating {}", config.data_dir.display()))?;
            let store = Store::open_with_cache(&config.data_dir, config.store_cache_bytes)
                .with_context(|| {
                    format!(
                        "data_dir: opening the store in {}",
                        config.data_dir.display()
                    )
                })?;
            Ok((store, None))
        }
        StoreChoice::Postgres(settings) => {
            let pg = PgStore::open(settings.clone()).await?;
            info!(database = %redact_url(&settings.url), "store: PostgreSQL");
            Ok((Store::new(pg.clone()), Some(pg)))
        }
    }
}

/// This machine's name (for the default `coordinator_id`).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "coordinator".into())
}

/// The key naming where the store lives, for a message about it.
fn store_key(config: &Config) -> String {
    match &config.store {
        StoreChoice::Sled => format!("data_dir: the store in {}", config.data_dir.display()),
        StoreChoice::Postgres(s) => format!("postgres_url: the store in {}", redact_url(&s.url)),
    }
}

/// Runs the coordinator until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (store, leased) = open_store(&config).await?;
    let hub = Hub::load(
        store.clone(),
        HubSettings {
            heartbeat_interval: config.heartbeat_interval,
            heartbeat_timeout: config.heartbeat_timeout,
            offline_grace: config.offline_grace,
            region_offline_grace: config.region_offline_grace,
            fast_confirmation: config.fast_confirmation,
            clock_skew_allowance: config.clock_skew_allowance,
        },
    )
    .context("loading state from the store")?;
    let auth = Auth::new(&config.operator_token, store.clone());
    let extra_roots = config
        .notify_ca
        .as_ref()
        .map(|ca| ca.certs.as_slice())
        .unwrap_or_default();
    if let Some(ca) = &config.notify_ca {
        info!(
            path = %ca.path.display(),
            certificates = ca.certs.len(),
            "notification channels also trust notify_ca_file"
        );
    }
    if !config.fast_confirmation {
        info!(
            "fast_confirmation is off: a region turning down sends no check-now; \
             other regions confirm at their next scheduled check"
        );
    }
    let senders = Senders::with_roots(
        config.allow_private_channel_targets,
        config.delivery_timeout,
        extra_roots,
    )
    .map_err(anyhow::Error::msg)
    .context("notifications")?;

    if let Some(addr) = config.metrics_listen {
        let handle = portwatch_telemetry::metrics_http::install().map_err(anyhow::Error::msg)?;
        let bound = portwatch_telemetry::metrics_http::serve(addr, handle, shutdown.clone())
            .await
            .with_context(|| format!("metrics_listen: binding {addr}"))?;
        println!("portwatch-coordinator metrics on http://{bound}/metrics");
        info!(%bound, "metrics listening");
    }

    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter).await;
    // Both reflection versions: grpcurl speaks v1, many shipped clients (Python's
    // grpcio-reflection among them) still speak only v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(portwatch_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .context("building the reflection service (v1)")?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .context("building the reflection service (v1alpha)")?;

    let mut builder = Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    // TLS is ours, not tonic's: the listener does the handshake under a
    // deadline and admits connections per source (`listener`).
    let tls = match &config.tls {
        Some(tls) => Some(listener::tls_acceptor(tls)?),
        None => None,
    };
    let limits = config.connections.clone();
    let open_files = listener::raise_open_file_limit();
    let max_total = listener::connection_ceiling(limits.max_connections, open_files);
    if max_total < limits.max_connections {
        warn!(
            max_connections = limits.max_connections,
            enforced = max_total,
            open_file_limit = open_files,
            "max_connections is above what the open-file limit allows; enforcing the lower cap \
             (raise LimitNOFILE / ulimit -n to allow more)"
        );
    }
    let listener = Listener::bind(config.listen, tls, limits.clone(), max_total)
        .await
        .with_context(|| format!("listen: binding {}", config.listen))?;
    let bound = listener.local_addr()?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    // On PostgreSQL, the active lease is tried once before anything is served.
    let cluster_stop = CancellationToken::new();
    let cluster = match leased {
        Some(pg) => {
            let settings = LeaseSettings {
                owner: config
                    .coordinator_id
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", host_name(), bound.port())),
                ttl: config.lease_ttl,
            };
            info!(owner = %settings.owner, lease_ttl = ?settings.ttl, "cluster: taking part in the active lease");
            let first = cluster::start(&pg, &hub, &settings).await;
            Some(tokio::spawn(cluster::run(
                pg,
                hub.clone(),
                settings,
                first,
                cluster_stop.clone(),
            )))
        }
        None => None,
    };
    println!("portwatch-coordinator listening on {scheme}://{bound}");
    info!(
        %bound,
        tls = config.tls.is_some(),
        max_connections = max_total,
        max_connections_per_ip = limits.max_connections_per_ip,
        tls_handshake_timeout = ?limits.tls_handshake_timeout,
        unauthenticated_idle_timeout = ?limits.unauthenticated_idle_timeout,
        "coordinator listening"
    );

    let loops = Loops::default();
    let maintenance = tokio::spawn(supervise(
        loops.clone(),
        "maintenance",
        config.evaluate_every,
        shutdown.clone(),
        {
            let (hub, config, shutdown) = (hub.clone(), config.clone(), shutdown.clone());
            move |beat| maintain(hub.clone(), config.clone(), shutdown.clone(), beat)
        },
    ));
    // A store that stops taking writes (a full disk) comes back on its own.
    let recovery_stop = CancellationToken::new();
    let damage_report = tokio::spawn(recovery::report_damage(
        store.clone(),
        health.clone(),
        recovery_stop.clone(),
    ));
    let mut recovery = tokio::spawn(recovery::run(
        store.clone(),
        hub.clone(),
        health.clone(),
        recovery_stop.clone(),
    ));
    // Pending deliveries left by a previous run (even a crash) are sent from here on.
    let outbox_stop = CancellationToken::new();
    let outbox = tokio::spawn(supervise(
        loops.clone(),
        "outbox",
        OUTBOX_ROUND,
        outbox_stop.clone(),
        {
            let (store, senders, wake, stop) = (
                store.clone(),
                senders.clone(),
                hub.outbox_wake(),
                outbox_stop.clone(),
            );
            let settings = OutboxSettings {
                retry_initial: config.delivery_retry_initial,
                retry_max: config.delivery_retry_max,
                retry_horizon: config.delivery_retry_horizon,
                claim_for: config.delivery_timeout * 2 + Duration::from_secs(5),
            };
            move |beat| {
                Worker::new(store.clone(), senders.clone(), settings, wake.clone())
                    .run(stop.clone(), beat)
            }
        },
    ));
    let watchdog = tokio::spawn(watch_loops(loops, health.clone(), shutdown.clone()));

    let server_stop = CancellationToken::new();
    let incoming = listener.incoming(server_stop.clone());
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(InterceptedService::new(
            AgentServiceServer::new(AgentApi::new(hub.clone(), auth.clone())),
            auth.connection_marker(Api::Agent),
        ))
        .add_service(InterceptedService::new(
            AdminServiceServer::new(AdminApi::new(
                hub.clone(),
                auth.clone(),
                config.plans,
                senders,
            )),
            auth.connection_marker(Api::Admin),
        ));
    let serve =
        router.serve_with_incoming_shutdown(incoming, server_stop.clone().cancelled_owned());
    tokio::pin!(serve);

    // Set when the store cannot come back inside this process: the coordinator
    // stops (after the same drain) and says why.
    let mut store_lost: Option<StoreError> = None;
    tokio::select! {
        r = &mut serve => r.context("serving gRPC")?,
        () = shutdown.cancelled() => {}
        r = &mut recovery => {
            store_lost = Some(match r {
                Ok(Err(e)) => e,
                Ok(Ok(())) => StoreError::Unavailable("the store's recovery loop ended".into()),
                Err(e) => StoreError::Panicked { call: "recovery", message: e.to_string() },
            });
        }
    }
    // Whatever ended the run, the stop is now bounded (main's signal thread).
    shutdown.cancel();
    info!("shutting down: draining agents");
    hub.drain_all("coordinator shutting down");
    let deadline = Instant::now() + DRAIN_WAIT;
    while Instant::now() < deadline && hub.agents_per_region().iter().any(|(_, n)| *n > 0) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server_stop.cancel();
    if tokio::time::timeout(DRAIN_WAIT, &mut serve).await.is_err() {
        warn!("some streams did not close in time");
    }
    if let Some(cluster) = cluster {
        cluster_stop.cancel();
        if tokio::time::timeout(DRAIN_WAIT, cluster).await.is_err() {
            warn!("the lease was not released in time; it runs out on its own");
        }
    }
    maintenance.abort();
    watchdog.abort();
    recovery_stop.cancel();
    damage_report.abort();
    outbox_stop.cancel();
    if let Err(e) = outbox.await {
        warn!(error = %e, "the outbox worker ended abnormally");
    }
    if let Some(e) = store_lost {
        store.close_detached();
        return Err(anyhow::Error::new(e).context(store_key(&config)));
    }
    // Everything acknowledged is durable already; the seal lets the next
    // start check that the files still hold it. A store that cannot write now
    // (a full disk) is left as it is: nothing waits for it.
    let sealed = if store.is_writable() {
        store.seal().await.context("final flush")
    } else {
        warn!(cause = %store.state().cause, "stopping with a store that takes no writes; nothing acknowledged is lost");
        Ok(())
    };
    // The process ends without waiting for sled to let go of its files.
    store.close_detached();
    sealed?;
    info!("coordinator stopped");
    Ok(())
}

/// Sets the health condition `loops_running` from the background loops: bad
/// (NOT_SERVING) while any of them is stalled (not running, or no completed
/// round for too long).
async fn watch_loops(loops: Loops, health: Arc<Health>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut reported: Option<Vec<&'static str>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stalled = loops.stalled();
        metrics::gauge!("portwatch_loops_stalled").set(stalled.len() as f64);
        if reported.as_ref() == Some(&stalled) {
            continue;
        }
        let problem = (!stalled.is_empty())
            .then(|| format!("background loops stalled: {}", stalled.join(", ")));
        if problem.is_some() {
            error!(loops = ?stalled, "background loops stalled; health NOT_SERVING");
        }
        health.set(crate::health::LOOPS_RUNNING, problem).await;
        reported = Some(stalled);
    }
}

/// Heartbeat expiry, periodic evaluation, gauges, retention. Each step's
/// failure (or panic) is logged and counted, and the next round comes anyway.
async fn maintain(hub: Arc<Hub>, config: Config, shutdown: CancellationToken, beat: Beat) {
    const L: &str = "maintenance";
    let mut tick = tokio::time::interval(config.evaluate_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_prune: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loops::infallible_step(L, "heartbeat expiry", async {
            for (region, session) in hub.expired_sessions() {
                warn!(%region, session, "agent missed its heartbeats; dropping its session");
                hub.agent_disconnected(&region, session);
            }
        })
        .await;
        // A standby decides nothing: the active coordinator does.
        if hub.is_active() {
            loops::step(L, "evaluation", hub.evaluate_all()).await;
            loops::step(L, "reminders", hub.remind_due(std::time::SystemTime::now())).await;
            loops::step(
                L,
                "maintenance release",
                hub.release_maintenance(std::time::SystemTime::now()),
            )
            .await;
            loops::step(L, "region notices", hub.region_notices()).await;
        }
        loops::infallible_step(L, "gauges", async {
            for (region, n) in hub.agents_per_region() {
                metrics::gauge!("portwatch_agents_online", "region" => region).set(n as f64);
            }
            metrics::gauge!("portwatch_open_incidents").set(hub.open_incident_count() as f64);
            let c = hub.counters();
            metrics::gauge!("portwatch_consensus_evaluations").set(c.evaluations as f64);
            metrics::gauge!("portwatch_fast_confirmations").set(c.confirmations as f64);
        })
        .await;
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            last_prune = Some(Instant::now());
            let cutoff = SystemTime::now()
                .checked_sub(config.retention)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let cutoff_us = portwatch_proto::time::unix_micros(cutoff);
            let store = hub.store();
            if let Some(n) = loops::step(L, "pruning history", async {
                store.prune_history(cutoff_us)
            })
            .await
                && n > 0
            {
                info!(removed = n, "pruned result history past retention");
            }
            // Finished deliveries follow the same retention; pending ones stay.
            if let Some(n) = loops::step(L, "pruning deliveries", async {
                store.prune_deliveries(cutoff_us)
            })
            .await
                && n > 0
            {
                info!(removed = n, "pruned finished deliveries past retention");
            }
        }
        beat.tick();
    }
}
