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
