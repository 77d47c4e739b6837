//! The runtime of the Kubernetes source: one kube-runtime watcher per namespace feeding the
//! [`Index`], run by the [`crate::watch`] reload loop, with refusals posted as Kubernetes Events.
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;

use super::index::{Index, split_origin};
use super::{namespaces, source_name};
use crate::config::KubernetesSource;
use crate::policy::snapshot::PolicyDocument;
use crate::policy::store::PolicyStore;
use crate::policy::target::StoreTarget;
use crate::watch;

/// Reporting controller name on the Events we post.
const CONTROLLER: &str = "portcullis";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

/// The running Kubernetes policy source.
pub struct KubeSource {
    client: Client,
    namespaces: Vec<String>,
    selector: String,
    debounce: Duration,
    recorder: Option<Recorder>,
    watch_errors: Family<NamespaceLabel, Counter>,
}

impl KubeSource {
    /// Prepares the source; `registry` receives its metrics (`watch_errors`).
    pub fn new(client: Client, src: &KubernetesSource, debounce: Duration, registry: &mut Registry) -> Self {
        let namespaces = namespaces(src, &client);
        let recorder = src.events.then(|| {
            let reporter = Reporter {
                controller: CONTROLLER.into(),
                instance: std::env::var("POD_NAME").ok().filter(|n| !n.is_empty()),
            };
            Recorder::new(client.clone(), reporter)
        });
        let watch_errors = Family::<NamespaceLabel, Counter>::default();
        registry.register(
            "watch_errors",
            "Kubernetes ConfigMap watch errors (each is retried with backoff)",
            watch_errors.clone(),
        );
        Self { client, namespaces, selector: src.selector.clone(), debounce, recorder, watch_errors }
    }

    /// The watched namespaces.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Watches until `shutdown` flips. A burst of changes is debounced by `debounce`, for at
    /// most [`watch::MAX_WAIT_FACTOR`] of it.
    pub fn spawn(
        self,
        store: Arc<PolicyStore>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let source = source_name(&self.namespaces, &self.selector);
        tracing::info!(%source, namespaces = ?self.namespaces, selector = %self.selector, "watching policy ConfigMaps");
        let streams = self.namespaces.iter().map(|ns| {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
            let ns = ns.clone();
            // default_backoff: errors (failed list, 410 Gone, dropped connection) are retried
            // with client-go's exponential backoff; the watcher re-lists when it must.
            watcher(api, watcher::Config::default().labels(&self.selector))
                .default_backoff()
                .map(move |ev| (ns.clone(), ev))
                .boxed()
        });
        let events = futures::stream::select_all(streams);
        let timing = watch::Timing::from_quiet(self.debounce);
        let set = store.set();
        let target = Arc::new(StoreTarget { store, source });
        let watched = Watched {
            index: Index::new(&self.namespaces),
            recorder: self.recorder,
            watch_errors: self.watch_errors,
            set,
        };
        tokio::spawn(watch::run(watched, target, events, timing, shutdown))
    }
}

/// The index as a [`watch::Source`], with what it needs to report.
struct Watched {
    index: Index,
    recorder: Option<Recorder>,
    watch_errors: Family<NamespaceLabel, Counter>,
    /// The store's set (`live` or `candidate`): named in logs and in the Event's reason.
    set: &'static str,
}

impl watch::Source for Watched {
    type Event = (String, Result<watcher::Event<ConfigMap>, watcher::Error>);
    type Target = StoreTarget;

    fn observe(&mut self, (ns, event): Self::Event) -> bool {
        match event {
            Ok(ev) => self.index.apply(&ns, ev),
            Err(e) => {
                self.watch_errors.get_or_create(&NamespaceLabel { namespace: ns.clone() }).inc();
                tracing::warn!(namespace = %ns, error = %e, "policy ConfigMap watch failed; retrying with backoff");
                restart_span(&ns, &e);
                false
            }
        }
    }

    /// Nothing is applied before every namespace has completed its first list.
    fn is_complete(&self) -> bool {
        self.index.is_synced()
    }

    fn collect(&mut self) -> impl FnOnce() -> Option<Vec<PolicyDocument>> + Send + 'static {
        let docs = self.index.documents();
        tracing::debug!(configmaps = self.index.configmaps(), documents = docs.len(), "rebuilding policy set");
        move || Some(docs)
    }

    fn report(&mut self, applied: watch::Applied<StoreTarget>) -> impl Future<Output = ()> + Send {
        match applied {
            Ok(_) => self.index.settled(),
            Err(errors) => {
                for e in &errors {
                    // Problems of the set as a whole (e.g. no schema) name no ConfigMap.
                    let (ns, name, key) = split_origin(&e.origin).unwrap_or(("", "", ""));
                    tracing::error!(
                        set = self.set, namespace = ns, configmap = name, key, line = e.line, column = e.column,
                        error = %e.message, "policy ConfigMap refused"
                    );
                }
                self.post(self.index.blame(&errors));
            }
        }
        std::future::ready(())
    }
}

impl Watched {
    /// Posts a Warning Event on each blamed ConfigMap, in the background: the API server being
    /// slow must not hold up the watch.
    fn post(&self, notes: Vec<(ObjectReference, String)>) {
        let Some(recorder) = self.recorder.clone() else { return };
        // A refused candidate must not read as a refused live set to whoever looks at Events.
        let reason = if self.set == "candidate" { "CandidatePolicyRejected" } else { "PolicyRejected" };
        tokio::spawn(async move {
            for (reference, note) in notes {
                let ev = KubeEvent {
                    type_: EventType::Warning,
                    reason: reason.into(),
                    note: Some(note),
                    action: "ValidatePolicy".into(),
                    secondary: None,
                };
                if let Err(e) = recorder.publish(&ev, &reference).await {
                    tracing::warn!(
                        namespace = reference.namespace.as_deref().unwrap_or(""),
                        configmap = reference.name.as_deref().unwrap_or(""),
                        error = %e,
                        "could not post the PolicyRejected event"
                    );
                }
            }
        });
    }
}

/// A short root span marking a watch restart: the watcher retries with backoff (and re-lists
/// when it must) after this error. Not caused by a check, so it starts its own trace, as the JWKS
/// fetch span does; with traces off the global tracer is a no-op.
fn restart_span(ns: &str, e: &watcher::Error) {
    use opentelemetry::trace::{Span as _, Tracer as _};
    let tracer = opentelemetry::global::tracer("portcullis");
    let mut attrs = vec![
        opentelemetry::KeyValue::new("k8s.namespace.name", ns.to_owned()),
        opentelemetry::KeyValue::new("error.type", error_kind(e)),
    ];
    // The API server's own refusal (410 Gone: the history was compacted, so it re-lists).
    if let watcher::Error::WatchError(status) = e {
        attrs.push(opentelemetry::KeyValue::new("http.response.status_code", i64::from(status.code)));
    }
    let mut span = tracer.span_builder(RESTART_SPAN).with_attributes(attrs).start(&tracer);
    span.set_status(opentelemetry::trace::Status::error(e.to_string()));
    span.end();
}

/// Name of the watch-restart span.
const RESTART_SPAN: &str = "portcullis.kubernetes.watch_restart";

/// A bounded label for a watch error (the span attribute `error.type`).
fn error_kind(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(_) => "initial_list_failed",
        watcher::Error::WatchStartFailed(_) => "watch_start_failed",
        watcher::Error::WatchError(_) => "watch_error",
        watcher::Error::WatchFailed(_) => "watch_failed",
        watcher::Error::NoResourceVersion => "no_resource_version",
    }
}
