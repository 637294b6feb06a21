//! Bearer tokens on requests: each resolves to its scope; a revoked one to
//! nothing.

use super::*;
use crate::store::TokenRecord;

fn md(v: &str) -> MetadataMap {
    let mut m = MetadataMap::new();
    m.insert("authorization", v.parse().unwrap());
    m
}

#[test]
fn tokens_resolve_to_their_scope_and_revoked_ones_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let auth = Auth::new("op-secret", store.clone());
    let tenant = new_secret("pwt_");
    let agent = new_secret("pwa_");
    for (id, secret, scope) in [
        (
            "t1",
            &tenant,
            TokenScope::Tenant {
                tenant_id: "acme".into(),
            },
        ),
        (
            "a1",
            &agent,
            TokenScope::Agent {
                region: "eu".into(),
            },
        ),
    ] {
        store
            .put_token(&TokenRecord {
                id: id.into(),
                hash: hash_token(secret),
                scope,
                description: String::new(),
                created_at_us: 0,
                revoked: false,
            })
            .unwrap();
    }
    assert_eq!(
        auth.admin(&md("Bearer op-secret")).unwrap(),
        Caller::Operator
    );
    assert_eq!(
        auth.admin(&md(&format!("Bearer {tenant}"))).unwrap(),
        Caller::Tenant("acme".into())
    );
    assert_eq!(
        auth.agent_region(&md(&format!("Bearer {agent}"))).unwrap(),
        "eu"
    );
    assert_eq!(
        auth.admin(&md(&format!("Bearer {agent}")))
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        auth.agent_region(&md(&format!("Bearer {tenant}")))
            .unwrap_err()
            .code(),
        tonic::Code::PermissionDenied
    );
    assert_eq!(
        auth.admin(&md("Bearer nope")).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        auth.admin(&md("Basic xyz")).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );
    assert_eq!(
        auth.admin(&MetadataMap::new()).unwrap_err().code(),
        tonic::Code::Unauthenticated
    );

    let mut rec = store.token_by_id("a1").unwrap().unwrap();
    rec.revoked = true;
    store.put_token(&rec).unwrap();
    assert_eq!(
        auth.agent_region(&md(&format!("Bearer {agent}")))
            .unwrap_err()
            .code(),
        tonic::Code::Unauthenticated
    );
}
