//! `listen`: the gRPC, Unix, admin and diagnostics listeners.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Listeners. Any of them may be disabled with `null`, but at least one of `grpc`/`unix` is needed.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// TCP address of the ext_authz gRPC server.
    #[serde(default = "default_grpc")]
    pub grpc: Option<SocketAddr>,
    /// Unix domain socket path of the ext_authz gRPC server.
    #[serde(default)]
    pub unix: Option<PathBuf>,
    /// Admin HTTP address: only the probes (/healthz, /readyz) and /metrics, so it can be
    /// reached from the pod network by kubelet and scrapers.
    #[serde(default = "default_admin")]
    pub admin: Option<SocketAddr>,
    /// Diagnostics HTTP address (/policy and later diagnostics). Must be a loopback address:
    /// what it shows (policy source, reload errors) is for operators on the node, not the mesh.
    #[serde(default = "default_diagnostics")]
    pub diagnostics: Option<SocketAddr>,
    /// After SIGTERM, how long readiness and gRPC health report NOT_SERVING while the listeners
    /// keep accepting and answering checks. It gives the proxy (Envoy, istio-proxy) and kubelet
    /// time to notice and stop sending before the sockets close; without it every check sent in
    /// that window would be a connection error, i.e. a denial. Also what the chart relies on
    /// instead of a `preStop` sleep (the image has no shell).
    #[serde(default = "default_drain_delay", with = "humantime_serde")]
    pub drain_delay: Duration,
    /// After the listeners close, how long in-flight checks may take to finish; connections still
    /// open then are closed.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
}

fn default_grpc() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9191)))
}
fn default_admin() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9090)))
}
fn default_diagnostics() -> Option<SocketAddr> {
    Some(SocketAddr::from(([127, 0, 0, 1], 9092)))
}
fn default_drain_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

/// Longer than any sensible grace period: a typo (`5m` for `5s`) would hold every rollout.
const MAX_DRAIN: Duration = Duration::from_secs(300);

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            unix: None,
            admin: default_admin(),
            diagnostics: default_diagnostics(),
            drain_delay: default_drain_delay(),
            drain_timeout: default_drain(),
        }
    }
}

impl ListenConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.grpc.is_none() && self.unix.is_none() {
            return Err(ConfigError::invalid("listen", "enable at least one of `grpc` or `unix`"));
        }
        if let Some(a) = self.diagnostics
            && !a.ip().is_loopback()
        {
            return Err(ConfigError::invalid(
                "listen.diagnostics",
                format!("`{a}` is not a loopback address; diagnostics are served on loopback only (or null)"),
            ));
        }
        if self.drain_delay > MAX_DRAIN {
            return Err(ConfigError::invalid(
                "listen.drain_delay",
                format!(
                    "at most {}; it must fit in the pod's termination grace period",
                    humantime::format_duration(MAX_DRAIN)
                ),
            ));
        }
        if self.drain_timeout.is_zero() || self.drain_timeout > MAX_DRAIN {
            return Err(ConfigError::invalid(
                "listen.drain_timeout",
                format!(
                    "must be more than 0 (in-flight checks would be cut off) and at most {}",
                    humantime::format_duration(MAX_DRAIN)
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {

    use crate::config::tests::parse;

    #[test]
    fn drain_delay_defaults_and_bounds_name_the_field() {
        let c = parse("policy: {dir: x}\n").unwrap();
        assert_eq!(c.listen.drain_delay.as_secs(), 5);
        assert_eq!(c.listen.drain_timeout.as_secs(), 10);
        let c = parse("policy: {dir: x}\nlisten: {drain_delay: 0s}\n").unwrap();
        assert!(c.listen.drain_delay.is_zero());
        let err = parse("policy: {dir: x}\nlisten: {drain_delay: 1h}\n").unwrap_err();
        assert!(err.contains("listen.drain_delay"), "{err}");
        for bad in ["0s", "1h"] {
            let err = parse(&format!("policy: {{dir: x}}\nlisten: {{drain_timeout: {bad}}}\n")).unwrap_err();
            assert!(err.contains("listen.drain_timeout"), "{bad}: {err}");
        }
    }
}
