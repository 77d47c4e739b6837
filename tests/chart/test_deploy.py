"""deploy/: the recommended Envoy bootstrap, the Istio examples, the kustomize overlays, and the
Dockerfile; plus the example Cedar policies the chart and the kustomize base ship."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from chartkit import (
    CHART,
    CRD_KINDS,
    DEPLOY,
    REPO,
    all_containers,
    assert_restricted,
    container,
    hostport,
    kubectl_bin,
    mount_dir_of,
    named_port,
    parse_docs,
    pod_spec,
    render,
    run,
)
from envoycheck import (
    cluster,
    ext_authz_filter,
    http_filters,
    load_deploy_envoy,
    portcullis_cluster_address,
    strict_bootstrap,
)
from test_chart import TRACING, allowed_headers, expected_allowed_headers, validate_k8s

OVERLAYS = sorted(p.name for p in (DEPLOY / "kustomize" / "overlays").iterdir() if p.is_dir())


# deploy/envoy.yaml ----------------------------------------------------------------------------


def test_envoy_yaml_uses_only_envoy_v3_fields():
    strict_bootstrap(load_deploy_envoy())


@pytest.mark.parametrize(
    "path,value",
    [
        (["failure_mode_alow"], True),  # misspelt field
        (["transport_api_version"], "V4"),  # unknown enum value
        (["status_on_error", "code"], "Teapot"),
        (["grpc_service", "envoy_grpc", "cluster"], "portcullis"),
    ],
)
def test_envoy_field_check_catches_mistakes(path, value):
    config = copy.deepcopy(load_deploy_envoy())
    node = ext_authz_filter(config)
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises((KeyError, ValueError, TypeError)):
        strict_bootstrap(config)


def test_envoy_yaml_ext_authz_is_configured_as_recommended():
    config = load_deploy_envoy()
    f = ext_authz_filter(config)
    assert f["transport_api_version"] == "V3"
    assert f["failure_mode_allow"] is False
    assert f["include_peer_certificate"] is True
    assert f["clear_route_cache"] is False
    assert f["status_on_error"]["code"] in ("ServiceUnavailable", "Forbidden")
    assert re.fullmatch(r"0\.[0-9]+s|[1-9][0-9]*ms", f["grpc_service"]["timeout"])
    assert "http_service" not in f
    # The list is the rule applied to the config this file goes with (the envoy overlay's).
    overlay_cfg = yaml.safe_load((DEPLOY / "kustomize/overlays/envoy/config.yaml").read_text())
    assert allowed_headers(f) == expected_allowed_headers(overlay_cfg)
    assert {"x-request-id", *TRACING} <= set(allowed_headers(f))
    assert "with_request_body" not in f, "body buffering is opt-in"
    # ext_authz runs before the router, and nothing but it may come first.
    names = [h["name"] for h in http_filters(config)]
    assert names[0] == "envoy.filters.http.ext_authz" and names[-1] == "envoy.filters.http.router"
    # The portcullis cluster is HTTP/2 over the Unix socket.
    name = f["grpc_service"]["envoy_grpc"]["cluster_name"]
    c = cluster(config, name)
    opts = c["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert "http2_protocol_options" in opts["explicit_http_config"]
    assert portcullis_cluster_address(config) == {"pipe": {"path": "/var/run/portcullis/ext_authz.sock"}}
    # Envoy's admin interface is not reachable from outside the pod.
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_envoy_yaml_refuses_ambiguous_paths_and_underscore_headers():
    (listener,) = load_deploy_envoy()["static_resources"]["listeners"]
    (hcm,) = [f["typed_config"] for c in listener["filter_chains"] for f in c["filters"]]
    assert hcm["normalize_path"] is True and hcm["merge_slashes"] is True
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert hcm["common_http_protocol_options"] == {"headers_with_underscores_action": "REJECT_REQUEST"}


def test_envoy_yaml_states_the_allowed_headers_rule():
    text = (DEPLOY / "envoy.yaml").read_text()
    for words in ("`from` header", "cookie", "api_keys.header", "context_headers", "traceparent", "B3"):
        assert words in text, f"deploy/envoy.yaml does not state the allowed_headers rule ({words!r})"


def test_envoy_yaml_uses_the_charts_socket_and_ports():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    config = load_deploy_envoy()
    assert portcullis_cluster_address(config)["pipe"]["path"] == values["socket"]["path"]
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["port_value"] == values["envoy"]["port"]
    app = cluster(config, "app")["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert app["address"]["socket_address"]["port_value"] == values["workload"]["app"]["port"]
    cfg = render().portcullis_config()
    assert cfg["listen"]["unix"] == values["socket"]["path"]


def test_copies_of_shared_files_have_not_drifted():
    assert (DEPLOY / "kustomize/overlays/envoy/envoy.yaml").read_text() == (DEPLOY / "envoy.yaml").read_text(), (
        "deploy/kustomize/overlays/envoy/envoy.yaml must be a copy of deploy/envoy.yaml"
    )
    chart_policies = {p.name: p.read_text() for p in (CHART / "policies").iterdir()}
    base_policies = {p.name: p.read_text() for p in (DEPLOY / "kustomize/base/policies").iterdir()}
    assert base_policies == chart_policies, "deploy/kustomize/base/policies must be a copy of charts/portcullis/policies"


# Istio examples ---------------------------------------------------------------------------------


def test_istio_examples_agree():
    mesh = yaml.safe_load((DEPLOY / "istio/meshconfig.yaml").read_text())
    (provider,) = mesh["meshConfig"]["extensionProviders"]
    grpc = provider["envoyExtAuthzGrpc"]
    assert set(grpc) <= {"service", "port", "timeout", "failOpen", "statusOnError", "includeRequestBodyInCheck"}
    assert grpc["failOpen"] is False
    se = yaml.safe_load((DEPLOY / "istio/serviceentry.yaml").read_text())
    assert se["spec"]["hosts"] == [grpc["service"]]
    assert se["spec"]["endpoints"] == [{"address": "127.0.0.1"}]
    assert [(p["number"], p["protocol"]) for p in se["spec"]["ports"]] == [(grpc["port"], "GRPC")]
    ap = yaml.safe_load((DEPLOY / "istio/authorizationpolicy.yaml").read_text())
    assert ap["spec"]["action"] == "CUSTOM" and ap["spec"]["provider"]["name"] == provider["name"]
    assert ap["spec"]["rules"]
    # What the path contract assumes of the mesh's proxies (docs/security.md).
    assert mesh["meshConfig"]["pathNormalization"] == {"normalization": "MERGE_SLASHES"}
    # The mesh reaches only probes and /metrics on the admin port, nothing on diagnostics.
    deny = yaml.safe_load((DEPLOY / "istio/admin-authorizationpolicy.yaml").read_text())
    assert deny["spec"]["action"] == "DENY" and deny["spec"]["selector"] == ap["spec"]["selector"]
    assert deny["spec"]["rules"] == [
        {"to": [{"operation": {"ports": ["9090"], "notPaths": ["/healthz", "/readyz", "/metrics"]}}]},
        {"to": [{"operation": {"ports": ["9092"]}}]},
    ]
    # The chart's Istio defaults are the same provider.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["istio"]["provider"]["name"] == provider["name"]
    assert values["istio"]["provider"]["service"] == grpc["service"]
    assert values["grpc"]["port"] == grpc["port"]


def test_istio_sidecar_patch_is_a_restricted_portcullis_container():
    patch = yaml.safe_load((DEPLOY / "istio/portcullis-sidecar-patch.yaml").read_text())
    spec = pod_spec(patch)
    spec.setdefault("securityContext", {})
    assert_restricted(spec, "portcullis-sidecar-patch.yaml")
    pc = container(spec, "portcullis")
    assert pc["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pc["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mesh = yaml.safe_load((DEPLOY / "istio/meshconfig.yaml").read_text())
    assert named_port(pc, "grpc") == mesh["meshConfig"]["extensionProviders"][0]["envoyExtAuthzGrpc"]["port"]


# kustomize --------------------------------------------------------------------------------------


def kustomize(overlay: str):
    kubectl = kubectl_bin()
    if not kubectl:
        pytest.skip("kubectl is not installed: cannot render deploy/kustomize (tests/chart/run.sh installs it)")
    return parse_docs(run([kubectl, "kustomize", str(DEPLOY / "kustomize/overlays" / overlay)]).stdout)


def test_both_overlays_exist():
    assert set(OVERLAYS) == {"envoy", "istio"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_valid_restricted_objects(overlay):
    rendered = kustomize(overlay)
    for obj in rendered.docs:
        if obj["kind"] not in CRD_KINDS:
            validate_k8s(obj)
    (dep,) = rendered.of_kind("Deployment")
    spec = pod_spec(dep)
    assert_restricted(spec, f"overlay {overlay}")
    pc = container(spec, "portcullis")
    assert pc["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pc["readinessProbe"]["httpGet"]["path"] == "/readyz"
    cfg_cm = next(c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].startswith("portcullis-config"))
    cfg = yaml.safe_load(cfg_cm["data"]["config.yaml"])
    assert named_port(pc, "admin") == hostport(cfg["listen"]["admin"])[1]
    # Probes and scrapes on the pod IP; /policy on loopback only, and not advertised.
    assert hostport(cfg["listen"]["admin"])[0] == "0.0.0.0"
    dhost, dport = hostport(cfg["listen"]["diagnostics"])
    assert dhost == "127.0.0.1" and dport not in [p["containerPort"] for p in pc["ports"]]
    # Every ConfigMap the pod mounts is rendered (kustomize rewrote the hashed names).
    names = {c["metadata"]["name"] for c in rendered.of_kind("ConfigMap")}
    assert {v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v} <= names


def test_envoy_overlay_wires_the_socket():
    rendered = kustomize("envoy")
    (dep,) = rendered.of_kind("Deployment")
    spec = pod_spec(dep)
    envoy_cm = next(c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].startswith("envoy"))
    envoy = yaml.safe_load(envoy_cm["data"]["envoy.yaml"])
    assert envoy == load_deploy_envoy()
    cfg_cm = next(c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].startswith("portcullis-config"))
    cfg = yaml.safe_load(cfg_cm["data"]["config.yaml"])
    sock = portcullis_cluster_address(envoy)["pipe"]["path"]
    assert cfg["listen"]["unix"] == sock and cfg["listen"]["grpc"] is None
    pc, ec = container(spec, "portcullis"), container(spec, "envoy")
    assert mount_dir_of(spec, pc, sock) == mount_dir_of(spec, ec, sock) is not None
    assert mount_dir_of(spec, pc, sock)[0] == str(PurePosixPath(sock).parent)
    assert not any(p.get("name") == "grpc" for p in pc["ports"])
    (svc,) = rendered.of_kind("Service")
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert named_port(ec, "http") == envoy["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    # Same Envoy release as the chart (and as the tests run).
    assert ec["image"] == container(pod_spec(render().deployment()), "envoy")["image"] == "envoyproxy/envoy:v1.40.0"
    # Policies: no hash suffix, so kubelet updates them in place and portcullis reloads.
    assert "portcullis-policies" in {c["metadata"]["name"] for c in rendered.of_kind("ConfigMap")}


def test_istio_overlay_wires_the_provider():
    rendered = kustomize("istio")
    (dep,) = rendered.of_kind("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["sidecar.istio.io/inject"] == "true"
    spec = pod_spec(dep)
    assert [c["name"] for c in all_containers(spec)] == ["app", "portcullis"]
    cfg_cm = next(c for c in rendered.of_kind("ConfigMap") if c["metadata"]["name"].startswith("portcullis-config"))
    cfg = yaml.safe_load(cfg_cm["data"]["config.yaml"])
    host, port = hostport(cfg["listen"]["grpc"])
    assert host == "127.0.0.1" and cfg["listen"]["unix"] is None
    (se,) = rendered.of_kind("ServiceEntry")
    (ap,) = [a for a in rendered.of_kind("AuthorizationPolicy") if a["spec"]["action"] == "CUSTOM"]
    (deny,) = [a for a in rendered.of_kind("AuthorizationPolicy") if a["spec"]["action"] == "DENY"]
    assert se["spec"]["ports"][0]["number"] == port == named_port(container(spec, "portcullis"), "grpc")
    assert deny["spec"]["selector"] == ap["spec"]["selector"]
    (admin_rule, diag_rule) = deny["spec"]["rules"]
    assert admin_rule["to"][0]["operation"]["ports"] == [str(hostport(cfg["listen"]["admin"])[1])]
    assert diag_rule["to"][0]["operation"]["ports"] == [str(hostport(cfg["listen"]["diagnostics"])[1])]
    assert ap["spec"]["selector"]["matchLabels"].items() <= labels.items()
    app_port = named_port(container(spec, "app"), "app")
    assert ap["spec"]["rules"] == [{"to": [{"operation": {"ports": [str(app_port)]}}]}]


# Dockerfile -------------------------------------------------------------------------------------


def test_dockerfile_is_multistage_nonroot_and_shell_free():
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", text, flags=re.M | re.I)
    assert len(stages) >= 2, "multi-stage build expected"
    builder, final = stages[0][0], stages[-1][0]
    m = re.match(r"rust:(\d+)\.(\d+)", builder)
    assert m and (int(m.group(1)), int(m.group(2))) >= (1, 89), builder
    assert final.startswith("gcr.io/distroless/cc-debian12") and final.endswith(":nonroot"), final
    # The image ships the `dist` profile (release + fat LTO), locked, and installs that build.
    assert "cargo build --profile dist --locked" in text
    assert "target/dist/portcullis" in text and "target/release/" not in text
    dist = re.search(r"^\[profile\.dist\]\n((?:[^\[\n].*\n|\n)*)", (REPO / "Cargo.toml").read_text(), flags=re.M)
    assert dist, "Cargo.toml has no [profile.dist]"
    assert re.search(r'^inherits = "release"$', dist.group(1), flags=re.M), dist.group(1)
    assert re.search(r'^lto = "fat"$', dist.group(1), flags=re.M), dist.group(1)
    final_stage = text[text.rindex("FROM") :]
    assert re.search(r"^USER\s+65532(:65532)?\s*$", final_stage, flags=re.M)
    assert "/usr/local/bin/portcullis" in final_stage
    entry = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", final_stage, flags=re.M)
    assert entry and json.loads(entry.group(1)) == ["/usr/local/bin/portcullis"], "exec-form entrypoint, no shell"
    assert not re.search(r"^RUN\b", final_stage, flags=re.M), "the final image has no shell to RUN with"
    ignore = (REPO / ".dockerignore").read_text().split()
    assert "target" in ignore or "/target" in ignore or "target/" in ignore


# Example policies -------------------------------------------------------------------------------


def _policy_text(d: Path) -> tuple[str, str, list]:
    policies = "\n".join(p.read_text() for p in sorted(d.glob("*.cedar")))
    (schema,) = [p.read_text() for p in d.glob("*.cedarschema")]
    entities = [e for p in sorted(d.glob("*.entities.json")) for e in json.loads(p.read_text())]
    return policies, schema, entities


def test_chart_schema_is_the_one_portcullis_builds_requests_for():
    """portcullis checks every request against the schema (src/authz), so the chart's example
    schema must be the default model, examples/demo/policies/portcullis.cedarschema."""
    demo = REPO / "examples/demo/policies/portcullis.cedarschema"
    if not demo.exists():
        pytest.skip("examples/demo/policies/portcullis.cedarschema is not in this tree")
    assert (CHART / "policies/portcullis.cedarschema").read_text() == demo.read_text(), (
        "copy examples/demo/policies/portcullis.cedarschema to charts/portcullis/policies/ "
        "and deploy/kustomize/base/policies/"
    )


def test_chart_policies_validate_against_their_schema():
    import cedarpy

    policies, schema, _ = _policy_text(CHART / "policies")
    result = cedarpy.validate_policies(policies, schema)
    assert result.validation_passed, result.errors
    broken = policies.replace("resource.path like", "resource.paht like", 1)
    assert not cedarpy.validate_policies(broken, schema).validation_passed


def test_helm_test_cases_match_what_the_policies_decide():
    """The decisions `helm test` expects are the ones the shipped policies give, with the request
    built the way portcullis builds it (src/authz: Anonymous::"anonymous", Route::"<host><path>")."""
    import cedarpy

    policies, schema, entities = _policy_text(CHART / "policies")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for case in values["tests"]["cases"]:
        req = case["request"]
        assert not req.get("headers"), "these cases are anonymous"
        route = f'{req["host"]}{req["path"]}'
        ents = entities + [
            {"uid": {"type": "Anonymous", "id": "anonymous"}, "attrs": {}, "parents": []},
            {
                "uid": {"type": "Route", "id": route},
                "attrs": {"host": req["host"], "path": req["path"], "service": req["host"].split(".")[0]},
                "parents": [],
            },
        ]
        context = {
            "method": req["method"],
            "path": req["path"],
            "query": "",
            "host": req["host"],
            "scheme": "http",
            "request_id": "",
            "authn": [],
            "time": 0,
        }
        request = {
            "principal": 'Anonymous::"anonymous"',
            "action": f'Action::"{req["method"]}"',
            "resource": f"Route::{json.dumps(route)}",
            "context": context,
        }
        decision = cedarpy.is_authorized(request, policies, ents, schema=schema).decision
        assert decision.value.lower() == case["expect"], f"{case['name']}: {decision}"
