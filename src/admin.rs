//! The admin HTTP port: `/healthz` (alive), `/readyz` (a policy snapshot is live and we are not
//! draining), `/metrics` (OpenMetrics), `/policy` (live version, source, last reload error).
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::policy::PolicyStore;

/// What the admin handlers read.
pub struct AdminState {
    pub store: Arc<PolicyStore>,
    pub registry: Registry,
    pub draining: Arc<AtomicBool>,
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    let status = s.store.status();
    let draining = s.draining.load(Ordering::Acquire);
    let ready = s.store.is_ready() && !draining;
    let body = serde_json::json!({
        "ready": ready,
        "draining": draining,
        "policy_version": status.version,
        "last_error": status.last_error,
    });
    let code = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(body))
}

async fn policy(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    Json(s.store.status())
}

async fn metrics(State(s): State<Arc<AdminState>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::encode(&s.registry),
    )
}

/// Binds and serves the admin port until shutdown.
pub async fn serve(
    addr: SocketAddr,
    state: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/policy", get(policy))
        .route("/metrics", get(metrics))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, "admin HTTP listening");
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
