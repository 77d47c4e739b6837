//! `log`: format and filter.
use serde::{Deserialize, Serialize};

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
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: LogFormat::Text, level: default_level() }
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
