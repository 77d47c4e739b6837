"""Quotas across replicas: deploy/envoy-ratelimit.yaml and the chart's envoy.globalRateLimit. The
rate limit filter runs after ext_authz and builds every descriptor from portcullis' verified
metadata (namespace envoy.filters.http.ext_authz, DYNAMIC), never from request headers. Envoy
itself validates both in test_envoy_validate.py; tests/envoy/test_ratelimit.py runs them."""

from __future__ import annotations

import pytest
import yaml

from chartkit import DEPLOY, render, render_refused
from envoycheck import cluster, http_filters, strict_bootstrap

RATELIMIT_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit"
METADATA_KEYS = {"principal", "issuer", "subject", "client", "spiffe_id", "tenant"}


def load_ratelimit_envoy() -> dict:
    return yaml.safe_load((DEPLOY / "envoy-ratelimit.yaml").read_text())


def ratelimit_filter(config: dict) -> dict:
    (f,) = [f for f in http_filters(config) if f["name"] == "envoy.filters.http.ratelimit"]
    assert f["typed_config"]["@type"] == RATELIMIT_TYPE
    return f["typed_config"]


def descriptors(config: dict) -> list[list[str]]:
    """Each rate_limits entry of the virtual host as the metadata keys it reads; fails on any
    other kind of action (a request header would let the client choose its own bucket)."""
    (listener,) = config["static_resources"]["listeners"]
    (hcm,) = [f["typed_config"] for c in listener["filter_chains"] for f in c["filters"]]
    (vh,) = hcm["route_config"]["virtual_hosts"]
    for route in vh["routes"]:
        assert "rate_limits" not in route.get("route", {}), "route-level rate_limits would replace the host's"
    out = []
    for entry in vh["rate_limits"]:
        keys = []
        for action in entry["actions"]:
            assert set(action) == {"metadata"}, action
            md = action["metadata"]
            assert md["source"] == "DYNAMIC", md
            assert md["metadata_key"]["key"] == "envoy.filters.http.ext_authz", md
            (segment,) = md["metadata_key"]["path"]
            assert segment["key"] == md["descriptor_key"] and segment["key"] in METADATA_KEYS, md
            assert "default_value" not in md, "a default would merge unknown callers into one bucket"
            keys.append(segment["key"])
        out.append(keys)
    return out


def test_deploy_ratelimit_yaml_uses_only_envoy_v3_fields():
    strict_bootstrap(load_ratelimit_envoy())


def test_deploy_ratelimit_yaml_counts_verified_callers_after_ext_authz():
    config = load_ratelimit_envoy()
    names = [f["name"] for f in http_filters(config)]
    assert names == ["envoy.filters.http.ext_authz", "envoy.filters.http.ratelimit", "envoy.filters.http.router"]
    rl = ratelimit_filter(config)
    assert rl["domain"] == "portcullis"
    assert rl["failure_mode_deny"] is False  # explained in the file and docs/operations.md
    assert rl["rate_limit_service"]["transport_api_version"] == "V3"
    assert rl["rate_limit_service"]["grpc_service"]["envoy_grpc"]["cluster_name"] == "ratelimit"
    assert descriptors(config) == [["principal"], ["tenant"]]
    # gRPC: the cluster speaks HTTP/2.
    opts = cluster(config, "ratelimit")["typed_extension_protocol_options"]
    assert "http2_protocol_options" in next(iter(opts.values()))["explicit_http_config"]


def test_deploy_ratelimit_yaml_is_deploy_envoy_yaml_plus_the_rate_limit():
    # Everything else (ext_authz, path normalization, underscore headers) stays as recommended.
    config = load_ratelimit_envoy()
    base = yaml.safe_load((DEPLOY / "envoy.yaml").read_text())
    hcm = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.ratelimit"]
    del hcm["route_config"]["virtual_hosts"][0]["rate_limits"]
    config["static_resources"]["clusters"] = [c for c in config["static_resources"]["clusters"] if c["name"] != "ratelimit"]
    assert config == base


def test_chart_global_rate_limit_is_off_by_default():
    config = render().envoy_config()
    assert "envoy.filters.http.ratelimit" not in [f["name"] for f in http_filters(config)]
    assert "ratelimit" not in [c["name"] for c in config["static_resources"]["clusters"]]


def test_chart_with_global_rate_limit_matches_deploy_envoy_ratelimit_yaml():
    from chartkit import DEPLOY_EXAMPLE_SETS

    # deploy/envoy-ratelimit.yaml is deploy/envoy.yaml plus the rate limit: the same example values.
    rendered = render("default", *DEPLOY_EXAMPLE_SETS, "envoy.globalRateLimit.enabled=true")
    assert rendered.envoy_config() == load_ratelimit_envoy(), (
        "charts/portcullis/templates/envoy-configmap.yaml (globalRateLimit.enabled) and deploy/envoy-ratelimit.yaml differ"
    )


def test_chart_global_rate_limit_values_reach_envoy():
    config = render(
        "envoy-tcp",
        "envoy.globalRateLimit.enabled=true",
        "envoy.globalRateLimit.service.address=limitador.kuadrant-system.svc",
        "envoy.globalRateLimit.service.port=8081",
        "envoy.globalRateLimit.domain=shop",
        "envoy.globalRateLimit.timeout=0.05s",
        "envoy.globalRateLimit.failureModeDeny=true",
        'json:envoy.globalRateLimit.descriptors=[["tenant","subject"],["client"],["spiffe_id"]]',
    ).envoy_config()
    strict_bootstrap(config)
    rl = ratelimit_filter(config)
    assert (rl["domain"], rl["timeout"], rl["failure_mode_deny"]) == ("shop", "0.05s", True)
    assert descriptors(config) == [["tenant", "subject"], ["client"], ["spiffe_id"]]
    (ep,) = cluster(config, "ratelimit")["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert ep["endpoint"]["address"]["socket_address"] == {"address": "limitador.kuadrant-system.svc", "port_value": 8081}


@pytest.mark.parametrize(
    "value",
    [
        'json:envoy.globalRateLimit.descriptors=[["x-user-id"]]',  # not a verified metadata key
        'json:envoy.globalRateLimit.descriptors=[]',
        'json:envoy.globalRateLimit.descriptors=[[]]',
        "envoy.globalRateLimit.domain=a b",
        "envoy.globalRateLimit.service.address=http://ratelimit:8081",
        "envoy.globalRateLimit.failureModeDeny=maybe",
    ],
)
def test_chart_refuses_bad_global_rate_limit_values(value):
    flag = "--set-json" if value.startswith("json:") else "--set"
    err = render_refused("--set", "envoy.globalRateLimit.enabled=true", flag, value.removeprefix("json:"))
    assert "globalRateLimit" in err, err
