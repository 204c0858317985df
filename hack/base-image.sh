#!/usr/bin/env bash
# Build (or reuse) a Debian bookworm base image with python3 for the layerwatch image, without pulling
# anything from a container registry: debootstrap a minbase rootfs from the host's Debian mirror, cache
# it as a tarball, and import that into buildah's store as localhost/layerwatch-base:bookworm.
#
#   hack/base-image.sh            prints the image name on stdout (progress and timings on stderr)
#
# Cache: ~/.cache/layerwatch/base/bookworm-minbase-<YYYYMMDD>-<mirror hash>.tar. A tarball for the same
# mirror is reused while it is younger than LAYERWATCH_BASE_MAX_AGE_DAYS (default 7), so security
# updates arrive within a week; delete the directory (or set the age to 0) to force a fresh debootstrap.
# The image carries the tarball's sha256 as a label and is re-imported only when the tarball changes.
#
# Environment: LAYERWATCH_DEBIAN_MIRROR (default: the host's first Debian main URI from
# /etc/apt/sources.list(.d)), LAYERWATCH_BASE_IMAGE (default localhost/layerwatch-base:bookworm),
# BUILDAH_ROOT / BUILDAH_RUNROOT (default ~/.cache/layerwatch/buildah/{root,runroot}).
# Needs root (debootstrap creates device nodes and chowns files).
set -euo pipefail

cache="${XDG_CACHE_HOME:-$HOME/.cache}/layerwatch"
base_dir="$cache/base"
image="${LAYERWATCH_BASE_IMAGE:-localhost/layerwatch-base:bookworm}"
max_age_days="${LAYERWATCH_BASE_MAX_AGE_DAYS:-7}"
suite=bookworm
packages=python3,python3-venv,ca-certificates
buildah_opts=(
  --root "${BUILDAH_ROOT:-$cache/buildah/root}"
  --runroot "${BUILDAH_RUNROOT:-$cache/buildah/runroot}"
  --storage-driver vfs
)

log() { printf 'base-image: %s\n' "$*" >&2; }

# The first deb.debian.org-style "main" archive URI the host's apt uses (not the security archive).
host_mirror() {
  local uri
  uri=$(
    {
      grep -hs -E '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
        | sed -E 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/'
      grep -hs -E '^URIs:' /etc/apt/sources.list.d/*.sources | sed -E 's/^URIs:[[:space:]]*//' | tr ' ' '\n'
    } | grep -E '/debian/?$' | grep -v -E 'security' | head -n1
  ) || true
  printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

mirror="${LAYERWATCH_DEBIAN_MIRROR:-$(host_mirror)}"
mirror_key=$(printf '%s %s %s' "$mirror" "$suite" "$packages" | sha256sum | cut -c1-12)
mkdir -p "$base_dir"

# Newest cached tarball for this mirror and package set, if young enough.
tarball=""
while IFS= read -r candidate; do
  tarball="$candidate"
  break
done < <(find "$base_dir" -maxdepth 1 -name "$suite-minbase-*-$mirror_key.tar" -mtime "-$max_age_days" \
  -printf '%T@ %p\n' 2>/dev/null | sort -rn | cut -d' ' -f2-)

if [ -n "$tarball" ]; then
  log "reusing $tarball"
else
  if [ "$(id -u)" != 0 ]; then
    log "debootstrap needs root; run as root once to create the cached base in $base_dir"
    exit 1
  fi
  command -v debootstrap >/dev/null || { log "debootstrap missing (apt-get install debootstrap)"; exit 1; }
  tarball="$base_dir/$suite-minbase-$(date -u +%Y%m%d)-$mirror_key.tar"
  work=$(mktemp -d "$base_dir/rootfs.XXXXXX")
  trap 'rm -rf "$work" "$tarball.tmp"' EXIT
  log "debootstrap --variant=minbase --include=$packages $suite from $mirror"
  start=$(date +%s)
  if ! debootstrap --variant=minbase --include="$packages" "$suite" "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1; then
    tail -n 30 "$work/debootstrap.log" >&2
    [ -f "$work/rootfs/debootstrap/debootstrap.log" ] && tail -n 30 "$work/rootfs/debootstrap/debootstrap.log" >&2
    exit 1
  fi
  # Slim the rootfs: no package caches, indexes, docs or logs (the image never runs apt).
  rm -rf "$work/rootfs"/var/cache/apt/* "$work/rootfs"/var/lib/apt/lists/* "$work/rootfs"/var/log/* \
    "$work/rootfs"/usr/share/man/* "$work/rootfs"/usr/share/info/* \
    "$work/rootfs"/usr/share/locale/* "$work/rootfs"/tmp/* "$work/rootfs"/run/*
  # Documentation goes too, except the copyright files Debian's licences ask to keep.
  find "$work/rootfs/usr/share/doc" -type f ! -name copyright -delete
  find "$work/rootfs/usr/share/doc" -depth -mindepth 1 -type d -empty -delete
  # The host's resolver and hostname must not end up in the image; buildah provides its own at run time.
  : >"$work/rootfs/etc/resolv.conf"
  printf 'localhost\n' >"$work/rootfs/etc/hostname"
  # debootstrap leaves device nodes in /dev; containers get theirs from the runtime.
  find "$work/rootfs/dev" -mindepth 1 -delete
  tar --numeric-owner --xattrs --sort=name -C "$work/rootfs" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  log "debootstrap + tarball took $(($(date +%s) - start)) s ($(du -h "$tarball" | cut -f1))"
  rm -rf "$work"
  trap - EXIT
  # Keep only the newest tarball per mirror key.
  find "$base_dir" -maxdepth 1 -name "$suite-minbase-*-$mirror_key.tar" ! -path "$tarball" -delete
fi

digest=$(sha256sum "$tarball" | cut -d' ' -f1)
current=$(buildah "${buildah_opts[@]}" inspect --type image \
  --format '{{index .OCIv1.Config.Labels "io.layerwatch.base.tarball"}}' "$image" 2>/dev/null || true)
if [ "$current" = "sha256:$digest" ]; then
  log "$image is up to date (tarball sha256:${digest:0:12})"
else
  start=$(date +%s)
  ctr=$(buildah "${buildah_opts[@]}" from --pull=never scratch)
  trap 'buildah "${buildah_opts[@]}" rm "$ctr" >/dev/null 2>&1 || true' EXIT
  buildah "${buildah_opts[@]}" add --quiet "$ctr" "$tarball" / >/dev/null
  buildah "${buildah_opts[@]}" config \
    --os linux --arch "$(dpkg --print-architecture 2>/dev/null || echo amd64)" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd /bin/bash \
    --label "io.layerwatch.base.tarball=sha256:$digest" \
    --label "io.layerwatch.base.mirror=$mirror" \
    --label "io.layerwatch.base.suite=$suite" \
    "$ctr"
  buildah "${buildah_opts[@]}" commit --quiet --rm "$ctr" "$image" >/dev/null
  trap - EXIT
  log "imported $(basename "$tarball") as $image in $(($(date +%s) - start)) s"
fi
printf '%s\n' "$image"
