#!/usr/bin/env bash
# Build the Go tools the tests need into ~/.cache/layerwatch/, keyed by version, only when missing.
#
#   hack/build-tools.sh [kube|etcd|oras|crane|source-controller|notification-controller|helm|cosign|notation|harbor|all]...
#
# Each tool is built from its Go module in a throwaway main module (their go.mods carry replace
# directives, so `go install pkg@version` refuses them). Nothing built here is committed.
# KUBEBUILDER_ASSETS, when set and holding kube-apiserver and etcd, replaces the kube/etcd builds.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-1.35.4}
ETCD_VERSION=${ETCD_VERSION:-3.6.16}
ORAS_VERSION=${ORAS_VERSION:-1.3.6}
CRANE_VERSION=${CRANE_VERSION:-0.22.1}
SOURCE_CONTROLLER_VERSION=${SOURCE_CONTROLLER_VERSION:-1.9.6}
NOTIFICATION_CONTROLLER_VERSION=${NOTIFICATION_CONTROLLER_VERSION:-1.9.3}
HELM_VERSION=${HELM_VERSION:-4.3.2}
COSIGN_VERSION=${COSIGN_VERSION:-3.1.3}
NOTATION_VERSION=${NOTATION_VERSION:-1.3.2}
HARBOR_VERSION=${HARBOR_VERSION:-2.15.2}
# Harbor's source tarball (src/, api/, make/migrations/, tools/swagger/, Makefile at its root or one
# folder down, as in a release's "Source code" archive). Defaults to the harbor/ folder of a
# shared/ folder beside the checkout, where the build machines keep it.
REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARBOR_SHARED=${HARBOR_SHARED:-$(dirname "$REPO_ROOT")/shared/harbor}
HARBOR_SRC=${HARBOR_SRC:-$HARBOR_SHARED/harbor-src-v$HARBOR_VERSION.tar.gz}
CACHE=${LAYERWATCH_CACHE:-$HOME/.cache/layerwatch}
BIN=$CACHE/bin
export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-auto} CGO_ENABLED=0
mkdir -p "$BIN"

log() { printf '[build-tools] %s\n' "$*" >&2; }

# throwaway NAME: make a fresh module dir and cd into it
throwaway() { local d; d=$(mktemp -d "${TMPDIR:-/tmp}/lw-$1.XXXXXX"); cd "$d"; go mod init "example.invalid/$1" >/dev/null 2>&1; }

build_kube() {
  local out=$CACHE/kube/v$KUBE_VERSION
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/kube-apiserver" ]; then
    log "kube-apiserver: using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"; return; fi
  if [ -x "$out/kube-apiserver" ] && [ -x "$out/kubectl" ]; then
    log "kube v$KUBE_VERSION: cached"; ln -sf "$out/kubectl" "$BIN/kubectl"; return; fi
  log "kube v$KUBE_VERSION: building (cold builds take 10-25 min on 2 cores)"
  local start=$SECONDS staging minor gomod m
  staging=0.${KUBE_VERSION#1.}; minor=${KUBE_VERSION#1.}; minor=${minor%%.*}
  ( throwaway kube
    gomod=$(go mod download -json "k8s.io/kubernetes@v$KUBE_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
    awk '$1 ~ /^k8s\.io\// && $2 == "v0.0.0" {print $1}' "$gomod" | sort -u | while read -r m; do
      go mod edit -replace="$m=$m@v$staging"; done
    go mod edit -go="$(awk '$1=="go"{print $2; exit}' "$gomod")"
    go get "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubectl@v$KUBE_VERSION" >/dev/null
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=v$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=v$KUBE_VERSION"
    mkdir -p "$out.tmp"
    go build -trimpath -ldflags "$ld" -o "$out.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    go build -trimpath -ldflags "$ld" -o "$out.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
    rm -rf "$out"; mv "$out.tmp" "$out" )
  ln -sf "$out/kubectl" "$BIN/kubectl"
  log "kube v$KUBE_VERSION: built in $((SECONDS - start)) s"
}

build_etcd() {
  local out=$CACHE/etcd/v$ETCD_VERSION
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "$KUBEBUILDER_ASSETS/etcd" ]; then
    log "etcd: using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS"; return; fi
  if [ -x "$out/etcd" ]; then log "etcd v$ETCD_VERSION: cached"; return; fi
  log "etcd v$ETCD_VERSION: building"
  local start=$SECONDS
  ( throwaway etcd
    go get "go.etcd.io/etcd/server/v3@v$ETCD_VERSION" >/dev/null
    mkdir -p "$out.tmp"
    go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" go.etcd.io/etcd/server/v3
    rm -rf "$out"; mv "$out.tmp" "$out" )
  log "etcd v$ETCD_VERSION: built in $((SECONDS - start)) s"
}

# build_go_binary NAME VERSION MODULE@VERSION PACKAGE [LDFLAGS]: one binary from one module into
# $CACHE/NAME/vVERSION, linked into $BIN.
build_go_binary() {
  local name=$1 version=$2 module=$3 package=$4 ldflags=${5:-} out=$CACHE/$1/v$2
  if [ -x "$out/$name" ]; then log "$name v$version: cached"; ln -sf "$out/$name" "$BIN/$name"; return; fi
  log "$name v$version: building"
  local start=$SECONDS
  ( throwaway "$name"
    go get "$module" >/dev/null
    mkdir -p "$out.tmp"
    go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp/$name" "$package"
    rm -rf "$out"; mv "$out.tmp" "$out" )
  ln -sf "$out/$name" "$BIN/$name"
  log "$name v$version: built in $((SECONDS - start)) s"
}

build_oras() { build_go_binary oras "$ORAS_VERSION" "oras.land/oras@v$ORAS_VERSION" oras.land/oras/cmd/oras; }

# crane (bench/peers.py runs `crane validate --remote` beside layerwatch): one small module, no cgo.
build_crane() {
  local cmd=github.com/google/go-containerregistry/cmd/crane
  build_go_binary crane "$CRANE_VERSION" "$cmd@v$CRANE_VERSION" "$cmd" "-X $cmd/cmd.Version=v$CRANE_VERSION"
}

build_helm() {
  local out=$CACHE/helm/v$HELM_VERSION
  if [ -x "$out/helm" ]; then log "helm v$HELM_VERSION: cached"; ln -sf "$out/helm" "$BIN/helm"; return; fi
  log "helm v$HELM_VERSION: building"
  local start=$SECONDS major=${HELM_VERSION%%.*}
  ( throwaway helm
    go get "helm.sh/helm/v$major/cmd/helm@v$HELM_VERSION" >/dev/null
    mkdir -p "$out.tmp"
    go build -trimpath -ldflags "-s -w -X helm.sh/helm/v$major/internal/version.version=v$HELM_VERSION -X helm.sh/helm/v$major/internal/version.metadata=" \
      -o "$out.tmp/helm" "helm.sh/helm/v$major/cmd/helm"
    rm -rf "$out"; mv "$out.tmp" "$out" )
  ln -sf "$out/helm" "$BIN/helm"
  log "helm v$HELM_VERSION: built in $((SECONDS - start)) s"
}

# refused_requirements GOMOD: for each direct requirement whose exact version the module proxy refuses
# (e.g. 403 "This module version is not available" for github.com/fluxcd/pkg/artifact v0.18.3, which
# v1.9.5 and v1.9.6 require), print "path=path@fallback (refused vX)" with the highest older patch
# release of the same minor the proxy lists, so `go mod edit -replace` can substitute it (patch
# releases keep their API). With no such release nothing is printed and the build fails on the 403.
refused_requirements() {
  local mod ver fallback
  awk '/^require[ \t]*\(/{b=1;next} b&&/^\)/{b=0} b&&NF>=2&&$0!~/\/\/ indirect/{print $1, $2}' "$1" |
  while read -r mod ver; do
    go mod download "$mod@$ver" >/dev/null 2>&1 && continue
    fallback=$(go list -m -versions "$mod" 2>/dev/null | tr ' ' '\n' | tail -n +2 | python3 -c '
import re, sys
def key(v):
    m = re.match(r"v(\d+)\.(\d+)\.(\d+)(-.*)?$", v)
    return (int(m[1]), int(m[2]), int(m[3]), m[4] is None) if m else None
want = key(sys.argv[1])
older = [v for v in sys.stdin.read().split() if key(v) and key(v)[:2] == want[:2] and key(v) < want and key(v)[3]]
print(max(older, key=key) if older else "")' "$ver") || true
    if [ -n "$fallback" ]; then echo "$mod=$mod@$fallback (refused $ver)"; fi
  done
}

# build_flux_controller NAME VERSION [ALIGN_WITH_GOMOD]: a Flux controller binary plus its CRDs and
# RBAC from its Go module into $CACHE/NAME/vVERSION. With ALIGN_WITH_GOMOD (another controller's
# go.mod), every requirement that module has at a newer patch release of the same minor is raised to
# it, so packages both controllers share (k8s.io/*, controller-runtime, fluxcd/pkg) come out of the Go
# build cache instead of being compiled a second time.
build_flux_controller() {
  local name=$1 version=$2 align=${3:-} out=$CACHE/$1/v$2
  if [ -x "$out/$name" ] && [ -d "$out/crd" ]; then log "$name v$version: cached"; return; fi
  log "$name v$version: building"
  local start=$SECONDS
  ( throwaway "$name"
    local dir gomod module=github.com/fluxcd/$name
    dir=$(go mod download -json "$module@v$version" | python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
    gomod="$dir/go.mod"
    # Carry the module's own replace directives that point at other modules (not local paths).
    python3 - "$gomod" <<'PY' | while read -r r; do go mod edit -replace="$r"; done
import re, sys
text = open(sys.argv[1]).read()
lines = []
for block in re.findall(r'^replace\s*\((.*?)^\)', text, re.S | re.M):
    lines += block.splitlines()
lines += re.findall(r'^replace\s+([^(].*)$', text, re.M)
for line in lines:
    line = line.split('//')[0].strip()
    if '=>' not in line:
        continue
    left, right = (p.strip().split() for p in line.split('=>'))
    if right[0].startswith('.'):
        continue
    lhs = left[0] + ('@' + left[1] if len(left) > 1 else '')
    rhs = right[0] + ('@' + right[1] if len(right) > 1 else '')
    print(f"{lhs}={rhs}")
PY
    go mod edit -go="$(awk '$1=="go"{print $2; exit}' "$gomod")"
    refused_requirements "$gomod" | while read -r r; do log "$name: $r"; go mod edit -replace="${r%% *}"; done
    go get "$module@v$version" >/dev/null
    if [ -n "$align" ]; then
      go list -m -f '{{.Path}} {{.Version}}' all > modules.txt
      python3 - "$align" modules.txt <<'PY' | while read -r r; do log "$name: align $r"; go mod edit -require="$r"; done
import re, sys
def key(v):
    m = re.match(r"v(\d+)\.(\d+)\.(\d+)(.*)$", v)
    return (int(m[1]), int(m[2]), int(m[3])) if m and not m[4] else None
theirs = dict(re.findall(r'^\s*(?:require\s+)?(\S+)\s+(v\S+)', open(sys.argv[1]).read(), re.M))
for line in open(sys.argv[2]):
    path, _, ours = line.strip().partition(" ")
    a, b = key(ours or "x"), key(theirs.get(path, "x"))
    if a and b and a[:2] == b[:2] and b > a:
        print(f"{path}@{theirs[path]}")
PY
    fi
    mkdir -p "$out.tmp/crd"
    go build -trimpath -ldflags "-s -w" -o "$out.tmp/$name" "$module"
    cp "$dir"/config/crd/bases/*.yaml "$out.tmp/crd/"
    cp -r "$dir/config/rbac" "$out.tmp/rbac" 2>/dev/null || true
    chmod -R u+w "$out.tmp"
    rm -rf "$out"; mv "$out.tmp" "$out" )
  log "$name v$version: built in $((SECONDS - start)) s"
}

build_source_controller() { build_flux_controller source-controller "$SOURCE_CONTROLLER_VERSION"; }

# notification-controller (the e2e of the Flux event sink), aligned with source-controller's versions.
build_notification_controller() {
  local align
  align=$(cd /tmp && go mod download -json "github.com/fluxcd/source-controller@v$SOURCE_CONTROLLER_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["GoMod"])')
  build_flux_controller notification-controller "$NOTIFICATION_CONTROLLER_VERSION" "$align"
}

# cosign and notation (the signature tests sign with the real CLIs) come from ONE throwaway module, so
# the dependencies they share (cobra, x/crypto, oras-go, image-spec, ...) are resolved and compiled
# once. Each binary is cached under its own version; asking for either builds whichever is missing.
build_signing_tools() {
  local cosign_out=$CACHE/cosign/v$COSIGN_VERSION notation_out=$CACHE/notation/v$NOTATION_VERSION
  if [ -x "$cosign_out/cosign" ] && [ -x "$notation_out/notation" ]; then
    log "cosign v$COSIGN_VERSION, notation v$NOTATION_VERSION: cached"
    ln -sf "$cosign_out/cosign" "$BIN/cosign"; ln -sf "$notation_out/notation" "$BIN/notation"; return; fi
  log "cosign v$COSIGN_VERSION + notation v$NOTATION_VERSION: building"
  local start=$SECONDS
  ( throwaway signing
    go get "github.com/sigstore/cosign/v3/cmd/cosign@v$COSIGN_VERSION" \
      "github.com/notaryproject/notation/cmd/notation@v$NOTATION_VERSION" >/dev/null
    mkdir -p "$cosign_out.tmp" "$notation_out.tmp"
    go build -trimpath -o "$cosign_out.tmp/" \
      -ldflags "-s -w -X sigs.k8s.io/release-utils/version.gitVersion=v$COSIGN_VERSION" \
      github.com/sigstore/cosign/v3/cmd/cosign
    go build -trimpath -o "$notation_out.tmp/" \
      -ldflags "-s -w -X github.com/notaryproject/notation/internal/version.Version=v$NOTATION_VERSION" \
      github.com/notaryproject/notation/cmd/notation
    rm -rf "$cosign_out" "$notation_out"; mv "$cosign_out.tmp" "$cosign_out"; mv "$notation_out.tmp" "$notation_out" )
  ln -sf "$cosign_out/cosign" "$BIN/cosign"; ln -sf "$notation_out/notation" "$BIN/notation"
  log "cosign v$COSIGN_VERSION + notation v$NOTATION_VERSION: built in $((SECONDS - start)) s"
}

# Harbor (the lab's real proxy-cache hops): harbor_core and harbor_jobservice from Harbor's source,
# plus what core reads at run time (views/, migrations/postgresql/). Harbor is not on the module
# proxy, so the source comes from HARBOR_SRC (by default in HARBOR_SHARED), else download Harbor's
# release source (https://github.com/goharbor/harbor/archive/refs/tags/vVERSION.tar.gz) and point
# HARBOR_SRC at it. go.pinniped.dev, refused by some module proxies, is replaced by the local
# pinniped-pkce/ module when $HARBOR_SHARED has one. The v2.0 API server is generated with
# go-swagger at the version Harbor's Makefile names. jobservice is patched to listen on loopback.
build_harbor() {
  local out=$CACHE/harbor/v$HARBOR_VERSION
  if [ -x "$out/harbor_core" ] && [ -x "$out/harbor_jobservice" ] && [ -d "$out/migrations/postgresql" ]; then
    log "harbor v$HARBOR_VERSION: cached"; return; fi
  if [ ! -f "$HARBOR_SRC" ]; then
    log "harbor v$HARBOR_VERSION: no source at $HARBOR_SRC; download Harbor's release source" \
      "(https://github.com/goharbor/harbor/archive/refs/tags/v$HARBOR_VERSION.tar.gz) and set HARBOR_SRC"
    return 1; fi
  log "harbor v$HARBOR_VERSION: building from $HARBOR_SRC (cold builds take 10-20 min on 2 cores)"
  local start=$SECONDS
  ( local work root swagger_version swagger
    work=$(mktemp -d "${TMPDIR:-/tmp}/lw-harbor.XXXXXX"); trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
    tar -xzf "$HARBOR_SRC" -C "$work"
    root=$work; [ -d "$root/src" ] || root=$(find "$work" -mindepth 2 -maxdepth 2 -type d -name src -printf '%h\n' | head -n 1)
    [ -d "$root/src" ] || { log "harbor: no src/ in $HARBOR_SRC"; exit 1; }
    if [ -d "$HARBOR_SHARED/pinniped-pkce" ]; then
      cp -r "$HARBOR_SHARED/pinniped-pkce" "$root/pinniped-pkce"
      (cd "$root/src" && go mod edit -replace=go.pinniped.dev=../pinniped-pkce); fi
    swagger_version=$(awk -F= '$1=="SWAGGER_VERSION"{print $2; exit}' "$root/Makefile")
    swagger=$CACHE/go-swagger/$swagger_version/swagger
    if [ ! -x "$swagger" ]; then
      (cd /tmp && GOBIN="$(dirname "$swagger").tmp" go install "github.com/go-swagger/go-swagger/cmd/swagger@$swagger_version")
      rm -rf "$(dirname "$swagger")"; mv "$(dirname "$swagger").tmp" "$(dirname "$swagger")"; fi
    (cd "$root" && "$swagger" generate server --template-dir=tools/swagger/templates --exclude-main \
      --additional-initialism=CVE --additional-initialism=GC --additional-initialism=OIDC \
      -f api/v2.0/swagger.yaml -A harbor --target src/server/v2.0)
    sed -i 's/fmt.Sprintf(":%d", cfg.Port)/fmt.Sprintf("127.0.0.1:%d", cfg.Port)/' "$root/src/jobservice/api/server.go"
    grep -q '"127.0.0.1:%d"' "$root/src/jobservice/api/server.go" || { log "harbor: jobservice listen patch did not apply"; exit 1; }
    local ld="-w -s -X github.com/goharbor/harbor/src/pkg/version.ReleaseVersion=v$HARBOR_VERSION"
    rm -rf "$out.tmp"; mkdir -p "$out.tmp/migrations"
    (cd "$root/src" && go build -trimpath -ldflags "$ld" -o "$out.tmp/harbor_core" ./core \
      && go build -trimpath -ldflags "$ld" -o "$out.tmp/harbor_jobservice" ./jobservice)
    cp -r "$root/make/migrations/postgresql" "$out.tmp/migrations/postgresql"
    cp -r "$root/src/core/views" "$out.tmp/views"
    rm -rf "$out"; mv "$out.tmp" "$out" )
  log "harbor v$HARBOR_VERSION: built in $((SECONDS - start)) s"
}

# Flux's CRDs alone (for the operator tests): from the module, no build needed.
flux_crds() {
  local out=$CACHE/flux-crds/v$SOURCE_CONTROLLER_VERSION
  if [ -f "$out/source.toolkit.fluxcd.io_ocirepositories.yaml" ]; then log "flux CRDs v$SOURCE_CONTROLLER_VERSION: cached"; return; fi
  local dir
  dir=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "github.com/fluxcd/source-controller@v$SOURCE_CONTROLLER_VERSION" | python3 -c 'import json,sys;print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$out.tmp"; cp "$dir"/config/crd/bases/*.yaml "$out.tmp/"; chmod -R u+w "$out.tmp"; rm -rf "$out"; mv "$out.tmp" "$out"
  log "flux CRDs v$SOURCE_CONTROLLER_VERSION: ready"
}

paths() {
  cat <<P
KUBE_DIR=${KUBEBUILDER_ASSETS:-$CACHE/kube/v$KUBE_VERSION}
ETCD_DIR=${KUBEBUILDER_ASSETS:-$CACHE/etcd/v$ETCD_VERSION}
ORAS=$CACHE/oras/v$ORAS_VERSION/oras
CRANE=$CACHE/crane/v$CRANE_VERSION/crane
SOURCE_CONTROLLER_DIR=$CACHE/source-controller/v$SOURCE_CONTROLLER_VERSION
NOTIFICATION_CONTROLLER_DIR=$CACHE/notification-controller/v$NOTIFICATION_CONTROLLER_VERSION
FLUX_CRDS=$CACHE/flux-crds/v$SOURCE_CONTROLLER_VERSION
HELM=$CACHE/helm/v$HELM_VERSION/helm
COSIGN=$CACHE/cosign/v$COSIGN_VERSION/cosign
NOTATION=$CACHE/notation/v$NOTATION_VERSION/notation
HARBOR_DIR=$CACHE/harbor/v$HARBOR_VERSION
P
}

[ $# -gt 0 ] || set -- all
for what in "$@"; do
  case $what in
    kube) build_kube ;;
    etcd) build_etcd ;;
    oras) build_oras ;;
    crane) build_crane ;;
    flux-crds) flux_crds ;;
    source-controller) build_source_controller ;;
    notification-controller) build_notification_controller ;;
    helm) build_helm ;;
    cosign|notation) build_signing_tools ;;
    harbor) build_harbor ;;
    paths) paths ;;
    all) build_oras; build_crane; flux_crds; build_etcd; build_kube; build_source_controller; build_notification_controller; build_helm; build_signing_tools; build_harbor ;;
    *) echo "unknown tool: $what" >&2; exit 2 ;;
  esac
done
