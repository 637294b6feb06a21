//! Plans and their limits.
//!
//! Port monitoring is plan-gated (DESIGN.md, "Tenancy and plans"): `free`
//! cannot create port monitors.
//! The numbers come from the coordinator's config (`[plans.<name>]`); these are
//! the defaults.

use std::time::Duration;

use portwatch_proto::v1;
use serde::Deserialize;

/// What one plan allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanLimits {
    /// Whether port monitors may be created at all.
    pub port_monitors: bool,
    /// Most monitors a tenant may have.
    pub max_monitors: u32,
    /// Shortest check interval.
    #[serde(with = "humantime_serde_compat")]
    pub min_interval: Duration,
    /// Shortest reminder period a monitor may ask for (`remind_every_ms`);
    /// 1 minute unless the plan says otherwise.
    #[serde(with = "humantime_serde_compat", default = "default_min_remind_every")]
    pub min_remind_every: Duration,
}

/// `min_remind_every` of every plan unless its config says otherwise.
pub const DEFAULT_MIN_REMIND_EVERY: Duration = Duration::from_secs(60);

fn default_min_remind_every() -> Duration {
    DEFAULT_MIN_REMIND_EVERY
}

/// The limits of every plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Plans {
    pub free: PlanLimits,
    pub basic: PlanLimits,
    pub pro: PlanLimits,
    pub enterprise: PlanLimits,
}

impl Default for Plans {
    fn default() -> Self {
        let plan = |port_monitors, max_monitors, secs| PlanLimits {
            port_monitors,
            max_monitors,
            min_interval: Duration::from_secs(secs),
            min_remind_every: DEFAULT_MIN_REMIND_EVERY,
        };
        Plans {
            free: plan(false, 10, 300),
            basic: plan(true, 50, 60),
            pro: plan(true, 500, 30),
            enterprise: plan(true, 10_000, 10),
        }
    }
}

impl Plans {
    /// The limits of a plan; `None` for `PLAN_UNSPECIFIED` or an unknown value.
    pub fn limits(&self, plan: i32) -> Option<&PlanLimits> {
        match v1::Plan::try_from(plan).ok()? {
            v1::Plan::Free => Some(&self.free),
            v1::Plan::Basic => Some(&self.basic),
            v1::Plan::Pro => Some(&self.pro),
            v1::Plan::Enterprise => Some(&self.enterprise),
            v1::Plan::Unspecified => None,
        }
    }
}

/// The plan's lower-case name, for messages.
pub fn plan_name(plan: i32) -> &'static str {
    match v1::Plan::try_from(plan) {
        Ok(v1::Plan::Free) => "free",
        Ok(v1::Plan::Basic) => "basic",
        Ok(v1::Plan::Pro) => "pro",
        Ok(v1::Plan::Enterprise) => "enterprise",
        _ => "unspecified",
    }
}

/// Durations in config files are humantime strings ("60s", "5m").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("{s:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_cannot_monitor_ports_and_config_overrides_defaults() {
        let plans = Plans::default();
        assert!(!plans.limits(v1::Plan::Free as i32).unwrap().port_monitors);
        assert!(plans.limits(v1::Plan::Basic as i32).unwrap().port_monitors);
        assert!(plans.limits(0).is_none());
        assert!(plans.limits(42).is_none());

        let p: Plans = toml::from_str(
            "[enterprise]\nport_monitors = true\nmax_monitors = 3\nmin_interval = \"1s\"\n",
        )
        .unwrap();
        assert_eq!(p.enterprise.max_monitors, 3);
        assert_eq!(p.enterprise.min_interval, Duration::from_secs(1));
        assert_eq!(p.enterprise.min_remind_every, DEFAULT_MIN_REMIND_EVERY);
        let p: Plans = toml::from_str(
            "[pro]\nport_monitors = true\nmax_monitors = 3\nmin_interval = \"1s\"\nmin_remind_every = \"5s\"\n",
        )
        .unwrap();
        assert_eq!(p.pro.min_remind_every, Duration::from_secs(5));
        assert_eq!(p.basic, Plans::default().basic);
        assert!(toml::from_str::<Plans>("[gold]\nport_monitors = true").is_err());
    }
}
