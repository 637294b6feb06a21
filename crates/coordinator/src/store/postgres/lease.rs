//! Which coordinator decides: the active coordinator's lease, kept in the database and judged by
//! the database's clock, with a fencing epoch.
//!
//! Several coordinators may run on one database; one at a time is active (decides incidents,
//! takes agents and admin calls), the others stand by and take over when its lease runs out.
//! The lease is the row of shard 0 in `leases`: its owner, its epoch (one more at every new
//! term) and its expiry (`now()` of the database plus the time to live). A coordinator keeps its
//! term by renewing before expiry; another may take the row only once it has expired.
//!
//! Fencing: every write that decides something — an incident and the deliveries it causes, a
//! region outage and its notices, a monitor's deletion that closes its incident — checks in its
//! own transaction that the lease row still names this coordinator with the epoch of its term
//! and has not expired (`check`, with `FOR SHARE`, so a takeover waits for the write or the write
//! sees the takeover). A coordinator that was paused past its lease (SIGSTOP, a VM frozen, a
//! network partition) and wakes up still believing it is active has every such write refused
//! with `StoreError::Fenced`, counted in `portwatch_fenced_writes_total`; it then stands down.

use std::time::Duration;

use tokio_postgres::Transaction;

use super::super::{Result, StoreError};
use super::backend::{PgStore, Term};

/// The lease row of the active coordinator.
const LEADER_SHARD: i32 = 0;

/// Who holds the lease now, as the database sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub epoch: i64,
    /// Milliseconds until it expires by the database's clock (negative: expired).
    pub expires_in_ms: i64,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Refuses the transaction unless `term` is the lease's current, unexpired term (no term: a
/// coordinator that does not take part in leasing, nothing to check).
pub(super) async fn check(tx: &Transaction<'_>, term: Option<&Term>) -> Result<()> {
    let Some(term) = term else {
        return Ok(());
    };
    let held = tx
        .query_opt(
            "SELECT 1 FROM leases WHERE shard = $1 AND owner = $2 AND epoch = $3
               AND expires_at > now() FOR SHARE",
            &[&LEADER_SHARD, &term.owner, &term.epoch],
        )
        .await?;
    match held {
        Some(_) => Ok(()),
        None => {
            metrics::counter!("portwatch_fenced_writes_total").increment(1);
            Err(StoreError::Fenced(format!(
                "{} no longer holds the active coordinator's lease (epoch {}): another \
                 coordinator took over, so this write was refused",
                term.owner, term.epoch
            )))
        }
    }
}

impl PgStore {
    /// Takes part in leasing as `owner`: from now on every deciding write is fenced, and until
    /// a term is taken they are all refused (epoch 0 never exists).
    pub fn join_lease(&self, owner: &str) {
        self.set_term(Some(Term {
            owner: owner.to_string(),
            epoch: 0,
        }));
    }

    /// Starts a new term for `owner` if the lease is free (never taken, expired, or already
    /// `owner`'s: a restarted coordinator with the same name need not wait out its own lease).
    /// The epoch grows by one at every new term. Writes that decide are fenced with the new
    /// term from now on.
    pub async fn acquire_lease(&self, owner: &str, ttl: Duration) -> Result<Option<Term>> {
        let ttl = millis(ttl);
        let mut conn = self.conn_async("acquire_lease").await?;
        let row = self
            .timed(
                "acquire_lease",
                conn.client()?.query_opt(
                    "INSERT INTO leases (shard, owner, epoch, expires_at)
                     VALUES ($1, $2, 1, now() + $3::bigint * interval '1 millisecond')
                     ON CONFLICT (shard) DO UPDATE SET
                         owner = EXCLUDED.owner, epoch = leases.epoch + 1,
                         expires_at = EXCLUDED.expires_at
                     WHERE leases.expires_at <= now() OR leases.owner = EXCLUDED.owner
                     RETURNING epoch",
                    &[&LEADER_SHARD, &owner, &ttl],
                ),
            )
            .await?;
        let term = match row {
            Some(row) => Some(Term {
                owner: owner.to_string(),
                epoch: row.try_get(0)?,
            }),
            None => None,
        };
        if term.is_some() {
            self.set_term(term.clone());
        }
        Ok(term)
    }

    /// Extends `term` by `ttl` from the database's now; false when the term is over (expired,
    /// or taken over): the caller must stand down.
    pub async fn renew_lease(&self, term: &Term, ttl: Duration) -> Result<bool> {
        let ttl = millis(ttl);
        let mut conn = self.conn_async("renew_lease").await?;
        let renewed = self
            .timed(
                "renew_lease",
                conn.client()?.execute(
                    "UPDATE leases SET expires_at = now() + $4::bigint * interval '1 millisecond'
                     WHERE shard = $1 AND owner = $2 AND epoch = $3 AND expires_at > now()",
                    &[&LEADER_SHARD, &term.owner, &term.epoch, &ttl],
                ),
            )
            .await?;
        // A term that is over stays the fence: the database refuses its epoch.
        Ok(renewed > 0)
    }

    /// Ends `term` now (a clean stop), so a standby takes over at once rather than at expiry.
    pub async fn release_lease(&self, term: &Term) -> Result<()> {
        let mut conn = self.conn_async("release_lease").await?;
        self.timed(
            "release_lease",
            conn.client()?.execute(
                "UPDATE leases SET expires_at = now() WHERE shard = $1 AND owner = $2 AND epoch = $3",
                &[&LEADER_SHARD, &term.owner, &term.epoch],
            ),
        )
        .await?;
        Ok(())
    }

    /// Who holds the lease, if anyone ever did.
    pub async fn lease_holder(&self) -> Result<Option<Holder>> {
        let mut conn = self.conn_async("lease_holder").await?;
        let row = self
            .timed(
                "lease_holder",
                conn.client()?.query_opt(
                    "SELECT owner, epoch,
                            (extract(epoch FROM expires_at - now()) * 1000)::bigint
                     FROM leases WHERE shard = $1",
                    &[&LEADER_SHARD],
                ),
            )
            .await?;
        Ok(match row {
            Some(row) => Some(Holder {
                owner: row.try_get(0)?,
                epoch: row.try_get(1)?,
                expires_in_ms: row.try_get(2)?,
            }),
            None => None,
        })
    }
}
