//! The admin API end to end on a real store and hub: tenancy (another
//! tenant's objects are as missing as none), plans and quotas, validation
//! before any write, paging, channels' write-only secrets, and events.

use std::time::Duration;
use tokio_stream::StreamExt;

use tonic::Code;

use portwatch_proto::time::from_unix_micros;

use super::*;
use crate::hub::HubSettings;
use crate::store::Ingest;

const OP: &str = "operator-secret";

struct Fixture {
    api: AdminApi,
    hub: Arc<Hub>,
    auth: Auth,
    _dir: tempfile::TempDir,
}

fn req<T>(token: &str, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

fn fixture_with(plans: Plans) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let hub = Hub::load(store.clone(), HubSettings::default()).unwrap();
    let auth = Auth::new(OP, store);
    Fixture {
        api: AdminApi::new(hub.clone(), auth.clone(), plans, senders()),
        hub,
        auth,
        _dir: dir,
    }
}

fn fixture() -> Fixture {
    fixture_with(Plans::default())
}

fn senders() -> Arc<Senders> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Senders::new(false, Duration::from_secs(2)).unwrap()
}

fn monitor_req(host: &str, port: u32, regions: &[&str]) -> v1::CreateMonitorRequest {
    v1::CreateMonitorRequest {
        host: host.into(),
        port,
        regions: regions.iter().map(|r| r.to_string()).collect(),
        ..Default::default()
    }
}

fn code<T>(r: Result<Response<T>, Status>) -> (Code, String) {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => (e.code(), e.message().to_string()),
    }
}

impl Fixture {
    /// Creates a tenant; returns its token.
    async fn tenant(&self, id: &str, plan: v1::Plan) -> String {
        let r = self
            .api
            .create_tenant(req(
                OP,
                v1::CreateTenantRequest {
                    id: id.into(),
                    name: format!("{id} Inc."),
                    plan: plan as i32,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(r.token.starts_with("pwt_"));
        r.token
    }

    async fn region(&self, name: &str, owner: &str) {
        self.api
            .create_region(req(
                OP,
                v1::CreateRegionRequest {
                    name: name.into(),
                    description: String::new(),
                    owner_tenant_id: owner.into(),
                },
            ))
            .await
            .unwrap();
    }

    async fn create(
        &self,
        token: &str,
        m: v1::CreateMonitorRequest,
    ) -> Result<Response<v1::Monitor>, Status> {
        self.api.create_monitor(req(token, m)).await
    }

    async fn get(&self, token: &str, id: &str) -> Result<Response<v1::Monitor>, Status> {
        self.api
            .get_monitor(req(
                token,
                v1::GetMonitorRequest {
                    tenant_id: String::new(),
                    id: id.into(),
                },
            ))
            .await
    }

    async fn list(&self, token: &str, tenant_id: &str) -> Vec<v1::Monitor> {
        self.api
            .list_monitors(req(
                token,
                v1::ListMonitorsRequest {
                    tenant_id: tenant_id.into(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .monitors
    }

    fn stored_monitors(&self) -> Vec<v1::Monitor> {
        self.hub.store().list_monitors().unwrap()
    }
}

#[tokio::test]
async fn operator_manages_tenants_regions_and_tokens() {
    let f = fixture();
    let who = f.api.who_am_i(req(OP, v1::WhoAmIRequest {})).await.unwrap();
    assert!(who.get_ref().operator);

    // A generated id, then an explicit one.
    let r = f
        .api
        .create_tenant(req(
            OP,
            v1::CreateTenantRequest {
                id: String::new(),
                name: "Generated".into(),
                plan: v1::Plan::Basic as i32,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let generated = r.tenant.unwrap();
    assert!(
        validate::slug("id", &generated.id).is_ok(),
        "{}",
        generated.id
    );
    assert_eq!(generated.max_monitors, 50);
    assert_eq!(generated.min_interval_ms, 60_000);
    let acme = f.tenant("acme", v1::Plan::Pro).await;
    let who = f
        .api
        .who_am_i(req(&acme, v1::WhoAmIRequest {}))
        .await
        .unwrap();
    assert_eq!(who.get_ref().tenant_id, "acme");

    let create = |id: &str, name: &str, plan: v1::Plan| {
        req(
            OP,
            v1::CreateTenantRequest {
                id: id.into(),
                name: name.into(),
                plan: plan as i32,
            },
        )
    };
    let (c, _) = code(
        f.api
            .create_tenant(create("acme", "Again", v1::Plan::Pro))
            .await,
    );
    assert_eq!(c, Code::AlreadyExists);
    let (c, m) = code(
        f.api
            .create_tenant(create("Bad_Id", "X", v1::Plan::Pro))
            .await,
    );
    assert_eq!((c, m.starts_with("id: ")), (Code::InvalidArgument, true));
    let (c, m) = code(
        f.api
            .create_tenant(create("x", "X", v1::Plan::Unspecified))
            .await,
    );
    assert_eq!((c, m.as_str()), (Code::InvalidArgument, "plan: required"));
    let (c, m) = code(f.api.create_tenant(create("x", "", v1::Plan::Pro)).await);
    assert_eq!((c, m.as_str()), (Code::InvalidArgument, "name: required"));
    let (c, m) = code(
        f.api
            .create_tenant(create("x", &"n".repeat(101), v1::Plan::Pro))
            .await,
    );
    assert_eq!((c, m.starts_with("name: ")), (Code::InvalidArgument, true));

    // Tenants cannot do operator things.
    let mut as_tenant = create("y", "Y", v1::Plan::Pro);
    as_tenant
        .metadata_mut()
        .insert("authorization", format!("Bearer {acme}").parse().unwrap());
    assert_eq!(
        code(f.api.create_tenant(as_tenant).await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        code(
            f.api
                .list_tenants(req(&acme, v1::ListTenantsRequest {}))
                .await
        )
        .0,
        Code::PermissionDenied
    );
    let set_plan = |token: &str, tenant: &str| {
        req(
            token,
            v1::SetTenantPlanRequest {
                tenant_id: tenant.into(),
                plan: v1::Plan::Enterprise as i32,
            },
        )
    };
    assert_eq!(
        code(f.api.set_tenant_plan(set_plan(&acme, "acme")).await).0,
        Code::PermissionDenied
    );
    let t = f
        .api
        .set_tenant_plan(set_plan(OP, "acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (t.plan, t.max_monitors),
        (v1::Plan::Enterprise as i32, 10_000)
    );
    assert_eq!(
        code(f.api.set_tenant_plan(set_plan(OP, "nobody")).await).0,
        Code::NotFound
    );

    let tenants = f
        .api
        .list_tenants(req(OP, v1::ListTenantsRequest {}))
        .await
        .unwrap();
    assert_eq!(tenants.get_ref().tenants.len(), 2);

    // GetTenant: the operator names one; a tenant sees only itself.
    let get = |token: &str, id: &str| {
        req(
            token,
            v1::GetTenantRequest {
                tenant_id: id.into(),
            },
        )
    };
    assert_eq!(
        f.api
            .get_tenant(get(OP, "acme"))
            .await
            .unwrap()
            .get_ref()
            .id,
        "acme"
    );
    assert_eq!(
        f.api.get_tenant(get(&acme, "")).await.unwrap().get_ref().id,
        "acme"
    );
    let (c, m) = code(f.api.get_tenant(get(&acme, &generated.id)).await);
    assert_eq!((c, m.as_str()), (Code::NotFound, NO_SUCH_TENANT));
    let (c, m) = code(f.api.get_tenant(get(OP, "")).await);
    assert_eq!(
        (c, m.as_str()),
        (
            Code::InvalidArgument,
            "tenant_id: required for the operator"
        )
    );
    assert_eq!(
        code(f.api.get_tenant(get(OP, "nobody")).await).0,
        Code::NotFound
    );

    // Regions.
    f.region("eu", "").await;
    f.region("acme-lab", "acme").await;
    let region = |name: &str, owner: &str| {
        req(
            OP,
            v1::CreateRegionRequest {
                name: name.into(),
                description: String::new(),
                owner_tenant_id: owner.into(),
            },
        )
    };
    assert_eq!(
        code(f.api.create_region(region("eu", "")).await).0,
        Code::AlreadyExists
    );
    assert_eq!(
        code(f.api.create_region(region("EU West", "")).await).0,
        Code::InvalidArgument
    );
    let (c, m) = code(f.api.create_region(region("x", "nobody")).await);
    assert_eq!(
        (c, m.as_str()),
        (Code::NotFound, "owner_tenant_id: no such tenant")
    );
    let regions = f
        .api
        .list_regions(req(OP, v1::ListRegionsRequest {}))
        .await
        .unwrap();
    let eu = &regions.get_ref().regions[1];
    assert_eq!((eu.name.as_str(), eu.agents_online), ("eu", 0));
    assert!(eu.offline_since.is_some(), "no agent yet");

    // Agent tokens: bound to an existing region, listed without secrets, revocable.
    let t = f
        .api
        .create_agent_token(req(
            OP,
            v1::CreateAgentTokenRequest {
                region: "eu".into(),
                description: "eu-1".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(t.token.starts_with("pwa_"));
    let md = req(&t.token, ()).metadata().clone();
    assert_eq!(f.auth.agent_region(&md).unwrap(), "eu");
    let (c, m) = code(
        f.api
            .create_agent_token(req(
                OP,
                v1::CreateAgentTokenRequest {
                    region: "mars".into(),
                    description: String::new(),
                },
            ))
            .await,
    );
    assert_eq!((c, m.as_str()), (Code::NotFound, "region: no such region"));
    let listed = f
        .api
        .list_agent_tokens(req(
            OP,
            v1::ListAgentTokensRequest {
                region: "eu".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .tokens;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].description.as_str()),
        (t.token_id.as_str(), "eu-1")
    );
    assert!(
        !format!("{listed:?}").contains(&t.token),
        "secrets are never listed"
    );
    assert_eq!(
        code(
            f.api
                .list_agent_tokens(req(&acme, v1::ListAgentTokensRequest::default()))
                .await
        )
        .0,
        Code::PermissionDenied
    );

    let revoke = |token: &str, id: &str| {
        req(
            token,
            v1::RevokeTokenRequest {
                token_id: id.into(),
            },
        )
    };
    f.api
        .revoke_agent_token(revoke(OP, &t.token_id))
        .await
        .unwrap();
    assert_eq!(
        f.auth.agent_region(&md).unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        code(f.api.revoke_agent_token(revoke(OP, "tok-nope")).await).0,
        Code::NotFound
    );

    // Tenant tokens: a tenant makes and revokes its own; the agent RPC refuses them.
    let tt = f
        .api
        .create_tenant_token(req(
            &acme,
            v1::CreateTenantTokenRequest {
                tenant_id: String::new(),
                description: "ci".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(f.api.revoke_agent_token(revoke(OP, &tt.token_id)).await).0,
        Code::NotFound
    );
    let other = f
        .api
        .create_tenant_token(req(
            OP,
            v1::CreateTenantTokenRequest {
                tenant_id: generated.id.clone(),
                description: String::new(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(
            f.api
                .revoke_tenant_token(revoke(&acme, &other.token_id))
                .await
        )
        .0,
        Code::NotFound,
        "another tenant's token is not acme's to revoke"
    );
    f.api
        .revoke_tenant_token(revoke(&acme, &tt.token_id))
        .await
        .unwrap();
    let (c, _) = code(f.api.who_am_i(req(&tt.token, v1::WhoAmIRequest {})).await);
    assert_eq!(c, Code::Unauthenticated);
    assert!(
        f.api
            .who_am_i(req(&acme, v1::WhoAmIRequest {}))
            .await
            .is_ok()
    );

    // Deleting a region in use is refused; an unused one goes.
    f.create(&acme, monitor_req("example.com", 443, &["eu"]))
        .await
        .unwrap();
    let del = |name: &str| req(OP, v1::DeleteRegionRequest { name: name.into() });
    assert_eq!(
        code(f.api.delete_region(del("eu")).await).0,
        Code::FailedPrecondition
    );
    f.api.delete_region(del("acme-lab")).await.unwrap();
    assert_eq!(
        code(f.api.delete_region(del("acme-lab")).await).0,
        Code::NotFound
    );
    assert_eq!(
        code(
            f.api
                .delete_region(req(&acme, v1::DeleteRegionRequest { name: "eu".into() }))
                .await
        )
        .0,
        Code::PermissionDenied
    );
    let t = f
        .api
        .get_tenant(get(&acme, "acme"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(t.monitor_count, 1);

    // No token, or a bad one.
    let anon = Request::new(v1::WhoAmIRequest {});
    assert_eq!(
        f.api.who_am_i(anon).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert!(
        f.api
            .list_channels(req(&acme, v1::ListChannelsRequest::default()))
            .await
            .unwrap()
            .into_inner()
            .channels
            .is_empty()
    );
    let (c, _) = code(
        f.api
            .list_channels(req("wrong", v1::ListChannelsRequest::default()))
            .await,
    );
    assert_eq!(c, Code::Unauthenticated);
}

#[tokio::test]
async fn a_tenant_creates_lists_updates_pauses_and_deletes_its_monitors() {
    let f = fixture();
    let acme = f.tenant("acme", v1::Plan::Pro).await;
    f.region("eu", "").await;
    f.region("us", "").await;
    f.region("acme-lab", "acme").await;

    let m = f
        .create(&acme, monitor_req("DB.Example.com", 5432, &["eu", "us"]))
        .await
        .unwrap()
        .into_inner();
    assert!(m.id.starts_with("mon-"));
    assert_eq!(m.tenant_id, "acme");
    assert_eq!(m.host, "db.example.com");
    assert_eq!(m.name, "db.example.com:5432");
    assert_eq!(
        (m.interval_ms, m.timeout_ms, m.generation),
        (60_000, 3_000, 1)
    );
    assert_eq!(m.consensus, v1::ConsensusPolicy::Quorum as i32);
    assert!(m.created_at.is_some() && m.updated_at.is_some());
    assert_eq!(f.hub.store().get_monitor(&m.id).unwrap().as_ref(), Some(&m));
    assert_eq!(f.get(&acme, &m.id).await.unwrap().into_inner(), m);

    // Private targets go to the tenant's own private region.
    let private = f
        .create(&acme, monitor_req("10.0.0.5", 22, &["acme-lab"]))
        .await
        .unwrap()
        .into_inner();
    let third = f
        .create(&acme, monitor_req("example.org", 443, &["eu"]))
        .await
        .unwrap()
        .into_inner();

    // Paging by id.
    let page = |token: &str| {
        req(
            &acme,
            v1::ListMonitorsRequest {
                tenant_id: String::new(),
                page_size: 2,
                page_token: token.into(),
                tag: String::new(),
            },
        )
    };
    let p1 = f.api.list_monitors(page("")).await.unwrap().into_inner();
    assert_eq!(p1.monitors.len(), 2);
    assert!(!p1.next_page_token.is_empty());
    let p2 = f
        .api
        .list_monitors(page(&p1.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.monitors.len(), 1);
    assert!(p2.next_page_token.is_empty());
    let mut ids: Vec<String> = p1
        .monitors
        .iter()
        .chain(&p2.monitors)
        .map(|m| m.id.clone())
        .collect();
    let mut want = vec![m.id.clone(), private.id.clone(), third.id.clone()];
    want.sort();
    assert_eq!(ids, want, "sorted by id, each once");
    ids.dedup();
    assert_eq!(ids.len(), 3);
    let (c, _) = code(
        f.api
            .list_monitors(req(
                &acme,
                v1::ListMonitorsRequest {
                    page_size: 1001,
                    ..Default::default()
                },
            ))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);

    // Update: only set fields change; a default name follows the port.
    let u = f
        .api
        .update_monitor(req(
            &acme,
            v1::UpdateMonitorRequest {
                id: m.id.clone(),
                port: Some(6432),
                interval_ms: Some(30_000),
                regions: vec!["us".into()],
                set_regions: true,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((u.port, u.interval_ms, u.generation), (6432, 30_000, 2));
    assert_eq!(u.name, "db.example.com:6432");
    assert_eq!(u.regions, ["us"]);
    assert_eq!((u.host.as_str(), u.timeout_ms), ("db.example.com", 3_000));
    assert_eq!(u.created_at, m.created_at);
    let u = f
        .api
        .update_monitor(req(
            &acme,
            v1::UpdateMonitorRequest {
                id: m.id.clone(),
                name: Some("primary".into()),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (u.name.as_str(), u.port, u.generation),
        ("primary", 6432, 3)
    );

    // A rejected update changes nothing.
    let (c, m_) = code(
        f.api
            .update_monitor(req(
                &acme,
                v1::UpdateMonitorRequest {
                    id: m.id.clone(),
                    name: Some("renamed".into()),
                    host: Some("127.0.0.1".into()),
                    ..Default::default()
                },
            ))
            .await,
    );
    assert_eq!(
        (c, m_.starts_with("host: 127.0.0.1 is non-public")),
        (Code::InvalidArgument, true)
    );
    let (c, _) = code(
        f.api
            .update_monitor(req(
                &acme,
                v1::UpdateMonitorRequest {
                    id: m.id.clone(),
                    family: Some(42),
                    ..Default::default()
                },
            ))
            .await,
    );
    assert_eq!(c, Code::InvalidArgument);
    assert_eq!(f.get(&acme, &m.id).await.unwrap().into_inner(), u);

    // Pause and resume.
    let pr = |id: &str| v1::PauseMonitorRequest {
        tenant_id: String::new(),
        id: id.into(),
    };
    let p = f
        .api
        .pause_monitor(req(&acme, pr(&m.id)))
        .await
        .unwrap()
        .into_inner();
    assert!(p.paused);
    assert_eq!(p.generation, 4);
    let again = f
        .api
        .pause_monitor(req(&acme, pr(&m.id)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        again.generation, 4,
        "pausing a paused monitor changes nothing"
    );
    let status = f
        .api
        .get_monitor_status(req(
            &acme,
            v1::GetMonitorStatusRequest {
                tenant_id: String::new(),
                id: m.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.overall, v1::OverallState::Paused as i32);
    assert_eq!(status.regions.len(), 1);
    let r = f
        .api
        .resume_monitor(req(
            &acme,
            v1::ResumeMonitorRequest {
                tenant_id: String::new(),
                id: m.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.paused);
    assert_eq!(r.generation, 5);
    assert!(!f.hub.store().get_monitor(&m.id).unwrap().unwrap().paused);

    // Delete.
    f.api
        .delete_monitor(req(
            &acme,
            v1::DeleteMonitorRequest {
                tenant_id: String::new(),
                id: m.id.clone(),
            },
        ))
        .await
        .unwrap();
    let (c, msg) = code(f.get(&acme, &m.id).await);
    assert_eq!((c, msg.as_str()), (Code::NotFound, "id: no such monitor"));
    assert_eq!(f.list(&acme, "").await.len(), 2);
    assert_eq!(
        f.list(OP, "acme").await.len(),
        2,
        "the operator names the tenant"
    );
    let (c, msg) = code(
        f.api
            .list_monitors(req(OP, v1::ListMonitorsRequest::default()))
            .await,
    );
    assert_eq!(
        (c, msg.as_str()),
        (
            Code::InvalidArgument,
            "tenant_id: required for the operator"
        )
    );
}

#[tokio::test]
async fn tenants_never_see_or_touch_each_other() {
    let f = fixture();
    let a = f.tenant("alpha", v1::Plan::Pro).await;
    let b = f.tenant("beta", v1::Plan::Pro).await;
    f.region("eu", "").await;
    f.region("alpha-home", "alpha").await;
    let m = f
        .create(&a, monitor_req("example.com", 443, &["eu"]))
        .await
        .unwrap()
        .into_inner();

    let missing = code(f.get(&b, "mon-does-not-exist").await);
    assert_eq!(missing, (Code::NotFound, "id: no such monitor".to_string()));
    assert_eq!(
        code(f.get(&b, &m.id).await),
        missing,
        "exactly like a missing id"
    );
    let upd = v1::UpdateMonitorRequest {
        id: m.id.clone(),
        port: Some(80),
        ..Default::default()
    };
    assert_eq!(code(f.api.update_monitor(req(&b, upd)).await), missing);
    let pr = v1::PauseMonitorRequest {
        tenant_id: String::new(),
        id: m.id.clone(),
    };
    assert_eq!(code(f.api.pause_monitor(req(&b, pr)).await), missing);
    let del = v1::DeleteMonitorRequest {
        tenant_id: String::new(),
        id: m.id.clone(),
    };
    assert_eq!(code(f.api.delete_monitor(req(&b, del)).await), missing);
    let st = v1::GetMonitorStatusRequest {
        tenant_id: String::new(),
        id: m.id.clone(),
    };
    assert_eq!(code(f.api.get_monitor_status(req(&b, st)).await), missing);
    let lr = v1::ListResultsRequest {
        monitor_id: m.id.clone(),
        ..Default::default()
    };
    assert_eq!(
        code(f.api.list_results(req(&b, lr)).await),
        (Code::NotFound, "monitor_id: no such monitor".to_string())
    );
    assert_eq!(f.get(&a, &m.id).await.unwrap().into_inner(), m, "untouched");

    // Naming the other tenant reveals nothing, not even that it exists.
    assert!(f.list(&b, "").await.is_empty());
    let named = code(
        f.api
            .list_monitors(req(
                &b,
                v1::ListMonitorsRequest {
                    tenant_id: "alpha".into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    let nobody = code(
        f.api
            .list_monitors(req(
                &b,
                v1::ListMonitorsRequest {
                    tenant_id: "nobody".into(),
                    ..Default::default()
                },
            ))
            .await,
    );
    assert_eq!(named, (Code::NotFound, NO_SUCH_TENANT.to_string()));
    assert_eq!(named, nobody);
    let mut cross = monitor_req("example.net", 443, &["eu"]);
    cross.tenant_id = "alpha".into();
    assert_eq!(code(f.create(&b, cross).await).0, Code::NotFound);

    // Alpha's private region is invisible and unusable for beta.
    let names = |token: &str| {
        let api = &f.api;
        let token = token.to_string();
        async move {
            api.list_regions(req(&token, v1::ListRegionsRequest {}))
                .await
                .unwrap()
                .into_inner()
                .regions
                .into_iter()
                .map(|r| r.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names(&b).await, ["eu"]);
    assert_eq!(names(&a).await, ["alpha-home", "eu"]);
    assert_eq!(names(OP).await, ["alpha-home", "eu"]);
    let (c, msg) = code(
        f.create(&b, monitor_req("10.0.0.1", 22, &["alpha-home"]))
            .await,
    );
    assert_eq!(
        (c, msg.as_str()),
        (
            Code::InvalidArgument,
            "regions: unknown region \"alpha-home\""
        )
    );
    let (c2, msg2) = code(
        f.create(&b, monitor_req("10.0.0.1", 22, &["nowhere"]))
            .await,
    );
    assert_eq!(
        (c2, msg2.as_str()),
        (Code::InvalidArgument, "regions: unknown region \"nowhere\"")
    );
    f.create(&a, monitor_req("10.0.0.1", 22, &["alpha-home"]))
        .await
        .unwrap();
    assert_eq!(f.list(&a, "").await.len(), 2);
    assert!(f.list(&b, "").await.is_empty());
}

#[tokio::test]
async fn plans_gate_port_monitors_and_their_number() {
    let mut plans = Plans::default();
    plans.basic.max_monitors = 2;
    let f = fixture_with(plans);
    let free = f.tenant("freeloader", v1::Plan::Free).await;
    let basic = f.tenant("small", v1::Plan::Basic).await;
    f.region("eu", "").await;

    let (c, msg) = code(
        f.create(&free, monitor_req("example.com", 443, &["eu"]))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert_eq!(
        msg,
        "plan: the free plan does not include port monitors; basic or above is required"
    );

    f.create(&basic, monitor_req("a.example.com", 443, &["eu"]))
        .await
        .unwrap();
    let mut fast = monitor_req("b.example.com", 443, &["eu"]);
    fast.interval_ms = 10_000;
    let (c, msg) = code(f.create(&basic, fast).await);
    assert_eq!(c, Code::FailedPrecondition);
    assert_eq!(
        msg,
        "interval_ms: 10000 ms is below the basic plan's minimum of 60 s"
    );
    f.create(&basic, monitor_req("b.example.com", 443, &["eu"]))
        .await
        .unwrap();
    let (c, msg) = code(
        f.create(&basic, monitor_req("c.example.com", 443, &["eu"]))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert!(
        msg.starts_with("plan: the basic plan allows at most 2 monitors"),
        "{msg}"
    );

    // Upgrading lifts the limit; downgrading to free stops resumes and updates.
    let plan = |p: v1::Plan| {
        req(
            OP,
            v1::SetTenantPlanRequest {
                tenant_id: "small".into(),
                plan: p as i32,
            },
        )
    };
    f.api.set_tenant_plan(plan(v1::Plan::Pro)).await.unwrap();
    let third = f
        .create(&basic, monitor_req("c.example.com", 443, &["eu"]))
        .await
        .unwrap()
        .into_inner();
    f.api
        .pause_monitor(req(
            &basic,
            v1::PauseMonitorRequest {
                tenant_id: String::new(),
                id: third.id.clone(),
            },
        ))
        .await
        .unwrap();
    f.api.set_tenant_plan(plan(v1::Plan::Free)).await.unwrap();
    let (c, msg) = code(
        f.api
            .resume_monitor(req(
                &basic,
                v1::ResumeMonitorRequest {
                    tenant_id: String::new(),
                    id: third.id.clone(),
                },
            ))
            .await,
    );
    assert_eq!((c, msg.contains("free")), (Code::FailedPrecondition, true));
}

/// The quota, the counts and the listing come from the store's per-tenant
/// index: exact at the limit, after deletes, under concurrent creates, and
/// unaffected by another tenant's monitors.
#[tokio::test]
async fn quota_counts_and_listing_are_per_tenant_and_exact() {
    let mut plans = Plans::default();
    plans.basic.max_monitors = 3;
    let f = fixture_with(plans);
    let busy = f.tenant("busy", v1::Plan::Pro).await;
    let small = f.tenant("small", v1::Plan::Basic).await;
    f.region("eu", "").await;
    // Another tenant's monitors, written straight into the store.
    for i in 0..25 {
        f.hub
            .store()
            .put_monitor(&v1::Monitor {
                id: format!("mon-busy-{i:02}"),
                tenant_id: "busy".into(),
                host: format!("h{i}.example.com"),
                port: 443,
                regions: vec!["eu".into()],
                ..Default::default()
            })
            .unwrap();
    }
    let api = &f.api;
    let count = |tenant: &'static str| async move {
        api.get_tenant(req(
            OP,
            v1::GetTenantRequest {
                tenant_id: tenant.into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .monitor_count
    };
    let mut mine = Vec::new();
    for host in ["a.example.com", "b.example.com", "c.example.com"] {
        let m = f
            .create(&small, monitor_req(host, 443, &["eu"]))
            .await
            .unwrap();
        mine.push(m.into_inner().id);
    }
    let (c, msg) = code(
        f.create(&small, monitor_req("d.example.com", 443, &["eu"]))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert!(
        msg.contains("allows at most 3 monitors and this tenant has 3"),
        "{msg}"
    );
    assert_eq!((count("small").await, count("busy").await), (3, 25));
    let tenants = f
        .api
        .list_tenants(req(OP, v1::ListTenantsRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tenants;
    let counts: Vec<(&str, u32)> = tenants
        .iter()
        .map(|t| (t.id.as_str(), t.monitor_count))
        .collect();
    assert_eq!(counts, [("busy", 25), ("small", 3)]);

    // A delete frees one place; of four racing creates exactly one gets it.
    f.api
        .delete_monitor(req(
            &small,
            v1::DeleteMonitorRequest {
                tenant_id: String::new(),
                id: mine[1].clone(),
            },
        ))
        .await
        .unwrap();
    assert_eq!(count("small").await, 2);
    let (r1, r2, r3, r4) = tokio::join!(
        f.create(&small, monitor_req("e.example.com", 443, &["eu"])),
        f.create(&small, monitor_req("f.example.com", 443, &["eu"])),
        f.create(&small, monitor_req("g.example.com", 443, &["eu"])),
        f.create(&small, monitor_req("h.example.com", 443, &["eu"])),
    );
    let won = [r1, r2, r3, r4].into_iter().filter(Result::is_ok).count();
    assert_eq!(won, 1);
    assert_eq!(count("small").await, 3);
    let listed = f.list(&small, "").await;
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|m| m.tenant_id == "small"));
    assert!(listed.windows(2).all(|w| w[0].id < w[1].id), "sorted by id");

    // Pages of the other tenant: sorted by id, each page after the last.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let r = f
            .api
            .list_monitors(req(
                &busy,
                v1::ListMonitorsRequest {
                    tenant_id: String::new(),
                    page_size: 10,
                    page_token: token.clone(),
                    tag: String::new(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert!(r.monitors.len() <= 10);
        seen.extend(r.monitors.into_iter().map(|m| m.id));
        if r.next_page_token.is_empty() {
            break;
        }
        token = r.next_page_token;
    }
    let want: Vec<String> = (0..25).map(|i| format!("mon-busy-{i:02}")).collect();
    assert_eq!(seen, want);

    // Deleting every monitor of a tenant leaves it at zero, listing nothing.
    for m in f.list(&small, "").await {
        f.api
            .delete_monitor(req(
                &small,
                v1::DeleteMonitorRequest {
                    tenant_id: String::new(),
                    id: m.id,
                },
            ))
            .await
            .unwrap();
    }
    assert_eq!((count("small").await, count("busy").await), (0, 25));
    assert!(f.list(&small, "").await.is_empty());
}

#[tokio::test]
async fn a_rejected_create_leaves_the_store_unchanged() {
    let mut plans = Plans::default();
    plans.pro.max_monitors = 1;
    let f = fixture_with(plans);
    let acme = f.tenant("acme", v1::Plan::Pro).await;
    let free = f.tenant("gratis", v1::Plan::Free).await;
    f.region("eu", "").await;
    f.region("theirs", "gratis").await;

    let with = |edit: fn(&mut v1::CreateMonitorRequest)| {
        let mut r = monitor_req("example.com", 443, &["eu"]);
        edit(&mut r);
        r
    };
    let bad = vec![
        (monitor_req("", 443, &["eu"]), "host"),
        (monitor_req("example.com", 0, &["eu"]), "port"),
        (monitor_req("example.com", 443, &[]), "regions"),
        (monitor_req("example.com", 443, &["eu", "eu"]), "regions"),
        (monitor_req("example.com", 443, &["theirs"]), "regions"),
        (monitor_req("127.0.0.1", 443, &["eu"]), "host"),
        (monitor_req("localhost", 443, &["eu"]), "host"),
        (with(|r| r.timeout_ms = 60_000), "timeout_ms"),
        (with(|r| r.close_mode = 9), "close_mode"),
        (with(|r| r.name = "x".repeat(201)), "name"),
        (with(|r| r.channel_ids = vec![String::new()]), "channel_ids"),
    ];

    let before = f.stored_monitors();
    for (r, field) in bad {
        let (c, msg) = code(f.create(&acme, r).await);
        assert_eq!(c, Code::InvalidArgument, "{msg}");
        assert!(msg.starts_with(&format!("{field}: ")), "{field}: {msg}");
    }
    let (c, _) = code(
        f.create(&free, monitor_req("example.com", 443, &["eu"]))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert_eq!(f.stored_monitors(), before, "nothing written");
    assert!(before.is_empty());

    f.create(&acme, monitor_req("example.com", 443, &["eu"]))
        .await
        .unwrap();
    let one = f.stored_monitors();
    assert_eq!(one.len(), 1);
    let (c, _) = code(
        f.create(&acme, monitor_req("example.org", 443, &["eu"]))
            .await,
    );
    assert_eq!(c, Code::FailedPrecondition);
    assert_eq!(f.stored_monitors(), one);
}

#[tokio::test]
async fn results_page_and_bad_windows_are_refused() {
    let f = fixture();
    let acme = f.tenant("acme", v1::Plan::Pro).await;
    f.region("eu", "").await;
    let m = f
        .create(&acme, monitor_req("example.com", 443, &["eu"]))
        .await
        .unwrap()
        .into_inner();
    let results: Vec<v1::CheckResult> = (1..=5u64)
        .map(|i| v1::CheckResult {
            monitor_id: m.id.clone(),
            checked_at: Some(to_timestamp(from_unix_micros(i * 1_000_000))),
            outcome: v1::Outcome::Ok as i32,
            ..Default::default()
        })
        .collect();
    let batch: Vec<Ingest> = results
        .iter()
        .enumerate()
        .map(|(i, r)| Ingest {
            seq: i as u64 + 1,
            result: r,
        })
        .collect();
    f.hub
        .store()
        .ingest("agent-1", "eu", &batch, 0)
        .await
        .unwrap();

    let list = |page_size: u32, token: &str| {
        req(
            &acme,
            v1::ListResultsRequest {
                monitor_id: m.id.clone(),
                page_size,
                page_token: token.into(),
                ..Default::default()
            },
        )
    };
    let p1 = f.api.list_results(list(3, "")).await.unwrap().into_inner();
    assert_eq!(p1.results.len(), 3);
    let p2 = f
        .api
        .list_results(list(3, &p1.next_page_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p2.results.len(), 2);
    assert!(p2.next_page_token.is_empty());

    let (c, msg) = code(f.api.list_results(list(3, "zz-not-hex")).await);
    assert_eq!(
        (c, msg.starts_with("page_token: ")),
        (Code::InvalidArgument, true)
    );
    let (c, msg) = code(f.api.list_results(list(3, "00ff")).await);
    assert_eq!(
        (c, msg.starts_with("page_token: ")),
        (Code::InvalidArgument, true)
    );
    let (c, msg) = code(f.api.list_results(list(1001, "")).await);
    assert_eq!(
        (c, msg.starts_with("page_size: ")),
        (Code::InvalidArgument, true)
    );

    let window = |since: prost_types::Timestamp, until: prost_types::Timestamp| {
        req(
            &acme,
            v1::ListResultsRequest {
                monitor_id: m.id.clone(),
                since: Some(since),
                until: Some(until),
                ..Default::default()
            },
        )
    };
    let ts = |s: i64, n: i32| prost_types::Timestamp {
        seconds: s,
        nanos: n,
    };
    let got = f
        .api
        .list_results(window(ts(2, 0), ts(4, 0)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.results.len(), 2, "since inclusive, until exclusive");
    let (c, msg) = code(f.api.list_results(window(ts(4, 0), ts(2, 0))).await);
    assert_eq!(
        (c, msg.as_str()),
        (Code::InvalidArgument, "since: is after until")
    );
    let (c, msg) = code(f.api.list_results(window(ts(-5, 0), ts(2, 0))).await);
    assert_eq!(
        (c, msg.starts_with("since: ")),
        (Code::InvalidArgument, true)
    );
    let (c, msg) = code(
        f.api
            .list_results(window(ts(1, 0), ts(2, 2_000_000_000)))
            .await,
    );
    assert_eq!(
        (c, msg.starts_with("until: ")),
        (Code::InvalidArgument, true)
    );
    // A token from a wider window past this one's end: an empty page, no error.
    let mut narrow = window(ts(0, 0), ts(2, 0));
    narrow.get_mut().page_token = p1.next_page_token.clone();
    let got = f.api.list_results(narrow).await.unwrap().into_inner();
    assert!(got.results.is_empty());
}

async fn next_event(s: &mut EventStream) -> Option<v1::Event> {
    tokio::time::timeout(Duration::from_millis(300), s.next())
        .await
        .ok()
        .flatten()
        .map(|r| r.unwrap())
}

#[tokio::test]
async fn events_and_incidents_reach_only_their_tenant() {
    let f = fixture();
    let a = f.tenant("alpha", v1::Plan::Pro).await;
    let b = f.tenant("beta", v1::Plan::Pro).await;
    f.region("eu", "").await;
    let m = f
        .create(&a, monitor_req("example.com", 443, &["eu"]))
        .await
        .unwrap()
        .into_inner();

    let watch = |token: &str| req(token, v1::WatchEventsRequest::default());
    let mut op = f.api.watch_events(watch(OP)).await.unwrap().into_inner();
    let mut sa = f.api.watch_events(watch(&a)).await.unwrap().into_inner();
    let mut sb = f.api.watch_events(watch(&b)).await.unwrap().into_inner();
    let other = v1::WatchEventsRequest {
        tenant_id: String::new(),
        monitor_id: m.id.clone(),
    };
    assert_eq!(
        code(f.api.watch_events(req(&b, other)).await).0,
        Code::NotFound
    );

    // An agent comes online in eu (operator-only news) and reports the port refused.
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    f.hub.agent_connected(
        "eu",
        v1::Agent {
            agent_id: "eu-1".into(),
            ..Default::default()
        },
        tx,
    );
    let refused = v1::CheckResult {
        monitor_id: m.id.clone(),
        region: "eu".into(),
        checked_at: Some(now_ts()),
        outcome: v1::Outcome::Refused as i32,
        detail: "Connection refused".into(),
        ..Default::default()
    };
    f.hub.store().put_monitor(&m).unwrap();
    f.hub.results_stored(vec![refused]).await.unwrap();

    let mut kinds = Vec::new();
    while let Some(e) = next_event(&mut op).await {
        kinds.push(match e.kind.unwrap() {
            v1::event::Kind::ProbeRegion(_) => "probe_region",
            v1::event::Kind::RegionState(_) => "region_state",
            v1::event::Kind::IncidentOpened(_) => "incident_opened",
            v1::event::Kind::IncidentClosed(_) => "incident_closed",
            v1::event::Kind::IncidentFlapping(_) => "incident_flapping",
            v1::event::Kind::IncidentAcknowledged(_) => "incident_acknowledged",
        });
    }
    assert_eq!(kinds, ["probe_region", "region_state", "incident_opened"]);
    let mut seen_by_a = 0;
    while let Some(e) = next_event(&mut sa).await {
        assert!(!matches!(e.kind, Some(v1::event::Kind::ProbeRegion(_))));
        seen_by_a += 1;
    }
    assert_eq!(seen_by_a, 2);
    assert!(
        next_event(&mut sb).await.is_none(),
        "beta sees nothing of alpha's"
    );

    // Incidents: alpha lists and reads its own; beta gets NOT_FOUND.
    let list = |token: &str, open_only: bool| {
        req(
            token,
            v1::ListIncidentsRequest {
                open_only,
                ..Default::default()
            },
        )
    };
    let mine = f
        .api
        .list_incidents(list(&a, true))
        .await
        .unwrap()
        .into_inner()
        .incidents;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].monitor_id, m.id);
    assert!(
        f.api
            .list_incidents(list(&b, false))
            .await
            .unwrap()
            .into_inner()
            .incidents
            .is_empty()
    );
    let get = |token: &str, id: &str| {
        req(
            token,
            v1::GetIncidentRequest {
                tenant_id: String::new(),
                id: id.into(),
            },
        )
    };
    let got = f
        .api
        .get_incident(get(&a, &mine[0].id))
        .await
        .unwrap()
        .into_inner();
    // The same incident, with its timeline (lists leave it out).
    let kinds: Vec<&str> = got.timeline.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["confirmed", "opened"]);
    assert_eq!(
        v1::Incident {
            timeline: Vec::new(),
            ..got
        },
        mine[0]
    );
    let hidden = code(f.api.get_incident(get(&b, &mine[0].id)).await);
    assert_eq!(hidden, code(f.api.get_incident(get(&b, "inc-nope")).await));
    assert_eq!(hidden.0, Code::NotFound);
    let status = f
        .api
        .get_monitor_status(req(
            &a,
            v1::GetMonitorStatusRequest {
                tenant_id: String::new(),
                id: m.id.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.overall, v1::OverallState::Down as i32);
    assert_eq!(status.open_incident_id, mine[0].id);

    // Agents: the live one is listed online, for the operator only.
    let agents = f
        .api
        .list_agents(req(
            OP,
            v1::ListAgentsRequest {
                region: "eu".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .agents;
    assert_eq!(agents.len(), 1);
    assert!(agents[0].online);
    assert_eq!(
        code(
            f.api
                .list_agents(req(&a, v1::ListAgentsRequest::default()))
                .await
        )
        .0,
        Code::PermissionDenied
    );
}

fn webhook_channel(url: &str, default: bool) -> v1::Channel {
    v1::Channel {
        name: "ops hook".into(),
        is_default: default,
        config: Some(v1::channel::Config::Webhook(v1::WebhookConfig {
            url: url.into(),
            secret: "0123456789abcdef-secret".into(),
        })),
        ..Default::default()
    }
}

async fn create_channel(
    f: &Fixture,
    token: &str,
    tenant_id: &str,
    c: v1::Channel,
) -> Result<Response<v1::Channel>, Status> {
    f.api
        .create_channel(req(
            token,
            v1::CreateChannelRequest {
                tenant_id: tenant_id.into(),
                channel: Some(c),
            },
        ))
        .await
}

#[tokio::test]
async fn channels_are_per_tenant_write_only_and_validated() {
    let f = fixture();
    let a = f.tenant("alpha", v1::Plan::Pro).await;
    let b = f.tenant("beta", v1::Plan::Pro).await;
    f.region("eu", "").await;

    let ch = create_channel(
        &f,
        &a,
        "",
        webhook_channel("https://hooks.example.com/x", true),
    )
    .await
    .unwrap()
    .into_inner();
    assert_eq!(ch.tenant_id, "alpha");
    assert!(ch.id.starts_with("ch-"));
    let Some(v1::channel::Config::Webhook(w)) = &ch.config else {
        panic!("webhook config")
    };
    assert!(w.secret.is_empty(), "the secret is never returned");
    let stored = f.hub.store().get_channel(&ch.id).unwrap().unwrap();
    let Some(v1::channel::Config::Webhook(w)) = &stored.config else {
        panic!()
    };
    assert_eq!(w.secret, "0123456789abcdef-secret", "but it is stored");

    // Bad config: INVALID_ARGUMENT naming the field, nothing stored.
    let before = f.hub.store().list_channels().unwrap().len();
    for (c, field) in [
        (
            webhook_channel("http://127.0.0.1:9/x", false),
            "channel.webhook.url",
        ),
        (
            webhook_channel("ftp://example.com/x", false),
            "channel.webhook.url",
        ),
        (webhook_channel("::not a url", false), "channel.webhook.url"),
        (
            v1::Channel {
                config: Some(v1::channel::Config::Email(v1::EmailConfig {
                    from: "a@example.com".into(),
                    to: vec!["b@example.com".into()],
                    ..Default::default()
                })),
                ..Default::default()
            },
            "channel.email.smtp_host",
        ),
    ] {
        let (c, msg) = code(create_channel(&f, &a, "", c).await);
        assert_eq!(c, Code::InvalidArgument, "{msg}");
        assert!(msg.starts_with(&format!("{field}: ")), "{msg}");
    }
    let (c, msg) = code(
        f.api
            .create_channel(req(&a, v1::CreateChannelRequest::default()))
            .await,
    );
    assert_eq!(
        (c, msg.as_str()),
        (Code::InvalidArgument, "channel: required")
    );
    assert_eq!(f.hub.store().list_channels().unwrap().len(), before);

    // The operator's own channel may reach internal systems; tenants never see it.
    let op_ch = create_channel(&f, OP, "", webhook_channel("http://127.0.0.1:9/x", false))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(op_ch.tenant_id, "");
    let list = |token: &str, tenant: &str| {
        req(
            token,
            v1::ListChannelsRequest {
                tenant_id: tenant.into(),
            },
        )
    };
    let ids = |r: v1::ListChannelsResponse| -> Vec<String> {
        r.channels.into_iter().map(|c| c.id).collect()
    };
    assert_eq!(
        ids(f
            .api
            .list_channels(list(&a, ""))
            .await
            .unwrap()
            .into_inner()),
        vec![ch.id.clone()]
    );
    assert_eq!(
        ids(f
            .api
            .list_channels(list(OP, ""))
            .await
            .unwrap()
            .into_inner()),
        vec![op_ch.id.clone()]
    );
    assert_eq!(
        ids(f
            .api
            .list_channels(list(OP, "alpha"))
            .await
            .unwrap()
            .into_inner()),
        vec![ch.id.clone()]
    );
    assert!(
        ids(f
            .api
            .list_channels(list(&b, ""))
            .await
            .unwrap()
            .into_inner())
        .is_empty()
    );
    let delete = |token: &str, id: &str| {
        req(
            token,
            v1::DeleteChannelRequest {
                tenant_id: String::new(),
                id: id.into(),
            },
        )
    };
    assert_eq!(
        code(f.api.delete_channel(delete(&b, &ch.id)).await).0,
        Code::NotFound
    );
    let test = req(
        &b,
        v1::TestChannelRequest {
            tenant_id: String::new(),
            id: ch.id.clone(),
        },
    );
    assert_eq!(code(f.api.test_channel(test).await).0, Code::NotFound);

    // A monitor names only its tenant's channels; a named channel cannot go.
    let mut m = monitor_req("example.com", 443, &["eu"]);
    m.channel_ids = vec![op_ch.id.clone()];
    let (c, msg) = code(f.create(&a, m.clone()).await);
    assert_eq!(c, Code::InvalidArgument);
    assert!(msg.starts_with("channel_ids: unknown channel"), "{msg}");
    m.channel_ids = vec![ch.id.clone()];
    let mon = f.create(&a, m).await.unwrap().into_inner();
    let (c, msg) = code(f.api.delete_channel(delete(&a, &ch.id)).await);
    assert_eq!(c, Code::FailedPrecondition, "{msg}");
    f.api
        .delete_monitor(req(
            &a,
            v1::DeleteMonitorRequest {
                tenant_id: String::new(),
                id: mon.id,
            },
        ))
        .await
        .unwrap();
    f.api.delete_channel(delete(&a, &ch.id)).await.unwrap();
    assert!(f.hub.store().get_channel(&ch.id).unwrap().is_none());
}

#[tokio::test]
async fn an_incident_plans_one_delivery_per_default_channel_in_its_transaction() {
    let f = fixture();
    let a = f.tenant("alpha", v1::Plan::Pro).await;
    let b = f.tenant("beta", v1::Plan::Pro).await;
    f.region("eu", "").await;
    let d1 = create_channel(
        &f,
        &a,
        "",
        webhook_channel("https://one.example.com/x", true),
    )
    .await
    .unwrap()
    .into_inner();
    create_channel(
        &f,
        &a,
        "",
        webhook_channel("https://two.example.com/x", false),
    )
    .await
    .unwrap();
    create_channel(
        &f,
        &b,
        "",
        webhook_channel("https://three.example.com/x", true),
    )
    .await
    .unwrap();
    let m = f
        .create(&a, monitor_req("example.com", 443, &["eu"]))
        .await
        .unwrap()
        .into_inner();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    f.hub.agent_connected(
        "eu",
        v1::Agent {
            agent_id: "eu-1".into(),
            ..Default::default()
        },
        tx,
    );
    let refused = v1::CheckResult {
        monitor_id: m.id.clone(),
        region: "eu".into(),
        checked_at: Some(now_ts()),
        outcome: v1::Outcome::Refused as i32,
        ..Default::default()
    };
    f.hub.results_stored(vec![refused]).await.unwrap();
    let incident = f.hub.store().open_incident(&m.id).unwrap().unwrap();

    let list = |token: &str| {
        req(
            token,
            v1::ListDeliveriesRequest {
                incident_id: incident.id.clone(),
                ..Default::default()
            },
        )
    };
    let ds = f
        .api
        .list_deliveries(list(&a))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    assert_eq!(ds.len(), 1, "one default channel of alpha: {ds:?}");
    assert_eq!(ds[0].channel_id, d1.id);
    assert_eq!(ds[0].kind, v1::DeliveryKind::Opened as i32);
    assert_eq!(ds[0].state, v1::DeliveryState::Pending as i32);
    assert_eq!(
        ds[0].idempotency_key,
        format!("{}:opened:{}", incident.id, d1.id)
    );
    assert!(
        f.api
            .list_deliveries(list(&b))
            .await
            .unwrap()
            .into_inner()
            .deliveries
            .is_empty(),
        "beta sees none of alpha's deliveries"
    );
    assert_eq!(f.hub.store().pending_deliveries().unwrap().len(), 1);

    // Recovery: the resolve goes to the channel told of the opening.
    let ok = v1::CheckResult {
        monitor_id: m.id.clone(),
        region: "eu".into(),
        checked_at: Some(now_ts()),
        outcome: v1::Outcome::Ok as i32,
        ..Default::default()
    };
    f.hub.results_stored(vec![ok]).await.unwrap();
    let ds = f
        .api
        .list_deliveries(list(&a))
        .await
        .unwrap()
        .into_inner()
        .deliveries;
    let kinds: Vec<i32> = ds.iter().map(|d| d.kind).collect();
    assert_eq!(
        kinds,
        [
            v1::DeliveryKind::Resolved as i32,
            v1::DeliveryKind::Opened as i32
        ],
        "newest first"
    );
    assert_eq!(ds[0].channel_id, d1.id);
}
