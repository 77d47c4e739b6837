//! `cedar`: how requests are mapped into Cedar.
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::headers::check_header_name;

/// Mapping of requests into Cedar.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CedarConfig {
    /// Request headers exposed to policies as tags on the `Route` resource
    /// (`resource.hasTag("x-tenant")`). Credentials are never exposed.
    #[serde(default)]
    pub context_headers: Vec<String>,
}

impl CedarConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (i, hname) in self.context_headers.iter().enumerate() {
            check_header_name(&format!("cedar.context_headers[{i}]"), hname)?;
        }
        Ok(())
    }
}
