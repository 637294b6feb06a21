//! A monitor's result history, a page at a time. Page tokens are store keys
//! (hex), checked against the monitor before use, so a token from another
//! listing is refused instead of reading someone else's rows.

use std::time::SystemTime;

use portwatch_proto::time::{from_timestamp, unix_micros};
use portwatch_proto::v1;
use tonic::{Request, Response, Status};

use super::{AdminApi, Scope, internal};
use crate::validate;

/// A history page token: the hex of the last key returned, which starts with the
/// monitor id, a NUL and the result's time (8 bytes, big-endian). Returns that time.
fn history_token_time(monitor_id: &str, token: &str) -> Result<u64, Status> {
    let bad = || Status::invalid_argument("page_token: not a token from this listing");
    if token.len() > 4 * validate::MAX_ID + 64 {
        return Err(bad());
    }
    let key = hex::decode(token).map_err(|_| bad())?;
    let rest = key
        .strip_prefix(monitor_id.as_bytes())
        .and_then(|r| r.strip_prefix(&[0u8]))
        .ok_or_else(bad)?;
    let at: [u8; 8] = rest
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(bad)?;
    Ok(u64::from_be_bytes(at))
}

impl AdminApi {
    pub(super) async fn list_results(
        &self,
        request: Request<v1::ListResultsRequest>,
    ) -> Result<Response<v1::ListResultsResponse>, Status> {
        let scope = Scope::Tenant(&request.get_ref().tenant_id);
        let tenant_id = self.begin(&request, scope)?.tenant;
        let req = request.into_inner();
        let m = self.owned_monitor(&tenant_id, "monitor_id", &req.monitor_id)?;
        let micros = |field: &str, ts: Option<prost_types::Timestamp>, default: u64| match ts {
            None => Ok(default),
            Some(ts) => from_timestamp(&ts).map(unix_micros).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "{field}: not a valid timestamp (before 1970 or nanos out of range)"
                ))
            }),
        };
        let since_us = micros("since", req.since, 0)?;
        let until_us = micros("until", req.until, unix_micros(SystemTime::now()))?;
        if since_us > until_us {
            return Err(Status::invalid_argument("since: is after until"));
        }
        let limit = validate::page_size("page_size", req.page_size)?;
        if !req.region.is_empty() {
            validate::slug("region", &req.region)?;
        }
        let after = if req.page_token.is_empty() {
            None
        } else {
            // A token past the window has nothing after it (and would make the
            // store's key range run backwards).
            if history_token_time(&m.id, &req.page_token)? >= until_us {
                return Ok(Response::new(v1::ListResultsResponse::default()));
            }
            Some(req.page_token.as_str())
        };
        let region = (!req.region.is_empty()).then_some(req.region.as_str());
        let page = self
            .store()
            .history(&m.id, since_us, until_us, region, after, limit)
            .map_err(internal)?;
        Ok(Response::new(v1::ListResultsResponse {
            results: page.results,
            next_page_token: page.next.unwrap_or_default(),
        }))
    }
}
