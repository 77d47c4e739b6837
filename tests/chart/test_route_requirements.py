"""Per-route authentication requirements in deploy/ and the chart: Envoy routes and the Istio
EnvoyFilter carry the `portcullis.*` context extensions (ExtAuthzPerRoute.check_settings), only
for issuers the config trusts. Envoy itself validates them in test_envoy_validate.py."""

from __future__ import annotations

import pytest
import yaml

from chartkit import CRD_KINDS, DEPLOY, DEPLOY_EXAMPLE_SETS, EXAMPLE_ISSUER, render, render_refused
from envoycheck import load_deploy_envoy, strict_bootstrap

PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"
TWO_ROUTES = (
    "issuers[0].issuer=https://a.example.com",
    "issuers[1].issuer=https://b.example.com",
    "groupNamespace=per_issuer",
    'json:routeRequirements=[{"prefix": "/account/", "require": "credential", '
    '"issuers": ["https://a.example.com", "https://b.example.com"], "credentials": ["bearer", "api_key"]}, '
    '{"prefix": "/partner/", "audiences": ["partner-api", "x"]}]',
)


def routes(envoy: dict) -> list[dict]:
    hcm = envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (vh,) = hcm["route_config"]["virtual_hosts"]
    return vh["routes"]


def extensions(route: dict) -> dict | None:
    per = route.get("typed_per_filter_config", {}).get("envoy.filters.http.ext_authz")
    if per is None:
        return None
    assert per["@type"] == PER_ROUTE
    return per["check_settings"]["context_extensions"]


def test_deploy_envoy_example_route_requires_a_configured_issuer():
    config = load_deploy_envoy()
    strict_bootstrap(config)
    account, catch_all = routes(config)
    assert account["match"] == {"prefix": "/account/"} and catch_all["match"] == {"prefix": "/"}
    assert extensions(account) == {
        "portcullis.require": "credential",
        "portcullis.issuers": EXAMPLE_ISSUER,
        "portcullis.credentials": "bearer",
    }
    assert extensions(catch_all) is None
    # The config this file goes with trusts that issuer, or the route would be refused (500).
    overlay_cfg = yaml.safe_load((DEPLOY / "kustomize/overlays/envoy/config.yaml").read_text())
    assert EXAMPLE_ISSUER in [i["issuer"] for i in overlay_cfg["authn"]["issuers"]]


def test_deploy_istio_envoyfilter_adds_the_same_route_to_the_app_port():
    ef = yaml.safe_load((DEPLOY / "istio/route-requirements-envoyfilter.yaml").read_text())
    ap = yaml.safe_load((DEPLOY / "istio/authorizationpolicy.yaml").read_text())
    assert ef["apiVersion"] == "networking.istio.io/v1alpha3" and ef["kind"] == "EnvoyFilter"
    assert ef["spec"]["workloadSelector"]["labels"] == ap["spec"]["selector"]["matchLabels"]
    (patch,) = ef["spec"]["configPatches"]
    (app_port,) = ap["spec"]["rules"][0]["to"][0]["operation"]["ports"]
    assert patch["applyTo"] == "HTTP_ROUTE"
    assert patch["match"]["context"] == "SIDECAR_INBOUND"
    assert patch["match"]["routeConfiguration"] == {"portNumber": int(app_port), "vhost": {"route": {"name": "default"}}}
    assert patch["patch"]["operation"] == "INSERT_BEFORE"
    route = patch["patch"]["value"]
    assert route["route"]["cluster"] == f"inbound|{app_port}||"
    account = routes(load_deploy_envoy())[0]
    assert route["match"] == account["match"] and extensions(route) == extensions(account)
    # An example to adapt, not applied by the overlay (its issuer must be configured first).
    kust = yaml.safe_load((DEPLOY / "istio/kustomization.yaml").read_text())
    assert "route-requirements-envoyfilter.yaml" not in kust["resources"]


def test_chart_renders_no_requirement_by_default():
    assert all(extensions(r) is None for r in routes(render().envoy_config()))
    assert not render("istio").of_kind("EnvoyFilter")


def test_chart_route_requirements_become_envoy_routes_before_the_catch_all():
    envoy = render("default", *TWO_ROUTES).envoy_config()
    strict_bootstrap(envoy)
    account, partner, catch_all = routes(envoy)
    assert extensions(account) == {
        "portcullis.require": "credential",
        "portcullis.issuers": "https://a.example.com https://b.example.com",
        "portcullis.credentials": "bearer api_key",
    }
    assert extensions(partner) == {"portcullis.audiences": "partner-api x"}
    assert partner["match"] == {"prefix": "/partner/"} and partner["route"]["cluster"] == "app"
    assert catch_all["match"] == {"prefix": "/"} and extensions(catch_all) is None


def test_chart_route_requirements_become_an_istio_envoyfilter():
    rendered = render("istio", *TWO_ROUTES)
    assert "EnvoyFilter" in CRD_KINDS
    ef = rendered.one("EnvoyFilter", "-route-requirements")
    ap = rendered.one("AuthorizationPolicy", "-portcullis")
    assert ef["spec"]["workloadSelector"]["labels"] == ap["spec"]["selector"]["matchLabels"]
    (app_port,) = ap["spec"]["rules"][0]["to"][0]["operation"]["ports"]
    patches = ef["spec"]["configPatches"]
    assert [p["patch"]["value"]["match"]["prefix"] for p in patches] == ["/account/", "/partner/"]
    for p in patches:
        assert p["match"]["routeConfiguration"]["portNumber"] == int(app_port)
        assert p["patch"]["operation"] == "INSERT_BEFORE"
        assert p["patch"]["value"]["route"]["cluster"] == f"inbound|{app_port}||"
    assert extensions(patches[1]["patch"]["value"]) == {"portcullis.audiences": "partner-api x"}
    # Envoy mode's routes and Istio's patches carry the same extensions.
    envoy_routes = routes(render("default", *TWO_ROUTES).envoy_config())
    assert [extensions(p["patch"]["value"]) for p in patches] == [extensions(r) for r in envoy_routes[:2]]


@pytest.mark.parametrize(
    "sets,words",
    [
        # A route may only narrow the configured issuers.
        (('json:routeRequirements=[{"prefix": "/a/", "issuers": ["https://nope.example.com"]}]',), "not configured"),
        (("mode=istio", "transport=tcp", 'json:routeRequirements=[{"prefix": "/a/", "issuers": ["https://x"]}]'),
         "not configured"),
        (('json:routeRequirements=[{"prefix": "/a/"}]',), "no requirement"),
        (('json:routeRequirements=[{"prefix": "/a/", "credentials": ["mtls"]}]',), "credentials"),
        (('json:routeRequirements=[{"prefix": "/a/", "require": "yes"}]',), "require"),
        (('json:routeRequirements=[{"prefix": "/a/", "audiences": ["a,b"]}]',), "audiences"),
        (('json:routeRequirements=[{"prefix": "a/", "require": "credential"}]',), "prefix"),
        (('json:routeRequirements=[{"prefix": "/a/", "requires": "credential"}]',), "requires"),
    ],
)
def test_chart_refuses_route_requirements_portcullis_would_refuse(sets, words):
    args = []
    for s in sets:
        args += ["--set-json", s.removeprefix("json:")] if s.startswith("json:") else ["--set", s]
    err = render_refused(*args)
    assert words in err, err

