"""Helpers for the chart and deploy/ tests: run real helm and kubectl, parse what they render."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "portcullis"
DEPLOY = REPO / "deploy"
RELEASE = "shop"
NAMESPACE = "shop"
KUBE_VERSION = "1.35"

# Scenario name -> values file (None: the chart's defaults). Every file in charts/portcullis/ci
# is a documented scenario (docs/install.md) and is rendered, linted and validated.
SCENARIOS: dict[str, Path | None] = {"default": None} | {
    p.name.removesuffix("-values.yaml"): p for p in sorted((CHART / "ci").glob("*-values.yaml"))
}

# Kinds that Kubernetes' own schemas do not cover; their key fields are checked by hand.
CRD_KINDS = {"ServiceMonitor", "ServiceEntry", "AuthorizationPolicy", "EnvoyFilter"}


def _tool(env: str, name: str) -> str:
    path = os.environ.get(env) or shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found: run the tests through tests/chart/run.sh (it installs {name})")
    return path


def helm_bin() -> str:
    return _tool("PORTCULLIS_HELM", "helm")


def kubectl_bin() -> str | None:
    return os.environ.get("PORTCULLIS_KUBECTL") or shutil.which("kubectl")


def run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


@dataclass(frozen=True)
class Rendered:
    """The objects one `helm template` (or `kubectl kustomize`) produced."""

    docs: tuple[dict, ...]

    def of_kind(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name_suffix: str = "") -> dict:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, got {[d['metadata']['name'] for d in found]}"
        return found[0]

    def maybe(self, kind: str, name_suffix: str = "") -> dict | None:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(name_suffix)]
        return found[0] if found else None

    def configmap_file(self, name_suffix: str, key: str):
        return yaml.safe_load(self.one("ConfigMap", name_suffix)["data"][key])

    def portcullis_config(self) -> dict:
        return self.configmap_file("-config", "config.yaml")

    def envoy_config(self) -> dict | None:
        cm = self.maybe("ConfigMap", "-envoy")
        return yaml.safe_load(cm["data"]["envoy.yaml"]) if cm else None

    def deployment(self) -> dict | None:
        deps = self.of_kind("Deployment")
        assert len(deps) <= 1
        return deps[0] if deps else None

    def test_pod(self) -> dict | None:
        pods = [p for p in self.of_kind("Pod") if p["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
        return pods[0] if pods else None


def parse_docs(text: str) -> Rendered:
    return Rendered(tuple(d for d in yaml.safe_load_all(text) if d))


@functools.lru_cache(maxsize=None)
def _template(args: tuple[str, ...]) -> Rendered:
    proc = run([helm_bin(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args])
    return parse_docs(proc.stdout)


def render(scenario: str = "default", *sets: str) -> Rendered:
    """helm template for a scenario, plus overrides: "key=value" (--set) or "json:key=[...]" (--set-json)."""
    args: list[str] = []
    if SCENARIOS[scenario] is not None:
        args += ["--values", str(SCENARIOS[scenario])]
    for s in sets:
        args += ["--set-json", s.removeprefix("json:")] if s.startswith("json:") else ["--set", s]
    return _template(tuple(args))


def render_refused(*args: str) -> str:
    """Runs helm template with these args, requires it to fail, returns its error output."""
    proc = run([helm_bin(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args], check=False)
    assert proc.returncode != 0, f"helm template {' '.join(args)} was accepted but should be refused"
    return proc.stderr


def notes(scenario: str = "default", *sets: str) -> str:
    """NOTES.txt as `helm install` prints it (client-side dry run: no cluster needed)."""
    args = [helm_bin(), "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"]
    if SCENARIOS[scenario] is not None:
        args += ["--values", str(SCENARIOS[scenario])]
    for s in sets:
        args += ["--set", s]
    out = run(args).stdout
    assert "NOTES:" in out, out
    return out.split("NOTES:", 1)[1]


# Pod-level helpers --------------------------------------------------------------------------


def pod_spec(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"] if obj["kind"] == "Deployment" else obj["spec"]


def all_containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def container(spec: dict, name: str) -> dict:
    found = [c for c in all_containers(spec) if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}, got {[c['name'] for c in all_containers(spec)]}"
    return found[0]


def has_container(spec: dict, name: str) -> bool:
    return any(c["name"] == name for c in all_containers(spec))


def named_port(c: dict, name: str) -> int:
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    assert name in ports, f"container {c['name']} has no port named {name}: {ports}"
    return ports[name]


def mount_dir_of(spec: dict, c: dict, path: str) -> tuple[str, dict] | None:
    """The (mountPath, volume) of the container's mount that holds `path`, or None."""
    p = PurePosixPath(path)
    for m in c.get("volumeMounts", []):
        mp = PurePosixPath(m["mountPath"])
        if p == mp or mp in p.parents:
            vol = next(v for v in spec["volumes"] if v["name"] == m["name"])
            return m["mountPath"], vol
    return None


def assert_restricted(spec: dict, where: str) -> None:
    """Every container: non-root, read-only root fs, no privilege escalation, ALL caps dropped,
    seccomp RuntimeDefault (the container's settings, else the pod's)."""
    pod_sc = spec.get("securityContext", {})
    assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, where
    for c in all_containers(spec):
        sc = c.get("securityContext", {})
        what = f"{where}: container {c['name']}"
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, f"{what} may run as root"
        assert sc.get("runAsUser", pod_sc.get("runAsUser", 65532)) != 0, f"{what} runs as uid 0"
        assert sc.get("readOnlyRootFilesystem") is True, f"{what} has a writable root filesystem"
        assert sc.get("allowPrivilegeEscalation") is False, f"{what} allows privilege escalation"
        assert sc.get("privileged", False) is False, f"{what} is privileged"
        assert "ALL" in sc.get("capabilities", {}).get("drop", []), f"{what} keeps capabilities"
        assert not sc.get("capabilities", {}).get("add"), f"{what} adds capabilities"
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", f"{what} has no RuntimeDefault seccomp profile"


def hostport(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]"), int(port)


# The values that render deploy/envoy.yaml's example: one issuer and one route that requires a
# bearer token from it (README "Route requirements").
EXAMPLE_ISSUER = "https://issuer.example.com"
DEPLOY_EXAMPLE_SETS = (
    f"issuers[0].issuer={EXAMPLE_ISSUER}",
    "issuers[0].audiences={my-api}",
    'json:routeRequirements=[{"prefix": "/account/", "require": "credential", '
    f'"issuers": ["{EXAMPLE_ISSUER}"], "credentials": ["bearer"]}}]',
)
