//! The selected ConfigMaps by namespace and name: a pure view fed by watch events, turned into
//! the complete document set and into per-ConfigMap refusal notes. No client and no runtime:
//! everything here is tested with `mk_*` fixtures.
use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use kube::runtime::watcher;
use kube::{Resource as _, ResourceExt as _};

use crate::policy::snapshot::{DocKind, LoadError, PolicyDocument};

/// Kubernetes Event notes are limited to 1 kB.
const MAX_EVENT_NOTE: usize = 1024;

/// `configmap/<ns>/<name>/<key>`: shown in errors and in unannotated policy ids.
pub fn origin(namespace: &str, name: &str, key: &str) -> String {
    format!("configmap/{namespace}/{name}/{key}")
}

/// The ConfigMap (`namespace`, `name`) an error's origin names, if it names one.
pub fn configmap_of(origin: &str) -> Option<(&str, &str)> {
    split_origin(origin).map(|(ns, name, _)| (ns, name))
}

/// `configmap/<ns>/<name>/<key>` back into its parts.
pub(super) fn split_origin(origin: &str) -> Option<(&str, &str, &str)> {
    let rest = origin.strip_prefix("configmap/")?;
    let mut parts = rest.splitn(3, '/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(ns), Some(name), Some(key)) if !ns.is_empty() && !name.is_empty() && !key.is_empty() => {
            Some((ns, name, key))
        }
        _ => None,
    }
}

/// One selected ConfigMap as far as policies are concerned.
#[derive(Debug, Clone)]
struct Entry {
    reference: ObjectReference,
    /// Only the keys that are policy documents, sorted.
    docs: BTreeMap<String, String>,
}

/// Equal when the policy documents are: a change to other keys or labels is not a change.
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.docs == other.docs
    }
}

impl Entry {
    fn from_configmap(cm: &ConfigMap) -> Self {
        let docs = cm
            .data
            .iter()
            .flatten()
            .filter(|(k, _)| DocKind::from_name(k).is_some())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Self { reference: cm.object_ref(&()), docs }
    }
}

#[derive(Debug, Default)]
struct Namespace {
    /// Completed at least one full list.
    synced: bool,
    maps: BTreeMap<String, Entry>,
    /// A (re-)list in progress; replaces `maps` whole on `InitDone`, so objects deleted while
    /// the watch was down disappear.
    relisting: Option<BTreeMap<String, Entry>>,
}

/// The selected ConfigMaps by namespace and name, fed by watch events.
#[derive(Debug, Default)]
pub struct Index {
    namespaces: BTreeMap<String, Namespace>,
    /// ConfigMaps changed since the last applied set: they get the blame for a refusal that
    /// names no ConfigMap (e.g. a missing schema).
    changed: BTreeSet<(String, String)>,
}

impl Index {
    pub fn new(namespaces: &[String]) -> Self {
        Self { namespaces: namespaces.iter().map(|n| (n.clone(), Namespace::default())).collect(), ..Self::default() }
    }

    /// Folds one watch event in; true when the visible document set may have changed.
    pub fn apply(&mut self, namespace: &str, event: watcher::Event<ConfigMap>) -> bool {
        let ns = self.namespaces.entry(namespace.to_owned()).or_default();
        match event {
            watcher::Event::Init => {
                ns.relisting = Some(BTreeMap::new());
                false
            }
            watcher::Event::InitApply(cm) => {
                let name = cm.name_any();
                ns.relisting.get_or_insert_default().insert(name, Entry::from_configmap(&cm));
                false
            }
            watcher::Event::InitDone => {
                let fresh = ns.relisting.take().unwrap_or_default();
                let changed = !ns.synced || fresh != ns.maps;
                let names: BTreeSet<&String> = fresh.keys().chain(ns.maps.keys()).collect();
                for name in names {
                    if !ns.synced || ns.maps.get(name) != fresh.get(name) {
                        self.changed.insert((namespace.to_owned(), name.clone()));
                    }
                }
                ns.maps = fresh;
                ns.synced = true;
                changed
            }
            watcher::Event::Apply(cm) => {
                let name = cm.name_any();
                let entry = Entry::from_configmap(&cm);
                let changed = ns.maps.get(&name) != Some(&entry);
                ns.maps.insert(name.clone(), entry);
                if changed {
                    self.changed.insert((namespace.to_owned(), name));
                }
                changed
            }
            watcher::Event::Delete(cm) => {
                let name = cm.name_any();
                let changed = ns.maps.remove(&name).is_some();
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

    /// Every policy document of every selected ConfigMap, ordered by namespace, name, key.
    pub fn documents(&self) -> Vec<PolicyDocument> {
        let mut docs = Vec::new();
        for (ns_name, ns) in &self.namespaces {
            for (name, entry) in &ns.maps {
                for (key, text) in &entry.docs {
                    let Some(kind) = DocKind::from_name(key) else { continue };
                    docs.push(PolicyDocument { origin: origin(ns_name, name, key), kind, text: text.clone() });
                }
            }
        }
        docs
    }

    /// Number of selected ConfigMaps currently visible.
    pub fn configmaps(&self) -> usize {
        self.namespaces.values().map(|n| n.maps.len()).sum()
    }

    fn reference(&self, namespace: &str, name: &str) -> Option<ObjectReference> {
        self.namespaces.get(namespace)?.maps.get(name).map(|e| e.reference.clone())
    }

    /// The refusal notes to post, one per ConfigMap: errors naming a ConfigMap go to it; the
    /// rest go to the ConfigMaps changed since the last applied set.
    pub fn blame(&self, errors: &[LoadError]) -> Vec<(ObjectReference, String)> {
        let mut by_map: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
        let mut unplaced = Vec::new();
        for e in errors {
            match configmap_of(&e.origin) {
                Some((ns, name)) => by_map.entry((ns.to_owned(), name.to_owned())).or_default().push(e.to_string()),
                None => unplaced.push(e.to_string()),
            }
        }
        if !unplaced.is_empty() {
            for key in &self.changed {
                by_map.entry(key.clone()).or_default().extend(unplaced.iter().cloned());
            }
        }
        by_map
            .into_iter()
            .filter_map(|((ns, name), lines)| {
                let reference = self.reference(&ns, &name)?;
                Some((reference, truncate(&format!("policy update refused, last good set kept: {}", lines.join("; ")))))
            })
            .collect()
    }

    /// Forget the blame list once a set has been applied.
    pub(super) fn settled(&mut self) {
        self.changed.clear();
    }
}

fn truncate(s: &str) -> String {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn mk_cm(ns: &str, name: &str, data: &[(&str, &str)]) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(ns.into()),
                resource_version: Some("1".into()),
                ..Default::default()
            },
            data: Some(data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            ..Default::default()
        }
    }

    fn listed(index: &mut Index, ns: &str, cms: Vec<ConfigMap>) -> bool {
        index.apply(ns, watcher::Event::Init);
        for cm in cms {
            index.apply(ns, watcher::Event::InitApply(cm));
        }
        index.apply(ns, watcher::Event::InitDone)
    }

    #[test]
    fn nothing_is_synced_until_every_namespace_has_listed() {
        let mut index = Index::new(&["a".into(), "b".into()]);
        assert!(!index.is_synced());
        listed(&mut index, "a", vec![mk_cm("a", "p", &[("x.cedar", "")])]);
        assert!(!index.is_synced());
        index.apply("b", watcher::Event::Init);
        assert!(!index.is_synced(), "a list in progress is not a complete list");
        index.apply("b", watcher::Event::InitDone);
        assert!(index.is_synced());
    }

    #[test]
    fn documents_are_ordered_and_named_by_namespace_configmap_and_key() {
        let mut index = Index::new(&["b".into(), "a".into()]);
        listed(&mut index, "b", vec![mk_cm("b", "z", &[("p.cedar", "1"), ("README.md", "no")])]);
        listed(
            &mut index,
            "a",
            vec![mk_cm("a", "y", &[("s.cedarschema", "2"), ("e.entities.json", "3"), ("b.cedar", "4")])],
        );
        let origins: Vec<String> = index.documents().into_iter().map(|d| d.origin).collect();
        assert_eq!(
            origins,
            [
                "configmap/a/y/b.cedar",
                "configmap/a/y/e.entities.json",
                "configmap/a/y/s.cedarschema",
                "configmap/b/z/p.cedar"
            ]
        );
    }

    #[test]
    fn a_relist_forgets_configmaps_deleted_while_the_watch_was_down() {
        let mut index = Index::new(&["a".into()]);
        listed(&mut index, "a", vec![mk_cm("a", "one", &[("x.cedar", "1")]), mk_cm("a", "two", &[("y.cedar", "2")])]);
        index.apply("a", watcher::Event::Init);
        index.apply("a", watcher::Event::InitApply(mk_cm("a", "one", &[("x.cedar", "1")])));
        // Mid-relist the old view is still what is served.
        assert_eq!(index.documents().len(), 2);
        assert!(index.apply("a", watcher::Event::InitDone));
        assert_eq!(index.documents().len(), 1);
    }

    #[test]
    fn an_identical_relist_or_update_is_not_a_change() {
        let mut index = Index::new(&["a".into()]);
        listed(&mut index, "a", vec![mk_cm("a", "one", &[("x.cedar", "1")])]);
        assert!(!listed(&mut index, "a", vec![mk_cm("a", "one", &[("x.cedar", "1")])]));
        let mut touched = mk_cm("a", "one", &[("x.cedar", "1"), ("notes.txt", "x")]);
        touched.metadata.resource_version = Some("2".into());
        assert!(!index.apply("a", watcher::Event::Apply(touched)));
        assert!(index.apply("a", watcher::Event::Apply(mk_cm("a", "one", &[("x.cedar", "2")]))));
        assert!(index.apply("a", watcher::Event::Delete(mk_cm("a", "one", &[]))));
        assert!(!index.apply("a", watcher::Event::Delete(mk_cm("a", "one", &[]))));
    }

    #[test]
    fn errors_are_blamed_on_the_configmap_they_name_else_on_the_changed_ones() {
        let mut index = Index::new(&["a".into()]);
        listed(&mut index, "a", vec![mk_cm("a", "one", &[("x.cedar", "1")]), mk_cm("a", "two", &[("y.cedar", "2")])]);
        index.settled();
        index.apply("a", watcher::Event::Apply(mk_cm("a", "two", &[("y.cedar", "3")])));
        let errs = vec![
            LoadError { origin: "configmap/a/one/x.cedar".into(), line: 2, column: 5, message: "bad".into() },
            LoadError::whole("kubernetes:a/sel", "no schema"),
        ];
        let notes = index.blame(&errs);
        assert_eq!(notes.len(), 2);
        assert_eq!(notes[0].0.name.as_deref(), Some("one"));
        assert!(notes[0].1.contains("configmap/a/one/x.cedar:2:5: bad"), "{}", notes[0].1);
        assert!(!notes[0].1.contains("no schema"));
        assert_eq!(notes[1].0.name.as_deref(), Some("two"));
        assert!(notes[1].1.contains("no schema"));
    }

    #[test]
    fn origins_that_name_no_configmap_are_not_parsed_as_one() {
        assert_eq!(configmap_of("configmap/ns/name/k.cedar"), Some(("ns", "name")));
        assert_eq!(configmap_of("configmap/ns/name"), None);
        assert_eq!(configmap_of("configmap//name/k"), None);
        assert_eq!(configmap_of("configmap/ns/name/"), None);
        assert_eq!(split_origin("configmap/ns/name/k.cedar"), Some(("ns", "name", "k.cedar")));
        assert_eq!(configmap_of("policies.cedar"), None);
    }

    #[test]
    fn long_notes_are_cut_to_the_event_limit_on_a_char_boundary() {
        let note = truncate(&"é".repeat(2000));
        assert!(note.len() <= MAX_EVENT_NOTE);
        assert!(note.ends_with("..."));
    }
}
