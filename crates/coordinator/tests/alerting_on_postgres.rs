//! Every test of `alerting.rs` again, with each coordinator's store in a PostgreSQL server of its
//! own (`store = "postgres"`): the harness picks the backend from this binary's name
//! (`portwatch_e2e::store_backend`). A bug of one backend fails here or there.

#[path = "alerting.rs"]
mod suite;
