//! The queries behind each [`Storage`](super::super::Storage) call on PostgreSQL, one method of
//! the same name per call, on a pooled connection. The tables are the schema's
//! (`migrations/0001_initial.sql`); records are the same prost bytes sled stores.
//!
//! Each method keeps the contract of the sled backend's call of the same name (order of lists,
//! what a replay does, what a multi-record call writes together); where a call writes more than
//! one row it is one transaction.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::try_join_all;
use portwatch_proto::v1;
use prost::Message;
use tokio_postgres::Transaction;
use tokio_postgres::types::ToSql;

use super::super::{
    HistoryPage, Ingest, Ingested, OutboxRecord, RegionOutage, Result, StoreError, TokenRecord,
    checked_at_us, decode, ts_micros,
};
use super::backend::Conn;
use super::lease;

/// The latest instant stored (the end of year 9999): times beyond it (an "until forever" bound)
/// are clamped, since PostgreSQL's `timestamptz` ends there too.
const MAX_US: u64 = 253_402_300_799_999_999;

/// Unix microseconds as the database's time.
fn at(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us.min(MAX_US))
}

/// The database's time as unix microseconds (0 before 1970).
fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A sequence number as `bigint` (an agent's sequence never nears 2^63; a forged one is
/// clamped, which only spoils that agent's own de-duplication).
fn big(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn decode_token(json: &str) -> Result<TokenRecord> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        tree: "tokens",
        reason: e.to_string(),
    })
}

fn encode_token(rec: &TokenRecord) -> Result<String> {
    serde_json::to_string(rec).map_err(|e| StoreError::Corrupt {
        tree: "tokens",
        reason: e.to_string(),
    })
}

/// Decodes column 0 of every row as `M`.
fn records<M: Message + Default>(
    table: &'static str,
    rows: &[tokio_postgres::Row],
) -> Result<Vec<M>> {
    rows.iter()
        .map(|row| decode(table, row.try_get::<_, &[u8]>(0)?))
        .collect()
}

/// Decodes column 0 of the row, if there is one.
fn record<M: Message + Default>(
    table: &'static str,
    row: Option<tokio_postgres::Row>,
) -> Result<Option<M>> {
    row.map(|row| decode(table, row.try_get::<_, &[u8]>(0)?))
        .transpose()
}

/// Writes deliveries (new or after an attempt) in the caller's transaction. A claim a worker
/// holds stays as it is: only the worker that holds it lets it go.
async fn write_deliveries(tx: &Transaction<'_>, records: &[OutboxRecord]) -> Result<()> {
    if records.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare(
            "INSERT INTO deliveries
                 (id, tenant_id, subject_id, kind, pending, due_at, created_at, record)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET
                 tenant_id = EXCLUDED.tenant_id, subject_id = EXCLUDED.subject_id,
                 kind = EXCLUDED.kind, pending = EXCLUDED.pending, due_at = EXCLUDED.due_at,
                 created_at = EXCLUDED.created_at, record = EXCLUDED.record",
        )
        .await?;
    let mut rows = Vec::with_capacity(records.len());
    for r in records {
        let Some(d) = &r.delivery else {
            return Err(StoreError::Corrupt {
                tree: "outbox",
                reason: "a delivery record without its delivery".into(),
            });
        };
        let pending = d.state == v1::DeliveryState::Pending as i32;
        let due = pending.then(|| at(ts_micros(d.next_attempt_at.as_ref())));
        rows.push((
            d.id.clone(),
            r.tenant_id.clone(),
            d.subject_id.clone(),
            d.kind,
            pending,
            due,
            at(ts_micros(d.created_at.as_ref())),
            r.encode_to_vec(),
        ));
    }
    // Pipelined: sent in order, answered in order.
    let stmt = &stmt;
    try_join_all(rows.iter().map(
        |(id, tenant, subject, kind, pending, due, created, rec)| async move {
            let params: [&(dyn ToSql + Sync); 8] =
                [id, tenant, subject, kind, pending, due, created, rec];
            tx.execute(stmt, &params).await
        },
    ))
    .await?;
    Ok(())
}

/// Writes an incident in the caller's transaction.
async fn write_incident(tx: &Transaction<'_>, i: &v1::Incident) -> Result<()> {
    tx.execute(
        "INSERT INTO incidents (id, monitor_id, open, record) VALUES ($1, $2, $3, $4)
         ON CONFLICT (id) DO UPDATE SET
             monitor_id = EXCLUDED.monitor_id, open = EXCLUDED.open, record = EXCLUDED.record",
        &[
            &i.id,
            &i.monitor_id,
            &i.closed_at.is_none(),
            &i.encode_to_vec(),
        ],
    )
    .await?;
    Ok(())
}

impl Conn<'_> {
    // ------------------------------------------------------------ tenants

    pub(super) async fn put_tenant(&mut self, t: &v1::Tenant) -> Result<()> {
        self.client()?
            .execute(
                "INSERT INTO tenants (id, record) VALUES ($1, $2)
                 ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
                &[&t.id, &t.encode_to_vec()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn get_tenant(&mut self, id: &str) -> Result<Option<v1::Tenant>> {
        let row = self
            .client()?
            .query_opt("SELECT record FROM tenants WHERE id = $1", &[&id])
            .await?;
        record("tenants", row)
    }

    pub(super) async fn list_tenants(&mut self) -> Result<Vec<v1::Tenant>> {
        let rows = self
            .client()?
            .query("SELECT record FROM tenants ORDER BY id", &[])
            .await?;
        records("tenants", &rows)
    }

    // ------------------------------------------------------------ tokens

    pub(super) async fn put_token(&mut self, rec: &TokenRecord) -> Result<()> {
        let json = encode_token(rec)?;
        self.client()?
            .execute(
                "INSERT INTO tokens (id, hash, record) VALUES ($1, $2, $3::text::jsonb)
                 ON CONFLICT (id) DO UPDATE SET hash = EXCLUDED.hash, record = EXCLUDED.record",
                &[&rec.id, &rec.hash, &json],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn put_tenant_with_token(
        &mut self,
        t: &v1::Tenant,
        rec: &TokenRecord,
    ) -> Result<()> {
        let json = encode_token(rec)?;
        let tx = self.client()?.transaction().await?;
        tx.execute(
            "INSERT INTO tenants (id, record) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET record = EXCLUDED.record",
            &[&t.id, &t.encode_to_vec()],
        )
        .await?;
        tx.execute(
            "INSERT INTO tokens (id, hash, record) VALUES ($1, $2, $3::text::jsonb)
             ON CONFLICT (id) DO UPDATE SET hash = EXCLUDED.hash, record = EXCLUDED.record",
            &[&rec.id, &rec.hash, &json],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn token_where(&mut self, sql: &str, key: &str) -> Result<Option<TokenRecord>> {
        let row = self.client()?.query_opt(sql, &[&key]).await?;
        row.map(|row| decode_token(row.try_get::<_, &str>(0)?))
            .transpose()
    }

    pub(super) async fn token_by_hash(&mut self, hash: &str) -> Result<Option<TokenRecord>> {
        self.token_where("SELECT record::text FROM tokens WHERE hash = $1", hash)
            .await
    }

    pub(super) async fn token_by_id(&mut self, id: &str) -> Result<Option<TokenRecord>> {
        self.token_where("SELECT record::text FROM tokens WHERE id = $1", id)
            .await
    }

    /// In the order sled lists them: by secret hash.
    pub(super) async fn list_tokens(&mut self) -> Result<Vec<TokenRecord>> {
        let rows = self
            .client()?
            .query("SELECT record::text FROM tokens ORDER BY hash", &[])
            .await?;
        rows.iter()
            .map(|row| decode_token(row.try_get::<_, &str>(0)?))
            .collect()
    }

    // ------------------------------------------------------------ regions

    pub(super) async fn put_region(&mut self, r: &v1::Region) -> Result<()> {
        self.client()?
            .execute(
                "INSERT INTO regions (name, record) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET record = EXCLUDED.record",
                &[&r.name, &r.encode_to_vec()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn get_region(&mut self, name: &str) -> Result<Option<v1::Region>> {
        let row = self
            .client()?
            .query_opt("SELECT record FROM regions WHERE name = $1", &[&name])
            .await?;
        record("regions", row)
    }

    pub(super) async fn list_regions(&mut self) -> Result<Vec<v1::Region>> {
        let rows = self
            .client()?
            .query("SELECT record FROM regions ORDER BY name", &[])
            .await?;
        records("regions", &rows)
    }

    pub(super) async fn delete_region(&mut self, name: &str) -> Result<bool> {
        let n = self
            .client()?
            .execute("DELETE FROM regions WHERE name = $1", &[&name])
            .await?;
        Ok(n > 0)
    }

    // ------------------------------------------------------------ agents

    pub(super) async fn put_agent(&mut self, a: &v1::Agent) -> Result<()> {
        self.client()?
            .execute(
                "INSERT INTO agents (id, region, record) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET region = EXCLUDED.region, record = EXCLUDED.record",
                &[&a.agent_id, &a.region, &a.encode_to_vec()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn get_agent(&mut self, id: &str) -> Result<Option<v1::Agent>> {
        let row = self
            .client()?
            .query_opt(
                "SELECT record FROM agents WHERE id = $1 AND record IS NOT NULL",
                &[&id],
            )
            .await?;
        record("agents", row)
    }

    pub(super) async fn list_agents(&mut self) -> Result<Vec<v1::Agent>> {
        let rows = self
            .client()?
            .query(
                "SELECT record FROM agents WHERE record IS NOT NULL ORDER BY id",
                &[],
            )
            .await?;
        records("agents", &rows)
    }

    pub(super) async fn acked_seq(&mut self, agent_id: &str) -> Result<u64> {
        let row = self
            .client()?
            .query_opt("SELECT acked_seq FROM agents WHERE id = $1", &[&agent_id])
            .await?;
        Ok(match row {
            Some(row) => u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0),
            None => 0,
        })
    }

    // ------------------------------------------------------------ monitors

    pub(super) async fn put_monitor(&mut self, m: &v1::Monitor) -> Result<()> {
        self.put_monitors(std::slice::from_ref(m)).await
    }

    /// One statement for the whole list (the last of two with one id wins, as in sled).
    pub(super) async fn put_monitors(&mut self, ms: &[v1::Monitor]) -> Result<()> {
        let mut last: BTreeMap<&str, &v1::Monitor> = BTreeMap::new();
        for m in ms {
            last.insert(m.id.as_str(), m);
        }
        let ids: Vec<&str> = last.keys().copied().collect();
        let tenants: Vec<&str> = last.values().map(|m| m.tenant_id.as_str()).collect();
        let recs: Vec<Vec<u8>> = last.values().map(|m| m.encode_to_vec()).collect();
        self.client()?
            .execute(
                "INSERT INTO monitors (id, tenant_id, record)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[])
                 ON CONFLICT (id) DO UPDATE SET
                     tenant_id = EXCLUDED.tenant_id, record = EXCLUDED.record",
                &[&ids, &tenants, &recs],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn get_monitor(&mut self, id: &str) -> Result<Option<v1::Monitor>> {
        let row = self
            .client()?
            .query_opt("SELECT record FROM monitors WHERE id = $1", &[&id])
            .await?;
        record("monitors", row)
    }

    pub(super) async fn list_monitors(&mut self) -> Result<Vec<v1::Monitor>> {
        let rows = self
            .client()?
            .query("SELECT record FROM monitors ORDER BY id", &[])
            .await?;
        records("monitors", &rows)
    }

    pub(super) async fn tenant_monitor_count(&mut self, tenant_id: &str) -> Result<usize> {
        let row = self
            .client()?
            .query_one(
                "SELECT count(*) FROM monitors WHERE tenant_id = $1",
                &[&tenant_id],
            )
            .await?;
        Ok(usize::try_from(row.try_get::<_, i64>(0)?).unwrap_or(usize::MAX))
    }

    pub(super) async fn tenant_monitor_counts(&mut self) -> Result<BTreeMap<String, usize>> {
        let rows = self
            .client()?
            .query(
                "SELECT tenant_id, count(*) FROM monitors GROUP BY tenant_id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let n = usize::try_from(row.try_get::<_, i64>(1)?).unwrap_or(usize::MAX);
                Ok((row.try_get::<_, String>(0)?, n))
            })
            .collect()
    }

    pub(super) async fn tenant_monitors(
        &mut self,
        tenant_id: &str,
        after: &str,
        limit: usize,
    ) -> Result<Vec<v1::Monitor>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .client()?
            .query(
                "SELECT record FROM monitors WHERE tenant_id = $1 AND id > $2
                 ORDER BY id LIMIT $3",
                &[&tenant_id, &after, &limit],
            )
            .await?;
        records("monitors", &rows)
    }

    pub(super) async fn delete_monitor(&mut self, id: &str) -> Result<bool> {
        self.delete_monitor_closing(id, None).await
    }

    /// The monitor, its latest results and (when given) its incident closed, in one
    /// transaction.
    pub(super) async fn delete_monitor_closing(
        &mut self,
        id: &str,
        closing: Option<&v1::Incident>,
    ) -> Result<bool> {
        let term = self.term.clone();
        let tx = self.client()?.transaction().await?;
        let existed = tx
            .execute("DELETE FROM monitors WHERE id = $1", &[&id])
            .await?
            > 0;
        if existed && let Some(i) = closing.filter(|i| i.monitor_id == id) {
            lease::check(&tx, term.as_ref()).await?;
            write_incident(&tx, i).await?;
        }
        tx.execute("DELETE FROM latest_results WHERE monitor_id = $1", &[&id])
            .await?;
        tx.commit().await?;
        Ok(existed)
    }

    // ------------------------------------------------------------ results

    /// A batch from one agent in one transaction, committed before it returns: the history
    /// rows, the latest results a row is newer than, and the agent's acknowledged sequence
    /// (locked for the transaction, so two coordinators that both hold a stream of the same
    /// agent — during a fail-over — never acknowledge past each other).
    pub(super) async fn ingest(
        &mut self,
        agent_id: &str,
        region: &str,
        batch: &[Ingest<'_>],
        up_to: u64,
    ) -> Result<Ingested> {
        let tx = self.client()?.transaction().await?;
        tx.execute(
            "INSERT INTO agents (id, region) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&agent_id, &region],
        )
        .await?;
        let row = tx
            .query_one(
                "SELECT acked_seq FROM agents WHERE id = $1 FOR UPDATE",
                &[&agent_id],
            )
            .await?;
        let mut acked = u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0);
        let mut out = Ingested::default();
        let mut kept = Vec::new();
        for (i, item) in batch.iter().enumerate() {
            if item.seq <= acked {
                out.duplicates += 1;
                continue;
            }
            let mut r = item.result.clone();
            r.region = region.to_string();
            kept.push((i, item.seq, checked_at_us(&r), r));
            out.stored += 1;
            acked = acked.max(item.seq);
        }
        if !kept.is_empty() {
            let monitors: Vec<&str> = kept.iter().map(|k| k.3.monitor_id.as_str()).collect();
            let times: Vec<SystemTime> = kept.iter().map(|k| at(k.2)).collect();
            let seqs: Vec<i64> = kept.iter().map(|k| big(k.1)).collect();
            let recs: Vec<Vec<u8>> = kept.iter().map(|k| k.3.encode_to_vec()).collect();
            tx.execute(
                "INSERT INTO history (monitor_id, checked_at, region, agent_id, seq, record)
                 SELECT m, t, $3, $4, s, r
                 FROM unnest($1::text[], $2::timestamptz[], $5::bigint[], $6::bytea[])
                     AS u(m, t, s, r)
                 ON CONFLICT DO NOTHING",
                &[&monitors, &times, &region, &agent_id, &seqs, &recs],
            )
            .await?;
            let latest = tx
                .prepare(
                    "INSERT INTO latest_results (monitor_id, region, checked_at, record)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (monitor_id, region) DO UPDATE SET
                         checked_at = EXCLUDED.checked_at, record = EXCLUDED.record
                     WHERE latest_results.checked_at <= EXCLUDED.checked_at",
                )
                .await?;
            // Pipelined and answered in the batch's order, as sled applies them.
            let (latest, tx, monitors, times, recs) = (&latest, &tx, &monitors, &times, &recs);
            let newer = try_join_all((0..kept.len()).map(|n| async move {
                let params: [&(dyn ToSql + Sync); 4] = [&monitors[n], &region, &times[n], &recs[n]];
                tx.execute(latest, &params).await
            }))
            .await?;
            for (k, n) in kept.iter().zip(newer) {
                if n > 0 {
                    out.became_latest.push(k.0);
                }
            }
        }
        // Refused results are acknowledged too (they must leave the agent's spool).
        acked = acked.max(up_to);
        tx.execute(
            "UPDATE agents SET acked_seq = $2 WHERE id = $1",
            &[&agent_id, &big(acked)],
        )
        .await?;
        tx.commit().await?;
        out.acked_seq = acked;
        Ok(out)
    }

    pub(super) async fn latest_for(&mut self, monitor_id: &str) -> Result<Vec<v1::CheckResult>> {
        let rows = self
            .client()?
            .query(
                "SELECT record FROM latest_results WHERE monitor_id = $1 ORDER BY region",
                &[&monitor_id],
            )
            .await?;
        records("latest", &rows)
    }

    pub(super) async fn all_latest(&mut self) -> Result<Vec<v1::CheckResult>> {
        let rows = self
            .client()?
            .query(
                "SELECT record FROM latest_results ORDER BY monitor_id, region",
                &[],
            )
            .await?;
        records("latest", &rows)
    }

    /// A page of a monitor's history in `[since_us, until_us)`, oldest first. The page token
    /// is the last row's key (time, region, agent, sequence), hex-encoded.
    pub(super) async fn history(
        &mut self,
        monitor_id: &str,
        since_us: u64,
        until_us: u64,
        region: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<HistoryPage> {
        let after = after.map(parse_token).transpose()?;
        let (a_at, a_region, a_agent, a_seq) = match &after {
            Some((t, r, a, s)) => (Some(at(*t)), Some(r.as_str()), Some(a.as_str()), Some(*s)),
            None => (None, None, None, None),
        };
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = self
            .client()?
            .query(
                "SELECT record, checked_at, region, agent_id, seq FROM history
                 WHERE monitor_id = $1 AND checked_at >= $2 AND checked_at < $3
                   AND ($4::text IS NULL OR region = $4)
                   AND ($5::timestamptz IS NULL
                        OR (checked_at, region, agent_id, seq) > ($5, $6::text, $7::text, $8::bigint))
                 ORDER BY checked_at, region, agent_id, seq
                 LIMIT $9",
                &[
                    &monitor_id,
                    &at(since_us),
                    &at(until_us),
                    &region,
                    &a_at,
                    &a_region,
                    &a_agent,
                    &a_seq,
                    &fetch,
                ],
            )
            .await?;
        let more = rows.len() > limit;
        let mut results = Vec::with_capacity(rows.len().min(limit));
        let mut next = None;
        for row in rows.iter().take(limit) {
            results.push(decode("history", row.try_get::<_, &[u8]>(0)?)?);
            if more {
                next = Some(page_token(
                    micros(row.try_get(1)?),
                    row.try_get(2)?,
                    row.try_get(3)?,
                    row.try_get(4)?,
                ));
            }
        }
        Ok(HistoryPage { results, next })
    }

    /// Retention: whole day partitions dropped, the rest deleted (see
    /// `portwatch_history_drop_before`), and the partitions ahead created.
    pub(super) async fn prune_history(&mut self, cutoff_us: u64) -> Result<usize> {
        let client = self.client()?;
        let row = client
            .query_one(
                "SELECT portwatch_history_drop_before($1)",
                &[&at(cutoff_us)],
            )
            .await?;
        client
            .query_one("SELECT portwatch_history_partitions(3)", &[])
            .await?;
        Ok(usize::try_from(row.try_get::<_, i64>(0)?).unwrap_or(usize::MAX))
    }

    /// Decodes every latest result (what a start reads) and counts the history rows.
    pub(super) async fn verify_history(&mut self) -> Result<u64> {
        let rows = self
            .client()?
            .query("SELECT record FROM latest_results", &[])
            .await?;
        records::<v1::CheckResult>("latest", &rows)?;
        let row = self
            .client()?
            .query_one("SELECT count(*) FROM history", &[])
            .await?;
        Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0))
    }

    // ------------------------------------------------------------ incidents

    pub(super) async fn put_incident(&mut self, i: &v1::Incident) -> Result<()> {
        self.put_incident_with_deliveries(i, &[]).await
    }

    pub(super) async fn put_incident_with_deliveries(
        &mut self,
        i: &v1::Incident,
        deliveries: &[OutboxRecord],
    ) -> Result<()> {
        let term = self.term.clone();
        let tx = self.client()?.transaction().await?;
        lease::check(&tx, term.as_ref()).await?;
        write_incident(&tx, i).await?;
        write_deliveries(&tx, deliveries).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn get_incident(&mut self, id: &str) -> Result<Option<v1::Incident>> {
        let row = self
            .client()?
            .query_opt("SELECT record FROM incidents WHERE id = $1", &[&id])
            .await?;
        record("incidents", row)
    }

    pub(super) async fn open_incident(&mut self, monitor_id: &str) -> Result<Option<v1::Incident>> {
        let row = self
            .client()?
            .query_opt(
                "SELECT record FROM incidents WHERE monitor_id = $1 AND open",
                &[&monitor_id],
            )
            .await?;
        record("incidents", row)
    }

    pub(super) async fn list_incidents(&mut self) -> Result<Vec<v1::Incident>> {
        let rows = self
            .client()?
            .query("SELECT record FROM incidents ORDER BY id DESC", &[])
            .await?;
        records("incidents", &rows)
    }

    // ------------------------------------------------------------ channels

    pub(super) async fn put_channel(&mut self, c: &v1::Channel) -> Result<()> {
        self.client()?
            .execute(
                "INSERT INTO channels (id, tenant_id, record) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET
                     tenant_id = EXCLUDED.tenant_id, record = EXCLUDED.record",
                &[&c.id, &c.tenant_id, &c.encode_to_vec()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn get_channel(&mut self, id: &str) -> Result<Option<v1::Channel>> {
        let row = self
            .client()?
            .query_opt("SELECT record FROM channels WHERE id = $1", &[&id])
            .await?;
        record("channels", row)
    }

    pub(super) async fn list_channels(&mut self) -> Result<Vec<v1::Channel>> {
        let rows = self
            .client()?
            .query("SELECT record FROM channels ORDER BY id", &[])
            .await?;
        records("channels", &rows)
    }

    pub(super) async fn delete_channel(&mut self, id: &str) -> Result<bool> {
        let n = self
            .client()?
            .execute("DELETE FROM channels WHERE id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    // ------------------------------------------------------------ maintenance

    pub(super) async fn put_maintenance(&mut self, w: &v1::MaintenanceWindow) -> Result<()> {
        self.client()?
            .execute(
                "INSERT INTO maintenance_windows (id, tenant_id, record) VALUES ($1, $2, $3)
                 ON CONFLICT (id) DO UPDATE SET
                     tenant_id = EXCLUDED.tenant_id, record = EXCLUDED.record",
                &[&w.id, &w.tenant_id, &w.encode_to_vec()],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn list_maintenance(&mut self) -> Result<Vec<v1::MaintenanceWindow>> {
        let rows = self
            .client()?
            .query("SELECT record FROM maintenance_windows ORDER BY id", &[])
            .await?;
        records("maintenance_windows", &rows)
    }

    pub(super) async fn delete_maintenance(&mut self, id: &str) -> Result<bool> {
        let n = self
            .client()?
            .execute("DELETE FROM maintenance_windows WHERE id = $1", &[&id])
            .await?;
        Ok(n > 0)
    }

    // ------------------------------------------------------------ outbox

    pub(super) async fn get_delivery(&mut self, id: &str) -> Result<Option<OutboxRecord>> {
        let row = self
            .client()?
            .query_opt("SELECT record FROM deliveries WHERE id = $1", &[&id])
            .await?;
        record("outbox", row)
    }

    /// Records an attempt and lets go of the delivery's claim, in one transaction.
    pub(super) async fn put_delivery(&mut self, r: &OutboxRecord) -> Result<()> {
        let tx = self.client()?.transaction().await?;
        write_deliveries(&tx, std::slice::from_ref(r)).await?;
        tx.execute(
            "UPDATE deliveries SET claimed_by = NULL, claim_until = NULL WHERE id = $1",
            &[&r.id()],
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims a due PENDING delivery for `worker` until the database's clock passes
    /// `claim_for_ms` from now. A row another transaction holds is skipped, not waited for
    /// (`SKIP LOCKED`): its holder is claiming or recording it.
    pub(super) async fn claim_delivery(
        &mut self,
        id: &str,
        worker: &str,
        claim_for_ms: u64,
    ) -> Result<Option<OutboxRecord>> {
        let ms = big(claim_for_ms);
        let row = self
            .client()?
            .query_opt(
                "UPDATE deliveries
                 SET claimed_by = $2, claim_until = now() + $3::bigint * interval '1 millisecond'
                 WHERE id = (
                     SELECT id FROM deliveries
                     WHERE id = $1 AND pending AND due_at <= now()
                       AND (claim_until IS NULL OR claim_until < now() OR claimed_by = $2)
                     FOR UPDATE SKIP LOCKED)
                 RETURNING record",
                &[&id, &worker, &ms],
            )
            .await?;
        record("outbox", row)
    }

    pub(super) async fn list_deliveries(&mut self) -> Result<Vec<OutboxRecord>> {
        let rows = self
            .client()?
            .query("SELECT record FROM deliveries ORDER BY id DESC", &[])
            .await?;
        records("outbox", &rows)
    }

    pub(super) async fn delivery_channels(
        &mut self,
        subject_id: &str,
        kind: v1::DeliveryKind,
    ) -> Result<Vec<String>> {
        let rows = self
            .client()?
            .query(
                "SELECT record FROM deliveries WHERE subject_id = $1 AND kind = $2 ORDER BY id",
                &[&subject_id, &(kind as i32)],
            )
            .await?;
        let mut out = Vec::new();
        for r in records::<OutboxRecord>("outbox", &rows)? {
            if let Some(d) = r.delivery
                && !out.contains(&d.channel_id)
            {
                out.push(d.channel_id);
            }
        }
        Ok(out)
    }

    pub(super) async fn pending_deliveries(&mut self) -> Result<Vec<(String, u64)>> {
        let rows = self
            .client()?
            .query(
                "SELECT id, due_at FROM deliveries WHERE pending ORDER BY id",
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let due: Option<SystemTime> = row.try_get(1)?;
                Ok((row.try_get::<_, String>(0)?, due.map_or(0, micros)))
            })
            .collect()
    }

    pub(super) async fn prune_deliveries(&mut self, cutoff_us: u64) -> Result<usize> {
        let n = self
            .client()?
            .execute(
                "DELETE FROM deliveries WHERE NOT pending AND created_at < $1",
                &[&at(cutoff_us)],
            )
            .await?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    // ------------------------------------------------------------ probe region outages

    pub(super) async fn put_outage_with_deliveries(
        &mut self,
        region: &str,
        outage: Option<&RegionOutage>,
        deliveries: &[OutboxRecord],
    ) -> Result<()> {
        let term = self.term.clone();
        let tx = self.client()?.transaction().await?;
        lease::check(&tx, term.as_ref()).await?;
        match outage {
            Some(o) => {
                tx.execute(
                    "INSERT INTO region_outages (region, record) VALUES ($1, $2)
                     ON CONFLICT (region) DO UPDATE SET record = EXCLUDED.record",
                    &[&region, &o.encode_to_vec()],
                )
                .await?;
            }
            None => {
                tx.execute("DELETE FROM region_outages WHERE region = $1", &[&region])
                    .await?;
            }
        }
        write_deliveries(&tx, deliveries).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn region_outages(&mut self) -> Result<Vec<RegionOutage>> {
        let rows = self
            .client()?
            .query("SELECT record FROM region_outages ORDER BY region", &[])
            .await?;
        records("region_outages", &rows)
    }
}

/// A history page token: time (8 bytes, BE), sequence (8), region, NUL, agent — hex.
fn page_token(at_us: u64, region: &str, agent: &str, seq: i64) -> String {
    let mut k = Vec::with_capacity(17 + region.len() + agent.len());
    k.extend_from_slice(&at_us.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k.extend_from_slice(region.as_bytes());
    k.push(0);
    k.extend_from_slice(agent.as_bytes());
    hex::encode(k)
}

fn parse_token(token: &str) -> Result<(u64, String, String, i64)> {
    let bad = |reason: &str| StoreError::Corrupt {
        tree: "history",
        reason: format!("page token: {reason}"),
    };
    let k = hex::decode(token).map_err(|e| bad(&e.to_string()))?;
    let (Some(t), Some(s), Some(rest)) = (k.get(..8), k.get(8..16), k.get(16..)) else {
        return Err(bad("too short"));
    };
    let t = u64::from_be_bytes(t.try_into().map_err(|_| bad("time"))?);
    let s = i64::from_be_bytes(s.try_into().map_err(|_| bad("sequence"))?);
    let sep = rest
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| bad("no agent"))?;
    let region = String::from_utf8(rest[..sep].to_vec()).map_err(|e| bad(&e.to_string()))?;
    let agent = String::from_utf8(rest[sep + 1..].to_vec()).map_err(|e| bad(&e.to_string()))?;
    Ok((t, region, agent, s))
}
