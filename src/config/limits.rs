//! `limits`: bounds on request input, on the gRPC transport and on the HTTP listeners.
//!
//! Defaults are sized against Envoy's own: its HTTP/2 connection pool opens about one connection
//! per worker to us (more only when a connection reaches `max_concurrent_streams`) and its
//! cluster circuit breaker admits 1,024 requests in flight; it caps request headers at 60 KiB
//! (`max_request_headers_kb`) and its ext_authz deadline is 200 ms.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Bounds on request input; anything larger is refused (400) before any work is done.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Longest accepted path including the query, in bytes.
    #[serde(default = "d_max_path")]
    pub max_path_bytes: usize,
    /// Most headers accepted in one request.
    #[serde(default = "d_max_headers")]
    pub max_headers: usize,
    /// Most header bytes (names plus values, summed over the request's headers) accepted in one
    /// request; more is a 400 `headers_too_large`. Envoy's own default cap is 60 KiB.
    #[serde(default = "d_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Longest accepted token, checked before parsing.
    #[serde(default = "d_max_token")]
    pub max_token_bytes: usize,
    /// Largest accepted gRPC CheckRequest (it grows with `with_request_body`). A larger one is an
    /// RPC error, which Envoy turns into a deny with `failure_mode_allow: false`. The default
    /// fits Envoy's 60 KiB of headers plus a body of up to ~190 KiB.
    #[serde(default = "d_max_message")]
    pub max_message_bytes: usize,
    /// Most checks decided at once (all gRPC listeners together); one more is answered at once
    /// with an in-band 503 `overloaded` + `Retry-After: 1`, never queued.
    #[serde(default = "d_max_in_flight")]
    pub max_in_flight: usize,
    /// The gRPC listeners (TCP and Unix socket, each; `max_open_streams` over all of them).
    #[serde(default)]
    pub grpc: GrpcLimits,
    /// The admin and diagnostics HTTP listeners (each).
    #[serde(default)]
    pub admin: AdminLimits,
}

/// Transport limits of each gRPC listener, and the open-stream cap shared by all of them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcLimits {
    /// Open connections per listener; one more is accepted and closed at once.
    #[serde(default = "d_grpc_conns")]
    pub max_connections: usize,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`: one more stream is refused (`REFUSED_STREAM`).
    #[serde(default = "d_streams")]
    pub max_concurrent_streams: u32,
    /// Open gRPC streams across every gRPC listener and connection together. A stream holds its
    /// slot from its headers until its response has been sent (or it is reset, or
    /// `request_timeout` ends it); one more is answered at once without reading its message: a
    /// Check gets the in-band 503 `overloaded` + `Retry-After: 1`, any other method
    /// `RESOURCE_EXHAUSTED` (so does a Check while `max_open_streams / 4` in-band answers are
    /// still unsent to a client that does not read them). Each open stream costs ~25 KiB
    /// (HTTP/2 stream state, the call's buffers, its future) even before its message arrives,
    /// and `max_connections` × `max_concurrent_streams` is far more than a sidecar's memory:
    /// this is the cap that bounds that memory. The default, 2,048 (~50 MiB of streams), is twice Envoy's circuit breaker
    /// (1,024 requests in flight) and four times `max_in_flight`, so a legitimate proxy never
    /// reaches it, and stays well inside the chart's 256 MiB memory limit.
    #[serde(default = "d_open_streams")]
    pub max_open_streams: usize,
    /// Deadline of one RPC, reading the message included; past it the RPC fails (CANCELLED).
    #[serde(default = "d_request_timeout", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A connection on which nothing at all is read for this long is closed (a peer that never
    /// sends the HTTP/2 preface, or stopped answering). Live peers answer keepalive PINGs.
    #[serde(default = "d_idle", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// HTTP/2 PING after this long without reading anything; `null` sends none.
    #[serde(default = "d_keepalive_interval", with = "humantime_serde")]
    pub keepalive_interval: Option<Duration>,
    /// A PING unanswered this long closes the connection.
    #[serde(default = "d_keepalive_timeout", with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Connections older than this get a graceful GOAWAY (the client reconnects); `null`: never.
    #[serde(default = "d_max_age", with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
    /// After the GOAWAY, how long in-flight calls on that connection may take.
    #[serde(default = "d_max_age_grace", with = "humantime_serde")]
    pub max_connection_age_grace: Duration,
    /// HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE` for the gRPC call's own headers (Envoy's request
    /// headers travel inside the message, bounded by `max_header_bytes`).
    #[serde(default = "d_header_list")]
    pub max_header_list_bytes: u32,
}

/// Limits of each admin/diagnostics HTTP listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminLimits {
    /// Open connections per listener; one more is accepted and closed at once.
    #[serde(default = "d_admin_conns")]
    pub max_connections: usize,
    /// A connection on which nothing is read for this long is closed (a half-open connection,
    /// a request whose headers never finish).
    #[serde(default = "d_admin_header", with = "humantime_serde")]
    pub header_timeout: Duration,
    /// Longest life of one connection, whatever it does (bounds a trickling client).
    #[serde(default = "d_admin_conn", with = "humantime_serde")]
    pub connection_timeout: Duration,
}

fn d_max_path() -> usize {
    8 * 1024
}
fn d_max_headers() -> usize {
    200
}
fn d_max_header_bytes() -> usize {
    60 * 1024
}
fn d_max_token() -> usize {
    16 * 1024
}
fn d_max_message() -> usize {
    256 * 1024
}
fn d_max_in_flight() -> usize {
    512
}
fn d_grpc_conns() -> usize {
    256
}
fn d_streams() -> u32 {
    1024
}
fn d_open_streams() -> usize {
    2048
}
fn d_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_idle() -> Duration {
    Duration::from_secs(300)
}
fn d_keepalive_interval() -> Option<Duration> {
    Some(Duration::from_secs(60))
}
fn d_keepalive_timeout() -> Duration {
    Duration::from_secs(20)
}
fn d_max_age() -> Option<Duration> {
    Some(Duration::from_secs(3600))
}
fn d_max_age_grace() -> Duration {
    Duration::from_secs(30)
}
fn d_header_list() -> u32 {
    16 * 1024
}
fn d_admin_conns() -> usize {
    128
}
fn d_admin_header() -> Duration {
    Duration::from_secs(5)
}
fn d_admin_conn() -> Duration {
    Duration::from_secs(30)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_path_bytes: d_max_path(),
            max_headers: d_max_headers(),
            max_header_bytes: d_max_header_bytes(),
            max_token_bytes: d_max_token(),
            max_message_bytes: d_max_message(),
            max_in_flight: d_max_in_flight(),
            grpc: GrpcLimits::default(),
            admin: AdminLimits::default(),
        }
    }
}

impl Default for GrpcLimits {
    fn default() -> Self {
        Self {
            max_connections: d_grpc_conns(),
            max_concurrent_streams: d_streams(),
            max_open_streams: d_open_streams(),
            request_timeout: d_request_timeout(),
            idle_timeout: d_idle(),
            keepalive_interval: d_keepalive_interval(),
            keepalive_timeout: d_keepalive_timeout(),
            max_connection_age: d_max_age(),
            max_connection_age_grace: d_max_age_grace(),
            max_header_list_bytes: d_header_list(),
        }
    }
}

impl Default for AdminLimits {
    fn default() -> Self {
        Self { max_connections: d_admin_conns(), header_timeout: d_admin_header(), connection_timeout: d_admin_conn() }
    }
}

fn positive(field: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 { Err(ConfigError::invalid(field, "must be at least 1")) } else { Ok(()) }
}

fn nonzero(field: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() { Err(ConfigError::invalid(field, "must be more than 0")) } else { Ok(()) }
}

/// A cap backed by a semaphore, which holds at most `Semaphore::MAX_PERMITS` (and panics beyond).
fn slots(field: &str, v: usize) -> Result<(), ConfigError> {
    if v > tokio::sync::Semaphore::MAX_PERMITS { Err(ConfigError::invalid(field, "is too large")) } else { Ok(()) }
}

impl Limits {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("limits.max_header_bytes", self.max_header_bytes)?;
        positive("limits.max_message_bytes", self.max_message_bytes)?;
        positive("limits.max_in_flight", self.max_in_flight)?;
        slots("limits.max_in_flight", self.max_in_flight)?;
        let g = &self.grpc;
        positive("limits.grpc.max_connections", g.max_connections)?;
        slots("limits.grpc.max_connections", g.max_connections)?;
        positive("limits.grpc.max_concurrent_streams", g.max_concurrent_streams as usize)?;
        positive("limits.grpc.max_open_streams", g.max_open_streams)?;
        slots("limits.grpc.max_open_streams", g.max_open_streams)?;
        positive("limits.grpc.max_header_list_bytes", g.max_header_list_bytes as usize)?;
        nonzero("limits.grpc.request_timeout", g.request_timeout)?;
        nonzero("limits.grpc.idle_timeout", g.idle_timeout)?;
        nonzero("limits.grpc.keepalive_timeout", g.keepalive_timeout)?;
        if let Some(i) = g.keepalive_interval {
            nonzero("limits.grpc.keepalive_interval", i)?;
            // A PING answer is a read: with the interval shorter, a live peer is never idle;
            // with it longer, the idle timeout closes quiet peers before any PING is sent.
            if g.idle_timeout <= i + g.keepalive_timeout {
                return Err(ConfigError::invalid(
                    "limits.grpc.idle_timeout",
                    "must be longer than keepalive_interval + keepalive_timeout (or set keepalive_interval: null)",
                ));
            }
        }
        if let Some(a) = g.max_connection_age {
            nonzero("limits.grpc.max_connection_age", a)?;
        }
        let a = &self.admin;
        positive("limits.admin.max_connections", a.max_connections)?;
        slots("limits.admin.max_connections", a.max_connections)?;
        nonzero("limits.admin.header_timeout", a.header_timeout)?;
        nonzero("limits.admin.connection_timeout", a.connection_timeout)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use crate::config::tests::parse;

    #[test]
    fn defaults_are_sized_against_envoy() {
        let c = parse("policy: {dir: x}\n").unwrap();
        let l = &c.limits;
        assert_eq!(l.max_header_bytes, 60 * 1024);
        assert_eq!(l.max_message_bytes, 256 * 1024);
        assert_eq!(l.max_in_flight, 512);
        assert_eq!(l.grpc.max_concurrent_streams, 1024);
        assert_eq!(l.grpc.max_connections, 256);
        assert_eq!(l.grpc.max_open_streams, 2048);
        // Above what a legitimate proxy holds open (Envoy's circuit breaker, our in-flight cap).
        assert!(l.grpc.max_open_streams > 1024 && l.grpc.max_open_streams > l.max_in_flight);
        assert_eq!(l.grpc.idle_timeout.as_secs(), 300);
        assert_eq!(l.grpc.keepalive_interval.map(|d| d.as_secs()), Some(60));
        assert_eq!(l.admin.header_timeout.as_secs(), 5);
    }

    #[test]
    fn zero_and_incoherent_limits_name_the_field() {
        for (yaml, field) in [
            ("limits: {max_in_flight: 0}", "limits.max_in_flight"),
            ("limits: {max_header_bytes: 0}", "limits.max_header_bytes"),
            ("limits: {grpc: {max_connections: 0}}", "limits.grpc.max_connections"),
            ("limits: {grpc: {max_concurrent_streams: 0}}", "limits.grpc.max_concurrent_streams"),
            ("limits: {grpc: {max_open_streams: 0}}", "limits.grpc.max_open_streams"),
            ("limits: {grpc: {max_open_streams: 18446744073709551615}}", "limits.grpc.max_open_streams"),
            ("limits: {max_in_flight: 18446744073709551615}", "limits.max_in_flight"),
            ("limits: {grpc: {request_timeout: 0s}}", "limits.grpc.request_timeout"),
            ("limits: {grpc: {idle_timeout: 60s}}", "limits.grpc.idle_timeout"),
            ("limits: {admin: {header_timeout: 0s}}", "limits.admin.header_timeout"),
            ("limits: {admin: {max_connections: 0}}", "limits.admin.max_connections"),
        ] {
            let err = parse(&format!("policy: {{dir: x}}\n{yaml}\n")).unwrap_err();
            assert!(err.contains(field), "{yaml}: {err}");
        }
        // Without keepalive the idle timeout may be short.
        let c = parse("policy: {dir: x}\nlimits: {grpc: {idle_timeout: 1s, keepalive_interval: null}}\n").unwrap();
        assert_eq!(c.limits.grpc.idle_timeout.as_secs(), 1);
        assert!(parse("policy: {dir: x}\nlimits: {grpc: {bogus: 1}}\n").is_err());
    }
}
