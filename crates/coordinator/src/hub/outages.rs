//! Region outages: a probe region left without a live agent for
//! `region_offline_grace` is told to the operator once, and its return only
//! after that.
//!
//! The notice sent is recorded as a `RegionOutage` in the store, written in
//! one transaction with its deliveries and mirrored in the live state, so a
//! restart neither repeats the offline notice nor forgets that one went out
//! (and so owes a "back online"). An outage of a deleted region is dropped
//! without a notice.

use std::time::SystemTime;

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use tracing::{info, warn};

use super::{Hub, now};
use crate::ids::new_id;
use crate::outbox;
use crate::store::{RegionOutage, StoreError};

impl Hub {
    /// Probe-region notices (called from the maintenance loop): a region with no
    /// live agent for `region_offline_grace` and no notice yet gets one offline
    /// notice on every operator channel; a region with such a notice whose agent
    /// is back gets one "back online" notice. Each change is written with its
    /// deliveries in one transaction, so a restart neither repeats nor loses one.
    pub async fn region_notices(&self) -> Result<(), StoreError> {
        let _transition = self.transitions.lock().await;
        let t = now();
        let due = self.outage_changes(t);
        if due.went_offline.is_empty() && due.came_back.is_empty() && due.deleted.is_empty() {
            return Ok(());
        }
        let channels = self.store.list_channels()?;
        let mut planned = 0;
        for (region, since) in due.went_offline {
            planned += self.notice_offline(&channels, region, since, t)?;
        }
        for outage in due.came_back {
            planned += self.notice_online(&channels, outage, t)?;
        }
        for region in due.deleted {
            self.store.put_outage_with_deliveries(&region, None, &[])?;
            self.lock().outages.remove(&region);
        }
        self.store.flush().await?;
        outbox::count_planned(planned);
        if planned > 0 {
            self.outbox_wake.notify_one();
        }
        Ok(())
    }

    /// The outage changes due at `t`, as the live view stands.
    fn outage_changes(&self, t: SystemTime) -> OutageChanges {
        let grace = self.settings.region_offline_grace;
        let st = self.lock();
        let live = |r: &str| st.sessions.get(r).is_some_and(|v| !v.is_empty());
        let went_offline: Vec<(String, SystemTime)> = st
            .regions
            .keys()
            .filter(|r| !live(r) && !st.outages.contains_key(*r))
            .filter_map(|r| {
                let since = *st.offline_since.get(r)?;
                (t.duration_since(since).unwrap_or_default() >= grace).then(|| (r.clone(), since))
            })
            .collect();
        let came_back: Vec<RegionOutage> = st
            .outages
            .values()
            .filter(|o| st.regions.contains_key(&o.region) && live(&o.region))
            .cloned()
            .collect();
        let deleted: Vec<String> = st
            .outages
            .keys()
            .filter(|r| !st.regions.contains_key(*r))
            .cloned()
            .collect();
        OutageChanges {
            went_offline,
            came_back,
            deleted,
        }
    }

    /// Records a new outage of `region` with its offline notices (the
    /// channels told are kept with it, for the "back online" later). Returns
    /// the deliveries planned; the caller flushes.
    fn notice_offline(
        &self,
        channels: &[v1::Channel],
        region: String,
        since: SystemTime,
        t: SystemTime,
    ) -> Result<usize, StoreError> {
        let mut outage = RegionOutage {
            id: new_id("out"),
            region: region.clone(),
            offline_since: Some(to_timestamp(since)),
            noticed_at: Some(to_timestamp(t)),
            online_at: None,
            channel_ids: Vec::new(),
        };
        let deliveries = outbox::plan_region(channels, &outage, v1::DeliveryKind::RegionOffline, t);
        outage.channel_ids = deliveries
            .iter()
            .filter_map(|r| r.delivery.as_ref().map(|d| d.channel_id.clone()))
            .collect();
        self.store
            .put_outage_with_deliveries(&region, Some(&outage), &deliveries)?;
        warn!(%region, outage_id = %outage.id, deliveries = deliveries.len(), "probe region offline past the grace period; operator notified");
        self.lock().outages.insert(region, outage);
        Ok(deliveries.len())
    }

    /// Ends `outage` with its "back online" notices, in the write that
    /// removes it. Returns the deliveries planned; the caller flushes.
    fn notice_online(
        &self,
        channels: &[v1::Channel],
        mut outage: RegionOutage,
        t: SystemTime,
    ) -> Result<usize, StoreError> {
        outage.online_at = Some(to_timestamp(t));
        let deliveries = outbox::plan_region(channels, &outage, v1::DeliveryKind::RegionOnline, t);
        self.store
            .put_outage_with_deliveries(&outage.region, None, &deliveries)?;
        info!(region = %outage.region, outage_id = %outage.id, deliveries = deliveries.len(), "probe region back online; operator notified");
        self.lock().outages.remove(&outage.region);
        Ok(deliveries.len())
    }
}

/// What `region_notices` has to write.
struct OutageChanges {
    /// Regions without a live agent past the grace period and not yet
    /// noticed, with since when.
    went_offline: Vec<(String, SystemTime)>,
    /// Noticed outages whose region has a live agent again.
    came_back: Vec<RegionOutage>,
    /// Noticed outages of regions since deleted.
    deleted: Vec<String>,
}
