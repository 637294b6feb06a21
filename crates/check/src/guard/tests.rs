use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test address {s}: {e}"))
}

fn cidr(s: &str) -> Cidr {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test CIDR {s}: {e}"))
}

/// (address, public?) — every range, its first and last address, and the public
/// neighbours just outside each edge.
const TABLE: &[(&str, bool)] = &[
    // 0.0.0.0/8
    ("0.0.0.0", false),
    ("0.255.255.255", false),
    ("1.0.0.0", true),
    ("1.1.1.1", true),
    // 10/8
    ("9.255.255.255", true),
    ("10.0.0.0", false),
    ("10.255.255.255", false),
    ("11.0.0.0", true),
    ("8.8.8.8", true),
    // 100.64/10
    ("100.63.255.255", true),
    ("100.64.0.0", false),
    ("100.127.255.255", false),
    ("100.128.0.0", true),
    // 127/8
    ("126.255.255.255", true),
    ("127.0.0.0", false),
    ("127.0.0.1", false),
    ("127.255.255.255", false),
    ("128.0.0.0", true),
    // 169.254/16
    ("169.253.255.255", true),
    ("169.254.0.0", false),
    ("169.254.169.254", false),
    ("169.254.255.255", false),
    ("169.255.0.0", true),
    // 172.16/12
    ("172.15.255.255", true),
    ("172.16.0.0", false),
    ("172.31.255.255", false),
    ("172.32.0.0", true),
    // 192.0.0/24, 192.0.2/24
    ("191.255.255.255", true),
    ("192.0.0.0", false),
    ("192.0.0.255", false),
    ("192.0.1.0", true),
    ("192.0.1.255", true),
    ("192.0.2.0", false),
    ("192.0.2.255", false),
    ("192.0.3.0", true),
    // 192.88.99/24
    ("192.88.98.255", true),
    ("192.88.99.0", false),
    ("192.88.99.255", false),
    ("192.88.100.0", true),
    // 192.168/16
    ("192.167.255.255", true),
    ("192.168.0.0", false),
    ("192.168.255.255", false),
    ("192.169.0.0", true),
    // 198.18/15
    ("198.17.255.255", true),
    ("198.18.0.0", false),
    ("198.19.255.255", false),
    ("198.20.0.0", true),
    // 198.51.100/24
    ("198.51.99.255", true),
    ("198.51.100.0", false),
    ("198.51.100.255", false),
    ("198.51.101.0", true),
    // 203.0.113/24
    ("203.0.112.255", true),
    ("203.0.113.0", false),
    ("203.0.113.255", false),
    ("203.0.114.0", true),
    // 224/4, 240/4, broadcast
    ("223.255.255.255", true),
    ("224.0.0.0", false),
    ("239.255.255.255", false),
    ("240.0.0.0", false),
    ("255.255.255.254", false),
    ("255.255.255.255", false),
    // IPv6 fixed addresses and the IPv4-compatible block
    ("::", false),
    ("::1", false),
    ("::2", false),
    ("::8.8.8.8", false),
    ("::ffff:ffff", false),
    // IPv4-mapped: the embedded IPv4 decides
    ("::ffff:0.0.0.0", false),
    ("::ffff:8.8.8.8", true),
    ("::ffff:127.0.0.1", false),
    ("::ffff:10.0.0.1", false),
    ("::ffff:255.255.255.255", false),
    ("::ffff:223.255.255.255", true),
    // NAT64 well-known: the last 32 bits decide
    ("64:ff9b::808:808", true),
    ("64:ff9b::8.8.8.8", true),
    ("64:ff9b::a00:1", false),
    ("64:ff9b::7f00:1", false),
    ("64:ff9b::", false),
    ("64:ff9b::1:0:0", false),
    // NAT64 local-use: refused whatever it carries
    ("64:ff9b:1::", false),
    ("64:ff9b:1::808:808", false),
    ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", false),
    ("64:ff9b:2::808:808", false),
    // 100::/64
    ("100::", false),
    ("100::ffff:ffff:ffff:ffff", false),
    ("100:0:0:1::", false),
    // 2001::/23 (Teredo and ORCHID inside) and its public neighbours
    ("2000::1", true),
    ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
    ("2001::", false),
    ("2001:0:4136:e378::1", false),
    ("2001:10::1", false),
    ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("2001:200::", true),
    ("2001:4860:4860::8888", true),
    // 2001:db8::/32
    ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", true),
    ("2001:db8::", false),
    ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("2001:db9::", true),
    // 6to4: bits 16..48 decide
    ("2002:0808:0808::", true),
    ("2002:808:808::1", true),
    ("2002:c0a8:0101::", false),
    ("2002:7f00:1::", false),
    ("2002::", false),
    ("2002:ffff:ffff::", false),
    ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
    ("2003::", true),
    // 3fff::/20
    ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
    ("3fff::", false),
    ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("3fff:1000::", true),
    // Public IPv6 elsewhere in 2000::/3
    ("2606:4700::1111", true),
    ("2620:4f:8000::", true),
    ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", true),
    ("2a00:1450:4001:81c::200e", true),
    // Outside 2000::/3
    ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("4000::", false),
    ("5f00::", false),
    ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("::ffff:0:8.8.8.8", false),
    // fc00::/7, fe80::/10, fec0::/10, ff00::/8
    ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("fc00::", false),
    ("fd12:3456::1", false),
    ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("fe80::", false),
    ("fe80::1", false),
    ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("fec0::", false),
    ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
    ("ff00::", false),
    ("ff02::1", false),
    ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", false),
];

#[test]
fn table() {
    assert!(TABLE.len() >= 70, "table has {} rows", TABLE.len());
    let mut wrong = Vec::new();
    for &(input, public) in TABLE {
        let addr = ip(input);
        if is_public(addr) != public {
            wrong.push(format!(
                "{input}: want public={public}, got {:?}",
                non_public_range(addr)
            ));
        }
        assert_eq!(is_public(addr), non_public_range(addr).is_none(), "{input}");
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn names_the_range() {
    let cases = [
        ("10.1.2.3", "10.0.0.0/8 private-use"),
        ("255.255.255.255", "255.255.255.255/32 limited broadcast"),
        ("250.0.0.1", "240.0.0.0/4 reserved"),
        ("::ffff:127.0.0.1", "127.0.0.0/8 loopback"),
        ("2002:c0a8:0101::", "192.168.0.0/16 private-use"),
        ("64:ff9b::a00:1", "10.0.0.0/8 private-use"),
        ("64:ff9b:1::808:808", "64:ff9b:1::/48 local-use NAT64"),
        ("2001::1", "2001::/23 IETF protocol assignments"),
        ("::1", "::1/128 loopback"),
        ("::8.8.8.8", "::/96 IPv4-compatible (deprecated)"),
        ("4000::1", V6_NOT_GLOBAL_UNICAST),
    ];
    for (input, want) in cases {
        assert_eq!(non_public_range(ip(input)), Some(want), "{input}");
    }
}

/// Each name starts with its block in CIDR form, and that block is the table's.
#[test]
fn table_names_match_the_blocks() {
    for b in V4_BLOCKS {
        let named = cidr(b.name.split(' ').next().unwrap_or_default());
        assert_eq!(
            named,
            Cidr::new(IpAddr::V4(Ipv4Addr::from_bits(b.net)), b.prefix).unwrap()
        );
        assert_eq!(b.net & !mask4(b.prefix), 0, "{} has host bits", b.name);
    }
    for b in V6_BLOCKS {
        let named = cidr(b.name.split(' ').next().unwrap_or_default());
        assert_eq!(
            named,
            Cidr::new(IpAddr::V6(Ipv6Addr::from_bits(b.net)), b.prefix).unwrap()
        );
        assert_eq!(b.net & !mask6(b.prefix), 0, "{} has host bits", b.name);
    }
}

#[test]
fn cidr_parses_and_round_trips() {
    for s in [
        "10.0.0.0/8",
        "fd00::/8",
        "0.0.0.0/0",
        "::/0",
        "192.0.2.7/32",
        "2001:db8::1/128",
    ] {
        assert_eq!(cidr(s).to_string(), s);
    }
    assert_eq!(cidr("10.0.0.0/8").prefix(), 8);
    assert_eq!(cidr("10.0.0.0/8").addr(), ip("10.0.0.0"));
}

#[test]
fn cidr_clears_host_bits() {
    assert_eq!(cidr("10.1.2.3/8").to_string(), "10.0.0.0/8");
    assert_eq!(cidr("fd12:3456::1/8").to_string(), "fd00::/8");
    assert_eq!(cidr("172.31.255.255/12"), cidr("172.16.0.0/12"));
}

#[test]
fn cidr_rejects() {
    let cases: [(&str, CidrError); 10] = [
        (
            "10.0.0.0/33",
            CidrError::PrefixTooLong {
                prefix: 33,
                max: 32,
                family: "IPv4",
            },
        ),
        (
            "fd00::/129",
            CidrError::PrefixTooLong {
                prefix: 129,
                max: 128,
                family: "IPv6",
            },
        ),
        (
            "10.0.0.0/300",
            CidrError::PrefixTooLong {
                prefix: 300,
                max: 32,
                family: "IPv4",
            },
        ),
        ("x/8", CidrError::BadAddress("x".into())),
        ("10.0.0.0", CidrError::MissingPrefix("10.0.0.0".into())),
        ("10.0.0.0/", CidrError::BadPrefix("".into())),
        ("10.0.0.0/+8", CidrError::BadPrefix("+8".into())),
        ("10.0.0.0/8/8", CidrError::BadPrefix("8/8".into())),
        ("[fd00::]/8", CidrError::BadAddress("[fd00::]".into())),
        (
            "fe80::1%eth0/64",
            CidrError::BadAddress("fe80::1%eth0".into()),
        ),
    ];
    for (input, want) in cases {
        assert_eq!(input.parse::<Cidr>(), Err(want), "{input}");
    }
    let err = "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string();
    assert_eq!(
        err,
        "prefix /33 is longer than the 32 bits of an IPv4 address"
    );
    let err = "x/8".parse::<Cidr>().unwrap_err().to_string();
    assert_eq!(err, "\"x\" is not an IPv4 or IPv6 address");
}

#[test]
fn cidr_contains() {
    let net = cidr("10.0.0.0/8");
    assert!(net.contains(ip("10.0.0.0")));
    assert!(net.contains(ip("10.255.255.255")));
    assert!(!net.contains(ip("11.0.0.0")));
    assert!(
        net.contains(ip("::ffff:10.1.1.1")),
        "IPv4-mapped counts as its IPv4"
    );
    assert!(
        !net.contains(ip("64:ff9b::a00:1")),
        "NAT64 goes through a translator"
    );
    assert!(!cidr("::/0").contains(ip("10.0.0.1")));
    assert!(cidr("0.0.0.0/0").contains(ip("203.0.113.9")));
    assert!(cidr("fd00::/8").contains(ip("fd12::1")));
    assert!(!cidr("fd00::/8").contains(ip("fc00::1")));
}

#[test]
fn public_only() {
    let g = Guard::public_only();
    assert_eq!(g, Guard::default());
    assert_eq!(g.check(ip("8.8.8.8")), Ok(()));
    assert_eq!(g.check(ip("2606:4700::1111")), Ok(()));
    assert_eq!(
        g.check(ip("127.0.0.1")),
        Err("127.0.0.1 is non-public: 127.0.0.0/8 loopback".into())
    );
    assert_eq!(
        g.check(ip("::ffff:192.168.1.1")),
        Err(
            "::ffff:192.168.1.1 is non-public: 192.168.0.0/16 private-use \
             (IPv4 carried in ::ffff:0:0/96 IPv4-mapped)"
                .into()
        )
    );
    assert!(g.check(ip("fe80::1")).is_err());
    assert!(g.check(ip("0.0.0.0")).is_err());
}

#[test]
fn allow_private() {
    let g = Guard::allow_private();
    for a in [
        "127.0.0.1",
        "10.0.0.1",
        "::1",
        "fd00::1",
        "8.8.8.8",
        "0.0.0.0",
    ] {
        assert_eq!(g.check(ip(a)), Ok(()), "{a}");
    }
}

#[test]
fn allow_private_in() {
    let g = Guard::allow_private_in(vec![cidr("10.1.0.0/16"), cidr("fd00:1::/32")]);
    assert_eq!(g.check(ip("10.1.2.3")), Ok(()));
    assert_eq!(g.check(ip("::ffff:10.1.2.3")), Ok(()));
    assert_eq!(g.check(ip("fd00:1::5")), Ok(()));
    assert_eq!(g.check(ip("8.8.8.8")), Ok(()), "public is always allowed");
    assert_eq!(g.check(ip("2001:4860:4860::8888")), Ok(()));
    assert_eq!(
        g.check(ip("10.2.0.1")),
        Err("10.2.0.1 is non-public: 10.0.0.0/8 private-use, \
             and outside the allowed ranges 10.1.0.0/16, fd00:1::/32"
            .into())
    );
    assert!(g.check(ip("127.0.0.1")).is_err());
    assert!(g.check(ip("fd00:2::1")).is_err());
    assert_eq!(Guard::allow_private_in(Vec::new()), Guard::public_only());
}
