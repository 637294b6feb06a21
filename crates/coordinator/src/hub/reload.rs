//! The live view taken again from the store after the store was reopened.
//!
//! Why it is needed: after a failed write the store is reopened, and what the
//! view holds may differ from the disk both ways (a write reported failed may
//! have landed, one held here may not have been flushed). The store is the
//! truth; agents are told only what changed for them.

use std::collections::{HashMap, HashSet};

use portwatch_check::Outcome;
use portwatch_proto::time::from_timestamp;
use portwatch_proto::v1;
use tracing::info;

use super::evaluation::outcome_of;
use super::{Hub, State, now};
use crate::store::RegionOutage;
use crate::store::StoreError;

impl Hub {
    /// Re-reads what this view mirrors from the store, after the store was
    /// reopened (`Store::try_reopen`): a write that failed may have reached the
    /// disk after all, and one the view already holds is there only if it was
    /// flushed. The store is the truth: monitors, regions, open incidents and
    /// region outages are taken from it; its latest results are merged in (the
    /// view only ever held flushed ones). Agents get what changed for them, and
    /// every monitor is evaluated at the next tick. Sessions are kept.
    pub async fn reload(&self) -> Result<(), StoreError> {
        // No incident or outage transition runs half on the old view.
        let _transition = self.transitions.lock().await;
        let monitors: HashMap<String, v1::Monitor> = self
            .store
            .list_monitors()?
            .into_iter()
            .map(|m| (m.id.clone(), m))
            .collect();
        let regions: HashMap<String, v1::Region> = self
            .store
            .list_regions()?
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect();
        let latest = self.store.all_latest()?;
        let mut open = HashMap::new();
        let mut slow = HashMap::new();
        for id in monitors.keys() {
            if let Some(i) = self.store.open_incident(id)? {
                if i.slow {
                    slow.insert(id.clone(), i);
                    continue;
                }
                open.insert(id.clone(), i);
            }
        }
        let outages: HashMap<String, RegionOutage> = self
            .store
            .region_outages()?
            .into_iter()
            .map(|o| (o.region.clone(), o))
            .collect();
        let windows: Vec<crate::maintenance::Window> = self
            .store
            .list_maintenance()?
            .into_iter()
            .filter_map(crate::maintenance::Window::new)
            .collect();

        let mut st = self.lock();
        st.windows = windows;
        let changed_monitors: Vec<(String, HashSet<String>)> = monitors
            .keys()
            .chain(st.monitors.keys())
            .filter(|id| monitors.get(*id) != st.monitors.get(*id))
            .map(|id| {
                let regions = [monitors.get(id), st.monitors.get(id)]
                    .into_iter()
                    .flatten()
                    .flat_map(|m| m.regions.iter().cloned())
                    .collect();
                (id.clone(), regions)
            })
            .collect();
        let changed_regions: Vec<String> = regions
            .keys()
            .chain(st.regions.keys())
            .filter(|r| regions.get(*r) != st.regions.get(*r))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        st.monitors = monitors;
        for r in regions.keys() {
            st.offline_since.entry(r.clone()).or_insert_with(now);
        }
        st.offline_since.retain(|r, _| regions.contains_key(r));
        st.regions = regions;
        for r in latest {
            let key = (r.monitor_id.clone(), r.region.clone());
            if let (Some(o), Some(at)) = (
                outcome_of(&r),
                r.checked_at.as_ref().and_then(from_timestamp),
            ) && (o == Outcome::Ok || o.is_target_failure())
            {
                let e = st.last_decisive.entry(key.clone()).or_insert(at);
                if at > *e {
                    *e = at;
                }
            }
            // Only forward: an ingest that finished meanwhile may be newer.
            let at = |r: &v1::CheckResult| r.checked_at.as_ref().and_then(from_timestamp);
            if st.latest.get(&key).is_none_or(|held| at(held) <= at(&r)) {
                st.latest.insert(key, r);
            }
        }
        let State {
            monitors,
            latest,
            last_decisive,
            region_state,
            ..
        } = &mut *st;
        latest.retain(|(m, _), _| monitors.contains_key(m));
        last_decisive.retain(|(m, _), _| monitors.contains_key(m));
        region_state.retain(|(m, _), _| monitors.contains_key(m));
        st.open = open;
        st.slow = slow;
        st.outages = outages;
        for (id, regions) in &changed_monitors {
            for r in regions {
                Self::sync_monitor(&mut st, r, id);
            }
        }
        for r in &changed_regions {
            Self::sync_region(&mut st, r);
        }
        st.recheck.clear();
        // Deliveries that waited for the store are due.
        self.outbox_wake.notify_one();
        info!(
            monitors = st.monitors.len(),
            changed_monitors = changed_monitors.len(),
            changed_regions = changed_regions.len(),
            open_incidents = st.open.len(),
            "reloaded the live view from the reopened store"
        );
        Ok(())
    }
}
