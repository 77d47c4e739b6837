"""The chart's config, policies and `helm test` commands against a real portcullis binary.

Runs only where one is built ($PORTCULLIS_BIN, else target/release or target/debug); it does not
build one. It serves the config the chart renders (paths moved into a temp dir) and runs the
exact `portcullis check` commands of the helm test pod against it."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from chartkit import CHART, REPO, hostport, render


def portcullis_bin() -> Path:
    candidates = [os.environ.get("PORTCULLIS_BIN", "")]
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    candidates += [str(target / "release" / "portcullis"), str(target / "debug" / "portcullis")]
    found = [Path(c) for c in candidates if c and Path(c).is_file() and os.access(c, os.X_OK)]
    if not found:
        pytest.skip("no portcullis binary built (set PORTCULLIS_BIN or build target/{release,debug}/portcullis)")
    return max(found, key=lambda p: p.stat().st_mtime) if not os.environ.get("PORTCULLIS_BIN") else found[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_portcullis_validates_the_chart_policies():
    proc = subprocess.run(
        [str(portcullis_bin()), "validate", str(CHART / "policies")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout


@pytest.mark.parametrize("scenario", ["default", "envoy-tcp"])
def test_helm_test_commands_pass_against_the_rendered_config(scenario, tmp_path):
    binary = portcullis_bin()
    rendered = render(scenario)
    cfg = rendered.portcullis_config()
    admin = free_port()
    # Same config, with the in-pod paths and ports moved to this machine.
    server_addr = None
    if cfg["listen"]["unix"]:
        sock = tmp_path / "ext_authz.sock"
        cfg["listen"]["unix"] = str(sock)
        server_addr = f"unix:{sock}"
    else:
        port = free_port()
        host, _ = hostport(cfg["listen"]["grpc"])
        assert host == "127.0.0.1"
        cfg["listen"]["grpc"] = f"127.0.0.1:{port}"
        server_addr = f"http://127.0.0.1:{port}"
    cfg["listen"]["admin"] = f"127.0.0.1:{admin}"
    # The default diagnostics port (127.0.0.1:9092) could clash with another run on this machine.
    cfg["listen"]["diagnostics"] = f"127.0.0.1:{free_port()}"
    cfg["policy"]["dir"] = str(CHART / "policies")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    requests = rendered.one("ConfigMap", "-test-requests")["data"]
    for name, body in requests.items():
        (tmp_path / name).write_text(body)

    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        [str(binary), "serve", "--config", str(tmp_path / "config.yaml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, "portcullis exited:\n" + (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "not ready after 30s:\n" + (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2) as r:
            assert r.status == 200

        for c in rendered.test_pod()["spec"]["containers"]:
            args = list(c["args"])
            args[args.index("--server") + 1] = server_addr
            args[-1] = str(tmp_path / Path(args[-1]).name)
            proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
            assert proc.returncode == 0, f"{c['name']}: {' '.join(args)}\n{proc.stdout}{proc.stderr}"
            assert "decision:" in proc.stdout
            # And the opposite expectation fails, so --expect really looks at the decision.
            i = args.index("--expect") + 1
            args[i] = "deny" if args[i] == "allow" else "allow"
            proc = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=30)
            assert proc.returncode != 0, f"{c['name']}: the opposite expectation passed too"
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
