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
mod tests;
