//! `log`: format, filter, and what happens when the log sink cannot keep up.
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Log output.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    #[serde(default)]
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `portcullis=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
    /// When the queue to the log writer is full (stderr blocked: a full disk, a stuck collector):
    /// `drop` the line at once (default), or `block` the check for at most `block_timeout`.
    /// Either way the line is counted in `portcullis_log_dropped_total` and the check is answered.
    #[serde(default)]
    pub on_full: OnFull,
    /// With `on_full: block`, the longest a check waits for room in the log queue before its
    /// line is dropped. Keep it well under the proxy's ext_authz timeout (Envoy: 200 ms).
    #[serde(default = "default_block_timeout", with = "humantime_serde")]
    pub block_timeout: Duration,
    /// How often a WARN line reports how many lines were dropped since the last report (only
    /// when some were).
    #[serde(default = "default_dropped_warn_interval", with = "humantime_serde")]
    pub dropped_warn_interval: Duration,
    /// How decision lines show a token's subject (and a `User` principal): `plain` (default), or
    /// `hash`, a short SHA-256 digest that still correlates one subject's lines.
    #[serde(default)]
    pub subject: SubjectLog,
}

fn default_level() -> String {
    "info".into()
}
fn default_block_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_dropped_warn_interval() -> Duration {
    Duration::from_secs(10)
}

/// A wait longer than this always exceeds the proxy's timeout: the check would be denied by the
/// proxy anyway, so waiting longer only holds a worker thread.
const MAX_BLOCK: Duration = Duration::from_secs(1);

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: default_level(),
            on_full: OnFull::default(),
            block_timeout: default_block_timeout(),
            dropped_warn_interval: default_dropped_warn_interval(),
            subject: SubjectLog::default(),
        }
    }
}

impl LogConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.block_timeout.is_zero() || self.block_timeout > MAX_BLOCK {
            return Err(ConfigError::invalid(
                "log.block_timeout",
                "must be more than 0 and at most 1s (keep it well under the proxy's ext_authz timeout)",
            ));
        }
        if self.dropped_warn_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid("log.dropped_warn_interval", "must be at least 100ms"));
        }
        Ok(())
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// How a verified token's subject appears in decision lines.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SubjectLog {
    /// As the token states it: an audit line must say who.
    #[default]
    Plain,
    /// `sha256:` and the first 16 hex digits of SHA-256(subject): pseudonymous, not anonymous
    /// (a known subject can be hashed and searched for).
    Hash,
}

/// What a log call does when the writer's queue is full.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFull {
    /// Drop the line and count it: a stalled sink never slows a check.
    #[default]
    Drop,
    /// Wait up to `block_timeout` for room, then drop and count it.
    Block,
}

#[cfg(test)]
mod tests {
    use crate::config::{OnFull, SubjectLog};

    use crate::config::tests::parse;

    #[test]
    fn on_full_defaults_to_drop_and_block_is_bounded() {
        let c = parse("policy: {dir: x}\n").unwrap();
        assert_eq!(c.log.on_full, OnFull::Drop);
        let c = parse("policy: {dir: x}\nlog: {on_full: block, block_timeout: 20ms}\n").unwrap();
        assert_eq!(c.log.on_full, OnFull::Block);
        assert_eq!(c.log.block_timeout.as_millis(), 20);
        for bad in ["0s", "5s"] {
            let err =
                parse(&format!("policy: {{dir: x}}\nlog: {{on_full: block, block_timeout: {bad}}}\n")).unwrap_err();
            assert!(err.contains("log.block_timeout"), "{bad}: {err}");
        }
        let err = parse("policy: {dir: x}\nlog: {on_full: wait}\n").unwrap_err();
        assert!(err.contains("wait"), "{err}");
        let err = parse("policy: {dir: x}\nlog: {dropped_warn_interval: 1ms}\n").unwrap_err();
        assert!(err.contains("log.dropped_warn_interval"), "{err}");
    }

    #[test]
    fn subject_defaults_to_plain_and_only_plain_or_hash_parse() {
        assert_eq!(parse("policy: {dir: x}\n").unwrap().log.subject, SubjectLog::Plain);
        assert_eq!(parse("policy: {dir: x}\nlog: {subject: hash}\n").unwrap().log.subject, SubjectLog::Hash);
        let err = parse("policy: {dir: x}\nlog: {subject: redact}\n").unwrap_err();
        assert!(err.contains("redact"), "{err}");
    }
}
