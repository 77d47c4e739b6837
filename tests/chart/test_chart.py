"""The Helm chart, rendered by real helm: lint, Kubernetes schemas, security, wiring, bad values."""

from __future__ import annotations

import copy
import re
from pathlib import PurePosixPath

import kubernetes_validate
import pytest
import yaml

from chartkit import (
    CHART,
    CRD_KINDS,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    SCENARIOS,
    all_containers,
    assert_restricted,
    container,
    has_container,
    helm_bin,
    hostport,
    mount_dir_of,
    named_port,
    notes,
    pod_spec,
    render,
    render_refused,
    run,
)
from envoycheck import ext_authz_filter, portcullis_cluster_address, strict_bootstrap

scenarios = pytest.mark.parametrize("scenario", list(SCENARIOS))


def validate_k8s(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as e:
        msg = "\n".join(str(e).splitlines()[:3])
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} is not a valid Kubernetes {KUBE_VERSION} object: {msg}")


# Lint and schemas ---------------------------------------------------------------------------


def test_scenarios_are_documented():
    assert {"envoy-unix", "envoy-tcp", "istio", "kube-policies", "servicemonitor"} <= set(SCENARIOS)
    docs = (CHART.parents[1] / "docs" / "install.md").read_text()
    for name, path in SCENARIOS.items():
        if path is not None:
            assert path.name in docs, f"scenario {path.name} is not mentioned in docs/install.md"


@scenarios
def test_helm_lint_is_clean(scenario):
    args = [helm_bin(), "lint", str(CHART), "--strict", "--namespace", NAMESPACE]
    if SCENARIOS[scenario] is not None:
        args += ["--values", str(SCENARIOS[scenario])]
    out = run(args).stdout
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


@scenarios
def test_every_rendered_object_is_valid(scenario):
    rendered = render(scenario)
    kinds = {d["kind"] for d in rendered.docs}
    assert {"ConfigMap", "ServiceAccount"} <= kinds
    for obj in rendered.docs:
        assert obj["metadata"].get("namespace", NAMESPACE) in (NAMESPACE, "shared-policies"), obj["metadata"]
        if obj["kind"] in CRD_KINDS:
            continue  # checked field by field below
        validate_k8s(obj)


def test_kubernetes_schema_check_catches_a_broken_object():
    dep = copy.deepcopy(render().deployment())
    dep["spec"]["replicas"] = "two"
    with pytest.raises(pytest.fail.Exception):
        validate_k8s(dep)
    dep = copy.deepcopy(render().deployment())
    pod_spec(dep)["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(pytest.fail.Exception):
        validate_k8s(dep)


# Security -----------------------------------------------------------------------------------


@scenarios
def test_every_pod_is_restricted(scenario):
    rendered = render(scenario)
    pods = rendered.of_kind("Deployment") + rendered.of_kind("Pod")
    assert pods, "nothing to check"
    for obj in pods:
        assert_restricted(pod_spec(obj), f"{scenario}: {obj['kind']}/{obj['metadata']['name']}")


def test_restriction_check_catches_a_root_container():
    spec = copy.deepcopy(pod_spec(render().deployment()))
    container(spec, "portcullis")["securityContext"]["readOnlyRootFilesystem"] = False
    with pytest.raises(AssertionError, match="writable root"):
        assert_restricted(spec, "mutated")


@scenarios
def test_service_account_token_only_where_the_api_is_used(scenario):
    rendered = render(scenario)
    cfg = rendered.portcullis_config()
    api_keys = (cfg.get("authn") or {}).get("api_keys") or {}
    kube = cfg["policy"].get("kubernetes") is not None or api_keys.get("kubernetes") is not None
    sa = rendered.one("ServiceAccount")
    assert sa["automountServiceAccountToken"] is kube
    for obj in rendered.of_kind("Deployment") + rendered.of_kind("Pod"):
        assert pod_spec(obj)["automountServiceAccountToken"] is kube
        assert pod_spec(obj)["serviceAccountName"] == sa["metadata"]["name"]


# The portcullis container ---------------------------------------------------------------------


@scenarios
def test_probes_hit_healthz_and_readyz_on_the_admin_port(scenario):
    rendered = render(scenario)
    cfg = rendered.portcullis_config()
    _, admin_port = hostport(cfg["listen"]["admin"])
    specs = [pod_spec(o) for o in rendered.of_kind("Deployment") + rendered.of_kind("Pod")]
    assert specs
    for spec in specs:
        pc = container(spec, "portcullis")
        assert named_port(pc, "admin") == admin_port
        assert pc["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
        assert pc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert pc["startupProbe"]["httpGet"]["path"] == "/readyz"
        assert pc["args"] == ["serve", "--config", "/etc/portcullis/config.yaml"]
        mount = next(m for m in pc["volumeMounts"] if m["mountPath"] == "/etc/portcullis/config.yaml")
        vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert vol["configMap"]["name"] == rendered.one("ConfigMap", "-config")["metadata"]["name"]
        assert mount["subPath"] == "config.yaml"


@scenarios
def test_shutdown_drain_grace_period_and_probes_agree(scenario):
    rendered = render(scenario)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    delay, timeout = values["shutdown"]["drainDelaySeconds"], values["shutdown"]["drainTimeoutSeconds"]
    listen = rendered.portcullis_config()["listen"]
    # The binary keeps answering for drain_delay after SIGTERM, then drains for drain_timeout.
    assert listen["drain_delay"] == f"{delay}s"
    assert listen["drain_timeout"] == f"{timeout}s"
    for obj in rendered.of_kind("Deployment"):
        spec = pod_spec(obj)
        # The kubelet's SIGKILL must not cut the drain short.
        assert spec["terminationGracePeriodSeconds"] > delay + timeout
        pc = container(spec, "portcullis")
        # No preStop: drain_delay does that job in the binary (and reports unready at once).
        assert "lifecycle" not in pc
        ready = pc["readinessProbe"]
        # The kubelet sees the container unready while it still answers checks.
        assert ready["periodSeconds"] * ready["failureThreshold"] <= delay
        assert pc["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness keeps passing while draining"
        envoy = [c for c in spec["containers"] if c["name"] == "envoy"]
        if envoy:
            # Envoy exits at once on SIGTERM: it sleeps through the drain delay first, and the
            # sleep plus portcullis' drain fit in the grace period.
            assert envoy[0]["lifecycle"]["preStop"] == {"sleep": {"seconds": delay}}
            assert spec["terminationGracePeriodSeconds"] > delay + timeout


def test_shutdown_values_reach_the_config():
    listen = render("default", "shutdown.drainDelaySeconds=0", "shutdown.drainTimeoutSeconds=3").portcullis_config()[
        "listen"
    ]
    assert (listen["drain_delay"], listen["drain_timeout"]) == ("0s", "3s")


def test_traces_values_reach_the_config():
    # Off by default: no telemetry section, so the binary's default (off) applies.
    assert "telemetry" not in render().portcullis_config()
    cfg = render(
        "default",
        "traces.enabled=true",
        "traces.endpoint=http://otel-collector.observability:4317",
        "json:traces.samplerRatio=0.25",
    ).portcullis_config()
    assert cfg["telemetry"]["traces"] == {
        "enabled": True,
        "endpoint": "http://otel-collector.observability:4317",
        "sampler_ratio": 0.25,
        "include_subject": False,
    }
    # Unset endpoint and ratio are left to the OTEL_* environment (values `env`).
    cfg = render("default", "traces.enabled=true", "traces.includeSubject=true").portcullis_config()
    assert cfg["telemetry"]["traces"] == {"enabled": True, "include_subject": True}


def test_image_defaults_to_app_version_and_digest_wins():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    pc = container(pod_spec(render().deployment()), "portcullis")
    assert pc["image"].endswith(":" + chart["appVersion"])
    digest = "sha256:" + "a" * 64
    pc = container(pod_spec(render("default", f"image.digest={digest}").deployment()), "portcullis")
    assert pc["image"].endswith("@" + digest)


def test_config_is_merged_over_defaults_and_listen_is_derived():
    rendered = render(
        "default",
        "config.log.level=debug",
        "config.ratelimit.rps=50",
        "config.listen.unix=/tmp/elsewhere.sock",
        "issuers[0].issuer=https://id.example.com",
        "issuers[0].audiences={api}",
    )
    cfg = rendered.portcullis_config()
    assert cfg["log"] == {"format": "json", "level": "debug"}
    assert cfg["ratelimit"] == {"rps": 50}
    assert cfg["authn"]["peer"] == {"trust_domains": ["cluster.local"]}
    assert cfg["authn"]["issuers"] == [{"issuer": "https://id.example.com", "audiences": ["api"]}]
    # listen follows transport/socket, whatever config.listen says, so Envoy and the server agree.
    assert cfg["listen"]["unix"] == "/var/run/portcullis/ext_authz.sock"


def test_config_change_rolls_the_pods():
    a = render().deployment()["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    b = render("default", "config.log.level=debug").deployment()["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert a != b


# Envoy <-> portcullis wiring ------------------------------------------------------------------


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if render(s).envoy_config() is not None])
def test_envoy_sidecar_reaches_portcullis_where_it_listens(scenario):
    rendered = render(scenario)
    cfg = rendered.portcullis_config()
    envoy = rendered.envoy_config()
    strict_bootstrap(envoy)  # every field is Envoy v3 API
    spec = pod_spec(rendered.deployment())
    pc, ec = container(spec, "portcullis"), container(spec, "envoy")
    addr = portcullis_cluster_address(envoy)
    if "pipe" in addr:
        sock = addr["pipe"]["path"]
        assert cfg["listen"]["unix"] == sock and cfg["listen"]["grpc"] is None
        # Both containers mount the same emptyDir at the socket's directory.
        p_mount, e_mount = mount_dir_of(spec, pc, sock), mount_dir_of(spec, ec, sock)
        assert p_mount and e_mount, "the socket directory is not mounted in both containers"
        assert p_mount == e_mount and "emptyDir" in p_mount[1]
        assert p_mount[0] == str(PurePosixPath(sock).parent)
        # Same uid/gid, so Envoy may connect to the socket portcullis creates.
        assert pc["securityContext"]["runAsUser"] == ec["securityContext"]["runAsUser"]
        assert not any(p.get("name") == "grpc" for p in pc.get("ports", []))
    else:
        sa = addr["socket_address"]
        assert cfg["listen"]["unix"] is None
        host, port = hostport(cfg["listen"]["grpc"])
        assert (sa["address"], sa["port_value"]) == ("127.0.0.1", port)
        assert host in ("127.0.0.1", "0.0.0.0")
        assert named_port(pc, "grpc") == port
    # Envoy serves the app and is what the Service targets.
    app_port = named_port(container(spec, "app"), "app")
    assert named_port(ec, "http") != app_port
    svc = rendered.one("Service", "-portcullis")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    cm_name = rendered.one("ConfigMap", "-envoy")["metadata"]["name"]
    assert any(v.get("configMap", {}).get("name") == cm_name for v in spec["volumes"])
    assert ec["args"][:2] == ["--config-path", "/etc/envoy/envoy.yaml"]


def test_chart_envoy_config_matches_deploy_envoy_yaml():
    from envoycheck import load_deploy_envoy

    from chartkit import DEPLOY_EXAMPLE_SETS

    # deploy/envoy.yaml carries one example issuer and route requirement; the chart's defaults have
    # neither, so it is compared with the chart rendered with those values.
    assert render("default", *DEPLOY_EXAMPLE_SETS).envoy_config() == load_deploy_envoy(), (
        "charts/portcullis/templates/envoy-configmap.yaml (with the example values) and deploy/envoy.yaml differ"
    )


def test_ext_authz_values_reach_the_filter():
    rendered = render(
        "default",
        "envoy.extAuthz.timeout=0.2s",
        "envoy.extAuthz.statusOnError=Forbidden",
        "envoy.extAuthz.extraAllowedHeaders={X-Debug-Thing}",
        "envoy.extAuthz.withRequestBody.enabled=true",
        "envoy.extAuthz.withRequestBody.maxRequestBytes=4096",
    )
    envoy = rendered.envoy_config()
    strict_bootstrap(envoy)
    f = ext_authz_filter(envoy)
    assert f["grpc_service"]["timeout"] == "0.2s"
    assert f["status_on_error"] == {"code": "Forbidden"}
    assert allowed_headers(f) == expected_allowed_headers(rendered.portcullis_config()) + ["x-debug-thing"]
    assert f["with_request_body"] == {"max_request_bytes": 4096, "allow_partial_message": False, "pack_as_bytes": True}
    assert f["failure_mode_allow"] is False
    assert "with_request_body" not in ext_authz_filter(render().envoy_config())


def test_body_policies_get_whole_bodies_within_one_limit():
    # Off: no body is sent, and portcullis keeps its own default limit.
    rendered = render()
    assert "with_request_body" not in ext_authz_filter(rendered.envoy_config())
    assert "max_body_bytes" not in rendered.portcullis_config().get("request", {})
    # On: one value feeds Envoy and portcullis, and Envoy never truncates (it answers 413).
    rendered = render("default", "envoy.extAuthz.withRequestBody.enabled=true")
    f = ext_authz_filter(rendered.envoy_config())
    cfg = rendered.portcullis_config()
    assert f["with_request_body"]["allow_partial_message"] is False
    assert f["with_request_body"]["max_request_bytes"] == cfg["request"]["max_body_bytes"] == 8192
    assert cfg.get("limits", {}).get("max_message_bytes", 4194304) >= 8192 + 65536
    # A limit above the CheckRequest bound raises that bound, with room for the rest of the request.
    big = 8 * 1024 * 1024
    rendered = render(
        "default", "envoy.extAuthz.withRequestBody.enabled=true", f"envoy.extAuthz.withRequestBody.maxRequestBytes={big}"
    )
    cfg = rendered.portcullis_config()
    assert ext_authz_filter(rendered.envoy_config())["with_request_body"]["max_request_bytes"] == big
    assert cfg["request"]["max_body_bytes"] == big
    assert cfg["limits"]["max_message_bytes"] == big + 65536
    # Truncated bodies cannot be asked for: the knob is gone.
    err = render_refused("--set", "envoy.extAuthz.withRequestBody.allowPartialMessage=true")
    assert "allowPartialMessage" in err


def test_istio_body_in_check_is_never_partial_and_feeds_the_sidecar_limit():
    cfg = render("istio", "istio.provider.includeRequestBodyInCheck.maxRequestBytes=4096").portcullis_config()
    assert cfg["request"]["max_body_bytes"] == 4096
    grpc = mesh_provider_from_notes_with("istio", "istio.provider.includeRequestBodyInCheck.maxRequestBytes=4096")
    body = grpc["envoyExtAuthzGrpc"]["includeRequestBodyInCheck"]
    assert body == {"maxRequestBytes": 4096, "allowPartialMessage": False, "packAsBytes": True}
    # Without it, no body is sent and the sidecar keeps its default.
    cfg = render("istio", "json:istio.provider.includeRequestBodyInCheck=null").portcullis_config()
    assert "max_body_bytes" not in cfg.get("request", {})


def mesh_provider_from_notes_with(scenario: str, *sets: str) -> dict:
    text = notes(scenario, *sets)
    block = text[text.index("extensionProviders:") :]
    lines = [block.splitlines()[0]]
    for line in block.splitlines()[1:]:
        if line.strip() and not line.startswith("      "):
            break
        lines.append(line)
    parsed = yaml.safe_load("\n".join(l[4:] if l.startswith("    ") else l for l in lines))
    (provider,) = parsed["extensionProviders"]
    return provider


# What Envoy sends portcullis ------------------------------------------------------------------

TRACING = ["traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3"]


def allowed_headers(ext_authz: dict) -> list[str]:
    """The ext_authz allowed_headers as a list of names; only exact, lower-case matchers."""
    patterns = ext_authz["allowed_headers"]["patterns"]
    for p in patterns:
        assert set(p) == {"exact"}, f"only exact matchers: {p}"
        assert p["exact"] == p["exact"].lower(), f"Envoy lower-cases header names: {p}"
    return [p["exact"] for p in patterns]


def expected_allowed_headers(cfg: dict) -> list[str]:
    """docs/security.md's rule, written independently of the chart: every header portcullis
    reads for this config, first occurrence kept."""
    authn = cfg.get("authn") or {}
    out: list[str] = []
    for iss in authn.get("issuers") or []:
        for src in iss.get("from", [{"header": "authorization", "prefix": "Bearer "}]):
            out.append(src["header"].lower() if "header" in src else "cookie")
    keys = authn.get("api_keys") or {}
    if keys.get("keys") or keys.get("dir") or keys.get("kubernetes"):
        out.append(keys.get("header", "x-api-key").lower())
    if (cfg.get("headers") or {}).get("strip_foreign_credentials"):
        out.append("authorization")
    out += [h.lower() for h in (cfg.get("cedar") or {}).get("context_headers", [])]
    out += ["content-type", "x-request-id"] + TRACING
    return list(dict.fromkeys(out))


KEY_SHA = "a" * 64
ALLOWED_HEADER_CASES = {
    # name: (values overrides, headers that must be sent, headers that must not)
    "no credentials configured": ([], ["x-request-id", *TRACING], ["authorization", "x-api-key", "cookie"]),
    "default token header": (
        ['json:issuers=[{"issuer":"https://id.example.com"}]'],
        ["authorization"],
        ["x-api-key", "cookie"],
    ),
    "custom token header, two issuers": (
        [
            'json:issuers=[{"issuer":"https://a.example.com","from":[{"header":"X-Auth-Token"}]},'
            '{"issuer":"https://b.example.com","group_claims":[],"from":[{"header":"x-auth-token"},{"header":"authorization","prefix":"Bearer "}]}]'
        ],
        ["x-auth-token", "authorization"],
        ["cookie", "x-api-key"],
    ),
    "cookie source": (
        ['json:issuers=[{"issuer":"https://id.example.com","from":[{"cookie":"session"}]}]'],
        ["cookie"],
        ["authorization"],
    ),
    "api keys with a renamed header": (
        [f'json:config.authn.api_keys={{"header":"X-Team-Key","keys":[{{"client":"ci","sha256":"{KEY_SHA}"}}]}}'],
        ["x-team-key"],
        ["x-api-key", "authorization"],
    ),
    "api key header without keys is not read": (
        ['json:config.authn.api_keys={"header":"x-team-key","keys":[]}'],
        [],
        ["x-team-key", "x-api-key"],
    ),
    "api keys from a mounted Secret": (["apiKeys.secret=team-keys"], ["x-api-key"], ["authorization"]),
    "api keys from Secrets through the API": (["apiKeys.kubernetes.enabled=true"], ["x-api-key"], ["authorization"]),
    "context headers": (
        ['json:config.cedar.context_headers=["X-Tenant","x-region","x-request-id"]'],
        ["x-tenant", "x-region"],
        ["authorization"],
    ),
    "strip foreign credentials": (
        ["config.headers.strip_foreign_credentials=true"],
        ["authorization"],
        [],
    ),
    "everything at once": (
        [
            'json:issuers=[{"issuer":"https://id.example.com","from":[{"header":"authorization","prefix":"Bearer "},{"cookie":"sid"}]}]',
            f'json:config.authn.api_keys={{"keys":[{{"client":"ci","sha256":"{KEY_SHA}"}}]}}',
            'json:config.cedar.context_headers=["x-tenant","Authorization"]',
            "envoy.extAuthz.extraAllowedHeaders={x-tenant,B3}",
        ],
        ["authorization", "cookie", "x-api-key", "x-tenant"],
        [],
    ),
}


@pytest.mark.parametrize("case", list(ALLOWED_HEADER_CASES))
def test_allowed_headers_are_derived_from_the_credential_sources(case):
    sets, present, absent = ALLOWED_HEADER_CASES[case]
    rendered = render("default", *sets)
    envoy = rendered.envoy_config()
    strict_bootstrap(envoy)
    got = allowed_headers(ext_authz_filter(envoy))
    assert len(got) == len(set(got)), f"duplicates in allowed_headers: {got}"
    extra = [h.lower() for h in rendered_extra(sets)]
    assert got == list(dict.fromkeys(expected_allowed_headers(rendered.portcullis_config()) + extra))
    for h in present + ["x-request-id", *TRACING]:
        assert h in got, f"{h} is not sent to portcullis: {got}"
    for h in absent:
        assert h not in got, f"{h} is sent to portcullis although this config does not read it: {got}"


def rendered_extra(sets) -> list[str]:
    for s in sets:
        if s.startswith("envoy.extAuthz.extraAllowedHeaders="):
            return s.split("=", 1)[1].strip("{}").split(",")
    return []


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if render(s).envoy_config() is not None])
def test_every_envoy_scenario_sends_what_its_config_reads(scenario):
    rendered = render(scenario)
    got = allowed_headers(ext_authz_filter(rendered.envoy_config()))
    assert got == expected_allowed_headers(rendered.portcullis_config())


def test_envoy_refuses_ambiguous_paths_and_underscore_headers():
    # The settings docs/security.md's contract assumes of the proxy in front of portcullis.
    for scenario in ("default", "envoy-tcp"):
        envoy = render(scenario).envoy_config()
        (listener,) = envoy["static_resources"]["listeners"]
        (hcm,) = [f["typed_config"] for c in listener["filter_chains"] for f in c["filters"]]
        assert hcm["normalize_path"] is True
        assert hcm["merge_slashes"] is True
        assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
        assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "REJECT_REQUEST"


def test_envoy_image_is_the_tested_release():
    ec = container(pod_spec(render().deployment()), "envoy")
    assert ec["image"] == "envoyproxy/envoy:v1.40.0"


def test_several_grouping_issuers_need_a_group_namespace():
    two = 'issuers=[{"issuer":"https://a.example.com"},{"issuer":"https://b.example.com"}]'
    err = render_refused("--set-json", two)
    assert "groupNamespace" in err
    for choice in ("shared", "per_issuer"):
        cfg = render("default", "json:" + two, f"groupNamespace={choice}").portcullis_config()
        assert cfg["authn"]["group_namespace"] == choice
    # Set through config directly, or only one issuer mapping groups: no refusal.
    render("default", "json:" + two, "config.authn.group_namespace=per_issuer")
    one_grouping = 'issuers=[{"issuer":"https://a.example.com"},{"issuer":"https://b.example.com","group_claims":[]}]'
    assert "group_namespace" not in render("default", "json:" + one_grouping).portcullis_config()["authn"]


# Admin surface ----------------------------------------------------------------------------------


@scenarios
def test_admin_on_the_pod_ip_and_diagnostics_on_loopback(scenario):
    rendered = render(scenario)
    cfg = rendered.portcullis_config()
    host, port = hostport(cfg["listen"]["admin"])
    assert host == "0.0.0.0", "probes and scrapes reach the admin listener on the pod IP"
    dhost, dport = hostport(cfg["listen"]["diagnostics"])
    assert dhost == "127.0.0.1" and dport != port
    for obj in rendered.of_kind("Deployment") + rendered.of_kind("Pod"):
        pc = container(pod_spec(obj), "portcullis")
        # Nothing advertises the loopback-only port.
        assert dport not in [p["containerPort"] for p in pc.get("ports", [])]
    envoy = rendered.envoy_config()
    if envoy is not None:
        # Plain Envoy: the admin port is not behind Envoy (docs say: NetworkPolicy), and Envoy
        # routes nothing to portcullis's admin or diagnostics ports.
        text = yaml.safe_dump(envoy)
        assert f"port_value: {port}\n" not in text and f"port_value: {dport}\n" not in text
        assert "NetworkPolicy" in notes(scenario)


def test_diagnostics_can_be_turned_off_and_moved():
    assert render("default", "diagnostics.enabled=false").portcullis_config()["listen"]["diagnostics"] is None
    assert render("default", "diagnostics.port=9400").portcullis_config()["listen"]["diagnostics"] == "127.0.0.1:9400"
    # Whatever config.listen says, the chart derives listen (the bind address is not a value).
    cfg = render("default", "config.listen.diagnostics=0.0.0.0:9092").portcullis_config()
    assert cfg["listen"]["diagnostics"] == "127.0.0.1:9092"


@pytest.mark.parametrize("scenario", ["istio", "istio-existing-workload"])
def test_istio_mesh_reaches_only_probes_and_metrics_on_portcullis_ports(scenario):
    rendered = render(scenario)
    cfg = rendered.portcullis_config()
    _, admin_port = hostport(cfg["listen"]["admin"])
    _, diag_port = hostport(cfg["listen"]["diagnostics"])
    deny = rendered.one("AuthorizationPolicy", "-admin")
    custom = rendered.one("AuthorizationPolicy", "-portcullis")
    assert deny["apiVersion"] == "security.istio.io/v1"
    # DENY, not ALLOW: an ALLOW policy would deny every request it does not list, app port included.
    assert deny["spec"]["action"] == "DENY" and "provider" not in deny["spec"]
    assert deny["spec"]["selector"] == custom["spec"]["selector"]
    assert deny["spec"]["rules"] == [
        {"to": [{"operation": {"ports": [str(admin_port)], "notPaths": ["/healthz", "/readyz", "/metrics"]}}]},
        {"to": [{"operation": {"ports": [str(diag_port)]}}]},
    ]
    # The probes and the scrape path are exactly the ones the DENY policy leaves open.
    for obj in rendered.of_kind("Deployment"):
        pc = container(pod_spec(obj), "portcullis")
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert pc[probe]["httpGet"]["path"] in ("/healthz", "/readyz")
        assert obj["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert render(scenario, "istio.adminPolicy.create=false").maybe("AuthorizationPolicy", "-admin") is None


def test_istio_notes_print_the_path_normalization():
    text = notes("istio")
    block = text[text.index("\n    pathNormalization:") + 1 :]
    parsed = yaml.safe_load("\n".join(l[4:] for l in block.splitlines()[:2]))
    assert parsed == {"pathNormalization": {"normalization": "MERGE_SLASHES"}}


# Istio ----------------------------------------------------------------------------------------


def mesh_provider_from_notes(scenario: str) -> dict:
    text = notes(scenario)
    block = text[text.index("extensionProviders:") :]
    lines = [block.splitlines()[0]]
    for line in block.splitlines()[1:]:
        if line.strip() and not line.startswith("      "):
            break
        lines.append(line)
    parsed = yaml.safe_load("\n".join(l[4:] if l.startswith("    ") else l for l in lines))
    (provider,) = parsed["extensionProviders"]
    return provider


@pytest.mark.parametrize("scenario", ["istio", "istio-existing-workload"])
def test_istio_pieces_agree_with_each_other(scenario):
    rendered = render(scenario)
    cfg = rendered.portcullis_config()
    assert cfg["listen"]["unix"] is None
    host, port = hostport(cfg["listen"]["grpc"])
    assert host == "127.0.0.1", "in Istio mode portcullis should listen on loopback only"
    assert rendered.envoy_config() is None

    provider = mesh_provider_from_notes(scenario)
    assert set(provider) == {"name", "envoyExtAuthzGrpc"}
    grpc = provider["envoyExtAuthzGrpc"]
    # Field names of istio.mesh.v1alpha1 MeshConfig.ExtensionProvider.EnvoyExternalAuthorizationGrpcProvider.
    assert set(grpc) <= {"service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"}
    assert grpc["port"] == port and grpc["failOpen"] is False
    assert re.fullmatch(r"[0-9.]+(ms|s)", grpc["timeout"])
    if "includeRequestBodyInCheck" in grpc:
        assert set(grpc["includeRequestBodyInCheck"]) <= {"maxRequestBytes", "allowPartialMessage", "packAsBytes"}

    se = rendered.one("ServiceEntry")
    assert se["apiVersion"] == "networking.istio.io/v1"
    assert se["spec"]["hosts"] == [grpc["service"]]
    assert se["spec"]["resolution"] == "STATIC"
    assert se["spec"]["endpoints"] == [{"address": "127.0.0.1"}]
    assert [(p["number"], p["protocol"]) for p in se["spec"]["ports"]] == [(port, "GRPC")]

    ap = rendered.one("AuthorizationPolicy", "-portcullis")
    assert ap["apiVersion"] == "security.istio.io/v1"
    assert ap["spec"]["action"] == "CUSTOM"
    assert ap["spec"]["provider"] == {"name": provider["name"]}
    assert ap["spec"]["rules"], "a CUSTOM policy without rules matches nothing"
    assert set(ap["spec"]) <= {"selector", "targetRefs", "action", "provider", "rules"}

    dep = rendered.deployment()
    if dep is None:
        assert ap["spec"]["selector"]["matchLabels"] == {"app": "shop"}
        assert "add the portcullis container" in notes(scenario).lower()
        return
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels.get("sidecar.istio.io/inject") == "true"
    assert ap["spec"]["selector"]["matchLabels"].items() <= labels.items()
    spec = pod_spec(dep)
    assert not has_container(spec, "envoy"), "Istio injects its own proxy"
    assert named_port(container(spec, "portcullis"), "grpc") == port
    assert rendered.one("Service", "-portcullis")["spec"]["ports"][0]["targetPort"] == "app"


def test_istio_policy_checks_the_app_port_by_default():
    rendered = render("default", "mode=istio")
    ap = rendered.one("AuthorizationPolicy", "-portcullis")
    app_port = named_port(container(pod_spec(rendered.deployment()), "app"), "app")
    # The app's port only: Prometheus scraping portcullis's admin port is not sent to portcullis.
    assert ap["spec"]["rules"] == [{"to": [{"operation": {"ports": [str(app_port)]}}]}]
    everything = render("default", "mode=istio", "json:istio.authorizationPolicy.rules=[{}]")
    assert everything.one("AuthorizationPolicy", "-portcullis")["spec"]["rules"] == [{}]


def test_istio_mode_refuses_the_unix_socket():
    err = render_refused("--set", "mode=istio", "--set", "transport=unix")
    assert "transport" in err


# Policies -------------------------------------------------------------------------------------


def test_files_source_mounts_the_bundled_policies():
    rendered = render()
    cfg = rendered.portcullis_config()
    assert cfg["policy"] == {"dir": "/etc/portcullis/policies"}
    cm = rendered.one("ConfigMap", "-policies")
    # Policy test files (*.test.yaml) are for `portcullis test` in CI, never in the ConfigMap.
    tests = {p.name for p in (CHART / "policies").iterdir() if p.name.endswith(".test.yaml")}
    assert tests, "the chart's policies ship with a test file"
    shipped = {p.name for p in (CHART / "policies").iterdir()} - tests
    assert set(cm["data"]) == shipped
    assert {n.rsplit(".", 1)[-1] for n in shipped} >= {"cedar", "cedarschema", "json"}
    spec = pod_spec(rendered.deployment())
    mounted = mount_dir_of(spec, container(spec, "portcullis"), "/etc/portcullis/policies/x.cedar")
    assert mounted and mounted[1]["configMap"]["name"] == cm["metadata"]["name"]
    # A directory mount (no subPath): kubelet's atomic ..data swap reaches the container.
    mount = next(m for m in container(spec, "portcullis")["volumeMounts"] if m["mountPath"] == "/etc/portcullis/policies")
    assert "subPath" not in mount
    assert not rendered.of_kind("Role") and not rendered.of_kind("RoleBinding")


def test_extra_policy_files_and_existing_configmap():
    rendered = render("default", "policies.files.extra\\.cedar=permit(principal\\,action\\,resource);")
    assert "extra.cedar" in rendered.one("ConfigMap", "-policies")["data"]
    rendered = render("default", "policies.existingConfigMap=team-policies")
    assert rendered.maybe("ConfigMap", "-policies") is None
    spec = pod_spec(rendered.deployment())
    assert {"name": "portcullis-policies", "configMap": {"name": "team-policies"}} in spec["volumes"]


def test_kubernetes_source_watches_with_minimal_rbac():
    rendered = render("kube-policies")
    cfg = rendered.portcullis_config()
    assert cfg["policy"] == {
        "kubernetes": {"namespaces": ["shop", "shared-policies"], "selector": "portcullis.dev/policy=true"}
    }
    sa = rendered.one("ServiceAccount")["metadata"]["name"]
    roles = {r["metadata"]["namespace"]: r for r in rendered.of_kind("Role")}
    bindings = {b["metadata"]["namespace"]: b for b in rendered.of_kind("RoleBinding")}
    assert set(roles) == set(bindings) == {"shop", "shared-policies"}
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
    for ns, role in roles.items():
        granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
        assert {("", "configmaps", v) for v in ("get", "list", "watch")} <= granted
        assert ("", "events", "create") in granted
        assert all(r in ("configmaps", "events") for _, r, _ in granted), "more than the watch needs"
        assert not any(v in ("update", "delete", "*") for _, _, v in granted)
        b = bindings[ns]
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": NAMESPACE}]
    # No policy volume; the chart's own policies are a labelled ConfigMap the watch selects.
    spec = pod_spec(rendered.deployment())
    assert all(m["mountPath"] != "/etc/portcullis/policies" for m in container(spec, "portcullis")["volumeMounts"])
    cm = rendered.one("ConfigMap", "-policies")
    assert cm["metadata"]["labels"]["portcullis.dev/policy"] == "true"
    assert "team.cedar" in cm["data"]


def test_kubernetes_source_defaults_to_the_release_namespace():
    rendered = render("default", "policies.source=kubernetes")
    assert rendered.portcullis_config()["policy"]["kubernetes"]["namespaces"] == [NAMESPACE]
    assert [r["metadata"]["namespace"] for r in rendered.of_kind("Role")] == [NAMESPACE]
    assert not render("default", "policies.source=kubernetes", "rbac.create=false").of_kind("Role")


# API keys -------------------------------------------------------------------------------------


def granted_rules(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def test_no_api_key_source_and_no_secret_access_by_default():
    rendered = render()
    assert "dir" not in (rendered.portcullis_config().get("authn") or {}).get("api_keys", {})
    assert not rendered.of_kind("Role")
    assert all("secret" not in v for v in pod_spec(rendered.deployment())["volumes"])


def test_a_mounted_api_key_secret_becomes_the_key_dir_without_api_access():
    rendered = render("default", "apiKeys.secret=team-keys")
    keys = rendered.portcullis_config()["authn"]["api_keys"]
    assert keys["dir"] == "/etc/portcullis/api-keys" and "kubernetes" not in keys
    spec = pod_spec(rendered.deployment())
    mounted = mount_dir_of(spec, container(spec, "portcullis"), "/etc/portcullis/api-keys/batch")
    assert mounted and mounted[1]["secret"]["secretName"] == "team-keys"
    mount = next(m for m in container(spec, "portcullis")["volumeMounts"] if m["mountPath"] == "/etc/portcullis/api-keys")
    assert mount["readOnly"] is True and "subPath" not in mount, "a directory mount: kubelet's ..data swap reaches it"
    # Only portcullis mounts the keys, and nothing may read Secrets through the API.
    assert all(m["name"] != "portcullis-api-keys" for c in all_containers(spec) if c["name"] != "portcullis" for m in c.get("volumeMounts", []))
    assert not rendered.of_kind("Role") and not rendered.of_kind("ClusterRole")
    assert spec["automountServiceAccountToken"] is False


def test_api_key_secrets_through_the_api_get_a_namespaced_secrets_role_only_then():
    rendered = render("default", "apiKeys.kubernetes.enabled=true")
    keys = rendered.portcullis_config()["authn"]["api_keys"]
    assert keys["kubernetes"] == {"namespaces": [NAMESPACE], "selector": "portcullis.dev/api-key=true"}
    assert "dir" not in keys
    roles = rendered.of_kind("Role")
    assert [r["metadata"]["namespace"] for r in roles] == [NAMESPACE]
    assert not rendered.of_kind("ClusterRole") and not rendered.of_kind("ClusterRoleBinding")
    granted = granted_rules(roles[0])
    assert {("", "secrets", v) for v in ("get", "list", "watch")} <= granted
    assert ("events.k8s.io", "events", "create") in granted
    assert all(r in ("secrets", "events") for _, r, _ in granted), "more than the watch needs"
    assert not any(v in ("create", "update", "patch", "delete", "*") for _, r, v in granted if r == "secrets")
    (binding,) = rendered.of_kind("RoleBinding")
    assert binding["roleRef"]["name"] == roles[0]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": rendered.one("ServiceAccount")["metadata"]["name"], "namespace": NAMESPACE}]
    assert pod_spec(rendered.deployment())["automountServiceAccountToken"] is True
    for obj in roles + [binding]:
        validate_k8s(obj)

    # A dedicated namespace narrows what the pod can read; the policy Role stays separate.
    rendered = render("default", "apiKeys.kubernetes.enabled=true", "apiKeys.kubernetes.namespaces={team-keys}",
                      "apiKeys.kubernetes.selector=team/keys=yes", "policies.source=kubernetes")
    keys = rendered.portcullis_config()["authn"]["api_keys"]
    assert keys["kubernetes"] == {"namespaces": ["team-keys"], "selector": "team/keys=yes"}
    secrets_in = {r["metadata"]["namespace"] for r in rendered.of_kind("Role") if any(res == "secrets" for _, res, _ in granted_rules(r))}
    assert secrets_in == {"team-keys"}, "Secrets are readable only where the keys live"
    assert {r["metadata"]["namespace"] for r in rendered.of_kind("Role")} == {NAMESPACE, "team-keys"}
    assert not render("default", "apiKeys.kubernetes.enabled=true", "rbac.create=false").of_kind("Role")


# Metrics --------------------------------------------------------------------------------------


def test_scrape_annotations_point_at_the_admin_port():
    ann = render().deployment()["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
    assert int(ann["prometheus.io/port"]) == hostport(render().portcullis_config()["listen"]["admin"])[1]
    assert not render().of_kind("ServiceMonitor")


def test_service_monitor_selects_the_metrics_service():
    rendered = render("servicemonitor")
    assert "prometheus.io/scrape" not in rendered.deployment()["spec"]["template"]["metadata"].get("annotations", {})
    sm = rendered.one("ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    svc = rendered.one("Service", "-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (ep,) = sm["spec"]["endpoints"]
    assert ep["path"] == "/metrics" and ep["interval"] == "15s"
    (port,) = [p for p in svc["spec"]["ports"] if p["name"] == ep["port"]]
    assert port["targetPort"] == "admin"
    pod_labels = rendered.deployment()["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()


# helm test ------------------------------------------------------------------------------------


@scenarios
def test_helm_test_hook_runs_real_checks(scenario):
    rendered = render(scenario)
    pod = rendered.test_pod()
    assert pod is not None
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod_spec(pod)
    assert spec["restartPolicy"] == "Never"
    cfg = rendered.portcullis_config()
    # The release's own server runs as a native sidecar, ready before the checks start.
    (server,) = spec["initContainers"]
    assert server["name"] == "portcullis" and server["restartPolicy"] == "Always"
    assert server["startupProbe"]["httpGet"]["path"] == "/readyz"
    if cfg["listen"]["unix"]:
        expected_server = "unix:" + cfg["listen"]["unix"]
    else:
        expected_server = "http://127.0.0.1:%d" % hostport(cfg["listen"]["grpc"])[1]
    requests = rendered.one("ConfigMap", "-test-requests")
    assert int(requests["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        pod["metadata"]["annotations"].get("helm.sh/hook-weight", "0")
    )
    expects = set()
    for c in spec["containers"]:
        args = c["args"]
        assert args[0] == "check"
        assert args[args.index("--server") + 1] == expected_server
        expect = args[args.index("--expect") + 1]
        expects.add(expect)
        request_path = PurePosixPath(args[-1])
        mount = mount_dir_of(spec, c, str(request_path))
        assert mount and mount[1]["configMap"]["name"] == requests["metadata"]["name"]
        request = yaml.safe_load(requests["data"][request_path.name])
        assert request["method"] and request["path"].startswith("/")
        if cfg["listen"]["unix"]:
            assert mount_dir_of(spec, c, cfg["listen"]["unix"]) == mount_dir_of(spec, server, cfg["listen"]["unix"])
    assert expects == {"allow", "deny"}, "the default checks should prove both an allow and a deny"


def test_helm_test_against_an_external_server():
    pod = render("default", "tests.server=http://portcullis-probe:9191").test_pod()
    assert "initContainers" not in pod["spec"]
    for c in pod["spec"]["containers"]:
        assert c["args"][c["args"].index("--server") + 1] == "http://portcullis-probe:9191"
    assert render("default", "tests.enabled=false").test_pod() is None


# Bad values ---------------------------------------------------------------------------------

REFUSED = [
    (["--set", "workload.replicas=-1"], "replicas"),
    (["--set", "mode=linkerd"], "mode"),
    (["--set-string", "grpc.port=9191"], "port"),
    (["--set", "grpc.port=70000"], "port"),
    (["--set", "admin.port=0"], "port"),
    (["--set", "transport=udp"], "transport"),
    (["--set", "tranport=tcp"], "tranport"),
    (["--set", "policies.source=git"], "source"),
    (["--set", "securityContext.readOnlyRootFilesystem=false"], "readOnlyRootFilesystem"),
    (["--set", "securityContext.runAsNonRoot=false"], "runAsNonRoot"),
    (["--set", "securityContext.allowPrivilegeEscalation=true"], "allowPrivilegeEscalation"),
    (["--set", "envoy.extAuthz.timeout=fast"], "timeout"),
    (["--set", "envoy.extAuthz.statusOnError=Teapot"], "statusOnError"),
    (["--set", "issuers[0].audiences={api}"], "issuer"),
    (["--set", "issuers[0].issuer=not-a-url"], "issuer"),
    (["--set", "issuers[0].issuer=https://a.example.com", "--set", "issuers[0].allow_insecure_http=yes"], "allow_insecure_http"),
    (["--set-json", 'issuers=[{"issuer":"https://a.example.com","from":[{"header":"x_token"}]}]'], "header"),
    (["--set-json", 'issuers=[{"issuer":"https://a.example.com","from":[{"heder":"x-token"}]}]'], "heder"),
    (["--set", "groupNamespace=per-issuer"], "groupNamespace"),
    (["--set", "envoy.extAuthz.allowedHeaders={authorization}"], "allowedHeaders"),
    (["--set", "diagnostics.port=0"], "port"),
    (["--set-json", 'tests.cases=[{"name":"x","expect":"maybe","request":{"method":"GET","path":"/"}}]'], "expect"),
    (["--set-json", 'tests.cases=[{"name":"x","expect":"allow","request":{"method":"GET","path":"no-slash"}}]'], "path"),
    (["--set-json", 'tests.cases=[{"name":"x","expect":"allow","request":{"methd":"GET","path":"/"}}]'], "methd"),
    (["--set", "socket.path=relative.sock"], "path"),
    (["--set", "image.digest=latest"], "digest"),
    (["--set", "policies.files.notes\\.txt=hello"], "notes.txt"),
    (["--set", "workload.app.name=envoy"], "name"),
    (["--set", "traces.endpoint=https://collector:4317"], "endpoint"),
    (["--set", "traces.samplerRatio=2"], "samplerRatio"),
    # Checked by the templates, past the schema:
    (["--set", "envoy.port=8000"], "must differ"),
    (["--set", "policies.bundled=false"], "needs policies"),
    (["--set", "workload.terminationGracePeriodSeconds=15"], "must exceed shutdown.drainDelaySeconds"),
    (["--set", "shutdown.drainTimeoutSeconds=0"], "drainTimeoutSeconds"),
    (["--set", "apiKeys.secret=k", "--set", "apiKeys.kubernetes.enabled=true"], "exclusive"),
    (["--set", "apiKeys.kubernetes.selector="], "selector"),
    (["--set", "apiKeys.secret=Not_A_Name"], "secret"),
]


@pytest.mark.parametrize("args,mentions", REFUSED, ids=[" ".join(a[1:]) for a, _ in REFUSED])
def test_bad_values_are_refused(args, mentions):
    err = render_refused(*args)
    assert mentions in err, err


def test_the_refusals_are_not_blanket():
    # The same keys with good values render, so each refusal above is about the value.
    render("default", "workload.replicas=0", "grpc.port=9000", "transport=tcp", "policies.source=kubernetes")
    render("default", "issuers[0].issuer=https://id.example.com")
    render("default", "workload.terminationGracePeriodSeconds=16")
    render("default", "workload.create=false", "workload.terminationGracePeriodSeconds=1")
    render("default", "issuers[0].issuer=http://keycloak.idp.svc", "issuers[0].allow_insecure_http=true")
    render("default", 'json:issuers=[{"issuer":"https://a.example.com","from":[{"header":"x-token"}]}]')
    render("default", 'json:tests.cases=[{"name":"x","expect":"deny","request":{"method":"GET","path":"/"}}]')


# Candidate (shadow) policy sets ------------------------------------------------------------


def test_no_candidate_by_default():
    rendered = render()
    assert "candidate" not in rendered.portcullis_config()["policy"]
    pc = container(pod_spec(rendered.deployment()), "portcullis")
    assert mount_dir_of(pod_spec(rendered.deployment()), pc, "/etc/portcullis/candidate/x.cedar") is None


def test_a_files_candidate_mounts_its_configmap_and_reaches_the_config():
    rendered = render(
        "default",
        "policies.candidate.enabled=true",
        "policies.candidate.existingConfigMap=team-policies-next",
        "json:policies.candidate.sample=0.25",
    )
    for obj in rendered.docs:
        if obj["kind"] not in CRD_KINDS:
            validate_k8s(obj)
    policy = rendered.portcullis_config()["policy"]
    assert policy["dir"] == "/etc/portcullis/policies"
    assert policy["candidate"] == {"dir": "/etc/portcullis/candidate", "sample": 0.25}
    spec = pod_spec(rendered.deployment())
    pc = container(spec, "portcullis")
    mount, vol = mount_dir_of(spec, pc, "/etc/portcullis/candidate/policies.cedar")
    assert mount == "/etc/portcullis/candidate"
    assert vol["configMap"]["name"] == "team-policies-next"
    # The live set's mount is untouched and separate.
    live_mount, live_vol = mount_dir_of(spec, pc, "/etc/portcullis/policies/policies.cedar")
    assert live_mount == "/etc/portcullis/policies" and live_vol["configMap"]["name"] != "team-policies-next"


def test_a_kubernetes_candidate_has_its_own_selector_and_no_volume():
    rendered = render(
        "kube-policies",
        "policies.candidate.enabled=true",
        "policies.candidate.selector=portcullis.dev/policy=next",
    )
    for obj in rendered.docs:
        if obj["kind"] not in CRD_KINDS:
            validate_k8s(obj)
    policy = rendered.portcullis_config()["policy"]
    cand = policy["candidate"]
    assert cand["kubernetes"]["selector"] == "portcullis.dev/policy=next"
    # Same namespaces as the live set (its Role already allows reading them).
    assert cand["kubernetes"]["namespaces"] == policy["kubernetes"]["namespaces"]
    assert cand["sample"] == 1
    assert "dir" not in cand
    spec = pod_spec(rendered.deployment())
    pc = container(spec, "portcullis")
    assert mount_dir_of(spec, pc, "/etc/portcullis/candidate/x.cedar") is None


def test_a_candidate_that_portcullis_would_refuse_is_refused_at_install():
    err = render_refused("--set", "policies.candidate.enabled=true")
    assert "policies.candidate.existingConfigMap" in err
    kube = ["--values", str(SCENARIOS["kube-policies"]), "--set", "policies.candidate.enabled=true"]
    sel = render("kube-policies").portcullis_config()["policy"]["kubernetes"]["selector"]
    err = render_refused(*kube, "--set", f"policies.candidate.selector={sel}")
    assert "policies.candidate.selector must differ" in err
    for sample in ["1.5", "-0.1"]:
        err = render_refused(
            "--set", "policies.candidate.enabled=true", "--set-json", f"policies.candidate.sample={sample}"
        )
        assert "sample" in err
