"""Envoy bootstrap checks: parse with Envoy's own v3 API types (envoy-data-plane) and find the
ext_authz pieces."""

from __future__ import annotations

import importlib

import yaml

from chartkit import DEPLOY

EXT_AUTHZ_TYPE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz"


def _type_urls(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "@type":
                yield v
            else:
                yield from _type_urls(v)
    elif isinstance(node, list):
        for v in node:
            yield from _type_urls(v)


def strict_bootstrap(config: dict):
    """Parses the config as envoy.config.bootstrap.v3.Bootstrap, including every typed_config
    (google.protobuf.Any) by its @type. An unknown field, enum value or type raises."""
    from envoy_data_plane.envoy.config.bootstrap.v3 import Bootstrap

    for url in set(_type_urls(config)):
        package = url.split("/", 1)[1].rsplit(".", 1)[0]
        importlib.import_module("envoy_data_plane." + package)  # registers the message types
    return Bootstrap.from_dict(config)


def load_deploy_envoy() -> dict:
    return yaml.safe_load((DEPLOY / "envoy.yaml").read_text())


def http_filters(config: dict) -> list[dict]:
    out = []
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                if f["name"] == "envoy.filters.network.http_connection_manager":
                    out.extend(f["typed_config"]["http_filters"])
    return out


def ext_authz_filter(config: dict) -> dict:
    (f,) = [f for f in http_filters(config) if f["name"] == "envoy.filters.http.ext_authz"]
    assert f["typed_config"]["@type"] == EXT_AUTHZ_TYPE
    return f["typed_config"]


def cluster(config: dict, name: str) -> dict:
    (c,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    return c


def portcullis_cluster_address(config: dict) -> dict:
    name = ext_authz_filter(config)["grpc_service"]["envoy_grpc"]["cluster_name"]
    c = cluster(config, name)
    (ep,) = [e for group in c["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    return ep["endpoint"]["address"]
