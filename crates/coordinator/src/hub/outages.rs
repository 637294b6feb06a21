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
        let grace = self.settings.region_offline_grace;
        let (went_offline, came_back, deleted) = {
            let st = self.lock();
            let live = |r: &str| st.sessions.get(r).is_some_and(|v| !v.is_empty());
            let went_offline: Vec<(String, SystemTime)> = st
                .regions
                .keys()
                .filter(|r| !live(r) && !st.outages.contains_key(*r))
                .filter_map(|r| {
                    let since = *st.offline_since.get(r)?;
                    (t.duration_since(since).unwrap_or_default() >= grace)
                        .then(|| (r.clone(), since))
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
            (went_offline, came_back, deleted)
        };
        if went_offline.is_empty() && came_back.is_empty() && deleted.is_empty() {
            return Ok(());
        }
        let channels = self.store.list_channels()?;
        let mut planned = 0;
        for (region, since) in went_offline {
            let mut outage = RegionOutage {
                id: new_id("out"),
                region: region.clone(),
                offline_since: Some(to_timestamp(since)),
                noticed_at: Some(to_timestamp(t)),
                online_at: None,
                channel_ids: Vec::new(),
            };
            let deliveries =
                outbox::plan_region(&channels, &outage, v1::DeliveryKind::RegionOffline, t);
            outage.channel_ids = deliveries
                .iter()
                .filter_map(|r| r.delivery.as_ref().map(|d| d.channel_id.clone()))
                .collect();
            self.store
                .put_outage_with_deliveries(&region, Some(&outage), &deliveries)?;
            planned += deliveries.len();
            warn!(%region, outage_id = %outage.id, deliveries = deliveries.len(), "probe region offline past the grace period; operator notified");
            self.lock().outages.insert(region, outage);
        }
        for mut outage in came_back {
            outage.online_at = Some(to_timestamp(t));
            let deliveries =
                outbox::plan_region(&channels, &outage, v1::DeliveryKind::RegionOnline, t);
            self.store
                .put_outage_with_deliveries(&outage.region, None, &deliveries)?;
            planned += deliveries.len();
            info!(region = %outage.region, outage_id = %outage.id, deliveries = deliveries.len(), "probe region back online; operator notified");
            self.lock().outages.remove(&outage.region);
        }
        for region in deleted {
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
}
