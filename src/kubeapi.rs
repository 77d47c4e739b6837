//! Generic Kubernetes API helpers shared by the sources that watch the API (policy ConfigMaps,
//! API key Secrets): the client, the namespaces to watch, and Warning Events on refused objects.
//! Knows nothing about what is watched.
use std::path::Path;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};

/// Reporting controller name on the Events we post.
const CONTROLLER: &str = "portcullis";

/// Kubernetes Event notes are limited to 1 kB.
pub const MAX_EVENT_NOTE: usize = 1024;

/// Why a Kubernetes source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeSourceError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: String, message: String },
    #[error("no Kubernetes client configuration (in-cluster or kubeconfig): {0}")]
    Infer(String),
    #[error("building the Kubernetes client: {0}")]
    Client(String),
}

/// A kube client from `kubeconfig` if set, else in-cluster service account / `$KUBECONFIG`.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeSourceError> {
    let config = match kubeconfig {
        Some(path) => from_kubeconfig_file(path).await?,
        None => kube::Config::infer().await.map_err(|e| KubeSourceError::Infer(e.to_string()))?,
    };
    Client::try_from(config).map_err(|e| KubeSourceError::Client(e.to_string()))
}

async fn from_kubeconfig_file(path: &Path) -> Result<kube::Config, KubeSourceError> {
    let err = |e: &dyn std::fmt::Display| KubeSourceError::Kubeconfig {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let kc = Kubeconfig::read_from(path).map_err(|e| err(&e))?;
    kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await.map_err(|e| err(&e))
}

/// Namespaces to watch: the configured ones, else `POD_NAMESPACE`, else the client's default
/// namespace (the service account's namespace in-cluster, the context's namespace otherwise).
pub fn namespaces(configured: &[String], client: &Client) -> Vec<String> {
    let mut ns: Vec<String> = configured.iter().map(|n| n.trim().to_owned()).collect();
    if ns.is_empty() {
        ns.push(
            std::env::var("POD_NAMESPACE")
                .ok()
                .filter(|n| !n.trim().is_empty())
                .unwrap_or_else(|| client.default_namespace().to_owned()),
        );
    }
    ns.sort();
    ns.dedup();
    ns
}

/// An Event recorder reporting as this pod (`POD_NAME`), when Events are enabled.
pub fn recorder(client: &Client, events: bool) -> Option<Recorder> {
    events.then(|| {
        let reporter = Reporter {
            controller: CONTROLLER.into(),
            instance: std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()),
        };
        Recorder::new(client.clone(), reporter)
    })
}

/// Posts one Warning Event per `(object, note)` in the background: the API server being slow
/// must not hold up a watch. Notes are cut to the Event limit.
pub fn post_warnings(
    recorder: Option<Recorder>,
    reason: &'static str,
    action: &'static str,
    notes: Vec<(ObjectReference, String)>,
) {
    let Some(recorder) = recorder else { return };
    if notes.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for (reference, note) in notes {
            let ev = KubeEvent {
                type_: EventType::Warning,
                reason: reason.into(),
                note: Some(truncate_note(&note)),
                action: action.into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &reference).await {
                tracing::warn!(
                    namespace = reference.namespace.as_deref().unwrap_or(""),
                    name = reference.name.as_deref().unwrap_or(""),
                    reason,
                    error = %e,
                    "could not post a Kubernetes Event"
                );
            }
        }
    });
}

/// `s` cut to [`MAX_EVENT_NOTE`] bytes on a char boundary.
pub fn truncate_note(s: &str) -> String {
    if s.len() <= MAX_EVENT_NOTE {
        return s.to_owned();
    }
    let mut end = MAX_EVENT_NOTE - 3;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_notes_are_cut_to_the_event_limit_on_a_char_boundary() {
        let note = truncate_note(&"é".repeat(2000));
        assert!(note.len() <= MAX_EVENT_NOTE);
        assert!(note.ends_with("..."));
        assert_eq!(truncate_note("short"), "short");
    }
}
