use super::*;

/// A short name for each error variant, so the table can say which it expects.
fn kind(e: &HostError) -> &'static str {
    match e {
        HostError::Empty => "empty",
        HostError::Whitespace => "whitespace",
        HostError::ControlCharacter => "control",
        HostError::TooLong(_) => "too_long",
        HostError::LabelTooLong { .. } => "label_too_long",
        HostError::EmptyLabel => "empty_label",
        HostError::Wildcard => "wildcard",
        HostError::Hyphen(_) => "hyphen",
        HostError::InvalidCharacter(_) => "invalid_char",
        HostError::HasPort => "port",
        HostError::Idna(_) => "idna",
        HostError::ZoneId => "zone",
        HostError::UnclosedBracket => "bracket",
        HostError::InvalidIpv6(_) => "ipv6",
        HostError::NotAnIp => "not_an_ip",
    }
}

enum Want {
    Ip(&'static str),
    Name(&'static str),
    Err(&'static str),
}
use Want::{Err as E, Ip, Name};

fn table() -> Vec<(String, Want)> {
    let s = |x: &str| x.to_owned();
    let label63 = "a".repeat(63);
    let label64 = "a".repeat(64);
    // 4 labels of 63 and dots: 255 characters; of 62: 251.
    let long255 = [label63.as_str(); 4].join(".");
    let label62 = "b".repeat(62);
    let ok251 = [label62.as_str(); 4].join(".");
    let ok253 = format!("{ok251}.c");
    vec![
        // IP literals
        (s("8.8.8.8"), Ip("8.8.8.8")),
        (s("127.0.0.1"), Ip("127.0.0.1")),
        (s("::1"), Ip("::1")),
        (s("[::1]"), Ip("::1")),
        (s("[2001:DB8::1]"), Ip("2001:db8::1")),
        (s("2606:4700::1111"), Ip("2606:4700::1111")),
        (s("::ffff:10.0.0.1"), Ip("::ffff:10.0.0.1")),
        (s("1.2.3.4."), Ip("1.2.3.4")),
        (s("１.２.３.４"), Ip("1.2.3.4")),
        (s("fe80::1%eth0"), E("zone")),
        (s("[fe80::1%25eth0]"), E("zone")),
        (s("[::1"), E("bracket")),
        (s("[1.2.3.4]"), E("ipv6")),
        (s("1:2:3"), E("ipv6")),
        (s("::g"), E("ipv6")),
        (s("example.com:443"), E("port")),
        (s("a:b"), E("invalid_char")),
        // Numeric-looking non-IPs
        (s("1.2.3"), E("not_an_ip")),
        (s("256.1.1.1"), E("not_an_ip")),
        (s("01.2.3.4"), E("not_an_ip")),
        (s("1.2.3.4.5"), E("not_an_ip")),
        (s("127.1"), E("not_an_ip")),
        (s("2130706433"), E("not_an_ip")),
        (s("0x7f.1"), E("not_an_ip")),
        (s("a.0x7F"), E("not_an_ip")),
        (s("1.2.3.com"), Name("1.2.3.com")),
        (s("123.example.com"), Name("123.example.com")),
        (s("host.0xg"), Name("host.0xg")),
        // Names
        (s("example.com"), Name("example.com")),
        (s("Example.COM."), Name("example.com")),
        (s("db1"), Name("db1")),
        (s("a-b.c-d.e"), Name("a-b.c-d.e")),
        (s("_sip._tcp.example.com"), Name("_sip._tcp.example.com")),
        (
            s("r3---sn-abc.googlevideo.com"),
            Name("r3---sn-abc.googlevideo.com"),
        ),
        (s("bücher.example"), Name("xn--bcher-kva.example")),
        (s("BÜCHER.example"), Name("xn--bcher-kva.example")),
        (s("xn--bcher-kva.example"), Name("xn--bcher-kva.example")),
        (s("例え.テスト"), Name("xn--r8jz45g.xn--zckzah")),
        (s("例え。テスト。"), Name("xn--r8jz45g.xn--zckzah")),
        (
            format!("{label63}.com"),
            Name(Box::leak(format!("{label63}.com").into_boxed_str())),
        ),
        (ok253.clone(), Name(Box::leak(ok253.into_boxed_str()))),
        // Bad names
        (s(""), E("empty")),
        (s(" example.com"), E("whitespace")),
        (s("example.com "), E("whitespace")),
        (s("exa mple.com"), E("whitespace")),
        (s("example.com\n"), E("whitespace")),
        (s("exa\u{0}mple.com"), E("control")),
        (s("exa\u{7f}mple.com"), E("control")),
        (s("*.example.com"), E("wildcard")),
        (s("a.*"), E("wildcard")),
        (s("-a.example.com"), E("hyphen")),
        (s("a-.example.com"), E("hyphen")),
        (s("a..b"), E("empty_label")),
        (s(".a"), E("empty_label")),
        (s("."), E("empty_label")),
        (s("a.."), E("empty_label")),
        (s("exa/mple.com"), E("invalid_char")),
        (s("user@example.com"), E("invalid_char")),
        (s("exa%mple.com"), E("invalid_char")),
        (s("a／b.com"), E("invalid_char")),
        (s("http://example.com"), E("invalid_char")),
        (s("xn--zz.com"), E("idna")),
        (s("xn--a.com"), E("idna")),
        (s("a\u{200b}\u{0660}.com"), E("idna")),
        (format!("{label64}.com"), E("label_too_long")),
        (long255, E("too_long")),
        (format!("{}.com", "ü".repeat(60)), E("label_too_long")),
    ]
}

#[test]
fn parse_table() {
    let rows = table();
    assert!(rows.len() >= 40, "table has {} rows", rows.len());
    let mut wrong = Vec::new();
    for (input, want) in rows {
        let got = Host::parse(&input);
        let ok = match (&want, &got) {
            (Want::Ip(a), Ok(Host::Ip(ip))) => ip.to_string() == *a,
            (Want::Name(n), Ok(Host::Name(name))) => name == n,
            (Want::Err(k), Err(e)) => kind(e) == *k,
            _ => false,
        };
        if !ok {
            let want = match want {
                Want::Ip(a) => format!("Ip({a})"),
                Want::Name(n) => format!("Name({n})"),
                Want::Err(k) => format!("Err({k})"),
            };
            wrong.push(format!("{input:?}: want {want}, got {got:?}"));
        }
    }
    assert!(wrong.is_empty(), "\n{}", wrong.join("\n"));
}

#[test]
fn messages() {
    let msg = |s: &str| Host::parse(s).map(|h| h.as_str()).unwrap_err().to_string();
    assert_eq!(msg(""), "must not be empty");
    assert_eq!(msg(" a"), "contains whitespace");
    assert_eq!(
        msg(&"a.".repeat(150)),
        "is 299 characters long; at most 253"
    );
    assert_eq!(
        msg(&format!("{}.com", "x".repeat(64))),
        "label \"xxxxxxxxxxxxxxxxxxxx…\" is 64 characters; at most 63"
    );
    assert_eq!(msg("*.a"), "wildcards are not allowed");
    assert_eq!(msg("-a"), "label \"-a\" must not start or end with '-'");
    assert_eq!(msg("a!b"), "invalid character '!'");
    assert_eq!(msg("fe80::1%eth0"), "IPv6 literal must not carry a zone id");
    assert_eq!(
        msg("1.2.3"),
        "looks like an IP address but is not a valid one"
    );
    assert!(msg("xn--zz").starts_with("not a valid IDNA name: "));
}

#[test]
fn as_str_and_display() {
    let h = |s: &str| Host::parse(s).unwrap();
    assert_eq!(h("[2001:db8::1]").as_str(), "2001:db8::1");
    assert_eq!(h("10.0.0.1").as_str(), "10.0.0.1");
    assert_eq!(h("Bücher.Example.").as_str(), "xn--bcher-kva.example");
    assert_eq!(h("db1").to_string(), "db1");
}

#[test]
fn local_names() {
    let local = [
        "localhost",
        "LOCALHOST",
        "localhost.",
        "app.localhost",
        "localhost.localdomain",
        "printer.local",
        "Printer.Local.",
        "local",
        "db.internal",
        "nas.home.arpa",
        "foo.invalid",
        "foo.test",
        "abcdefghijklmnop.onion",
    ];
    for name in local {
        assert!(is_local_name(name), "{name} should be local");
    }
    let public = [
        "example.com",
        "example",
        "www.example",
        "mylocalhost",
        "localhost.com",
        "notlocal",
        "local.example.com",
        "internal.example.com",
        "home.arpa.example.com",
        "arpa",
        "foo.localdomain",
        "testing.com",
        "contest",
    ];
    for name in public {
        assert!(!is_local_name(name), "{name} should not be local");
    }
}

#[test]
fn non_public_hosts() {
    let h = |s: &str| Host::parse(s).unwrap();
    assert!(h("127.0.0.1").is_non_public());
    assert!(h("[::1]").is_non_public());
    assert!(h("localhost").is_non_public());
    assert!(h("printer.local.").is_non_public());
    assert!(!h("8.8.8.8").is_non_public());
    assert!(!h("example.com").is_non_public());
}
