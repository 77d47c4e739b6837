//! The typed YAML configuration: one file, validated at start with errors that name the field.
//! One file per section, each with its own `validate`; this module imports nothing from the
//! domain modules, so every other module may depend on it.
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod authn;
mod cedar;
mod headers;
mod issuer;
mod limits;
mod listen;
mod log;
mod policy;
mod ratelimit;
mod request;
mod telemetry;
#[cfg(test)]
mod tests;

pub use authn::*;
pub use cedar::*;
pub use headers::*;
pub use issuer::*;
pub use limits::*;
pub use listen::*;
pub use log::*;
pub use policy::*;
pub use ratelimit::*;
pub use request::*;
pub use telemetry::*;

/// Errors from loading or validating the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config field `{field}`: {message}")]
    Invalid { field: String, message: String },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid { field: field.into(), message: message.into() }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the sidecar listens.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Log format and filter.
    #[serde(default)]
    pub log: LogConfig,
    /// Where Cedar policies come from.
    pub policy: PolicyConfig,
    /// How callers are authenticated.
    #[serde(default)]
    pub authn: AuthnConfig,
    /// Names of the identity headers injected for the upstream.
    #[serde(default)]
    pub headers: HeaderNames,
    /// How requests are mapped into Cedar.
    #[serde(default)]
    pub cedar: CedarConfig,
    /// Bounds on request input.
    #[serde(default)]
    pub limits: Limits,
    /// How request paths are canonicalized.
    #[serde(default)]
    pub request: RequestConfig,
    /// Per-caller rate limit (429 with `Retry-After`); off when absent.
    #[serde(default)]
    pub rate_limit: Option<RateLimitConfig>,
    /// OpenTelemetry traces; off by default.
    #[serde(default)]
    pub telemetry: TelemetryConfig,
}

fn yes() -> bool {
    true
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths inside it are resolved
    /// against the file's directory, so the example runs from any working directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let mut cfg =
            Self::from_yaml(&text).map_err(|message| ConfigError::Parse { path: path.to_owned(), message })?;
        let base = path.parent().unwrap_or(Path::new("."));
        cfg.resolve_paths(base);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses YAML without validating.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        serde_saphyr::from_str(text).map_err(|e| e.to_string())
    }

    /// Checks everything serde cannot, section by section: names the offending field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.validate()?;
        self.log.validate()?;
        self.policy.validate()?;
        self.authn.validate()?;
        self.headers.validate(&self.authn)?;
        self.cedar.validate()?;
        self.telemetry.validate()?;
        self.request.validate(&self.limits)?;
        self.limits.validate()?;
        Ok(())
    }

    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(d) = self.policy.dir.as_mut() {
            fix(d);
        }
        if let Some(k) = self.policy.kubernetes.as_mut()
            && let Some(f) = k.kubeconfig.as_mut()
        {
            fix(f);
        }
        if let Some(d) = self.authn.api_keys.dir.as_mut() {
            fix(d);
        }
        if let Some(f) = self.authn.api_keys.kubernetes.as_mut().and_then(|k| k.kubeconfig.as_mut()) {
            fix(f);
        }
        if let Some(c) = self.policy.candidate.as_mut() {
            c.dir.iter_mut().chain(c.kubernetes.iter_mut().flat_map(|k| k.kubeconfig.as_mut())).for_each(fix);
        }
        for iss in &mut self.authn.issuers {
            if let Some(f) = iss.jwks_file.as_mut() {
                fix(f);
            }
            if let Some(f) = iss.hmac_secret_file.as_mut() {
                fix(f);
            }
            if let Some(f) = iss.ca_file.as_mut() {
                fix(f);
            }
        }
    }

    /// Every header name portcullis sets upstream (and therefore strips from clients).
    pub fn identity_header_names(&self) -> Vec<String> {
        let h = &self.headers;
        let mut v = vec![h.principal.clone(), h.subject.clone(), h.issuer.clone(), h.peer.clone(), h.client.clone()];
        for iss in &self.authn.issuers {
            v.extend(iss.claims_to_headers.values().cloned());
        }
        for n in &mut v {
            n.make_ascii_lowercase();
        }
        v.sort();
        v.dedup();
        v
    }
}
