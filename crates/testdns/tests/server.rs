//! Drives a real server over real UDP and TCP sockets with hand-built packets, so
//! what is checked is exactly what a resolver would see on the wire.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use portwatch_testdns::{Answer, DnsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::timeout;

const A: u16 = 1;
const SOA: u16 = 6;
const MX: u16 = 15;
const AAAA: u16 = 28;
const OPT: u16 = 41;

const NOERROR: u16 = 0;
const FORMERR: u16 = 1;
const SERVFAIL: u16 = 2;
const NXDOMAIN: u16 = 3;
const REFUSED: u16 = 5;

const QR: u16 = 1 << 15;
const AA: u16 = 1 << 10;
const TC: u16 = 1 << 9;
const RD: u16 = 1 << 8;
const RA: u16 = 1 << 7;

/// Bound on every wait for an answer that should come.
const ANSWER_WAIT: Duration = Duration::from_secs(2);
/// How long silence must last to count as "no answer".
const SILENCE: Duration = Duration::from_millis(300);

fn v4(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A query with RD set, optionally with an EDNS OPT record, as hickory sends.
fn query(id: u16, name: &str, qtype: u16, edns: bool) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&RD.to_be_bytes());
    for count in [1, 0, 0, u16::from(edns)] {
        out.extend_from_slice(&u16::to_be_bytes(count));
    }
    for label in name.split('.').filter(|l| !l.is_empty()) {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    if edns {
        // Root owner, type OPT, payload 1232, no extended flags, no options.
        out.extend_from_slice(&[0, 0, 41, 0x04, 0xD0, 0, 0, 0, 0, 0, 0]);
    }
    out
}

#[derive(Debug)]
struct Record {
    rtype: u16,
    ttl: u32,
    rdata: Vec<u8>,
}

/// A reply, parsed just enough to assert on.
#[derive(Debug)]
struct Response {
    id: u16,
    flags: u16,
    question: Vec<u8>,
    answers: Vec<Record>,
    authority: Vec<Record>,
    additional: Vec<Record>,
}

impl Response {
    fn parse(msg: &[u8]) -> Response {
        let u16_at = |at: usize| u16::from_be_bytes([msg[at], msg[at + 1]]);
        let (qd, an, ns, ar) = (u16_at(4), u16_at(6), u16_at(8), u16_at(10));
        let mut pos = 12;
        let question_start = pos;
        for _ in 0..qd {
            pos = skip_name(msg, pos) + 4;
        }
        let question = msg[question_start..pos].to_vec();
        let mut records = |count: u16| {
            (0..count)
                .map(|_| {
                    pos = skip_name(msg, pos);
                    let rtype = u16_at(pos);
                    let ttl = u32::from_be_bytes(msg[pos + 4..pos + 8].try_into().unwrap());
                    let len = usize::from(u16_at(pos + 8));
                    let rdata = msg[pos + 10..pos + 10 + len].to_vec();
                    pos += 10 + len;
                    Record { rtype, ttl, rdata }
                })
                .collect::<Vec<_>>()
        };
        let answers = records(an);
        let authority = records(ns);
        let additional = records(ar);
        assert_eq!(pos, msg.len(), "trailing bytes in {msg:?}");
        Response {
            id: u16_at(0),
            flags: u16_at(2),
            question,
            answers,
            authority,
            additional,
        }
    }

    fn rcode(&self) -> u16 {
        self.flags & 0x0F
    }

    fn addrs(&self) -> Vec<IpAddr> {
        self.answers
            .iter()
            .map(|r| match r.rtype {
                A => IpAddr::from(<[u8; 4]>::try_from(&r.rdata[..]).unwrap()),
                AAAA => IpAddr::from(<[u8; 16]>::try_from(&r.rdata[..]).unwrap()),
                other => panic!("unexpected answer type {other}"),
            })
            .collect()
    }
}

fn skip_name(msg: &[u8], mut pos: usize) -> usize {
    loop {
        let len = msg[pos];
        if len == 0 {
            return pos + 1;
        }
        if len & 0xC0 == 0xC0 {
            return pos + 2;
        }
        pos += 1 + usize::from(len);
    }
}

async fn udp_socket(server: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket
}

/// Sends one datagram and waits up to `wait` for a reply.
async fn udp_exchange(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    let socket = udp_socket(server).await;
    socket.send(packet).await.unwrap();
    let mut buf = vec![0; 65535];
    // An error (ICMP port unreachable) is as much "no reply" as a timeout.
    let len = timeout(wait, socket.recv(&mut buf)).await.ok()?.ok()?;
    Some(buf[..len].to_vec())
}

async fn udp(server: &DnsServer, packet: &[u8]) -> Response {
    let reply = udp_exchange(server.addr(), packet, ANSWER_WAIT).await;
    Response::parse(&reply.expect("no UDP reply"))
}

async fn tcp_send(stream: &mut TcpStream, packet: &[u8]) {
    let mut framed = (packet.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(packet);
    stream.write_all(&framed).await.unwrap();
}

/// Reads one length-prefixed reply, waiting up to `wait`.
async fn tcp_recv(stream: &mut TcpStream, wait: Duration) -> Option<Vec<u8>> {
    timeout(wait, async {
        let len = stream.read_u16().await.unwrap();
        let mut msg = vec![0; usize::from(len)];
        stream.read_exact(&mut msg).await.unwrap();
        msg
    })
    .await
    .ok()
}

async fn tcp_connect(server: &DnsServer) -> TcpStream {
    timeout(ANSWER_WAIT, TcpStream::connect(server.addr()))
        .await
        .unwrap()
        .unwrap()
}

async fn tcp(server: &DnsServer, packet: &[u8]) -> Response {
    let mut stream = tcp_connect(server).await;
    tcp_send(&mut stream, packet).await;
    let reply = tcp_recv(&mut stream, ANSWER_WAIT).await;
    Response::parse(&reply.expect("no TCP reply"))
}

/// The server under test, with one name holding one address of each family.
async fn server() -> DnsServer {
    let dns = DnsServer::start().await.unwrap();
    dns.set(
        "db.example.test",
        Answer::Addrs(vec![v4("192.0.2.10"), v4("2001:db8::10")]),
    );
    dns
}

#[tokio::test]
async fn a_query_gets_the_ipv4_address_with_header_and_question_echoed() {
    let dns = server().await;
    let packet = query(0x1234, "db.example.test", A, false);
    let reply = udp(&dns, &packet).await;
    assert_eq!(reply.id, 0x1234);
    assert_eq!(reply.flags, QR | AA | RD | RA);
    assert_eq!(reply.question, packet[12..]);
    assert_eq!(reply.addrs(), [v4("192.0.2.10")]);
    assert_eq!(reply.answers[0].ttl, 1);
    assert!(reply.authority.is_empty() && reply.additional.is_empty());
}

#[tokio::test]
async fn aaaa_query_gets_the_ipv6_address() {
    let dns = server().await;
    let reply = udp(&dns, &query(7, "db.example.test", AAAA, false)).await;
    assert_eq!(reply.rcode(), NOERROR);
    assert_eq!(reply.addrs(), [v4("2001:db8::10")]);
}

#[tokio::test]
async fn tcp_answers_like_udp_on_the_same_port() {
    let dns = server().await;
    let reply = tcp(&dns, &query(1, "db.example.test", A, false)).await;
    assert_eq!(reply.flags, QR | AA | RD | RA);
    assert_eq!(reply.addrs(), [v4("192.0.2.10")]);

    // Several queries on one connection, as a resolver may pipeline them.
    let mut stream = tcp_connect(&dns).await;
    tcp_send(&mut stream, &query(2, "db.example.test", AAAA, true)).await;
    tcp_send(&mut stream, &query(3, "nope.example.test", A, false)).await;
    let first = Response::parse(&tcp_recv(&mut stream, ANSWER_WAIT).await.unwrap());
    let second = Response::parse(&tcp_recv(&mut stream, ANSWER_WAIT).await.unwrap());
    assert_eq!((first.id, first.addrs()), (2, vec![v4("2001:db8::10")]));
    assert_eq!((second.id, second.rcode()), (3, NXDOMAIN));
}

#[tokio::test]
async fn no_address_of_the_family_is_nodata_with_an_soa() {
    let dns = server().await;
    dns.set("v4only.test", Answer::Addrs(vec![v4("192.0.2.1")]));
    dns.set_ttl(30);
    for (name, qtype) in [("v4only.test", AAAA), ("db.example.test", MX)] {
        let reply = udp(&dns, &query(9, name, qtype, false)).await;
        assert_eq!(reply.rcode(), NOERROR, "{name}");
        assert!(reply.answers.is_empty(), "{name}");
        assert_eq!(reply.authority.len(), 1, "{name}");
        assert_eq!(reply.authority[0].rtype, SOA);
        // The SOA minimum (last 4 bytes) is the negative-caching TTL.
        assert_eq!(reply.authority[0].rdata[18..], 30u32.to_be_bytes());
    }
}

#[tokio::test]
async fn unknown_and_nxdomain_names_get_nxdomain() {
    let dns = server().await;
    dns.set("gone.test", Answer::NxDomain);
    for name in ["gone.test", "never-set.test"] {
        let reply = udp(&dns, &query(5, name, A, false)).await;
        assert_eq!(reply.rcode(), NXDOMAIN, "{name}");
        assert_eq!(reply.flags & (QR | AA), QR | AA);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.authority[0].rtype, SOA);
    }
}

#[tokio::test]
async fn servfail_and_refused() {
    let dns = server().await;
    dns.set("broken.test", Answer::ServFail);
    dns.set("closed.test", Answer::Refused);
    let reply = udp(&dns, &query(1, "broken.test", A, false)).await;
    assert_eq!(reply.rcode(), SERVFAIL);
    assert!(reply.answers.is_empty() && reply.authority.is_empty());
    let reply = tcp(&dns, &query(2, "closed.test", AAAA, false)).await;
    assert_eq!(reply.rcode(), REFUSED);
}

#[tokio::test]
async fn drop_never_answers_but_is_counted() {
    let dns = server().await;
    dns.set("blackhole.test", Answer::Drop);
    let packet = query(1, "blackhole.test", A, true);
    assert_eq!(udp_exchange(dns.addr(), &packet, SILENCE).await, None);

    let mut stream = tcp_connect(&dns).await;
    tcp_send(&mut stream, &packet).await;
    assert_eq!(tcp_recv(&mut stream, SILENCE).await, None);
    assert_eq!(dns.queries("blackhole.test"), 2);
}

#[tokio::test]
async fn queries_are_counted_per_name_across_types_and_transports() {
    let dns = server().await;
    assert_eq!(dns.queries("db.example.test"), 0);
    udp(&dns, &query(1, "db.example.test", A, false)).await;
    udp(&dns, &query(2, "db.example.test", AAAA, false)).await;
    tcp(&dns, &query(3, "db.example.test", MX, false)).await;
    udp(&dns, &query(4, "unknown.test", A, false)).await;
    assert_eq!(dns.queries("db.example.test"), 3);
    assert_eq!(dns.queries("unknown.test"), 1);
    assert_eq!(dns.queries("other.test"), 0);
}

#[tokio::test]
async fn names_are_case_insensitive_and_the_question_keeps_its_case() {
    let dns = DnsServer::start().await.unwrap();
    dns.set("Web.EXAMPLE.test.", Answer::Addrs(vec![v4("198.51.100.4")]));
    let packet = query(1, "wEB.example.TEST", A, false);
    let reply = udp(&dns, &packet).await;
    assert_eq!(reply.addrs(), [v4("198.51.100.4")]);
    assert_eq!(reply.question, packet[12..]);
    assert_eq!(dns.queries("WEB.example.test"), 1);
    assert_eq!(dns.queries("web.example.test."), 1);
}

#[tokio::test]
async fn malformed_packets_do_not_kill_the_server() {
    let dns = server().await;
    let good = query(1, "db.example.test", A, false);
    let mut pointer_loop = good[..12].to_vec();
    pointer_loop.extend_from_slice(&[0xC0, 0x0C]);
    let mut lying_counts = good.clone();
    lying_counts[10..12].copy_from_slice(&[0xFF; 2]);
    let garbage: [&[u8]; 6] = [
        &[],
        &[0xFF],
        &good[..good.len() - 3],
        &pointer_loop,
        &lying_counts,
        &[0xAB; 600],
    ];
    for packet in garbage {
        // Silence or FORMERR, never a crash.
        if let Some(reply) = udp_exchange(dns.addr(), packet, Duration::from_millis(50)).await {
            assert_eq!(Response::parse(&reply).rcode(), FORMERR, "{packet:?}");
        }
    }
    let reply = udp(&dns, &good).await;
    assert_eq!(reply.addrs(), [v4("192.0.2.10")]);

    let mut stream = tcp_connect(&dns).await;
    tcp_send(&mut stream, &good[..20]).await;
    let reply = Response::parse(&tcp_recv(&mut stream, ANSWER_WAIT).await.unwrap());
    assert_eq!((reply.id, reply.rcode()), (1, FORMERR));
    tcp_send(&mut stream, &good).await;
    let reply = Response::parse(&tcp_recv(&mut stream, ANSWER_WAIT).await.unwrap());
    assert_eq!(reply.addrs(), [v4("192.0.2.10")]);

    // A connection cut mid-frame does not stop the listener either.
    let mut cut = tcp_connect(&dns).await;
    cut.write_all(&[0x01]).await.unwrap();
    drop(cut);
    assert_eq!(
        tcp(&dns, &good).await.addrs(),
        [v4("192.0.2.10")],
        "after a cut connection"
    );
}

#[tokio::test]
async fn edns_queries_get_a_minimal_opt_back() {
    let dns = server().await;
    let reply = udp(&dns, &query(1, "db.example.test", A, true)).await;
    assert_eq!(reply.addrs(), [v4("192.0.2.10")]);
    assert_eq!(reply.additional.len(), 1);
    assert_eq!(reply.additional[0].rtype, OPT);
    assert!(reply.additional[0].rdata.is_empty());
}

#[tokio::test]
async fn large_answers_are_truncated_over_udp_and_complete_over_tcp() {
    let dns = DnsServer::start().await.unwrap();
    let many: Vec<IpAddr> = (1..=40u8).map(|i| IpAddr::from([10, 0, 0, i])).collect();
    dns.set("many.test", Answer::Addrs(many.clone()));
    let packet = query(1, "many.test", A, false);
    let reply = udp(&dns, &packet).await;
    assert_eq!(reply.flags & TC, TC);
    assert!(reply.answers.is_empty());
    let reply = tcp(&dns, &packet).await;
    assert_eq!(reply.flags & TC, 0);
    assert_eq!(reply.addrs(), many);
}

#[tokio::test]
async fn ttl_and_answers_can_change_while_serving() {
    let dns = server().await;
    dns.set_ttl(300);
    dns.set("db.example.test", Answer::Addrs(vec![v4("203.0.113.5")]));
    let reply = udp(&dns, &query(1, "db.example.test", A, false)).await;
    assert_eq!(reply.addrs(), [v4("203.0.113.5")]);
    assert_eq!(reply.answers[0].ttl, 300);
}

#[tokio::test]
async fn each_region_server_answers_the_same_name_its_own_way() {
    let east = DnsServer::start().await.unwrap();
    let west = DnsServer::start().await.unwrap();
    assert_ne!(east.addr(), west.addr());
    east.set("app.test", Answer::Addrs(vec![v4("192.0.2.1")]));
    west.set("app.test", Answer::NxDomain);
    let packet = query(1, "app.test", A, false);
    assert_eq!(udp(&east, &packet).await.addrs(), [v4("192.0.2.1")]);
    assert_eq!(udp(&west, &packet).await.rcode(), NXDOMAIN);
}

#[tokio::test]
async fn start_on_binds_udp_and_tcp_to_the_given_address() {
    let dns = DnsServer::start_on("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert!(dns.addr().ip().is_loopback());
    assert_ne!(dns.addr().port(), 0);
    dns.set("x.test", Answer::ServFail);
    let packet = query(1, "x.test", A, false);
    assert_eq!(udp(&dns, &packet).await.rcode(), SERVFAIL);
    assert_eq!(tcp(&dns, &packet).await.rcode(), SERVFAIL);
}

#[tokio::test]
async fn serving_stops_when_the_last_handle_is_dropped() {
    let dns = server().await;
    let addr = dns.addr();
    let clone = dns.clone();
    drop(dns);
    clone.set("still.test", Answer::Refused);
    let packet = query(1, "still.test", A, false);
    assert_eq!(udp(&clone, &packet).await.rcode(), REFUSED);

    let mut open = tcp_connect(&clone).await;
    drop(clone);
    // The open connection is closed by the server, not left hanging.
    let mut buf = [0; 1];
    let read = timeout(ANSWER_WAIT, open.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The listener goes away too.
    timeout(ANSWER_WAIT, async {
        while TcpStream::connect(addr).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(udp_exchange(addr, &packet, SILENCE).await, None);
}
