//! DNS wire format, just enough for a loopback authoritative server (RFC 1035,
//! RFC 6891 for EDNS): parse one query, encode one reply.
//!
//! Everything here is a pure function over byte slices. Every read goes through
//! [`Reader`], which returns an error instead of indexing past the end, so a
//! malformed packet from the network becomes an `Err`, never a panic.

use std::net::IpAddr;

pub(crate) const TYPE_A: u16 = 1;
pub(crate) const TYPE_AAAA: u16 = 28;
const TYPE_SOA: u16 = 6;
const TYPE_OPT: u16 = 41;
pub(crate) const CLASS_IN: u16 = 1;

const HEADER_LEN: usize = 12;
/// Longest name on the wire, root label included (RFC 1035 §2.3.4).
const MAX_NAME_LEN: usize = 255;
/// Largest UDP reply to a query without EDNS (RFC 1035 §4.2.1).
const CLASSIC_UDP_LIMIT: usize = 512;
/// The UDP payload size we advertise and honour at most: the usual safe value that
/// avoids IP fragmentation.
const OUR_UDP_PAYLOAD: u16 = 1232;
/// Largest message the 2-byte TCP length prefix can frame.
pub(crate) const TCP_LIMIT: usize = u16::MAX as usize;

const FLAG_QR: u16 = 1 << 15;
const FLAG_AA: u16 = 1 << 10;
const FLAG_TC: u16 = 1 << 9;
const FLAG_RD: u16 = 1 << 8;
const FLAG_RA: u16 = 1 << 7;

/// Pointer to the question name, which always starts right after the header.
const NAME_POINTER: [u8; 2] = [0xC0, HEADER_LEN as u8];

/// Response codes we send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rcode {
    NoError = 0,
    FormErr = 1,
    ServFail = 2,
    NxDomain = 3,
    NotImp = 4,
    Refused = 5,
}

/// Why a packet is not a query we can answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WireError {
    #[error("message ends inside the {0}")]
    Truncated(&'static str),
    #[error("message is a response, not a query")]
    NotAQuery,
    #[error("expected exactly one question, got {0}")]
    QuestionCount(u16),
    #[error("length byte {0:#04x} is not a plain label")]
    BadLabel(u8),
    #[error("name longer than {MAX_NAME_LEN} octets")]
    NameTooLong,
}

/// One parsed query: what the zone must answer and what the reply must echo.
#[derive(Debug)]
pub(crate) struct Query<'a> {
    pub(crate) id: u16,
    pub(crate) opcode: u8,
    pub(crate) rd: bool,
    /// Lower-case, dot-separated, no trailing dot (the root is ""), so it compares
    /// equal to a name normalised by the zone.
    pub(crate) name: String,
    pub(crate) qtype: u16,
    pub(crate) qclass: u16,
    /// The requester's UDP payload size from its OPT record, if it sent one.
    pub(crate) edns_payload: Option<u16>,
    /// The question section as received (the name in the sender's case), echoed verbatim.
    question: &'a [u8],
}

impl Query<'_> {
    /// Largest reply this query may get over UDP.
    pub(crate) fn udp_limit(&self) -> usize {
        match self.edns_payload {
            Some(size) => usize::from(size.min(OUR_UDP_PAYLOAD)).max(CLASSIC_UDP_LIMIT),
            None => CLASSIC_UDP_LIMIT,
        }
    }
}

/// What a reply says; the zone decides it, [`encode_reply`] lays it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) rcode: Rcode,
    /// Answer records, already filtered to the query type.
    pub(crate) addrs: Vec<IpAddr>,
    pub(crate) ttl: u32,
}

impl Reply {
    pub(crate) fn error(rcode: Rcode) -> Self {
        Reply {
            rcode,
            addrs: Vec::new(),
            ttl: 0,
        }
    }

    /// NXDOMAIN and NODATA are authoritative negative answers: they carry an SOA
    /// whose minimum is our TTL, so resolvers cache them as long as addresses.
    fn is_negative(&self) -> bool {
        self.rcode == Rcode::NxDomain || (self.rcode == Rcode::NoError && self.addrs.is_empty())
    }
}

/// Bounds-checked cursor over a message.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(msg: &'a [u8]) -> Self {
        Reader { msg, pos: 0 }
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let bytes = self
            .pos
            .checked_add(n)
            .and_then(|end| self.msg.get(self.pos..end))
            .ok_or(WireError::Truncated(what))?;
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        let [b] = self.array(what)?;
        Ok(b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }

    /// Reads an uncompressed name into the normalised text form. Queries never need
    /// compression (the question is the first name), so a pointer here is malformed.
    fn question_name(&mut self) -> Result<String, WireError> {
        let mut text = Vec::new();
        let mut wire_len = 1; // the root label
        loop {
            let len = self.u8("question name")?;
            if len == 0 {
                break;
            }
            if len & 0xC0 != 0 {
                return Err(WireError::BadLabel(len));
            }
            wire_len += 1 + usize::from(len);
            if wire_len > MAX_NAME_LEN {
                return Err(WireError::NameTooLong);
            }
            let label = self.take(usize::from(len), "question name")?;
            if !text.is_empty() {
                text.push(b'.');
            }
            for &b in label {
                // A dot inside a label must not make "a.b" (one label) match a.b.
                if b == b'.' || b == b'\\' {
                    text.push(b'\\');
                }
                text.push(b.to_ascii_lowercase());
            }
        }
        Ok(String::from_utf8_lossy(&text).into_owned())
    }

    /// Skips a name in a resource record, where compression is allowed.
    fn skip_name(&mut self) -> Result<(), WireError> {
        loop {
            let len = self.u8("record name")?;
            match len & 0xC0 {
                0x00 if len == 0 => return Ok(()),
                0x00 => {
                    self.take(usize::from(len), "record name")?;
                }
                0xC0 => {
                    // A pointer ends the name; where it points does not matter to us.
                    self.u8("record name")?;
                    return Ok(());
                }
                _ => return Err(WireError::BadLabel(len)),
            }
        }
    }

    /// Skips one resource record and returns its type and class.
    fn record(&mut self) -> Result<(u16, u16), WireError> {
        self.skip_name()?;
        let rtype = self.u16("record header")?;
        let class = self.u16("record header")?;
        self.take(4, "record header")?; // TTL
        let rdlen = self.u16("record header")?;
        self.take(usize::from(rdlen), "record data")?;
        Ok((rtype, class))
    }
}

/// Parses a query. Records in the answer and authority sections are skipped; the
/// additional section is read only for an EDNS OPT record.
pub(crate) fn parse_query(msg: &[u8]) -> Result<Query<'_>, WireError> {
    let mut r = Reader::new(msg);
    let id = r.u16("header")?;
    let flags = r.u16("header")?;
    let qdcount = r.u16("header")?;
    let ancount = r.u16("header")?;
    let nscount = r.u16("header")?;
    let arcount = r.u16("header")?;
    if flags & FLAG_QR != 0 {
        return Err(WireError::NotAQuery);
    }
    if qdcount != 1 {
        return Err(WireError::QuestionCount(qdcount));
    }

    let question_start = r.pos;
    let name = r.question_name()?;
    let qtype = r.u16("question")?;
    let qclass = r.u16("question")?;
    let question = msg
        .get(question_start..r.pos)
        .ok_or(WireError::Truncated("question"))?;

    // Each record consumes at least 11 bytes or fails, so this ends quickly even
    // when the counts are lies.
    for _ in 0..u32::from(ancount) + u32::from(nscount) {
        r.record()?;
    }
    let mut edns_payload = None;
    for _ in 0..arcount {
        let (rtype, class) = r.record()?;
        if rtype == TYPE_OPT {
            edns_payload = Some(class);
        }
    }

    Ok(Query {
        id,
        opcode: ((flags >> 11) & 0x0F) as u8,
        rd: flags & FLAG_RD != 0,
        name,
        qtype,
        qclass,
        edns_payload,
        question,
    })
}

/// The FORMERR reply to a packet [`parse_query`] rejected, or `None` when there is
/// nobody sensible to answer: no full header, or a response (answering responses
/// invites loops).
pub(crate) fn encode_formerr(msg: &[u8], error: &WireError) -> Option<Vec<u8>> {
    if matches!(error, WireError::NotAQuery) {
        return None;
    }
    let mut r = Reader::new(msg.get(..HEADER_LEN)?);
    let id = r.u16("header").ok()?;
    let flags = r.u16("header").ok()?;
    if flags & FLAG_QR != 0 {
        return None;
    }
    let flags = FLAG_QR | (flags & (0x0F << 11)) | (flags & FLAG_RD) | FLAG_RA;
    let mut out = Vec::with_capacity(HEADER_LEN);
    put_header(&mut out, id, flags | Rcode::FormErr as u16, [0, 0, 0, 0]);
    Some(out)
}

/// Encodes the reply to `query`. When the full reply exceeds `limit`, sends the
/// question alone with TC set, which tells the resolver to retry over TCP.
pub(crate) fn encode_reply(query: &Query<'_>, reply: &Reply, limit: usize) -> Vec<u8> {
    let full = encode(query, reply, false);
    if full.len() <= limit {
        return full;
    }
    encode(query, reply, true)
}

fn encode(query: &Query<'_>, reply: &Reply, truncated: bool) -> Vec<u8> {
    let mut flags = FLAG_QR | (u16::from(query.opcode & 0x0F) << 11) | FLAG_AA | FLAG_RA;
    flags |= reply.rcode as u16;
    if query.rd {
        flags |= FLAG_RD;
    }
    if truncated {
        flags |= FLAG_TC;
    }
    let (answers, soa) = if truncated {
        (&[][..], false)
    } else {
        (&reply.addrs[..], reply.is_negative())
    };
    let opt = query.edns_payload.is_some();
    // Past u16::MAX records the message is over any limit anyway and gets truncated.
    let ancount = u16::try_from(answers.len()).unwrap_or(u16::MAX);

    let mut out = Vec::with_capacity(HEADER_LEN + query.question.len() + 28 * answers.len() + 64);
    put_header(
        &mut out,
        query.id,
        flags,
        [1, ancount, u16::from(soa), u16::from(opt)],
    );
    out.extend_from_slice(query.question);
    for addr in answers {
        out.extend_from_slice(&NAME_POINTER);
        match addr {
            IpAddr::V4(v4) => put_record(&mut out, TYPE_A, CLASS_IN, reply.ttl, &v4.octets()),
            IpAddr::V6(v6) => put_record(&mut out, TYPE_AAAA, CLASS_IN, reply.ttl, &v6.octets()),
        }
    }
    if soa {
        // Owned by the root, primary and mailbox the root: we claim every name.
        out.push(0);
        let mut rdata = vec![0, 0];
        for field in [1, 3600, 600, 86_400, reply.ttl] {
            // serial, refresh, retry, expire, minimum (the negative-caching TTL)
            rdata.extend_from_slice(&u32::to_be_bytes(field));
        }
        put_record(&mut out, TYPE_SOA, CLASS_IN, reply.ttl, &rdata);
    }
    if opt {
        // Minimal OPT: root owner, our payload size as class, version 0, no options.
        out.push(0);
        put_record(&mut out, TYPE_OPT, OUR_UDP_PAYLOAD, 0, &[]);
    }
    out
}

fn put_header(out: &mut Vec<u8>, id: u16, flags: u16, counts: [u16; 4]) {
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    for count in counts {
        out.extend_from_slice(&count.to_be_bytes());
    }
}

/// Writes a record after its owner name.
fn put_record(out: &mut Vec<u8>, rtype: u16, class: u16, ttl: u32, rdata: &[u8]) {
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    // Our rdata is at most 22 bytes (an SOA with root names).
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

#[cfg(test)]
mod tests {
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
}
