# Sourced by the other scripts: make .venv and install the given requirements file when it
# changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
ensure_requirements() {
  local file=$1 stamp=.venv/.installed-$(basename "$1")
  local want
  want=$(cat requirements*.txt | sha256sum | cut -d' ' -f1)
  # requirements-dev.txt pins everything requirements.txt does, at the same versions.
  if [ "$file" = requirements.txt ] && [ "$(cat .venv/.installed-requirements-dev.txt 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "Installing $file into .venv (first run takes a few minutes)..." >&2
    .venv/bin/pip install -q -r "$file"
    echo "$want" > "$stamp"
  fi
}
