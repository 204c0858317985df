#!/usr/bin/env bash
# Install the Debian packages the tests and the demo use (idempotent; a no-op when all are present).
#
#   hack/install-deps.sh                 everything `make test` needs
#   hack/install-deps.sh PACKAGE...      only these (`make demo` asks for docker-registry and python3-venv)
set -euo pipefail
packages=(docker-registry skopeo prometheus prometheus-alertmanager buildah debootstrap chromium shellcheck tinyproxy zsh fish postgresql redis-server)  # zsh, fish: completion tests; postgresql, redis-server: the lab's Harbor hops
missing=()
if [ $# -gt 0 ]; then packages=("$@"); fi  # only what the caller names (make demo)
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then echo "install as root: apt-get install ${missing[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's docker-registry and prometheus-alertmanager start system services (:5000, :9093);
# tests use their own ports.
systemctl disable --now docker-registry >/dev/null 2>&1 || true
systemctl disable --now prometheus-alertmanager >/dev/null 2>&1 || true
# tinyproxy (the HTTP CONNECT proxy of tests/registry/test_network.py) likewise starts one on :8888.
systemctl disable --now tinyproxy >/dev/null 2>&1 || true
# postgresql and redis-server (one per Harbor hop in the lab) start system services (:5432, :6379);
# the lab runs its own, on its own ports.
systemctl disable --now postgresql >/dev/null 2>&1 || true
systemctl disable --now redis-server >/dev/null 2>&1 || true
