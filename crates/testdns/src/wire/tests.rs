use super::*;

/// A query for `name` as a resolver would send it, optionally with an OPT record.
fn query_bytes(name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = Vec::new();
    put_header(
        &mut out,
        0xBEEF,
        FLAG_RD,
        [1, 0, 0, u16::from(edns.is_some())],
    );
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&CLASS_IN.to_be_bytes());
    if let Some(size) = edns {
        out.push(0);
        put_record(&mut out, TYPE_OPT, size, 0, &[]);
    }
    out
}

fn u16_at(msg: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([msg[at], msg[at + 1]])
}

#[test]
fn parses_a_plain_query() {
    let msg = query_bytes("WWW.Example.com.", TYPE_AAAA, None);
    let q = parse_query(&msg).unwrap();
    assert_eq!(q.id, 0xBEEF);
    assert_eq!(q.opcode, 0);
    assert!(q.rd);
    assert_eq!(q.name, "www.example.com");
    assert_eq!(q.qtype, TYPE_AAAA);
    assert_eq!(q.qclass, CLASS_IN);
    assert_eq!(q.edns_payload, None);
    assert_eq!(q.question, &msg[HEADER_LEN..]);
    assert_eq!(q.udp_limit(), 512);
}

#[test]
fn reads_the_edns_payload_size() {
    let q_bytes = query_bytes("a.test", TYPE_A, Some(4096));
    let q = parse_query(&q_bytes).unwrap();
    assert_eq!(q.edns_payload, Some(4096));
    assert_eq!(q.udp_limit(), usize::from(OUR_UDP_PAYLOAD));
    let small = query_bytes("a.test", TYPE_A, Some(100));
    assert_eq!(parse_query(&small).unwrap().udp_limit(), 512);
}

#[test]
fn escapes_dots_inside_labels() {
    let mut msg = Vec::new();
    put_header(&mut msg, 1, 0, [1, 0, 0, 0]);
    msg.extend_from_slice(b"\x03a.b\x00\x00\x01\x00\x01");
    assert_eq!(parse_query(&msg).unwrap().name, "a\\.b");
}

#[test]
fn rejects_malformed_queries() {
    let good = query_bytes("a.test", TYPE_A, None);
    let mut response = good.clone();
    response[2] |= 0x80;
    let mut two_questions = good.clone();
    two_questions[5] = 2;
    let mut pointer = good[..HEADER_LEN].to_vec();
    pointer.extend_from_slice(&[0xC0, 0x0C, 0, 1, 0, 1]);
    let mut long = Vec::new();
    put_header(&mut long, 1, 0, [1, 0, 0, 0]);
    for _ in 0..5 {
        long.push(63);
        long.extend_from_slice(&[b'x'; 63]);
    }
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    let mut lying_count = good.clone();
    lying_count[11] = 9;

    let cases: [(&str, &[u8], WireError); 7] = [
        ("empty", &[], WireError::Truncated("header")),
        ("short header", &good[..5], WireError::Truncated("header")),
        ("response", &response, WireError::NotAQuery),
        ("two questions", &two_questions, WireError::QuestionCount(2)),
        ("pointer in question", &pointer, WireError::BadLabel(0xC0)),
        ("name too long", &long, WireError::NameTooLong),
        (
            "missing records",
            &lying_count,
            WireError::Truncated("record name"),
        ),
    ];
    for (what, msg, want) in cases {
        assert_eq!(parse_query(msg).unwrap_err(), want, "{what}");
    }
}

#[test]
fn never_panics_on_damaged_input() {
    let good = query_bytes("some.name.example", TYPE_A, Some(1232));
    for end in 0..good.len() {
        let _ = parse_query(&good[..end]);
    }
    for at in 0..good.len() {
        for bit in 0..8 {
            let mut bad = good.clone();
            bad[at] ^= 1 << bit;
            match parse_query(&bad) {
                Ok(q) => {
                    let reply = Reply {
                        rcode: Rcode::NoError,
                        addrs: vec!["192.0.2.1".parse().unwrap()],
                        ttl: 1,
                    };
                    let _ = encode_reply(&q, &reply, q.udp_limit());
                }
                Err(e) => {
                    let _ = encode_formerr(&bad, &e);
                }
            }
        }
    }
}

#[test]
fn encodes_an_answer() {
    let msg = query_bytes("a.test", TYPE_A, None);
    let q = parse_query(&msg).unwrap();
    let reply = Reply {
        rcode: Rcode::NoError,
        addrs: vec!["192.0.2.1".parse().unwrap()],
        ttl: 7,
    };
    let out = encode_reply(&q, &reply, 512);
    assert_eq!(u16_at(&out, 0), 0xBEEF);
    assert_eq!(
        u16_at(&out, 2),
        FLAG_QR | FLAG_AA | FLAG_RD | FLAG_RA,
        "flags"
    );
    assert_eq!(
        [
            u16_at(&out, 4),
            u16_at(&out, 6),
            u16_at(&out, 8),
            u16_at(&out, 10)
        ],
        [1, 1, 0, 0]
    );
    let answer = &out[msg.len()..];
    assert_eq!(
        answer,
        [0xC0, 0x0C, 0, 1, 0, 1, 0, 0, 0, 7, 0, 4, 192, 0, 2, 1]
    );
}

#[test]
fn negative_answers_carry_an_soa_and_opt_is_echoed() {
    let msg = query_bytes("a.test", TYPE_AAAA, Some(1400));
    let q = parse_query(&msg).unwrap();
    for rcode in [Rcode::NxDomain, Rcode::NoError] {
        let reply = Reply {
            rcode,
            addrs: vec![],
            ttl: 5,
        };
        let out = encode_reply(&q, &reply, 1232);
        assert_eq!(u16_at(&out, 2) & 0x0F, rcode as u16);
        assert_eq!(
            [
                u16_at(&out, 4),
                u16_at(&out, 6),
                u16_at(&out, 8),
                u16_at(&out, 10)
            ],
            [1, 0, 1, 1]
        );
        // The OPT record is the last 11 bytes.
        let opt = &out[out.len() - 11..];
        assert_eq!(opt, [0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
    }
    let out = encode_reply(&q, &Reply::error(Rcode::ServFail), 1232);
    assert_eq!(u16_at(&out, 8), 0, "no SOA on SERVFAIL");
}

#[test]
fn oversized_replies_are_truncated() {
    let msg = query_bytes("a.test", TYPE_A, None);
    let q = parse_query(&msg).unwrap();
    let reply = Reply {
        rcode: Rcode::NoError,
        addrs: (0..40u8).map(|i| IpAddr::from([192, 0, 2, i])).collect(),
        ttl: 1,
    };
    let out = encode_reply(&q, &reply, 512);
    assert_ne!(u16_at(&out, 2) & FLAG_TC, 0);
    assert_eq!(u16_at(&out, 6), 0);
    assert_eq!(out.len(), msg.len());
    let out = encode_reply(&q, &reply, TCP_LIMIT);
    assert_eq!(u16_at(&out, 2) & FLAG_TC, 0);
    assert_eq!(u16_at(&out, 6), 40);
}

#[test]
fn formerr_only_for_queries_with_a_header() {
    let good = query_bytes("a.test", TYPE_A, None);
    let mut bad = good[..HEADER_LEN + 3].to_vec();
    let err = parse_query(&bad).unwrap_err();
    let out = encode_formerr(&bad, &err).unwrap();
    assert_eq!(u16_at(&out, 0), 0xBEEF);
    assert_eq!(u16_at(&out, 2), FLAG_QR | FLAG_RD | FLAG_RA | 1);
    assert_eq!(out.len(), HEADER_LEN);
    assert_eq!(
        encode_formerr(&good[..4], &WireError::Truncated("header")),
        None
    );
    bad[2] |= 0x80;
    assert_eq!(encode_formerr(&bad, &WireError::NotAQuery), None);
}
