//! The server's reason to exist is the probe's resolver, so check that hickory,
//! configured the way the check crate configures it (UDP with TCP fallback on our
//! port), understands every kind of answer: addresses, negative answers, errors,
//! silence, truncation and caching.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::lookup_ip::LookupIp;
use hickory_resolver::net::{NetError, runtime::TokioRuntimeProvider};
use portwatch_testdns::{Answer, DnsServer};
use tokio::time::timeout;

/// Bound on every lookup; the resolver's own timeout is shorter.
const LOOKUP_WAIT: Duration = Duration::from_secs(5);

fn resolver_for(server: SocketAddr, udp: bool) -> TokioResolver {
    let mut tcp_conn = ConnectionConfig::tcp();
    tcp_conn.port = server.port();
    let mut connections = vec![tcp_conn];
    if udp {
        let mut udp_conn = ConnectionConfig::udp();
        udp_conn.port = server.port();
        connections.insert(0, udp_conn);
    }
    let config = ResolverConfig::from_name_servers(vec![NameServerConfig::new(
        server.ip(),
        true,
        connections,
    )]);
    let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
    let opts = builder.options_mut();
    opts.timeout = Duration::from_millis(300);
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    builder.build().unwrap()
}

async fn lookup(resolver: &TokioResolver, name: &str) -> Result<LookupIp, NetError> {
    timeout(LOOKUP_WAIT, resolver.lookup_ip(name))
        .await
        .unwrap()
}

fn sorted(lookup: &LookupIp) -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = lookup.iter().collect();
    addrs.sort();
    addrs
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn resolves_both_families_over_udp_and_over_tcp() {
    let dns = DnsServer::start().await.unwrap();
    dns.set(
        "app.region.test",
        Answer::Addrs(vec![ip("192.0.2.8"), ip("2001:db8::8")]),
    );
    for udp in [true, false] {
        let resolver = resolver_for(dns.addr(), udp);
        let found = lookup(&resolver, "app.region.test.").await.unwrap();
        assert_eq!(
            sorted(&found),
            [ip("192.0.2.8"), ip("2001:db8::8")],
            "udp={udp}"
        );
    }
}

#[tokio::test]
async fn negative_answers_and_errors_reach_the_resolver() {
    let dns = DnsServer::start().await.unwrap();
    dns.set("empty.test", Answer::Addrs(vec![]));
    dns.set("broken.test", Answer::ServFail);
    dns.set("closed.test", Answer::Refused);
    let resolver = resolver_for(dns.addr(), true);

    let err = lookup(&resolver, "missing.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    match lookup(&resolver, "empty.test.").await {
        Ok(found) => assert_eq!(found.iter().count(), 0),
        Err(err) => assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}"),
    }
    for name in ["broken.test.", "closed.test."] {
        let err = lookup(&resolver, name).await.unwrap_err();
        assert!(
            !err.is_nx_domain() && !err.is_no_records_found(),
            "{name}: {err:?}"
        );
    }
}

#[tokio::test]
async fn drop_makes_the_resolver_time_out() {
    let dns = DnsServer::start().await.unwrap();
    dns.set("blackhole.test", Answer::Drop);
    let resolver = resolver_for(dns.addr(), true);
    let err = lookup(&resolver, "blackhole.test.").await.unwrap_err();
    assert!(!err.is_nx_domain(), "{err:?}");
    assert!(dns.queries("blackhole.test") >= 1);
}

#[tokio::test]
async fn truncated_udp_answers_are_completed_over_tcp() {
    let dns = DnsServer::start().await.unwrap();
    // 100 A records (1.6 kB) exceed the 1232-byte EDNS payload.
    let many: Vec<IpAddr> = (1..=100u8).map(|i| IpAddr::from([10, 1, 0, i])).collect();
    dns.set("many.test", Answer::Addrs(many.clone()));
    let resolver = resolver_for(dns.addr(), true);
    let found = lookup(&resolver, "many.test.").await.unwrap();
    assert_eq!(sorted(&found), many);
}

#[tokio::test]
async fn answers_are_cached_for_the_ttl() {
    let dns = DnsServer::start().await.unwrap();
    dns.set_ttl(60);
    dns.set("cached.test", Answer::Addrs(vec![ip("192.0.2.9")]));
    let resolver = resolver_for(dns.addr(), true);
    lookup(&resolver, "cached.test.").await.unwrap();
    let after_first = dns.queries("cached.test");
    assert!(after_first >= 1);
    lookup(&resolver, "cached.test.").await.unwrap();
    assert_eq!(dns.queries("cached.test"), after_first);
}
