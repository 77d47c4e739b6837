//! A stand-in for the Kubernetes API server, on 127.0.0.1, speaking just enough of the
//! list/watch protocol for ConfigMaps and Secrets for the real `kube` client and `kube-runtime` watcher:
//! resourceVersions, label selectors, ADDED/MODIFIED/DELETED, BOOKMARK, `410 Gone` for a
//! compacted resourceVersion, and dropped watch streams. It also accepts `events.k8s.io/v1`
//! Events (POST, and the PATCH kube's Recorder sends for a repeat) and records them.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, watch};

/// One change, as a watch would report it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    /// `configmaps` or `secrets`.
    resource: &'static str,
    kind: &'static str,
    namespace: String,
    object: Value,
}

#[derive(Default)]
struct World {
    rv: u64,
    /// By (resource, namespace, name).
    objects: BTreeMap<(&'static str, String, String), Value>,
    history: Vec<Change>,
    /// A watch resuming from a resourceVersion below this is told `410 Gone`.
    compacted: u64,
    /// The next N list requests fail with 500.
    fail_lists: u32,
    /// The next N list requests in a namespace fail with 500.
    fail_lists_in: HashMap<String, u32>,
    lists: u32,
    watches: u32,
    gone_sent: u32,
    events: Vec<Value>,
}

struct Inner {
    world: Mutex<World>,
    changes: broadcast::Sender<Change>,
    /// Bumped to end every open watch stream (a dropped connection).
    drops: watch::Sender<u64>,
}

/// The fake API server. Dropping it stops serving.
pub struct FakeApiServer {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApiServer {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind fake API server");
        Self::start_on(listener).await
    }

    /// Serves on an already bound listener (e.g. a port a sidecar was pointed at before).
    pub async fn start_on(listener: tokio::net::TcpListener) -> Self {
        let (changes, _) = broadcast::channel(1024);
        let (drops, _) = watch::channel(0);
        let inner = Arc::new(Inner { world: Mutex::new(World { rv: 100, ..World::default() }), changes, drops });
        let app = Router::new()
            .route("/api/v1/namespaces/{ns}/configmaps", get(configmaps))
            .route("/api/v1/namespaces/{ns}/secrets", get(secrets))
            .route("/apis/events.k8s.io/v1/namespaces/{ns}/events", post(create_event))
            .route("/apis/events.k8s.io/v1/namespaces/{ns}/events/{name}", patch(patch_event))
            .fallback(not_found)
            .with_state(inner.clone());
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kube client configured explicitly for this server.
    pub fn client(&self) -> kube::Client {
        let mut cfg = kube::Config::new(self.url().parse().expect("uri"));
        cfg.default_namespace = "default".into();
        kube::Client::try_from(cfg).expect("kube client")
    }

    /// Writes a kubeconfig file pointing at this server; returns its path.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             users:\n- name: tester\n  user:\n    token: not-a-real-token\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: tester\n    namespace: policies\n\
             current-context: fake\n",
            self.url()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.inner.world.lock().expect("world lock")
    }

    /// Creates or replaces a ConfigMap (ADDED or MODIFIED).
    pub fn put(&self, ns: &str, name: &str, labels: &[(&str, &str)], data: &[(&str, &str)]) {
        let data: BTreeMap<&str, &str> = data.iter().copied().collect();
        self.put_object("configmaps", "ConfigMap", ns, name, labels, json!(data));
    }

    /// Creates or replaces a Secret (ADDED or MODIFIED); values are sent base64-encoded in
    /// `data`, as the API server does.
    pub fn put_secret(&self, ns: &str, name: &str, labels: &[(&str, &str)], data: &[(&str, &[u8])]) {
        use base64::Engine as _;
        let data: BTreeMap<&str, String> =
            data.iter().map(|(k, v)| (*k, base64::engine::general_purpose::STANDARD.encode(v))).collect();
        self.put_object("secrets", "Secret", ns, name, labels, json!(data));
    }

    fn put_object(
        &self,
        resource: &'static str,
        kind_name: &str,
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        data: Value,
    ) {
        let mut w = self.world();
        w.rv += 1;
        let rv = w.rv;
        let key = (resource, ns.to_owned(), name.to_owned());
        let kind = if w.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let object = json!({
            "apiVersion": "v1",
            "kind": kind_name,
            "metadata": {
                "name": name, "namespace": ns, "uid": format!("uid-{resource}-{ns}-{name}"),
                "resourceVersion": rv.to_string(), "labels": labels,
            },
            "data": data,
        });
        w.objects.insert(key, object.clone());
        self.record(&mut w, Change { rv, resource, kind, namespace: ns.to_owned(), object });
    }

    /// Deletes a ConfigMap (DELETED).
    pub fn delete(&self, ns: &str, name: &str) {
        self.delete_object("configmaps", ns, name);
    }

    /// Deletes a Secret (DELETED).
    pub fn delete_secret(&self, ns: &str, name: &str) {
        self.delete_object("secrets", ns, name);
    }

    fn delete_object(&self, resource: &'static str, ns: &str, name: &str) {
        let mut w = self.world();
        let Some(mut object) = w.objects.remove(&(resource, ns.to_owned(), name.to_owned())) else { return };
        w.rv += 1;
        let rv = w.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        self.record(&mut w, Change { rv, resource, kind: "DELETED", namespace: ns.to_owned(), object });
    }

    /// Deletes a ConfigMap without any watcher seeing it: the change is only visible to a
    /// fresh list (as after history compaction while a watch was down).
    pub fn delete_unseen(&self, ns: &str, name: &str) {
        let mut w = self.world();
        if w.objects.remove(&("configmaps", ns.to_owned(), name.to_owned())).is_some() {
            w.rv += 1;
        }
    }

    fn record(&self, w: &mut World, change: Change) {
        w.history.push(change.clone());
        let _ = self.inner.changes.send(change);
    }

    /// Ends every open watch stream, as a dropped connection or an API server restart would.
    pub fn drop_watches(&self) {
        self.inner.drops.send_modify(|g| *g += 1);
    }

    /// Forgets history: a watch resuming from an older resourceVersion gets `410 Gone`.
    pub fn compact(&self) {
        let mut w = self.world();
        w.compacted = w.rv + 1;
        w.history.clear();
    }

    /// Makes the next `n` list requests fail with 500.
    pub fn fail_next_lists(&self, n: u32) {
        self.world().fail_lists = n;
    }

    /// Makes the next `n` list requests in namespace `ns` fail with 500.
    pub fn fail_next_lists_in(&self, ns: &str, n: u32) {
        self.world().fail_lists_in.insert(ns.to_owned(), n);
    }

    pub fn lists(&self) -> u32 {
        self.world().lists
    }

    pub fn watches(&self) -> u32 {
        self.world().watches
    }

    pub fn gone_sent(&self) -> u32 {
        self.world().gone_sent
    }

    /// Events received so far (POST bodies and PATCH bodies).
    pub fn events(&self) -> Vec<Value> {
        self.world().events.clone()
    }
}

/// `a=b,c=d` and bare `key` (exists) selectors: what the tests use.
fn matches(selector: Option<&String>, object: &Value) -> bool {
    let Some(sel) = selector.filter(|s| !s.is_empty()) else { return true };
    let labels = &object["metadata"]["labels"];
    sel.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => labels[k.trim()].as_str() == Some(v.trim()),
        None => !labels[term.trim()].is_null(),
    })
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn configmaps(
    State(inner): State<Arc<Inner>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("watch").map(String::as_str) == Some("true") {
        watch_objects(inner, "configmaps", ns, q).await
    } else {
        list_objects(inner, "configmaps", ns, q)
    }
}

async fn secrets(
    State(inner): State<Arc<Inner>>,
    UrlPath(ns): UrlPath<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if q.get("watch").map(String::as_str) == Some("true") {
        watch_objects(inner, "secrets", ns, q).await
    } else {
        list_objects(inner, "secrets", ns, q)
    }
}

fn list_kind(resource: &str) -> (&'static str, &'static str) {
    if resource == "secrets" { ("Secret", "SecretList") } else { ("ConfigMap", "ConfigMapList") }
}

fn list_objects(inner: Arc<Inner>, resource: &'static str, ns: String, q: HashMap<String, String>) -> Response {
    let mut w = inner.world.lock().expect("world lock");
    w.lists += 1;
    let ns_fails = w.fail_lists_in.get_mut(&ns).filter(|n| **n > 0).map(|n| *n -= 1).is_some();
    if ns_fails || w.fail_lists > 0 {
        w.fail_lists = w.fail_lists.saturating_sub(u32::from(!ns_fails));
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(status(500, "InternalError", "injected failure")))
            .into_response();
    }
    let items: Vec<Value> = w
        .objects
        .iter()
        .filter(|((r, n, _), o)| *r == resource && *n == ns && matches(q.get("labelSelector"), o))
        .map(|(_, o)| o.clone())
        .collect();
    let body = json!({"apiVersion": "v1", "kind": list_kind(resource).1,
                      "metadata": {"resourceVersion": w.rv.to_string()}, "items": items});
    axum::Json(body).into_response()
}

async fn watch_objects(inner: Arc<Inner>, resource: &'static str, ns: String, q: HashMap<String, String>) -> Response {
    let since: u64 = q.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let selector = q.get("labelSelector").cloned();
    let bookmarks = q.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::convert::Infallible>>(64);
    let line = |v: Value| Ok::<_, std::convert::Infallible>(Bytes::from(format!("{v}\n")));

    // Subscribe before reading history so nothing falls between the two.
    let mut live = inner.changes.subscribe();
    let mut drops = inner.drops.subscribe();
    drops.mark_unchanged();
    let (replay, mut last, gone, now) = {
        let mut w = inner.world.lock().expect("world lock");
        w.watches += 1;
        if since < w.compacted {
            w.gone_sent += 1;
            (Vec::new(), w.rv, true, w.rv)
        } else {
            let replay: Vec<Change> = w.history.iter().filter(|c| c.rv > since).cloned().collect();
            (replay, w.rv, false, w.rv)
        }
    };
    tokio::spawn(async move {
        if gone {
            // What a real API server sends for a compacted resourceVersion: HTTP 200 and an
            // ERROR event carrying a 410 Status, then the end of the stream.
            let msg = format!("too old resource version: {since} ({now})");
            let _ = tx.send(line(json!({"type": "ERROR", "object": status(410, "Expired", &msg)}))).await;
            return;
        }
        if bookmarks {
            let bm = json!({"type": "BOOKMARK", "object": {"kind": list_kind(resource).0, "apiVersion": "v1",
                            "metadata": {"resourceVersion": now.to_string()}}});
            if tx.send(line(bm)).await.is_err() {
                return;
            }
        }
        let wanted = |c: &Change| c.resource == resource && c.namespace == ns && matches(selector.as_ref(), &c.object);
        for c in replay.into_iter().filter(|c| wanted(c)) {
            if tx.send(line(json!({"type": c.kind, "object": c.object}))).await.is_err() {
                return;
            }
        }
        loop {
            tokio::select! {
                _ = drops.changed() => return,
                c = live.recv() => match c {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        if wanted(&c) && tx.send(line(json!({"type": c.kind, "object": c.object}))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                },
                _ = tx.closed() => return,
            }
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("watch response")
}

async fn create_event(
    State(inner): State<Arc<Inner>>,
    UrlPath(_ns): UrlPath<String>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    inner.world.lock().expect("world lock").events.push(body.clone());
    (StatusCode::CREATED, axum::Json(body)).into_response()
}

async fn patch_event(
    State(inner): State<Arc<Inner>>,
    UrlPath((_ns, _name)): UrlPath<(String, String)>,
    body: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    inner.world.lock().expect("world lock").events.push(body.clone());
    axum::Json(body).into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    (StatusCode::NOT_FOUND, axum::Json(status(404, "NotFound", &format!("{uri} is not served by the fake"))))
        .into_response()
}
