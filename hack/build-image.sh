#!/usr/bin/env bash
# Build the layerwatch container image (`make image`) and tag it localhost/layerwatch:<version>.
#
# With a Docker daemon that answers: `docker build` of the Dockerfile as is (base pulled from Docker Hub).
# Without one: buildah, daemonless and rootful, chroot isolation, vfs storage under
# ~/.cache/layerwatch/buildah (no system storage config needed), on a Debian bookworm base built by
# hack/base-image.sh with debootstrap (nothing is pulled from a container registry).
# Either way the host's CA bundle goes in as the build secret `ca`, mounted only for the pip steps, so
# pip trusts a TLS-intercepting proxy; it is never written to a layer.
#
# Environment:
#   LAYERWATCH_BUILDER      auto (default), docker or buildah
#   LAYERWATCH_IMAGE        image name without tag (default localhost/layerwatch)
#   LAYERWATCH_BASE_IMAGE   buildah: use this base instead of the debootstrap one (pulled if missing)
#   LAYERWATCH_CA_BUNDLE    CA bundle for pip (default /etc/ssl/certs/ca-certificates.crt; "" for none)
#   BUILDAH_ROOT, BUILDAH_RUNROOT   buildah storage (default ~/.cache/layerwatch/buildah/{root,runroot})
# Prints timings on stderr and, last on stdout, the image reference.
set -euo pipefail

cd "$(dirname "$0")/.."
cache="${XDG_CACHE_HOME:-$HOME/.cache}/layerwatch"
version=$(python3 -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse --verify --quiet HEAD 2>/dev/null || echo unknown)
image="${LAYERWATCH_IMAGE:-localhost/layerwatch}:$version"
build_cache="${LAYERWATCH_IMAGE:-localhost/layerwatch}-build:cache"
ca_bundle="${LAYERWATCH_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt}"
builder="${LAYERWATCH_BUILDER:-auto}"

log() { printf 'build-image: %s\n' "$*" >&2; }
now() { date +%s.%N; }
took() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f s", b - a }'; }

build_args=(--build-arg "VERSION=$version" --build-arg "REVISION=$revision")
secret=()
if [ -n "$ca_bundle" ] && [ -r "$ca_bundle" ]; then
  secret=(--secret "id=ca,src=$ca_bundle")
fi

if [ "$builder" = auto ]; then
  if command -v docker >/dev/null && timeout 20 docker info >/dev/null 2>&1; then
    builder=docker
  elif command -v buildah >/dev/null; then
    builder=buildah
  else
    log "neither a Docker daemon nor buildah is available (hack/install-deps.sh installs buildah)"
    exit 1
  fi
fi

total=$(now)
case "$builder" in
docker)
  log "docker build -> $image"
  start=$(now)
  DOCKER_BUILDKIT=1 docker build "${build_args[@]}" "${secret[@]}" --tag "$image" . >&2
  log "image build took $(took "$start")"
  size=$(docker image inspect --format '{{.Size}}' "$image")
  ;;
buildah)
  export BUILDAH_ROOT="${BUILDAH_ROOT:-$cache/buildah/root}"
  export BUILDAH_RUNROOT="${BUILDAH_RUNROOT:-$cache/buildah/runroot}"
  buildah_opts=(--root "$BUILDAH_ROOT" --runroot "$BUILDAH_RUNROOT" --storage-driver vfs)
  export BUILDAH_ISOLATION=chroot
  pull=(--pull=never)
  if [ -n "${LAYERWATCH_BASE_IMAGE:-}" ]; then
    base="$LAYERWATCH_BASE_IMAGE"
    pull=(--pull=missing)
  else
    start=$(now)
    base=$(hack/base-image.sh)
    log "base image $base ready in $(took "$start")"
  fi
  log "buildah build (chroot isolation, vfs, cached layers) FROM $base -> $image"
  start=$(now)
  # --network host: RUN steps reach PyPI through the host's network (chroot isolation has no netns).
  build=(
    buildah "${buildah_opts[@]}" build
    --isolation chroot
    --layers
    --network host
    "${pull[@]}"
    --format oci
    --build-arg "BASE_IMAGE=$base"
    "${build_args[@]}" "${secret[@]}"
  )
  # The build stage gets a tag of its own: nothing in the final image descends from it, so without the
  # tag the prune below would take its cached layers (the pip installs) with the dangling images.
  "${build[@]}" --target build --tag "$build_cache" . >&2
  "${build[@]}" --tag "$image" . >&2
  log "image build took $(took "$start")"
  size=$(buildah "${buildah_opts[@]}" images --noheading --format '{{.Size}}' "$image" | head -n1)
  # With vfs every layer is a full root filesystem copy: drop what earlier builds left untagged.
  buildah "${buildah_opts[@]}" rmi --prune >/dev/null 2>&1 || log "warning: buildah rmi --prune failed"
  ;;
*)
  log "LAYERWATCH_BUILDER must be auto, docker or buildah, not $builder"
  exit 2
  ;;
esac
log "built $image ($size) in $(took "$total") total"
printf '%s\n' "$image"
