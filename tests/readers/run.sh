#!/usr/bin/env bash
# Reader tests of the lake writer: writes DoLake tables (several commits,
# every compression, day/hour/unpartitioned, evolution and type conflicts) to
# a local directory with file:// locations, then reads them with iceberg-rust,
# pyiceberg and DuckDB and compares every row with what was sent.
#
# Idempotent: installs the Python venv (.tools/venv, pinned by
# tests/readers/requirements.txt) only when missing or when the pins changed,
# and rewrites the tables on every run.
#
# Environment: DOLAKE_READERS_OUT (default target/dolake-readers), PYTHON
# (default python3), PYTEST_ARGS (extra pytest arguments).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
out="${DOLAKE_READERS_OUT:-$root/target/dolake-readers}"
venv="$root/.tools/venv"
req="$root/tests/readers/requirements.txt"
python="${PYTHON:-python3}"

# 1. Python environment.
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "== installing reader venv into $venv"
  "$python" -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# 2. Write the tables and the expected rows.
echo "== writing test tables to $out"
mkdir -p "$(dirname "$out")"
DOLAKE_READERS_OUT="$out" cargo test --quiet --test readers -- --nocapture

# 3. iceberg-rust (a separate crate: heavy, native only).
echo "== reading with iceberg-rust"
# Its dependencies take minutes to build: one target folder per user, shared
# by every checkout on this machine.
reader_target="${DOLAKE_READER_TARGET:-$HOME/.cache/dolake/iceberg-rs-reader-target}"
CARGO_TARGET_DIR="$reader_target" cargo build --quiet --release \
  --manifest-path tests/readers/iceberg-rs-reader/Cargo.toml
"$reader_target/release/iceberg-rs-reader" \
  "$out/tables.json" "$out/iceberg-rs"

# 4. pyiceberg, DuckDB, and the comparison of all three.
echo "== reading with pyiceberg and DuckDB"
cd tests/readers
DOLAKE_READERS_OUT="$out" DOLAKE_ICEBERG_RS="$out/iceberg-rs" \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider -W error::pytest.PytestUnraisableExceptionWarning \
  ${PYTEST_ARGS:-} test_readers.py
