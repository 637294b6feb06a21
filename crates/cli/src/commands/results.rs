//! `portwatch results MONITOR --since 1h`: the raw check results of one
//! monitor, oldest first, as stored by the coordinator (every region, every
//! check, including replayed ones an agent spooled while disconnected).

use std::time::SystemTime;

use portwatch_proto::time::to_timestamp;
use portwatch_proto::v1;
use serde_json::Value;

use crate::cli::{OutputFormat, ResultsArgs};
use crate::client::Client;
use crate::error::Result;
use crate::names;
use crate::output::{self, Table};
use crate::views;

pub async fn run(c: &mut Client, a: ResultsArgs, out: OutputFormat) -> Result<()> {
    let m = c.find_monitor(&a.monitor).await?;
    let now = SystemTime::now();
    let since = Some(to_timestamp(a.since.resolve(now)));
    let until = a.until.map(|u| to_timestamp(u.resolve(now)));
    let mut rs = c
        .results(&m.id, since, until, a.region.as_deref().unwrap_or_default())
        .await?;
    let total = rs.len();
    if a.limit > 0 && rs.len() > a.limit {
        rs.drain(..rs.len() - a.limit);
    }
    let v = Value::Array(rs.iter().map(views::result).collect());
    let t = table(&rs);
    output::either(out, &v, &t, "no results in this window")?;
    if out == OutputFormat::Table && rs.len() < total {
        eprintln!(
            "(showing the newest {} of {total}; --limit 0 shows all)",
            rs.len()
        );
    }
    Ok(())
}

/// Results as a table, one row per check.
pub fn table(rs: &[v1::CheckResult]) -> Table {
    let mut t = Table::new(&[
        "CHECKED AT",
        "REGION",
        "OUTCOME",
        "CONNECT MS",
        "ADDRESS",
        "DETAIL",
    ]);
    for r in rs {
        t.row(vec![
            output::ts(r.checked_at.as_ref()),
            r.region.clone(),
            names::text(names::outcome(r.outcome)).to_string(),
            output::connect_ms_text(r.outcome, r.connect_us),
            r.address.clone(),
            r.detail.clone(),
        ]);
    }
    t
}
