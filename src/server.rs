//! Wiring: the ext_authz gRPC service over TCP and a Unix socket, gRPC health (NOT_SERVING until
//! a policy snapshot is live) and reflection, the admin HTTP port (probes, metrics), the loopback
//! diagnostics port (`/policy`), the policy source, and shutdown in two phases. On SIGTERM
//! readiness and gRPC health go NOT_SERVING at once while the listeners keep answering for
//! `listen.drain_delay` (so the proxy and kubelet notice before anything is refused); then the
//! listeners stop accepting and in-flight checks get `listen.drain_timeout` to finish.
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::FutureExt as _;
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status as GrpcStatus};

use crate::admin::{self, AdminState};
use crate::check::{self, Checker};
use crate::config::{Config, HeaderNames, Limits, MatrixParameters, SubjectLog};
use crate::decision::Decision;
use crate::metrics::{CheckMetrics, StreamMetrics};
use crate::net::{ConnLimits, ListenerFamilies};
use crate::policy::kube as policy_kube;
use crate::policy::{PolicyStore, files};
use crate::proto::auth::authorization_server::{Authorization, AuthorizationServer};
use crate::proto::auth::{CheckRequestIn, CheckResponseOut};
use crate::request::{RequestView, RouteFactNamespaces};
use crate::response::{self, QuotaKeys, ResponseOptions};

/// The `envoy.service.auth.v3.Authorization` service.
pub struct AuthzService {
    checker: Arc<Checker>,
    limits: Limits,
    matrix: MatrixParameters,
    cedar: crate::config::CedarConfig,
    opts: ResponseOptions,
    metrics: CheckMetrics,
    /// Check spans; `None` (traces off) costs one branch per check.
    traces: Option<Arc<crate::trace::CheckTracer>>,
    /// `limits.max_in_flight` slots, shared by every gRPC listener.
    in_flight: Semaphore,
    /// `log.subject`: how decision lines show a token's subject.
    log_subject: SubjectLog,
}

impl AuthzService {
    /// Normalizes the wire request, then decides it; a request that does not normalize is a
    /// 400 that still carries its request id.
    async fn decide(&self, req: &CheckRequestIn) -> Decision {
        #[cfg(test)]
        tests::fault_hook(req).await;
        match RequestView::from_check_route(req, &self.limits, self.matrix, RouteFactNamespaces::of(&self.cedar)) {
            Ok(view) => self.checker.check(&view).await,
            Err(e) => with_raw_audit(check::invalid_request(&e), req),
        }
    }

    /// What only the server knows for the audit record: the caller's trace id, and the live
    /// policy version when the decision did not reach the policy set.
    fn complete_audit(&self, req: &CheckRequestIn, d: &mut Decision) {
        let a = d.audit_mut();
        a.trace_id = crate::trace::request_trace_id(req);
        if a.policy_version.is_none() {
            a.policy_version = self.checker.live_policy_version();
        }
    }
}

/// A decision made without a normalized request (400, shed 503, panic 500): its audit has only
/// the transport facts Envoy reported, nothing from the request line or headers.
fn with_raw_audit(mut d: Decision, req: &CheckRequestIn) -> Decision {
    let source = req.attributes.as_ref().and_then(|a| a.source.as_ref());
    let a = d.audit_mut();
    a.source_ip = source.and_then(|p| p.address.as_ref()).and_then(crate::request::ip_of);
    a.peer = source
        .map(|p| p.principal.as_str())
        .filter(|p| !p.is_empty())
        .and_then(check::loggable_peer)
        .map(str::to_owned);
    d
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, request: Request<CheckRequestIn>) -> Result<Response<CheckResponseOut>, GrpcStatus> {
        let start = Instant::now();
        let req = request.into_inner();
        let span = self.traces.as_ref().and_then(|t| t.start_check(&req));
        // Load shedding: over the cap a check is answered now rather than queued behind the
        // others past the proxy's deadline (where it would be a deny anyway, but late, and
        // would make every check behind it late too).
        let Ok(_slot) = self.in_flight.try_acquire() else {
            self.metrics.shed();
            let mut decision = with_raw_audit(check::overloaded(crate::request::raw_request_id(&req)), &req);
            self.complete_audit(&req, &mut decision);
            if let (Some(t), Some(span)) = (&self.traces, span) {
                t.finish(span, &decision);
            }
            let resp = finish_check(&self.metrics, &self.opts, self.log_subject, decision, start.elapsed());
            return Ok(Response::new(resp));
        };
        // A panic anywhere in the pipeline is a deny, never an RPC error (which Envoy's
        // failure_mode_allow could turn into an allow).
        let mut decision = std::panic::AssertUnwindSafe(self.decide(&req)).catch_unwind().await.unwrap_or_else(|_| {
            tracing::error!("check panicked; denied");
            with_raw_audit(check::panicked(crate::request::raw_request_id(&req)), &req)
        });
        self.complete_audit(&req, &mut decision);
        if let (Some(t), Some(span)) = (&self.traces, span) {
            t.finish(span, &decision);
        }
        Ok(Response::new(finish_check(&self.metrics, &self.opts, self.log_subject, decision, start.elapsed())))
    }
}

/// What the handler does once a check is decided: count it, hand its decision line to the log
/// writer, render the answer. Public (hidden) only so `examples/alloc_count` counts this exact
/// work; not an API.
#[doc(hidden)]
pub fn finish_check(
    metrics: &CheckMetrics,
    opts: &ResponseOptions,
    subject_log: SubjectLog,
    decision: Decision,
    elapsed: Duration,
) -> CheckResponseOut {
    metrics.record(decision.is_allowed(), decision.reason(), elapsed.as_secs_f64());
    let mut decision = decision;
    let resp = response::render_taking_headers(&mut decision, opts);
    // Last, so the decision itself can be moved to the log writer.
    decision_log::log_decision(decision, u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), subject_log);
    resp
}

/// Installs the process's log subscriber and writer thread as `serve` does; the returned guard
/// flushes on drop. Public (hidden) only for `examples/alloc_count`.
#[doc(hidden)]
pub fn init_logging(cfg: &crate::config::LogConfig) -> impl Sized {
    crate::telemetry::init(cfg)
}

/// A started sidecar: its bound addresses and the handle to stop it.
pub struct Running {
    pub grpc_addr: Option<SocketAddr>,
    pub unix_path: Option<PathBuf>,
    pub admin_addr: Option<SocketAddr>,
    /// The loopback diagnostics listener (`/policy`).
    pub diagnostics_addr: Option<SocketAddr>,
    pub store: Arc<PolicyStore>,
    /// The candidate (shadow) set's store, when `policy.candidate` is configured.
    pub candidate: Option<Arc<PolicyStore>>,
    /// Phase one: readiness and health off, listeners still open.
    drain: watch::Sender<bool>,
    /// Phase two: listeners stop accepting; every task ends.
    shutdown: watch::Sender<bool>,
    draining: Arc<AtomicBool>,
    drain_delay: Duration,
    /// Owns the gRPC health status; ends once it has reported NOT_SERVING for the drain.
    health_task: Option<JoinHandle<anyhow::Result<()>>>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    /// Flushed last, within `listen.drain_timeout`.
    traces: Option<Arc<crate::trace::CheckTracer>>,
    drain_timeout: Duration,
}

impl Running {
    /// Phase one of a shutdown: `/readyz` and gRPC health report NOT_SERVING (done when this
    /// returns) while every listener keeps accepting and answering checks.
    pub async fn begin_drain(&mut self) -> anyhow::Result<()> {
        self.draining.store(true, Ordering::Release);
        let _ = self.drain.send(true);
        if let Some(h) = self.health_task.take() {
            h.await.context("health task panicked")??;
        }
        Ok(())
    }

    /// What SIGTERM does: phase one, then keep serving for `listen.drain_delay` (or until
    /// `cut_short` resolves, e.g. a second signal), then [`Running::shutdown`].
    pub async fn drain_and_shutdown(mut self, cut_short: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        self.begin_drain().await?;
        tracing::info!(drain_delay = ?self.drain_delay, "draining: not ready, still answering checks");
        tokio::select! {
            _ = tokio::time::sleep(self.drain_delay) => {}
            _ = cut_short => tracing::info!("second signal: drain delay cut short"),
        }
        self.shutdown().await
    }

    /// Stops now, without the drain delay: readiness goes false, listeners stop accepting, and
    /// in-flight checks get `listen.drain_timeout` to finish.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.begin_drain().await?;
        tracing::info!("listeners closing; in-flight checks finishing");
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.await.context("server task panicked")??;
        }
        if let Some(p) = &self.unix_path {
            let _ = std::fs::remove_file(p);
        }
        // Export what the last checks produced; a dead collector costs at most the drain timeout.
        if let Some(t) = self.traces.take() {
            let limit = self.drain_timeout;
            let flush = tokio::task::spawn_blocking(move || t.shutdown(limit));
            let _ = tokio::time::timeout(limit + Duration::from_millis(100), flush).await;
        }
        Ok(())
    }
}

/// How decisions are rendered for this `headers` config: the policy-ids header, and the
/// identity headers whose values become the allow's quota keys in dynamic metadata.
pub fn response_options(h: &HeaderNames) -> ResponseOptions {
    ResponseOptions {
        policy_ids_header: h.policy_ids.clone().map(bytes::Bytes::from),
        quota_keys: QuotaKeys {
            issuer: h.issuer.to_ascii_lowercase(),
            subject: h.subject.to_ascii_lowercase(),
            client: h.client.to_ascii_lowercase(),
            spiffe_id: h.peer.to_ascii_lowercase(),
            tenant: h.tenant.as_ref().map(|t| t.to_ascii_lowercase()),
        },
    }
}

/// Starts everything the config asks for and returns once listeners are bound.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    let mut registry = Registry::with_prefix("portcullis");
    let store = Arc::new(PolicyStore::new(cfg.policy.on_empty, registry.sub_registry_with_prefix("policy")));
    let checker = Checker::new(&cfg, store.clone(), &mut registry)?;
    let metrics = CheckMetrics::register(&mut registry);
    let listeners = ListenerFamilies::register(registry.sub_registry_with_prefix("listener"));
    crate::telemetry::register(&mut registry);
    crate::trace::register(&mut registry);
    let traces = crate::trace::start(&cfg.telemetry.traces, store.clone())?;
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let (drain_tx, drain_rx) = watch::channel(false);
    let draining = Arc::new(AtomicBool::new(false));
    let mut tasks: Vec<JoinHandle<anyhow::Result<()>>> = Vec::new();

    // Policy source: the first load happens before we report ready; failures keep us unready.
    let live = SourceSpec {
        dir: cfg.policy.dir.clone(),
        kubernetes: cfg.policy.kubernetes.clone(),
        watch: cfg.policy.watch,
        debounce: cfg.policy.debounce,
    };
    spawn_source(&live, &store, &mut registry, "policy_kubernetes", &shutdown_rx, &mut tasks).await?;
    // The candidate (shadow) set: same loaders and watcher, its own store; never gates readiness.
    let candidate = match cfg.policy.candidate.as_ref() {
        Some(c) => {
            let cstore = Arc::new(PolicyStore::candidate(registry.sub_registry_with_prefix("policy_candidate")));
            let spec = SourceSpec {
                dir: c.dir.clone(),
                kubernetes: c.kubernetes.clone(),
                watch: c.watch,
                debounce: c.debounce,
            };
            spawn_source(&spec, &cstore, &mut registry, "policy_candidate_kubernetes", &shutdown_rx, &mut tasks)
                .await?;
            Some(cstore)
        }
        None => None,
    };
    let checker = Arc::new(match (&cfg.policy.candidate, &candidate) {
        (Some(c), Some(cstore)) => checker.with_shadow(c, cstore.clone(), &mut registry),
        _ => checker,
    });

    // API keys from a mounted Secret: loaded by the checker at start, then watched.
    if let (Some(dir), Some(keys)) = (cfg.authn.api_keys.dir.clone(), checker.authenticator().api_keys().secrets()) {
        let h = crate::authn::apikey::files::spawn_watch(
            dir,
            keys.clone(),
            cfg.authn.api_keys.debounce,
            shutdown_rx.clone(),
        )?;
        tasks.push(tokio::spawn(async move { h.await.map_err(anyhow::Error::from) }));
    }
    // API keys from labelled Secrets through the API: applied once every namespace is listed.
    if let (Some(k8s), Some(keys)) =
        (cfg.authn.api_keys.kubernetes.as_ref(), checker.authenticator().api_keys().secrets())
    {
        let client = crate::kubeapi::client(k8s.kubeconfig.as_deref()).await.context("authn.api_keys.kubernetes")?;
        let source = crate::authn::apikey::kube::SecretSource::new(
            client,
            k8s,
            cfg.authn.api_keys.debounce,
            registry.sub_registry_with_prefix("authn_api_keys_kubernetes"),
        );
        let h = source.spawn(keys.clone(), shutdown_rx.clone());
        tasks.push(tokio::spawn(async move { h.await.map_err(anyhow::Error::from) }));
    }

    // The token deny-list: loaded by the authenticator at start, then watched.
    if let (Some(dir), Some(store)) = (cfg.authn.revocation.dir.clone(), checker.authenticator().jwt().deny_list()) {
        let h = crate::authn::jwt::spawn_deny_list_watch(
            dir,
            store.clone(),
            cfg.authn.revocation.debounce,
            shutdown_rx.clone(),
        )?;
        tasks.push(tokio::spawn(async move { h.await.map_err(anyhow::Error::from) }));
    }

    // Fetch signing keys now so the first request does not wait for them.
    {
        let c = checker.clone();
        tokio::spawn(async move { c.authenticator().jwt().warm_up().await });
    }

    // Ready = a live policy snapshot, and API keys from the Kubernetes API listed once (before
    // that every Secret-held key would be refused as unknown).
    let ready: Arc<dyn Fn() -> bool + Send + Sync> = {
        let keys = cfg.authn.api_keys.kubernetes.as_ref().and(checker.authenticator().api_keys().secrets().cloned());
        let store = store.clone();
        Arc::new(move || store.is_ready() && keys.as_ref().is_none_or(|k| k.is_loaded()))
    };

    let (health, health_svc) = tonic_health::server::health_reporter();
    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
    health.set_not_serving::<AuthorizationServer<AuthzService>>().await;
    let health_task = {
        // The only writer of the health status, so nothing can flip it back to SERVING once
        // the drain has begun.
        let (ready, mut drain) = (ready.clone(), drain_rx);
        tokio::spawn(async move {
            let mut serving = false;
            loop {
                let draining = *drain.borrow();
                let want = ready() && !draining;
                if want != serving {
                    let st = if want {
                        tonic_health::ServingStatus::Serving
                    } else {
                        tonic_health::ServingStatus::NotServing
                    };
                    health.set_service_status("", st).await;
                    if want {
                        health.set_serving::<AuthorizationServer<AuthzService>>().await;
                    } else {
                        health.set_not_serving::<AuthorizationServer<AuthzService>>().await;
                    }
                    serving = want;
                }
                let drain_begun = tokio::select! {
                    r = drain.wait_for(|d| *d) => { drop(r); true }
                    _ = tokio::time::sleep(Duration::from_millis(100)) => false,
                };
                if drain_begun {
                    health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                    health.set_not_serving::<AuthorizationServer<AuthzService>>().await;
                    return Ok(());
                }
            }
        })
    };

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let anomalies = checker.anomalies().clone();
    // One stream cap for every gRPC listener (see streams.rs).
    let stream_cap = streams::StreamCap::new(
        cfg.limits.grpc.max_open_streams,
        &response_options(&cfg.headers),
        StreamMetrics::register(&mut registry),
        metrics.clone(),
        cfg.log.subject,
    );
    let svc = AuthorizationServer::from_arc(Arc::new(AuthzService {
        checker,
        limits: cfg.limits.clone(),
        matrix: cfg.request.matrix_parameters,
        cedar: cfg.cedar.clone(),
        opts: response_options(&cfg.headers),
        metrics,
        traces: traces.clone(),
        in_flight: Semaphore::new(cfg.limits.max_in_flight),
        log_subject: cfg.log.subject,
    }))
    .max_decoding_message_size(cfg.limits.max_message_bytes);
    let g = &cfg.limits.grpc;
    let grpc_conn = ConnLimits { max_connections: g.max_connections, idle_timeout: g.idle_timeout, max_lifetime: None };
    let router = || {
        let mut b = tonic::transport::Server::builder()
            .max_concurrent_streams(g.max_concurrent_streams)
            .timeout(g.request_timeout)
            .http2_keepalive_interval(g.keepalive_interval)
            .http2_keepalive_timeout(Some(g.keepalive_timeout))
            .http2_max_header_list_size(g.max_header_list_bytes);
        if let Some(age) = g.max_connection_age {
            b = b.max_connection_age(age).max_connection_age_grace(g.max_connection_age_grace);
        }
        b.layer(stream_cap.clone())
            .add_service(health_svc.clone())
            .add_service(reflection.clone())
            .add_service(svc.clone())
    };

    let drain = cfg.listen.drain_timeout;
    let mut grpc_addr = None;
    if let Some(addr) = cfg.listen.grpc {
        let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding gRPC on {addr}"))?;
        grpc_addr = Some(listener.local_addr()?);
        let incoming = crate::net::tcp_incoming(listener, grpc_conn, listeners.for_listener("grpc"));
        let stop = stopped(shutdown_rx.clone());
        let server = router().serve_with_incoming_shutdown(incoming, stop);
        tasks.push(tokio::spawn(bounded_drain(server, shutdown_rx.clone(), drain)));
        tracing::info!(addr = %grpc_addr.unwrap_or(addr), "ext_authz gRPC listening on TCP");
    }
    let mut unix_path = None;
    if let Some(path) = cfg.listen.unix.clone() {
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("removing stale socket {}", path.display()))?;
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).ok();
        }
        let listener =
            tokio::net::UnixListener::bind(&path).with_context(|| format!("binding Unix socket {}", path.display()))?;
        // Envoy runs as another user in the same pod; the socket's directory (an emptyDir shared
        // by the two containers) is what scopes access.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        }
        let incoming = crate::net::unix_incoming(listener, grpc_conn, listeners.for_listener("unix"));
        let server = router().serve_with_incoming_shutdown(incoming, stopped(shutdown_rx.clone()));
        tasks.push(tokio::spawn(bounded_drain(server, shutdown_rx.clone(), drain)));
        tracing::info!(path = %path.display(), "ext_authz gRPC listening on Unix socket");
        unix_path = Some(path);
    }

    let a = &cfg.limits.admin;
    let admin_limits = ConnLimits {
        max_connections: a.max_connections,
        idle_timeout: a.header_timeout,
        max_lifetime: Some(a.connection_timeout),
    };
    let mut diagnostics_addr = None;
    if let Some(addr) = cfg.listen.diagnostics {
        let (bound, task) = admin::serve_diagnostics(
            addr,
            store.clone(),
            candidate.clone(),
            anomalies,
            admin_limits,
            listeners.for_listener("diagnostics"),
            shutdown_rx.clone(),
        )
        .await?;
        diagnostics_addr = Some(bound);
        tasks.push(task);
    }

    let mut admin_addr = None;
    if let Some(addr) = cfg.listen.admin {
        let state = Arc::new(AdminState { store: store.clone(), ready, registry, draining: draining.clone() });
        let (bound, task) =
            admin::serve(addr, state, admin_limits, listeners.for_listener("admin"), shutdown_rx.clone()).await?;
        admin_addr = Some(bound);
        tasks.push(task);
    }

    Ok(Running {
        grpc_addr,
        unix_path,
        admin_addr,
        diagnostics_addr,
        store,
        candidate,
        drain: drain_tx,
        shutdown: shutdown_tx,
        draining,
        drain_delay: cfg.listen.drain_delay,
        health_task: Some(health_task),
        tasks,
        traces,
        drain_timeout: cfg.listen.drain_timeout,
    })
}

/// One policy source (the live set's or the candidate's).
struct SourceSpec {
    dir: Option<PathBuf>,
    kubernetes: Option<crate::config::KubernetesSource>,
    watch: bool,
    debounce: Duration,
}

/// Loads a directory once (then watches it), or starts the Kubernetes watch, into `store`.
async fn spawn_source(
    spec: &SourceSpec,
    store: &Arc<PolicyStore>,
    registry: &mut Registry,
    kube_prefix: &str,
    shutdown_rx: &watch::Receiver<bool>,
    tasks: &mut Vec<JoinHandle<anyhow::Result<()>>>,
) -> anyhow::Result<()> {
    if let Some(dir) = spec.dir.clone() {
        let (d, s) = (dir.clone(), store.clone());
        let _ = tokio::task::spawn_blocking(move || files::load_into(&d, &s)).await;
        if spec.watch {
            let h = files::spawn_watch(dir, store.clone(), spec.debounce, shutdown_rx.clone())?;
            tasks.push(tokio::spawn(async move { h.await.map_err(anyhow::Error::from) }));
        }
    } else if let Some(k8s) = spec.kubernetes.as_ref() {
        // Not ready until every watched namespace has been listed once and the set was valid;
        // the watch runs (and retries) in the background.
        let field = if store.set() == "candidate" { "policy.candidate.kubernetes" } else { "policy.kubernetes" };
        let client = policy_kube::client(k8s).await.context(field)?;
        let source =
            policy_kube::KubeSource::new(client, k8s, spec.debounce, registry.sub_registry_with_prefix(kube_prefix));
        let h = source.spawn(store.clone(), shutdown_rx.clone());
        tasks.push(tokio::spawn(async move { h.await.map_err(anyhow::Error::from) }));
    }
    Ok(())
}

/// Resolves when the shutdown flag flips (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// Runs a server; after shutdown starts, in-flight calls get `drain` to finish.
async fn bounded_drain<F>(server: F, rx: watch::Receiver<bool>, drain: Duration) -> anyhow::Result<()>
where
    F: std::future::Future<Output = Result<(), tonic::transport::Error>>,
{
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.map_err(Into::into),
        _ = stopped(rx) => {}
    }
    match tokio::time::timeout(drain, server).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
            Ok(())
        }
    }
}

/// Runs until SIGTERM or Ctrl-C, then drains (a second signal skips the rest of the delay).
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let running = start(cfg).await?;
    wait_for_signal().await;
    tracing::info!("shutdown requested: readiness off, still answering during the drain delay");
    running.drain_and_shutdown(wait_for_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

mod decision_log;
#[doc(hidden)]
pub use decision_log::write_json_line;
mod streams;
#[cfg(test)]
mod tests;
