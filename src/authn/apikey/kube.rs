//! API keys from labelled Secrets read through the Kubernetes API: each data key of each
//! selected Secret is one entry document (origin `<namespace>/<secret>#<key>`). One kube-runtime
//! watcher per namespace feeds the pure [`SecretIndex`]; the [`crate::watch`] reload loop
//! debounces, rebuilds the whole set and hands it to the [`KeyStore`] (validate, then swap).
//! Nothing is applied before every namespace has completed its first list; a refused set keeps
//! the last good one and is reported as a Warning Event (`ApiKeyRejected`) on the Secret(s) at
//! fault. Secret values are key material: never logged, and only the digests are kept.
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::events::Recorder;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;

use super::keyset::KeyError;
use super::store::KeyStore;
use crate::config::ApiKeyKubernetes;
use crate::{kubeapi, watch};

/// Event reason on a Secret whose update was refused.
pub const REJECTED_REASON: &str = "ApiKeyRejected";

/// `<namespace>/<secret>#<key>`: names an entry in errors and Events, never its content.
pub fn origin(namespace: &str, secret: &str, key: &str) -> String {
    format!("{namespace}/{secret}#{key}")
}

/// The Secret (`namespace`, `name`) an origin names, if it names one (inline keys' field
/// names, such as `authn.api_keys.keys[0]`, do not).
pub fn secret_of(origin: &str) -> Option<(&str, &str)> {
    let (ns, rest) = origin.split_once('/')?;
    let (name, key) = rest.split_once('#')?;
    (!ns.is_empty() && !name.is_empty() && !key.is_empty() && !name.contains('/')).then_some((ns, name))
}

/// One selected Secret: its data keys, decoded (`None` when a value is not UTF-8 text).
#[derive(Debug, Clone)]
struct Entry {
    reference: ObjectReference,
    docs: BTreeMap<String, Option<String>>,
}

/// Equal when the entries are: a change to labels or annotations is not a change.
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.docs == other.docs
    }
}

impl Entry {
    fn from_secret(secret: &Secret) -> Self {
        // The API sends `data` base64-encoded; k8s-openapi has decoded it into bytes.
        let docs =
            secret.data.iter().flatten().map(|(k, v)| (k.clone(), String::from_utf8(v.0.clone()).ok())).collect();
        Self { reference: secret.object_ref(&()), docs }
    }
}

#[derive(Debug, Default)]
struct Namespace {
    /// Completed at least one full list.
    synced: bool,
    secrets: BTreeMap<String, Entry>,
    /// A (re-)list in progress; replaces `secrets` whole on `InitDone`, so Secrets deleted
    /// while the watch was down disappear.
    relisting: Option<BTreeMap<String, Entry>>,
}

/// The selected Secrets by namespace and name, fed by watch events. No client, no runtime.
#[derive(Debug, Default)]
pub struct SecretIndex {
    namespaces: BTreeMap<String, Namespace>,
    /// Secrets changed since the last applied set: blamed for a refusal that names none.
    changed: BTreeSet<(String, String)>,
}

impl SecretIndex {
    pub fn new(namespaces: &[String]) -> Self {
        Self { namespaces: namespaces.iter().map(|n| (n.clone(), Namespace::default())).collect(), ..Self::default() }
    }

    /// Folds one watch event in; true when the entry set may have changed.
    pub fn apply(&mut self, namespace: &str, event: watcher::Event<Secret>) -> bool {
        let ns = self.namespaces.entry(namespace.to_owned()).or_default();
        match event {
            watcher::Event::Init => {
                ns.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(s) => {
                ns.relisting.get_or_insert_default().insert(s.name_any(), Entry::from_secret(&s));
                false
            }
            watcher::Event::InitDone => {
                let fresh = ns.relisting.take().unwrap_or_default();
                let changed = !ns.synced || fresh != ns.secrets;
                let names: BTreeSet<&String> = fresh.keys().chain(ns.secrets.keys()).collect();
                for name in names {
                    if !ns.synced || ns.secrets.get(name) != fresh.get(name) {
                        self.changed.insert((namespace.to_owned(), name.clone()));
                    }
                }
                ns.secrets = fresh;
                ns.synced = true;
                changed
            }
            watcher::Event::Apply(s) => {
                let name = s.name_any();
                let entry = Entry::from_secret(&s);
                let changed = ns.secrets.get(&name) != Some(&entry);
                ns.secrets.insert(name.clone(), entry);
                if changed {
                    self.changed.insert((namespace.to_owned(), name));
                }
                changed
            }
            watcher::Event::Delete(s) => {
                let name = s.name_any();
                let changed = ns.secrets.remove(&name).is_some();
                if changed {
                    self.changed.insert((namespace.to_owned(), name));
                }
                changed
            }
        }
    }

    /// True once every namespace has completed its first list.
    pub fn is_synced(&self) -> bool {
        self.namespaces.values().all(|n| n.synced)
    }

    /// Every entry document, ordered by namespace, Secret, key; and the values that are not
    /// text (refused, named by origin).
    pub fn documents(&self) -> (Vec<(String, String)>, Vec<KeyError>) {
        let (mut docs, mut errors) = (Vec::new(), Vec::new());
        for (ns_name, ns) in &self.namespaces {
            for (name, entry) in &ns.secrets {
                for (key, text) in &entry.docs {
                    let origin = origin(ns_name, name, key);
                    match text {
                        Some(t) => docs.push((origin, t.clone())),
                        None => errors.push(KeyError::Invalid { origin, message: "value is not UTF-8 text".into() }),
                    }
                }
            }
        }
        (docs, errors)
    }

    /// Number of selected Secrets currently visible.
    pub fn secrets(&self) -> usize {
        self.namespaces.values().map(|n| n.secrets.len()).sum()
    }

    fn reference(&self, namespace: &str, name: &str) -> Option<ObjectReference> {
        self.namespaces.get(namespace)?.secrets.get(name).map(|e| e.reference.clone())
    }

    /// The refusal notes to post, one per Secret: an error goes to every Secret it names (a
    /// duplicate to both); the rest go to the Secrets changed since the last applied set.
    pub fn blame(&self, errors: &[KeyError]) -> Vec<(ObjectReference, String)> {
        let mut by_secret: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut unplaced = Vec::new();
        for e in errors {
            let origins: Vec<&str> = match e {
                KeyError::Invalid { origin, .. } => vec![origin],
                KeyError::Duplicate { first, second } => vec![first, second],
                KeyError::TooMany => vec![],
            };
            let named: BTreeSet<(&str, &str)> = origins.into_iter().filter_map(secret_of).collect();
            if named.is_empty() {
                unplaced.push(e.to_string());
            }
            for (ns, name) in named {
                by_secret.entry((ns.to_owned(), name.to_owned())).or_default().push(e.to_string());
            }
        }
        if !unplaced.is_empty() {
            for key in &self.changed {
                by_secret.entry(key.clone()).or_default().extend(unplaced.iter().cloned());
            }
        }
        by_secret
            .into_iter()
            .filter_map(|((ns, name), lines)| {
                let reference = self.reference(&ns, &name)?;
                let note = format!("API key update refused, last good set kept: {}", lines.join("; "));
                Some((reference, kubeapi::truncate_note(&note)))
            })
            .collect()
    }

    /// Forget the blame list once a set has been applied.
    fn settled(&mut self) {
        self.changed.clear();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

/// The running Secret source.
pub struct SecretSource {
    client: Client,
    namespaces: Vec<String>,
    selector: String,
    debounce: Duration,
    recorder: Option<Recorder>,
    watch_errors: Family<NamespaceLabel, Counter>,
}

impl SecretSource {
    /// Prepares the source; `registry` receives its metrics (`watch_errors`).
    pub fn new(client: Client, src: &ApiKeyKubernetes, debounce: Duration, registry: &mut Registry) -> Self {
        let namespaces = kubeapi::namespaces(&src.namespaces, &client);
        let recorder = kubeapi::recorder(&client, src.events);
        let watch_errors = Family::<NamespaceLabel, Counter>::default();
        registry.register(
            "watch_errors",
            "Kubernetes API key Secret watch errors (each is retried with backoff)",
            watch_errors.clone(),
        );
        Self { client, namespaces, selector: src.selector.clone(), debounce, recorder, watch_errors }
    }

    /// The watched namespaces.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// Watches until `shutdown` flips, feeding `store`.
    pub fn spawn(
        self,
        store: Arc<KeyStore>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let source = format!("kubernetes:{}/{}", self.namespaces.join(","), self.selector);
        tracing::info!(%source, namespaces = ?self.namespaces, selector = %self.selector, "watching API key Secrets");
        let streams = self.namespaces.iter().map(|ns| {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), ns);
            let ns = ns.clone();
            // Errors (failed list, 410 Gone, dropped connection, missing RBAC) are retried with
            // backoff; the watcher re-lists when it must.
            watcher(api, watcher::Config::default().labels(&self.selector))
                .default_backoff()
                .map(move |ev| (ns.clone(), ev))
                .boxed()
        });
        let events = futures::stream::select_all(streams);
        let timing = watch::Timing::from_quiet(self.debounce);
        let target = Arc::new(SecretTarget { store, source });
        let watched = Watched {
            index: SecretIndex::new(&self.namespaces),
            recorder: self.recorder,
            watch_errors: self.watch_errors,
        };
        tokio::spawn(watch::run(watched, target, events, timing, shutdown))
    }
}

/// The store, given the documents and the problems the index found itself.
struct SecretTarget {
    store: Arc<KeyStore>,
    source: String,
}

impl watch::Target for SecretTarget {
    type Candidate = (Vec<(String, String)>, Vec<KeyError>);
    type Outcome = ();
    type Error = Vec<KeyError>;

    fn apply(&self, (docs, found): Self::Candidate) -> Result<(), Vec<KeyError>> {
        self.store.apply_checked(&docs, found, &self.source)
    }
}

struct Watched {
    index: SecretIndex,
    recorder: Option<Recorder>,
    watch_errors: Family<NamespaceLabel, Counter>,
}

impl watch::Source for Watched {
    type Event = (String, Result<watcher::Event<Secret>, watcher::Error>);
    type Target = SecretTarget;

    fn observe(&mut self, (ns, event): Self::Event) -> bool {
        match event {
            Ok(ev) => self.index.apply(&ns, ev),
            Err(e) => {
                self.watch_errors.get_or_create(&NamespaceLabel { namespace: ns.clone() }).inc();
                tracing::warn!(namespace = %ns, error = %e, "API key Secret watch failed; retrying with backoff");
                false
            }
        }
    }

    /// Nothing is applied before every namespace has completed its first list: a partial
    /// list would drop keys that are still valid.
    fn is_complete(&self) -> bool {
        self.index.is_synced()
    }

    fn collect(&mut self) -> impl FnOnce() -> Option<(Vec<(String, String)>, Vec<KeyError>)> + Send + 'static {
        let candidate = self.index.documents();
        tracing::debug!(secrets = self.index.secrets(), entries = candidate.0.len(), "rebuilding API key set");
        move || Some(candidate)
    }

    fn report(&mut self, applied: watch::Applied<SecretTarget>) -> impl Future<Output = ()> + Send {
        match applied {
            Ok(()) => self.index.settled(),
            // The store has logged the refusal (errors name origins, never key material).
            Err(errors) => kubeapi::post_warnings(
                self.recorder.clone(),
                REJECTED_REASON,
                "ValidateApiKeys",
                self.index.blame(&errors),
            ),
        }
        std::future::ready(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn mk_secret(ns: &str, name: &str, data: &[(&str, &[u8])]) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect()),
            ..Default::default()
        }
    }

    fn listed(index: &mut SecretIndex, ns: &str, secrets: Vec<Secret>) -> bool {
        index.apply(ns, watcher::Event::Init);
        for s in secrets {
            index.apply(ns, watcher::Event::InitApply(s));
        }
        index.apply(ns, watcher::Event::InitDone)
    }

    #[test]
    fn nothing_is_synced_until_every_namespace_has_listed() {
        let mut index = SecretIndex::new(&["a".into(), "b".into()]);
        listed(&mut index, "a", vec![mk_secret("a", "k", &[("batch", b"client: c\nkey: x\n")])]);
        assert!(!index.is_synced());
        index.apply("b", watcher::Event::Init);
        assert!(!index.is_synced(), "a list in progress is not a complete list");
        index.apply("b", watcher::Event::InitDone);
        assert!(index.is_synced());
    }

    #[test]
    fn every_data_key_is_an_entry_named_by_namespace_secret_and_key() {
        let mut index = SecretIndex::new(&["b".into(), "a".into()]);
        listed(&mut index, "b", vec![mk_secret("b", "z", &[("one", b"1")])]);
        listed(&mut index, "a", vec![mk_secret("a", "y", &[("two", b"2"), ("three", b"3")])]);
        let (docs, errors) = index.documents();
        let origins: Vec<&str> = docs.iter().map(|(o, _)| o.as_str()).collect();
        assert_eq!(origins, ["a/y#three", "a/y#two", "b/z#one"]);
        assert!(errors.is_empty());
    }

    #[test]
    fn a_value_that_is_not_text_is_refused_by_origin_without_its_content() {
        let mut index = SecretIndex::new(&["a".into()]);
        listed(&mut index, "a", vec![mk_secret("a", "bin", &[("k", &[0xff, 0xfe, b'h', b'i'])])]);
        let (docs, errors) = index.documents();
        assert!(docs.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().starts_with("a/bin#k: "), "{}", errors[0]);
    }

    #[test]
    fn a_relist_forgets_secrets_deleted_while_the_watch_was_down() {
        let mut index = SecretIndex::new(&["a".into()]);
        listed(&mut index, "a", vec![mk_secret("a", "one", &[("k", b"1")]), mk_secret("a", "two", &[("k", b"2")])]);
        index.apply("a", watcher::Event::Init);
        index.apply("a", watcher::Event::InitApply(mk_secret("a", "one", &[("k", b"1")])));
        assert_eq!(index.documents().0.len(), 2, "mid-relist the old view is served");
        assert!(index.apply("a", watcher::Event::InitDone));
        assert_eq!(index.documents().0.len(), 1);
    }

    #[test]
    fn an_identical_update_is_not_a_change_and_a_delete_is() {
        let mut index = SecretIndex::new(&["a".into()]);
        listed(&mut index, "a", vec![mk_secret("a", "one", &[("k", b"1")])]);
        let mut touched = mk_secret("a", "one", &[("k", b"1")]);
        touched.metadata.resource_version = Some("2".into());
        assert!(!index.apply("a", watcher::Event::Apply(touched)));
        assert!(index.apply("a", watcher::Event::Apply(mk_secret("a", "one", &[("k", b"2")]))));
        assert!(index.apply("a", watcher::Event::Delete(mk_secret("a", "one", &[]))));
        assert!(!index.apply("a", watcher::Event::Delete(mk_secret("a", "one", &[]))));
    }

    #[test]
    fn a_duplicate_is_blamed_on_both_secrets_and_other_errors_on_theirs() {
        let mut index = SecretIndex::new(&["a".into()]);
        listed(
            &mut index,
            "a",
            vec![
                mk_secret("a", "one", &[("k", b"")]),
                mk_secret("a", "two", &[("k", b"")]),
                mk_secret("a", "three", &[("k", b"")]),
            ],
        );
        index.settled();
        index.apply("a", watcher::Event::Apply(mk_secret("a", "three", &[("k", b"x")])));
        let errs = vec![
            KeyError::Duplicate { first: "a/one#k".into(), second: "a/two#k".into() },
            KeyError::Duplicate { first: "authn.api_keys.keys[0]".into(), second: "a/one#k".into() },
            KeyError::TooMany,
        ];
        let notes = index.blame(&errs);
        let names: Vec<&str> = notes.iter().filter_map(|(r, _)| r.name.as_deref()).collect();
        assert_eq!(names, ["one", "three", "two"]);
        assert!(notes[0].1.contains("a/one#k and a/two#k"), "{}", notes[0].1);
        assert!(notes[0].1.contains("authn.api_keys.keys[0]"), "{}", notes[0].1);
        assert!(notes[1].1.contains("more than") && !notes[1].1.contains("a/two#k"), "{}", notes[1].1);
        assert!(notes[2].1.contains("a/one#k and a/two#k"));
    }

    #[test]
    fn origins_that_name_no_secret_are_not_parsed_as_one() {
        assert_eq!(secret_of("ns/name#key"), Some(("ns", "name")));
        assert_eq!(secret_of("authn.api_keys.keys[0]"), None);
        assert_eq!(secret_of("dir:/keys"), None);
        assert_eq!(secret_of("ns/#key"), None);
        assert_eq!(secret_of("ns/name#"), None);
        assert_eq!(secret_of("/name#k"), None);
    }
}
