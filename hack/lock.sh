#!/usr/bin/env bash
# Regenerate requirements.lock: every runtime dependency of layerwatch (direct pins come from
# pyproject.toml), resolved in a throwaway venv. The image installs exactly this set.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(mktemp -d)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check .
{
  echo "# Every runtime dependency of layerwatch, pinned (what the image installs)."
  echo "# Regenerate with: hack/lock.sh"
  "$venv/bin/pip" freeze --exclude layerwatch
} > requirements.lock
echo "requirements.lock: $(grep -vc '^#' requirements.lock) packages"
