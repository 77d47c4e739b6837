"""A real Envoy in front of an echo upstream, with portcullis beside it: the pieces the end-to-end
tests (tests/envoy) and scripts/demo-envoy.sh start. Everything binds loopback on free ports and every
wait is bounded.

Envoy runs the shipped bootstrap (deploy/envoy.yaml, or $PORTCULLIS_ENVOY_YAML) with only addresses
changed: the listener, admin, the portcullis cluster (Unix socket or TCP) and the app cluster; and the
ext_authz `allowed_headers` completed for the portcullis config in use, by the rule deploy/envoy.yaml
documents. The YAML is parsed and those fields are rewritten; everything else is kept as shipped."""

from __future__ import annotations

import copy
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo"
# sha256 of "demo-batch-key" (examples/demo/config.yaml)
DEMO_API_KEY = "demo-batch-key"
DEMO_API_KEY_SHA256 = "74045098110de75482c9e34a190dab5a1dd308be1ed6e16fee2dc05e01152d74"
EXT_AUTHZ = "envoy.filters.http.ext_authz"
HCM = "envoy.filters.network.http_connection_manager"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, cond, timeout: float = 30.0, proc: subprocess.Popen | None = None, log: Path | None = None):
    """Polls `cond` until it returns a truthy value; fails after `timeout` seconds or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{what}: process exited with {proc.returncode}\n{tail}")
        try:
            got = cond()
            if got:
                return got
        except OSError:
            pass
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
            raise TimeoutError(f"{what}: not within {timeout}s\n{tail}")
        time.sleep(0.05)


def http_get_status(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def stop_process(proc: subprocess.Popen | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
        proc.terminate()
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


# Echo upstream -------------------------------------------------------------------------------


class EchoUpstream:
    """HTTP server on 127.0.0.1 that answers every request with the headers it received, as JSON:
    {"method", "path", "headers": [[name, value], ...]}. Keeps every request it saw."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _echo(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                if length:
                    self.rfile.read(min(length, 1 << 20))
                seen = {"method": self.command, "path": self.path, "headers": [[k, v] for k, v in self.headers.items()]}
                with upstream._lock:
                    upstream.seen.append(seen)
                body = json.dumps(seen).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _echo

            def log_message(self, *args) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "EchoUpstream":
        self._thread.start()
        return self

    def count(self) -> int:
        with self._lock:
            return len(self.seen)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# portcullis ----------------------------------------------------------------------------------


def demo_config(work: Path, *, rate_limit: dict | None = None, policy_dir: Path | None = None) -> dict:
    """A demo-like portcullis config: the demo issuer (jwks_file), API key, context header."""
    cfg: dict = {
        "listen": {
            "grpc": f"127.0.0.1:{free_port()}",
            "unix": str(work / "authz.sock"),
            "admin": f"127.0.0.1:{free_port()}",
            "drain_timeout": "1s",
            "drain_delay": "0s",  # tests stop stacks often; the shutdown suite covers the delay
        },
        "log": {"format": "json", "level": "info"},
        "policy": {"dir": str(policy_dir or work / "policies"), "on_empty": "deny_all"},
        "authn": {
            "issuers": [
                {
                    "issuer": "https://demo.portcullis.dev",
                    "jwks_file": str(DEMO / "jwks.json"),
                    "audiences": ["demo-api"],
                    "algorithms": ["RS256"],
                    "claims_to_headers": {"email": "x-portcullis-email"},
                }
            ],
            "peer": {"trust_domains": ["cluster.local"]},
            "api_keys": {"header": "x-api-key", "keys": [{"client": "batch", "sha256": DEMO_API_KEY_SHA256}]},
        },
        "headers": {"policy_ids": "x-portcullis-policy"},
        "cedar": {"context_headers": ["x-tenant"]},
    }
    if rate_limit:
        cfg["rate_limit"] = rate_limit
    return cfg


@dataclass
class Portcullis:
    bin: Path
    work: Path
    config: dict
    proc: subprocess.Popen | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.work / "portcullis.log"

    @property
    def admin_port(self) -> int:
        return int(self.config["listen"]["admin"].rsplit(":", 1)[1])

    @property
    def grpc_port(self) -> int:
        return int(self.config["listen"]["grpc"].rsplit(":", 1)[1])

    @property
    def socket_path(self) -> str:
        return self.config["listen"]["unix"]

    def start(self, *, ready: bool = True) -> "Portcullis":
        # The loopback diagnostics listener has a fixed default port: give it a free one so
        # parallel stacks do not collide.
        cfg = copy.deepcopy(self.config)
        cfg["listen"]["diagnostics"] = f"127.0.0.1:{free_port()}"
        path = self.work / "portcullis.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(self.bin), "serve", "--config", str(path)], stdout=out, stderr=subprocess.STDOUT
            )
        # /healthz answers once the listeners are up; /readyz only with a policy snapshot.
        probe = "/readyz" if ready else "/healthz"
        wait_for(
            "portcullis " + probe,
            lambda: http_get_status(self.admin_port, probe) == 200 and Path(self.socket_path).exists(),
            proc=self.proc,
            log=self.log,
        )
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        # SIGSTOP takes effect asynchronously: wait until every thread is stopped, or a thread
        # already running could still answer.
        tasks = Path(f"/proc/{self.proc.pid}/task")

        def all_stopped() -> bool:
            states = [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks.iterdir()]
            return all(st in ("T", "t") for st in states)

        wait_for("portcullis stopped", all_stopped, timeout=10)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


# Envoy ---------------------------------------------------------------------------------------


def shipped_envoy_yaml() -> Path:
    return Path(os.environ.get("PORTCULLIS_ENVOY_YAML") or REPO / "deploy" / "envoy.yaml")


def _hcms(config: dict) -> list[dict]:
    return [
        f["typed_config"]
        for listener in config["static_resources"]["listeners"]
        for chain in listener["filter_chains"]
        for f in chain["filters"]
        if f["name"] == HCM
    ]


def ext_authz_config(config: dict) -> dict:
    (f,) = [f for hcm in _hcms(config) for f in hcm["http_filters"] if f["name"] == EXT_AUTHZ]
    return f["typed_config"]


def _set_cluster_address(config: dict, name: str, address: dict) -> None:
    (c,) = [c for c in config["static_resources"]["clusters"] if c["name"] == name]
    eps = [e for group in c["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
    assert len(eps) == 1, f"cluster {name}: expected one endpoint, got {len(eps)}"
    eps[0]["endpoint"]["address"] = address


def set_cluster_address(config: dict, name: str, address: dict) -> None:
    """Points the one endpoint of cluster `name` at `address` (e.g. a test's own service)."""
    _set_cluster_address(config, name, address)


TRACING_HEADERS = ["x-request-id", "traceparent", "tracestate", "x-b3-traceid", "x-b3-spanid",
                   "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3"]


def allowed_headers_for(pc: dict) -> list[str]:
    """The ext_authz `allowed_headers` a portcullis config needs, by the rule deploy/envoy.yaml and
    the chart document: every issuer's `from` header (default authorization) and `cookie` when one
    reads a cookie; the API-key header; authorization with strip_foreign_credentials; every
    cedar.context_headers entry; content-type; x-request-id and the tracing headers."""
    names: list[str] = []
    authn = pc.get("authn", {})
    for issuer in authn.get("issuers", []):
        for src in issuer.get("from") or [{"header": "authorization"}]:
            names.append("cookie" if "cookie" in src else src["header"])
    if authn.get("api_keys", {}).get("keys"):
        names.append(authn["api_keys"].get("header", "x-api-key"))
    if pc.get("headers", {}).get("strip_foreign_credentials"):
        names.append("authorization")
    names += pc.get("cedar", {}).get("context_headers", [])
    names += ["content-type", *TRACING_HEADERS]
    return list(dict.fromkeys(n.lower() for n in names))


def envoy_config(
    base: dict,
    *,
    listen_port: int,
    admin_port: int,
    app_port: int,
    authz_socket: str | None = None,
    authz_port: int | None = None,
    portcullis: dict | None = None,
) -> dict:
    """The shipped bootstrap with loopback addresses. With `portcullis` (its config), the ext_authz
    `allowed_headers` also get what that config needs (allowed_headers_for); the shipped patterns
    are kept. Nothing else is changed."""
    config = copy.deepcopy(base)
    if portcullis is not None:
        patterns = ext_authz_config(config).setdefault("allowed_headers", {}).setdefault("patterns", [])
        have = {p.get("exact", "").lower() for p in patterns}
        patterns += [{"exact": h} for h in allowed_headers_for(portcullis) if h not in have]
    config["admin"]["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}
    (listener,) = config["static_resources"]["listeners"]
    listener["address"] = {"socket_address": {"address": "127.0.0.1", "port_value": listen_port}}

    authz_cluster = ext_authz_config(config)["grpc_service"]["envoy_grpc"]["cluster_name"]
    if authz_socket is not None:
        authz_addr = {"pipe": {"path": authz_socket}}
    else:
        authz_addr = {"socket_address": {"address": "127.0.0.1", "port_value": authz_port}}
    _set_cluster_address(config, authz_cluster, authz_addr)

    app_clusters = {
        r["route"]["cluster"]
        for hcm in _hcms(config)
        for vh in hcm["route_config"]["virtual_hosts"]
        for r in vh["routes"]
        if "route" in r and "cluster" in r["route"]
    }
    for name in app_clusters:
        _set_cluster_address(config, name, {"socket_address": {"address": "127.0.0.1", "port_value": app_port}})
    return config


EXT_AUTHZ_PER_ROUTE = "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute"


def ext_authz_route(prefix: str, context_extensions: dict[str, str], cluster: str = "app") -> dict:
    """A route whose ext_authz check carries per-route `context_extensions` (ExtAuthzPerRoute
    `check_settings`): Envoy, not the client, sets them from route config."""
    return {
        "match": {"prefix": prefix},
        "route": {"cluster": cluster, "timeout": "15s"},
        "typed_per_filter_config": {
            EXT_AUTHZ: {"@type": EXT_AUTHZ_PER_ROUTE, "check_settings": {"context_extensions": context_extensions}}
        },
    }


def add_routes(config: dict, routes: list[dict]) -> dict:
    """`routes` put first in every virtual host of a copy of `config` (before the catch-all)."""
    config = copy.deepcopy(config)
    for hcm in _hcms(config):
        for vh in hcm["route_config"]["virtual_hosts"]:
            vh["routes"] = copy.deepcopy(routes) + vh["routes"]
    return config


@dataclass
class Envoy:
    bin: str
    work: Path
    config: dict
    proc: subprocess.Popen | None = None

    @property
    def port(self) -> int:
        return self.config["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]

    @property
    def admin_port(self) -> int:
        return self.config["admin"]["address"]["socket_address"]["port_value"]

    @property
    def access_log_path(self) -> Path:
        return self.work / "envoy.stdout"  # the shipped config logs access to stdout

    @property
    def log(self) -> Path:
        return self.work / "envoy.log"

    def start(self) -> "Envoy":
        path = self.work / "envoy.yaml"
        path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        with open(self.access_log_path, "wb") as out, open(self.log, "wb") as err:
            self.proc = subprocess.Popen(
                [
                    self.bin,
                    "-c",
                    str(path),
                    "--disable-hot-restart",  # no shared memory: several Envoys may run at once
                    "--concurrency",
                    "1",
                    "-l",
                    "warning",
                    "--file-flush-interval-msec",
                    "50",  # access log lines appear promptly for the tests
                ],
                stdout=out,
                stderr=err,
            )
        wait_for("envoy /ready", lambda: http_get_status(self.admin_port, "/ready") == 200, proc=self.proc, log=self.log)
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def access_log(self) -> list[dict]:
        out = []
        for line in self.access_log_path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
        return out


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        vals = [v for k, v in self.headers if k.lower() == name.lower()]
        return vals[0] if vals else None

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, headers: list[tuple[str, str]] | dict | None = None,
            body: bytes | None = None, timeout: float = 10.0) -> Response:
    """One HTTP/1.1 request, sent as given (the path is not re-encoded, header names not changed)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if not any(k.lower() == "host" for k, _ in items):
            conn.putheader("host", "app.example.com")
        for k, v in items:
            conn.putheader(k, v)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return Response(r.status, r.getheaders(), r.read())
    finally:
        conn.close()
