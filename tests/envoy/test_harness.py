"""The harness runs the shipped bootstrap: only addresses differ from deploy/envoy.yaml."""

from __future__ import annotations

import copy

import yaml

from harness import envoy_config, ext_authz_config, shipped_envoy_yaml


def _without_addresses(config: dict) -> dict:
    c = copy.deepcopy(config)
    c["admin"].pop("address")
    for listener in c["static_resources"]["listeners"]:
        listener.pop("address")
    for cluster in c["static_resources"]["clusters"]:
        for group in cluster["load_assignment"]["endpoints"]:
            for ep in group["lb_endpoints"]:
                ep["endpoint"].pop("address")
    return c


def test_only_addresses_are_substituted():
    base = yaml.safe_load(shipped_envoy_yaml().read_text())
    for kw in ({"authz_socket": "/tmp/x.sock"}, {"authz_port": 1234}):
        got = envoy_config(base, listen_port=1, admin_port=2, app_port=3, **kw)
        assert _without_addresses(got) == _without_addresses(base)
        assert got["static_resources"]["listeners"][0]["address"]["socket_address"] == {
            "address": "127.0.0.1",
            "port_value": 1,
        }
        cluster = ext_authz_config(got)["grpc_service"]["envoy_grpc"]["cluster_name"]
        (c,) = [c for c in got["static_resources"]["clusters"] if c["name"] == cluster]
        addr = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        assert addr == ({"pipe": {"path": "/tmp/x.sock"}} if "authz_socket" in kw else
                        {"socket_address": {"address": "127.0.0.1", "port_value": 1234}})
    # The shipped file itself is untouched.
    assert yaml.safe_load(shipped_envoy_yaml().read_text()) == base


def test_allowed_headers_are_completed_for_the_portcullis_config(tmp_path):
    from harness import demo_config

    base = yaml.safe_load(shipped_envoy_yaml().read_text())
    shipped = ext_authz_config(base).get("allowed_headers", {}).get("patterns", [])
    pc = demo_config(tmp_path)
    pc["authn"]["issuers"][0]["from"] = [{"header": "X-Token", "prefix": "Bearer "}, {"cookie": "session"}]
    got = envoy_config(base, listen_port=1, admin_port=2, app_port=3, authz_port=4, portcullis=pc)
    patterns = ext_authz_config(got)["allowed_headers"]["patterns"]
    assert patterns[: len(shipped)] == shipped, "the shipped patterns are kept, in order"
    exact = {p.get("exact") for p in patterns}
    assert {"x-token", "cookie", "x-api-key", "x-tenant", "x-request-id", "traceparent", "b3"} <= exact
    # Everything else is as shipped.
    ext_authz_config(got).pop("allowed_headers")
    ext_authz_config(base).pop("allowed_headers", None)
    assert _without_addresses(got) == _without_addresses(base)
