//! Transport and resource limits (`limits.*`) over real connections on 127.0.0.1: HTTP/2 streams
//! over the per-connection cap are refused while the connection keeps serving, a silent connection
//! is closed by the server, a connection over the listener cap is closed at once, too many header
//! bytes are refused in-band (400 `headers_too_large`), streams over the global open-stream cap
//! get the in-band 503 `overloaded` at once, and a half-open admin connection is closed
//! after the header timeout. (Load shedding, which needs a check held in flight, is shown in the
//! server's unit tests with a test-only hold hook: `cargo test --lib server::`.)
//!
//! Deadlines are functional (10 s for something that takes milliseconds, or the configured 1 s
//! timeout), never measured.
mod common;

use std::time::Duration;

use common::*;
use portcullis::proto::auth::CheckResponse;
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(10);

// ---- a minimal HTTP/2 client, frame by frame ------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const CANCEL: u32 = 0x8;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const REFUSED_STREAM: u32 = 0x7;

struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK literal (never Huffman) of a gRPC Check call's request headers.
fn check_headers() -> Vec<u8> {
    let lit = |out: &mut Vec<u8>, s: &str| {
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    };
    let mut h = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    h.push(0x04); // :path, literal without indexing, static name 4
    lit(&mut h, "/envoy.service.auth.v3.Authorization/Check");
    h.push(0x01); // :authority, static name 1
    lit(&mut h, "localhost");
    h.extend_from_slice(&[0x0f, 0x10]); // content-type, static name 31
    lit(&mut h, "application/grpc");
    h.push(0x00); // te, new name
    lit(&mut h, "te");
    lit(&mut h, "trailers");
    h
}

async fn read_frame<S: AsyncRead + Unpin>(s: &mut S) -> Frame {
    let mut head = [0u8; 9];
    tokio::time::timeout(WAIT, s.read_exact(&mut head)).await.expect("a frame in time").expect("frame header");
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    tokio::time::timeout(WAIT, s.read_exact(&mut payload)).await.expect("payload in time").expect("frame payload");
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Frame { kind: head[3], flags: head[4], stream, payload }
}

/// Reads frames until `want` matches one (a GOAWAY fails the test).
async fn until<S: AsyncRead + Unpin>(s: &mut S, what: &str, want: impl Fn(&Frame) -> bool) -> Frame {
    for _ in 0..100 {
        let f = read_frame(s).await;
        assert_ne!(f.kind, GOAWAY, "server sent GOAWAY while waiting for {what}: {:?}", f.payload);
        if want(&f) {
            return f;
        }
    }
    panic!("no {what} in 100 frames");
}

/// Sends a PING and waits for its ACK: the connection is alive and every frame sent before it
/// has been processed.
async fn ping<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, data: [u8; 8]) {
    s.write_all(&frame(PING, 0, 0, &data)).await.expect("send PING");
    until(s, "PING ACK", |f| f.kind == PING && f.flags & ACK != 0 && f.payload == data).await;
}

/// Opens an HTTP/2 connection: preface and settings exchanged; returns the server's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`.
async fn h2_connect(addr: std::net::SocketAddr) -> (TcpStream, Option<u32>) {
    h2_handshake(TcpStream::connect(addr).await.expect("connect")).await
}

/// The HTTP/2 handshake of [`h2_connect`] on any connection (e.g. the Unix socket).
async fn h2_handshake<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> (S, Option<u32>) {
    s.write_all(PREFACE).await.expect("preface");
    s.write_all(&frame(SETTINGS, 0, 0, &[])).await.expect("settings");
    let settings = until(&mut s, "server SETTINGS", |f| f.kind == SETTINGS && f.flags & ACK == 0).await;
    let max_streams = settings.payload.chunks_exact(6).find_map(|p| {
        (u16::from_be_bytes([p[0], p[1]]) == SETTINGS_MAX_CONCURRENT_STREAMS)
            .then(|| u32::from_be_bytes([p[2], p[3], p[4], p[5]]))
    });
    s.write_all(&frame(SETTINGS, ACK, 0, &[])).await.expect("settings ack");
    ping(&mut s, *b"settled!").await;
    (s, max_streams)
}

/// Waits until the peer closes `s` (EOF or reset), failing after [`WAIT`].
async fn closed_by_server(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => continue, // e.g. the server's SETTINGS or an HTTP error page
        }
    }
}

/// Reads the response on `stream` up to its END_STREAM and decodes the gRPC message it carried
/// (a reset instead of an answer fails the test).
async fn check_answer<S: AsyncRead + Unpin>(s: &mut S, stream: u32) -> CheckResponse {
    let mut data = Vec::new();
    loop {
        let f = until(s, "the answer on the stream", |f| f.stream == stream).await;
        assert_ne!(f.kind, RST_STREAM, "stream {stream} was reset instead of answered: {:?}", f.payload);
        if f.kind == DATA {
            data.extend_from_slice(&f.payload);
        }
        if f.flags & END_STREAM != 0 {
            break;
        }
    }
    assert!(data.len() >= 5 && data[0] == 0, "one uncompressed gRPC message: {data:?}");
    CheckResponse::decode(&data[5..]).expect("a CheckResponse")
}

/// A Check answered with the in-band refusal: 503 `overloaded`, `Retry-After: 1`.
fn assert_overloaded(r: &CheckResponse, what: &str) {
    assert_eq!(http_status(r), 503, "{what}: {r:?}");
    assert!(denied(r).body.contains(r#""error":"overloaded""#), "{what}: {r:?}");
    assert_eq!(denied_header(r, "retry-after").as_deref(), Some("1"), "{what}: {r:?}");
}

// ---- the tests --------------------------------------------------------------------------------

/// `limits.grpc.max_concurrent_streams` is advertised, a stream over it is refused with
/// `REFUSED_STREAM`, and the connection keeps serving: a PING is answered and a new stream,
/// once one has ended, gets a response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_per_connection_cap_are_refused_and_the_connection_stays_usable() {
    let s = Sidecar::start_extra("limits:\n  grpc: {max_concurrent_streams: 2}\n").await;
    let (mut conn, advertised) = h2_connect(s.running().grpc_addr.expect("grpc")).await;
    assert_eq!(advertised, Some(2), "SETTINGS_MAX_CONCURRENT_STREAMS");

    // Streams 1 and 3 stay open (headers only: the server waits for the message).
    let headers = check_headers();
    for id in [1, 3] {
        conn.write_all(&frame(HEADERS, END_HEADERS, id, &headers)).await.expect("headers");
    }
    // Stream 5 is one too many.
    conn.write_all(&frame(HEADERS, END_HEADERS, 5, &headers)).await.expect("headers");
    let rst = until(&mut conn, "RST_STREAM on stream 5", |f| f.kind == RST_STREAM && f.stream == 5).await;
    assert_eq!(u32::from_be_bytes([rst.payload[0], rst.payload[1], rst.payload[2], rst.payload[3]]), REFUSED_STREAM);

    // The connection is still usable.
    ping(&mut conn, *b"stillup!").await;
    // End stream 1 (an empty CheckRequest; it is answered), then stream 7 fits and is answered.
    let empty_message = [0u8, 0, 0, 0, 0];
    conn.write_all(&frame(DATA, END_STREAM, 1, &empty_message)).await.expect("data 1");
    until(&mut conn, "response on stream 1", |f| f.kind == HEADERS && f.stream == 1).await;
    until(&mut conn, "end of stream 1", |f| f.stream == 1 && f.flags & END_STREAM != 0).await;
    conn.write_all(&frame(HEADERS, END_HEADERS, 7, &headers)).await.expect("headers 7");
    conn.write_all(&frame(DATA, END_STREAM, 7, &empty_message)).await.expect("data 7");
    let r = until(&mut conn, "response on stream 7", |f| f.stream == 7 && (f.kind == HEADERS || f.kind == RST_STREAM))
        .await;
    assert_eq!(r.kind, HEADERS, "stream 7 is answered, not refused");
    s.stop().await;
}

/// `limits.grpc.max_open_streams` is one cap over every gRPC listener and connection: with 8
/// header-only streams held open on a TCP connection and a Unix socket connection (their
/// messages never sent, so they never reach the check handler), a ninth stream, on either one or
/// on a new connection, is answered at once, unread, with the in-band 503 `overloaded` (a
/// successful RPC, as Envoy needs it); the held streams are still unanswered. Resetting and
/// closing them gives their slots back: checks are decided again. `request_timeout` is far
/// longer than the test, so only the reset and close can free the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_over_the_global_cap_get_503_overloaded_and_slots_come_back() {
    let s = Sidecar::start_extra("limits:\n  grpc: {max_open_streams: 8, request_timeout: 300s}\n").await;
    let addr = s.running().grpc_addr.expect("grpc");
    let headers = check_headers();
    let (mut tcp, _) = h2_connect(addr).await;
    let (mut uds, _) = h2_handshake(tokio::net::UnixStream::connect(s.unix_path()).await.expect("connect unix")).await;
    let held_tcp = [1u32, 3, 5, 7, 9];
    for id in held_tcp {
        tcp.write_all(&frame(HEADERS, END_HEADERS, id, &headers)).await.expect("headers");
    }
    for id in [1u32, 3, 5] {
        uds.write_all(&frame(HEADERS, END_HEADERS, id, &headers)).await.expect("headers");
    }
    let open = |n: u32| format!("portcullis_grpc_streams_open {n}\n");
    eventually(WAIT, "8 streams open", async || s.admin_get("/metrics").await.1.contains(&open(8))).await;

    // One more on each held connection, on a new connection, and from a gRPC client.
    tcp.write_all(&frame(HEADERS, END_HEADERS, 11, &headers)).await.expect("headers");
    assert_overloaded(&check_answer(&mut tcp, 11).await, "ninth stream, TCP connection");
    uds.write_all(&frame(HEADERS, END_HEADERS, 7, &headers)).await.expect("headers");
    assert_overloaded(&check_answer(&mut uds, 7).await, "ninth stream, Unix socket connection");
    let (mut fresh, _) = h2_connect(addr).await;
    fresh.write_all(&frame(HEADERS, END_HEADERS, 1, &headers)).await.expect("headers");
    assert_overloaded(&check_answer(&mut fresh, 1).await, "ninth stream, new connection");
    let r = s.check(req("GET", "/public/x").id("rid-capped").build()).await;
    assert_overloaded(&r, "gRPC client");

    let (_, metrics) = s.admin_get("/metrics").await;
    for line in [
        r#"portcullis_grpc_streams_refused_total{method="check",answer="in_band"} 4"#,
        r#"portcullis_checks_total{decision="deny",reason="overloaded"} 4"#,
        "portcullis_grpc_streams_open 8\n",
    ] {
        assert!(metrics.contains(line), "{line}: {metrics}");
    }
    // The held streams were never answered: a PING round trip shows nothing else came for them.
    ping(&mut tcp, *b"heldheld").await;

    // Reset the TCP streams and close the Unix socket connection: every slot comes back.
    for id in held_tcp {
        tcp.write_all(&frame(RST_STREAM, 0, id, &CANCEL.to_be_bytes())).await.expect("reset");
    }
    drop(uds);
    eventually(WAIT, "every slot given back", async || s.admin_get("/metrics").await.1.contains(&open(0))).await;
    for i in 0..10 {
        let r = s.check(req("GET", "/public/x").id(&format!("after-{i}")).build()).await;
        assert_eq!(http_status(&r), 200, "{r:?}");
    }
    // And the cap still holds 8, not fewer: 8 new streams are all held, the ninth refused.
    for id in [13u32, 15, 17, 19, 21, 23, 25, 27] {
        tcp.write_all(&frame(HEADERS, END_HEADERS, id, &headers)).await.expect("headers");
    }
    eventually(WAIT, "8 streams open again", async || s.admin_get("/metrics").await.1.contains(&open(8))).await;
    tcp.write_all(&frame(HEADERS, END_HEADERS, 29, &headers)).await.expect("headers");
    assert_overloaded(&check_answer(&mut tcp, 29).await, "ninth stream again");
    drop(tcp);
    s.stop().await;
}

/// A connection that sends nothing (not even the HTTP/2 preface) is closed after
/// `limits.grpc.idle_timeout`, on TCP and on the Unix socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_by_the_server() {
    let s = Sidecar::start_extra("limits:\n  grpc: {idle_timeout: 1s, keepalive_interval: null}\n").await;
    let mut tcp = TcpStream::connect(s.running().grpc_addr.expect("grpc")).await.expect("connect");
    closed_by_server(&mut tcp, "silent TCP connection").await;
    let mut uds = tokio::net::UnixStream::connect(s.unix_path()).await.expect("connect unix");
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, uds.read(&mut buf)).await {
            Err(_) => panic!("silent Unix connection still open after {WAIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(_)) => continue,
        }
    }
    // A connection that keeps sending is not idle, however long it lives: PINGs every 0.4 s
    // for 2.5 idle timeouts are all answered on the same connection.
    let (mut live, _) = h2_connect(s.running().grpc_addr.expect("grpc")).await;
    for i in 0..6u8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ping(&mut live, [i; 8]).await;
    }
    let r = s.check(req("GET", "/public/x").build()).await;
    assert_eq!(http_status(&r), 200, "{r:?}");
    s.stop().await;
}

/// Over `limits.grpc.max_connections` a new connection is accepted and closed at once (and
/// counted); when one closes, a new connection is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_refuses_one_more_connection() {
    let s = Sidecar::start_extra("limits:\n  grpc: {max_connections: 2}\n").await;
    let addr = s.running().grpc_addr.expect("grpc");
    let (first, _) = h2_connect(addr).await;
    let (_second, _) = h2_connect(addr).await;
    let mut third = TcpStream::connect(addr).await.expect("TCP connects (the kernel accepts)");
    closed_by_server(&mut third, "connection over the cap").await;
    let (_, metrics) = s.admin_get("/metrics").await;
    assert!(
        metrics.contains(r#"portcullis_listener_connections_refused_total{listener="grpc"} 1"#),
        "refusal counted: {metrics}"
    );

    // A slot frees when a connection closes.
    drop(first);
    let url = s.grpc_url();
    let r = eventually(WAIT, "a new connection is served after one closed", async || {
        let Ok(Ok(ch)) = tokio::time::timeout(
            Duration::from_secs(1),
            tonic::transport::Endpoint::try_from(url.clone()).expect("url").connect(),
        )
        .await
        else {
            return None;
        };
        let mut c = portcullis::proto::auth::authorization_client::AuthorizationClient::new(ch);
        match tokio::time::timeout(Duration::from_secs(1), c.check(req("GET", "/public/x").build())).await {
            Ok(Ok(r)) => Some(r.into_inner()),
            _ => None,
        }
    })
    .await;
    assert_eq!(http_status(&r), 200, "{r:?}");
    s.stop().await;
}

/// More header bytes than `limits.max_header_bytes` (names plus values, over the merged map and
/// over the raw header map) are refused in-band before any other work: 400 `headers_too_large`
/// inside a successful RPC. Just under the limit is decided as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_header_bytes_are_refused_in_band() {
    let s = Sidecar::start_extra("limits:\n  max_header_bytes: 2048\n").await;
    let big = "v".repeat(2100);
    for (shape, r) in [
        ("merged", req("GET", "/public/x").header("x-big", &big).build()),
        ("raw map", req("GET", "/public/x").header("x-big", &big).build_header_map_only(true)),
        ("map", req("GET", "/public/x").header("x-big", &big).build_header_map_only(false)),
    ] {
        let resp = s.check(r).await;
        assert_eq!(http_status(&resp), 400, "{shape}: {resp:?}");
        assert!(denied(&resp).body.contains(r#""error":"headers_too_large""#), "{shape}: {resp:?}");
    }
    // Many small headers add up too.
    let mut many = req("GET", "/public/x");
    for i in 0..40 {
        many = many.header(&format!("x-h{i}"), &"a".repeat(60));
    }
    let resp = s.check(many.build()).await;
    assert!(denied(&resp).body.contains(r#""error":"headers_too_large""#), "{resp:?}");

    let fits = s.check(req("GET", "/public/x").header("x-ok", &"v".repeat(1000)).build()).await;
    assert_eq!(http_status(&fits), 200, "{fits:?}");
    s.stop().await;
}

/// The admin listener closes a half-open request (headers never finished) after
/// `limits.admin.header_timeout`, and over `limits.admin.max_connections` closes a new
/// connection at once; probes keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_half_open_connections_are_closed_and_capped() {
    let s = Sidecar::start_extra("limits:\n  admin: {header_timeout: 1s, max_connections: 2}\n").await;
    let addr = s.running().admin_addr.expect("admin");
    let mut half = TcpStream::connect(addr).await.expect("connect");
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.expect("partial request");
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    // Both slots are taken: a third is closed at once, long before the header timeout matters.
    let mut third = TcpStream::connect(addr).await.expect("connect");
    closed_by_server(&mut third, "admin connection over the cap").await;
    closed_by_server(&mut half, "half-open admin request").await;
    closed_by_server(&mut silent, "silent admin connection").await;
    let (code, body) = eventually(WAIT, "healthz answers once the slots are free", async || {
        let r =
            reqwest::Client::new().get(s.admin_url("/healthz")).timeout(Duration::from_secs(1)).send().await.ok()?;
        Some((r.status().as_u16(), r.text().await.ok()?))
    })
    .await;
    assert_eq!((code, body.as_str()), (200, "ok\n"));
    s.stop().await;
}
