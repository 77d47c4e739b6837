//! Two HTTP listeners. The admin port serves only what kubelet and scrapers need from the pod
//! network: `/healthz` (alive), `/readyz` (a policy snapshot is live and we are not draining),
//! `/metrics` (OpenMetrics). The diagnostics port (loopback only, enforced by config validation)
//! serves `/policy` (live and candidate versions, sources, last reload errors), which names files, ConfigMaps and
//! parse errors an attacker in the mesh has no business reading, and `/anomalies` (the heaviest
//! failing sources and claimed identities).
//!
//! Both listeners accept through [`crate::net::guard`]: a connection cap, a header timeout (no
//! byte read for `limits.admin.header_timeout` closes the connection, so half-open and
//! never-finished requests do not pile up) and a bound on each connection's life.
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use futures::{Stream, StreamExt as _};
use prometheus_client::registry::Registry;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::anomaly::Anomalies;
use crate::net::{ConnLimits, Guarded, ListenerMetrics};
use crate::policy::PolicyStore;

/// What the admin handlers read.
pub(crate) struct AdminState {
    pub store: Arc<PolicyStore>,
    /// Whether the sidecar can decide correctly (a live policy snapshot, and API keys listed
    /// when they come from the Kubernetes API); the same answer gRPC health gives.
    pub ready: Arc<dyn Fn() -> bool + Send + Sync>,
    pub registry: Registry,
    pub draining: Arc<AtomicBool>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let status = s.store.status();
    let draining = s.draining.load(Ordering::Acquire);
    let ready = (s.ready)() && !draining;
    let body = serde_json::json!({
        "ready": ready,
        "draining": draining,
        "policy_version": status.version,
        "last_error": status.last_error,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

/// What the diagnostics handlers read: the live policy store and, when configured, the
/// candidate's; the failed-authentication trackers.
#[derive(Clone)]
struct PolicyStores {
    live: Arc<PolicyStore>,
    candidate: Option<Arc<PolicyStore>>,
    anomalies: Arc<Anomalies>,
}

#[derive(serde::Deserialize)]
struct TopQuery {
    limit: Option<usize>,
}

/// `/anomalies?limit=N`: the heaviest failing sources and claimed identities (default 20, at
/// most 1000 of each). Keys name addresses and claimed subjects: diagnostics port only.
async fn anomaly_report(State(s): State<PolicyStores>, Query(q): Query<TopQuery>) -> impl IntoResponse {
    Json(s.anomalies.report(q.limit.unwrap_or(20)))
}

/// The live snapshot's status at the top level (as before candidates existed) and the
/// candidate's under `candidate` (`null` when none is configured).
async fn policy(State(s): State<PolicyStores>) -> impl IntoResponse {
    let mut body = serde_json::to_value(s.live.status()).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        let candidate = s.candidate.as_ref().map(|c| serde_json::to_value(c.status()).unwrap_or_default());
        obj.insert("candidate".to_owned(), candidate.unwrap_or_default());
    }
    Json(body)
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::encode(&s.registry),
    )
}

/// Binds and serves the admin port (probes and metrics) until shutdown.
pub(crate) async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    limits: ConnLimits,
    counters: ListenerMetrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    serve_router("admin", addr, app, limits, counters, shutdown).await
}

/// Binds and serves the diagnostics port (`/policy`, `/anomalies`) until shutdown. The caller
/// has checked that `addr` is a loopback address.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_diagnostics(
    addr: SocketAddr,
    store: Arc<PolicyStore>,
    candidate: Option<Arc<PolicyStore>>,
    anomalies: Arc<Anomalies>,
    limits: ConnLimits,
    metrics: ListenerMetrics,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    // Defence in depth: config validation already refuses this.
    anyhow::ensure!(addr.ip().is_loopback(), "diagnostics address {addr} is not a loopback address");
    let app = Router::new()
        .route("/policy", get(policy))
        .route("/anomalies", get(anomaly_report))
        .with_state(PolicyStores { live: store, candidate, anomalies });
    serve_router("diagnostics", addr, app, limits, metrics, shutdown).await
}

async fn serve_router(
    what: &'static str,
    addr: SocketAddr,
    app: Router,
    limits: ConnLimits,
    metrics: ListenerMetrics,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let listener =
        tokio::net::TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("binding {what} on {addr}: {e}"))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "{what} HTTP listening");
    let incoming = crate::net::guard(tokio_stream::wrappers::TcpListenerStream::new(listener), limits, metrics);
    let listener = GuardedListener { incoming: Box::pin(incoming), local: bound };
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await
            .map_err(anyhow::Error::from)
    });
    Ok((bound, task))
}

/// An axum listener over [`crate::net::guard`]: capped, timed-out connections, backed-off accept
/// errors.
struct GuardedListener {
    incoming: Pin<Box<dyn Stream<Item = std::io::Result<Guarded<TcpStream>>> + Send>>,
    local: SocketAddr,
}

impl axum::serve::Listener for GuardedListener {
    type Io = Guarded<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                // `guard` never yields an error (it backs off and retries).
                Some(Ok(io)) => match io.get_ref().peer_addr() {
                    Ok(peer) => return (io, peer),
                    Err(_) => continue,
                },
                Some(Err(_)) => continue,
                // A TCP listener's stream does not end; if it did, accept nothing more.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
