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
    /// How long in-flight checks may take to finish after SIGTERM.
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
fn default_drain() -> Duration {
    Duration::from_secs(10)
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self {
            grpc: default_grpc(),
            unix: None,
            admin: default_admin(),
            diagnostics: default_diagnostics(),
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
        Ok(())
    }
}
