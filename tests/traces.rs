//! OpenTelemetry traces against a real OTLP gRPC receiver started by each test on 127.0.0.1:
//! the check span joins the caller's trace (W3C, B3 single, B3 multi), carries the decision,
//! follows an unsampled parent (no span), and a dead collector never holds a check.
mod common;

use std::sync::{Arc, Mutex};

use common::{Sidecar, WAIT, eventually, http_status, is_allowed, req, token};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use portcullis::config::Config;

/// An OTLP trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

impl Receiver {
    /// Serves on an ephemeral loopback port until the test's runtime ends; returns the endpoint.
    async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver::default();
        let svc = TraceServiceServer::new(r.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        (r, format!("http://{addr}"))
    }

    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap().clone()
    }

    fn by_trace(&self, trace_hex: &str) -> Vec<Span> {
        self.spans().into_iter().filter(|s| hex::encode(&s.trace_id) == trace_hex).collect()
    }
}

fn traces_on(endpoint: String, include_subject: bool) -> impl FnOnce(&std::path::Path, &mut Config) {
    move |_, c: &mut Config| {
        let t = &mut c.telemetry.traces;
        t.enabled = true;
        t.endpoint = Some(endpoint);
        t.include_subject = include_subject;
        t.export_timeout = std::time::Duration::from_millis(500);
    }
}

fn attr(s: &Span, key: &str) -> Option<Value> {
    s.attributes.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.clone()).and_then(|v| v.value)
}

fn str_attr(s: &Span, key: &str) -> String {
    match attr(s, key) {
        Some(Value::StringValue(v)) => v,
        other => panic!("{key}: expected a string, got {other:?}"),
    }
}

fn int_attr(s: &Span, key: &str) -> i64 {
    match attr(s, key) {
        Some(Value::IntValue(v)) => v,
        other => panic!("{key}: expected an int, got {other:?}"),
    }
}

/// Every attribute value as text, to look for what must never be recorded.
fn all_values(s: &Span) -> String {
    format!("{:?}", s.attributes)
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn check_span_joins_the_w3c_trace_and_carries_the_decision() {
    let (rx, endpoint) = Receiver::start().await;
    let s = Sidecar::start_configured(|_| {}, traces_on(endpoint, false)).await;
    let alice = token("alice").mint();
    let r = s
        .check(
            req("GET", "/api/orders/42")
                .bearer(&alice)
                .id("req-1")
                .header("traceparent", &format!("00-{TRACE}-{PARENT}-01"))
                .header("tracestate", "congo=t61rcWkgMzE")
                .build(),
        )
        .await;
    assert!(is_allowed(&r));
    let denied_trace = "0af7651916cd43dd8448eb211c80319c";
    let r = s
        .check(
            req("GET", "/api/orders/42")
                .header("traceparent", &format!("00-{denied_trace}-b7ad6b7169203331-01"))
                .build(),
        )
        .await;
    assert_eq!(http_status(&r), 401);
    // Shutdown flushes what is queued: no waiting on the export interval.
    s.stop().await;

    let spans = rx.by_trace(TRACE);
    assert_eq!(spans.len(), 1, "one span per check: {spans:?}");
    let sp = &spans[0];
    assert_eq!(hex::encode(&sp.parent_span_id), PARENT);
    assert_ne!(hex::encode(&sp.span_id), PARENT, "a new span, not the caller's");
    assert_eq!(sp.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(sp.name, "envoy.service.auth.v3.Authorization/Check");
    assert_eq!(sp.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(str_attr(sp, "portcullis.decision"), "allow");
    assert_eq!(int_attr(sp, "http.response.status_code"), 200);
    assert_eq!(str_attr(sp, "portcullis.reason"), "allowed");
    assert_eq!(str_attr(sp, "portcullis.principal.type"), "User");
    assert_eq!(str_attr(sp, "portcullis.request_id"), "req-1");
    assert_eq!(str_attr(sp, "rpc.system"), "grpc");
    assert!(!str_attr(sp, "portcullis.policy.version").is_empty());
    assert_eq!(attr(sp, "portcullis.rate_limited"), Some(Value::BoolValue(false)));
    let Some(Value::ArrayValue(ids)) = attr(sp, "portcullis.policy_ids") else { panic!("policy ids: {sp:?}") };
    assert!(!ids.values.is_empty());
    let Some(Value::ArrayValue(m)) = attr(sp, "portcullis.authn.methods") else { panic!("authn methods: {sp:?}") };
    let methods: Vec<_> = m.values.iter().map(|v| v.value.clone()).collect();
    assert_eq!(methods, [Some(Value::StringValue("jwt".into()))]);
    assert!(attr(sp, "portcullis.shadow.decision").is_none(), "no candidate set, no shadow attributes");
    // Without include_subject: the principal's type only, and never the credential.
    assert!(attr(sp, "enduser.id").is_none());
    let text = all_values(sp);
    assert!(!text.contains("alice") && !text.contains(&alice), "{text}");

    let denied = rx.by_trace(denied_trace);
    assert_eq!(denied.len(), 1);
    assert_eq!(str_attr(&denied[0], "portcullis.decision"), "deny");
    assert_eq!(int_attr(&denied[0], "http.response.status_code"), 401);
    assert_eq!(str_attr(&denied[0], "portcullis.reason"), "credential_required");
    assert!(attr(&denied[0], "portcullis.authn.methods").is_none(), "nothing was proven");
}

#[tokio::test]
async fn b3_parents_are_joined_and_unsampled_parents_export_nothing() {
    let (rx, endpoint) = Receiver::start().await;
    let s = Sidecar::start_configured(|_| {}, traces_on(endpoint, true)).await;
    let alice = token("alice").mint();
    let get = || req("GET", "/api/orders/42").bearer(&alice);

    // Unsampled, in each format: no span may ever be exported for these traces.
    let unsampled = ["11111111111111111111111111111111", "22222222222222222222222222222222", "3333333333333333"];
    for r in [
        get().header("traceparent", &format!("00-{}-1111111111111111-00", unsampled[0])).build(),
        get().header("b3", &format!("{}-2222222222222222-0", unsampled[1])).build(),
        get()
            .header("x-b3-traceid", unsampled[2])
            .header("x-b3-spanid", "3333333333333333")
            .header("x-b3-sampled", "0")
            .build(),
        get().header("b3", "0").build(),
    ] {
        assert!(is_allowed(&s.check(r).await), "an unsampled trace changes nothing about the decision");
    }

    let single = "80f198ee56343ba864fe8b2a57d3eff7";
    let r = s.check(get().header("b3", &format!("{single}-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90")).build()).await;
    assert!(is_allowed(&r));
    let multi = "a3ce929d0e0e4736";
    let r = s
        .check(
            get()
                .header("x-b3-traceid", multi)
                .header("x-b3-spanid", "a2fb4a1d1a96d312")
                .header("x-b3-sampled", "1")
                .build(),
        )
        .await;
    assert!(is_allowed(&r));

    let span = eventually(WAIT, "the B3 single span", async || rx.by_trace(single).pop()).await;
    assert_eq!(hex::encode(&span.parent_span_id), "e457b5a2e4d86bd1");
    // include_subject: the Cedar principal itself is recorded.
    assert_eq!(str_attr(&span, "enduser.id"), "User::\"alice\"");
    // A 64-bit B3 trace id is left-padded to 128 bits.
    let padded = format!("{multi:0>32}");
    let span = eventually(WAIT, "the B3 multi span", async || rx.by_trace(&padded).pop()).await;
    assert_eq!(hex::encode(&span.parent_span_id), "a2fb4a1d1a96d312");
    s.stop().await;

    // Everything ended before the sampled markers has been exported by now (and the shutdown
    // flushed the rest): only the two sampled checks produced spans.
    assert_eq!(rx.spans().len(), 2, "{:?}", rx.spans());
    for t in unsampled {
        assert!(rx.by_trace(&format!("{t:0>32}")).is_empty(), "{t}");
    }
}

#[tokio::test]
async fn a_dead_collector_never_holds_a_check_and_its_spans_are_counted_as_dropped() {
    // A port nothing listens on.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let s = Sidecar::start_configured(|_| {}, traces_on(dead, false)).await;
    let alice = token("alice").mint();
    for i in 0..20 {
        let tp = format!("00-{TRACE}-{:016x}-01", i + 1);
        // `check` itself fails the test if an answer takes longer than WAIT.
        let r = s.check(req("GET", "/api/orders/42").bearer(&alice).header("traceparent", &tp).build()).await;
        assert!(is_allowed(&r));
    }
    let dropped = eventually(WAIT, "dropped spans counted", async || {
        let (_, body) = s.admin_get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix("portcullis_trace_spans_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|v| *v >= 1.0)
    })
    .await;
    assert!(dropped >= 1.0);
    s.stop().await;
}

#[tokio::test]
async fn traces_off_exports_nothing() {
    let (rx, endpoint) = Receiver::start().await;
    let off_endpoint = endpoint.clone();
    let off = Sidecar::start_configured(
        |_| {},
        move |_, c: &mut Config| {
            // Pointed at the receiver, but not enabled.
            c.telemetry.traces.endpoint = Some(off_endpoint);
        },
    )
    .await;
    let alice = token("alice").mint();
    let tp = format!("00-{TRACE}-{PARENT}-01");
    assert!(is_allowed(
        &off.check(req("GET", "/api/orders/42").bearer(&alice).header("traceparent", &tp).build()).await
    ));
    off.stop().await;

    // A sidecar with traces on marks the receiver as working.
    let on = Sidecar::start_configured(|_| {}, traces_on(endpoint, false)).await;
    let marker = "99999999999999999999999999999999";
    let tp = format!("00-{marker}-{PARENT}-01");
    assert!(is_allowed(
        &on.check(req("GET", "/api/orders/42").bearer(&alice).header("traceparent", &tp).build()).await
    ));
    on.stop().await;
    assert_eq!(rx.by_trace(marker).len(), 1);
    assert!(rx.by_trace(TRACE).is_empty(), "traces off exported a span");
}

#[tokio::test]
async fn a_candidate_sets_view_is_on_the_span() {
    let (rx, endpoint) = Receiver::start().await;
    let s = Sidecar::start_configured(
        |_| {},
        move |tmp: &std::path::Path, c: &mut Config| {
            traces_on(endpoint, false)(tmp, c);
            // The candidate: the demo set plus a forbid-all, so it disagrees with every allow.
            let cdir = tmp.join("candidate");
            common::copy_demo_policies(&cdir);
            std::fs::write(
                cdir.join("zz.cedar"),
                "@id(\"candidate-forbid-all\")\nforbid (principal, action, resource);\n",
            )
            .expect("write candidate policy");
            let y = format!("policy: {{dir: x, candidate: {{dir: '{}'}}}}\n", cdir.display());
            c.policy.candidate = Config::from_yaml(&y).expect("parses").policy.candidate;
        },
    )
    .await;
    let alice = token("alice").mint();
    let tp = format!("00-{TRACE}-{PARENT}-01");
    // The candidate loads in the background: the live decision is unaffected either way.
    eventually(WAIT, "the candidate is loaded", async || {
        let r = s.check(req("GET", "/api/orders/42").bearer(&alice).build()).await;
        assert!(is_allowed(&r), "the live set decides");
        let (_, body) = s.diagnostics_get("/policy").await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("/policy is JSON");
        v["candidate"]["version"].is_string()
    })
    .await;
    let r = s.check(req("GET", "/api/orders/42").bearer(&alice).header("traceparent", &tp).build()).await;
    assert!(is_allowed(&r), "the live set decides");
    s.stop().await;
    let spans = rx.by_trace(TRACE);
    assert_eq!(spans.len(), 1, "{spans:?}");
    let sp = &spans[0];
    assert_eq!(str_attr(sp, "portcullis.decision"), "allow");
    assert_eq!(str_attr(sp, "portcullis.shadow.decision"), "deny");
    let Some(Value::ArrayValue(ids)) = attr(sp, "portcullis.shadow.policy_ids") else { panic!("shadow ids: {sp:?}") };
    let ids: Vec<_> = ids.values.iter().map(|v| v.value.clone()).collect();
    assert_eq!(ids, [Some(Value::StringValue("candidate-forbid-all".into()))]);
    assert!(!str_attr(sp, "portcullis.shadow.version").is_empty());
}

#[tokio::test]
async fn token_cache_hit_and_miss_are_on_the_span() {
    let (rx, endpoint) = Receiver::start().await;
    let s = Sidecar::start_configured(|_| {}, traces_on(endpoint, false)).await;
    let alice = token("alice").mint();
    let forged = token("alice").signed_with("rsa2.pem").mint();
    let get = |trace: &str| req("GET", "/api/orders/42").header("traceparent", &format!("00-{trace}-{PARENT}-01"));
    let (first, second) = ("a1000000000000000000000000000001", "a1000000000000000000000000000002");
    let (bad, none) = ("a1000000000000000000000000000003", "a1000000000000000000000000000004");
    assert!(is_allowed(&s.check(get(first).bearer(&alice).build()).await));
    // The same token again: answered from the verified-token cache.
    assert!(is_allowed(&s.check(get(second).bearer(&alice).build()).await));
    assert_eq!(http_status(&s.check(get(bad).bearer(&forged).build()).await), 401);
    assert_eq!(http_status(&s.check(get(none).build()).await), 401);
    s.stop().await;

    let one = |t: &str| {
        let mut v = rx.by_trace(t);
        assert_eq!(v.len(), 1, "{t}: {v:?}");
        v.remove(0)
    };
    assert_eq!(str_attr(&one(first), "portcullis.token_cache"), "miss");
    assert_eq!(str_attr(&one(second), "portcullis.token_cache"), "hit");
    // A refused token was still looked up (and missed); a request without one was not.
    let refused = one(bad);
    assert_eq!(str_attr(&refused, "portcullis.token_cache"), "miss");
    assert_eq!(str_attr(&refused, "portcullis.decision"), "deny");
    assert!(attr(&one(none), "portcullis.token_cache").is_none(), "no token, no lookup");
}

#[tokio::test]
async fn no_token_cache_attribute_when_the_cache_is_off() {
    let (rx, endpoint) = Receiver::start().await;
    let s = Sidecar::start_configured(
        |_| {},
        move |tmp: &std::path::Path, c: &mut Config| {
            traces_on(endpoint, false)(tmp, c);
            c.authn.token_cache.max_entries = 0;
        },
    )
    .await;
    let alice = token("alice").mint();
    for _ in 0..2 {
        let tp = format!("00-{TRACE}-{PARENT}-01");
        assert!(is_allowed(
            &s.check(req("GET", "/api/orders/42").bearer(&alice).header("traceparent", &tp).build()).await
        ));
    }
    s.stop().await;
    let spans = rx.by_trace(TRACE);
    assert_eq!(spans.len(), 2, "{spans:?}");
    for sp in &spans {
        assert!(attr(sp, "portcullis.token_cache").is_none(), "{sp:?}");
    }
}

#[tokio::test]
async fn kubernetes_watch_restarts_are_root_spans() {
    use common::kube::FakeApiServer;
    let api = FakeApiServer::start().await;
    let demo = common::repo().join("examples/demo/policies");
    let files: Vec<(String, String)> = std::fs::read_dir(&demo)
        .expect("demo dir")
        .map(|e| {
            let p = e.expect("entry").path();
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&p).expect("demo file"))
        })
        .collect();
    let data: Vec<(&str, &str)> = files.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    api.put("policies", "demo", &[("portcullis.dev/policy", "true")], &data);
    // The first list fails (a 500): the watcher retries it with backoff.
    api.fail_next_lists_in("policies", 1);
    let (rx, endpoint) = Receiver::start().await;
    let kubeconfig = |tmp: &std::path::Path| api.write_kubeconfig(tmp);
    let s = Sidecar::start_configured(
        |_| {},
        move |tmp: &std::path::Path, c: &mut Config| {
            traces_on(endpoint, false)(tmp, c);
            c.policy.dir = None;
            c.policy.kubernetes = Some(portcullis::config::KubernetesSource {
                namespaces: vec!["policies".into()],
                selector: "portcullis.dev/policy=true".into(),
                kubeconfig: Some(kubeconfig(tmp)),
                events: false,
            });
        },
    )
    .await;
    eventually(WAIT, "policies loaded after the failed list", async || s.running().store.is_ready()).await;
    // History compacted while the watch drops: resuming gets 410 Gone, and the watcher re-lists.
    api.compact();
    api.drop_watches();
    eventually(WAIT, "a 410 Gone was sent", async || api.gone_sent() >= 1).await;
    let restarts = |kind: &'static str| {
        let rx = rx.clone();
        move || {
            rx.spans()
                .into_iter()
                .filter(|sp| sp.name == "portcullis.kubernetes.watch_restart")
                .find(|sp| attr(sp, "error.type") == Some(Value::StringValue(kind.into())))
        }
    };
    let list = eventually(WAIT, "the failed-list span", async || restarts("initial_list_failed")()).await;
    let gone = eventually(WAIT, "the 410 span", async || restarts("watch_error")()).await;
    s.stop().await;

    for sp in [&list, &gone] {
        assert!(sp.parent_span_id.is_empty(), "a root span: {sp:?}");
        assert_eq!(str_attr(sp, "k8s.namespace.name"), "policies");
        assert_eq!(sp.status.as_ref().map(|st| st.code), Some(2), "STATUS_CODE_ERROR: {sp:?}");
    }
    assert_ne!(list.trace_id, gone.trace_id, "each restart is its own trace");
    assert_eq!(int_attr(&gone, "http.response.status_code"), 410);
    assert!(attr(&list, "http.response.status_code").is_none());
}
