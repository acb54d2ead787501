#!/usr/bin/env bash
# Build the HTML report of a `gradalign study` folder and screenshot it with headless chromium.
#
#   bash scripts/report_screenshot.sh STUDY_DIR [OUT.png]      (default OUT: docs/report.png)
#
# Writes STUDY_DIR/report.html (gradalign report --study STUDY_DIR) and OUT.png, the top
# WIDTH x HEIGHT CSS pixels of the page (environment: WIDTH=1400, HEIGHT=3800). Needs chromium
# (apt-get install chromium) and the repository's .venv (scripts/setup.sh); nothing is fetched.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STUDY="${1:?usage: scripts/report_screenshot.sh STUDY_DIR [OUT.png]}"
OUT="${2:-$ROOT/docs/report.png}"
WIDTH="${WIDTH:-1400}"
HEIGHT="${HEIGHT:-3800}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"

CHROMIUM="${GRADALIGN_CHROMIUM:-$(command -v chromium || command -v chromium-browser || true)}"
if [ -z "$CHROMIUM" ]; then
    echo "report_screenshot: no chromium binary (apt-get install chromium)" >&2
    exit 2
fi

PYTHONPATH="$ROOT/client${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m gradalign_client.html_report \
    --study "$STUDY" --out "$STUDY/report.html"

PROFILE="$(mktemp -d)"  # a fresh browser profile, removed on exit
trap 'rm -rf "$PROFILE"' EXIT
mkdir -p "$(dirname "$OUT")"
OUT_ABS="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"
URL="$("$PYTHON" -c 'import pathlib, sys; print(pathlib.Path(sys.argv[1]).resolve().as_uri())' "$STUDY/report.html")"
"$CHROMIUM" --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars \
    --user-data-dir="$PROFILE" --virtual-time-budget=5000 --window-size="$WIDTH,$HEIGHT" \
    --screenshot="$OUT_ABS" "$URL" 2>/dev/null
[ -s "$OUT_ABS" ] || { echo "report_screenshot: chromium wrote no screenshot" >&2; exit 1; }
echo "wrote $STUDY/report.html and $OUT_ABS" >&2
