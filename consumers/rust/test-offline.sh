#!/usr/bin/env bash
# Builds and tests this crate offline against Debian's packaged crates:
#   apt-get install cargo rustc librust-zip-dev librust-serde-json-dev librust-sha2-dev
# Always Debian's toolchain (/usr/bin/cargo, /usr/bin/rustc; override with CARGO/RUSTC), never a
# rustup one on PATH, and a throwaway CARGO_HOME whose config replaces crates.io with
# /usr/share/cargo/registry, so a user's ~/.cargo is neither read nor written.
# Ends with `rust: N passed, N failed` (the sum over cargo's `test result:` lines); exits non-zero
# when the build or any test fails. KVSTREAM_FIXTURES overrides the fixture folder (default ../../fixtures).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cargo="${CARGO:-/usr/bin/cargo}"
export RUSTC="${RUSTC:-/usr/bin/rustc}"
export RUSTDOC="${RUSTDOC:-/usr/bin/rustdoc}"
registry=/usr/share/cargo/registry
# Tests run in the crate folder: make a relative fixture folder relative to the caller instead.
if [ -n "${KVSTREAM_FIXTURES:-}" ] && [ -d "$KVSTREAM_FIXTURES" ]; then
  export KVSTREAM_FIXTURES="$(cd "$KVSTREAM_FIXTURES" && pwd)"
fi

for tool in "$cargo" "$RUSTC" "$RUSTDOC"; do
  if [ ! -x "$tool" ]; then
    echo "test-offline.sh: $tool not found (apt-get install cargo rustc)" >&2
    echo "rust: 0 passed, 1 failed"
    exit 1
  fi
done
for crate in zip serde_json sha2; do
  if ! compgen -G "$registry/$crate-[0-9]*" > /dev/null; then
    echo "test-offline.sh: $registry has no $crate (apt-get install librust-zip-dev librust-serde-json-dev librust-sha2-dev)" >&2
    echo "rust: 0 passed, 1 failed"
    exit 1
  fi
done

home="$(mktemp -d)"
log="$home/test.log"
trap 'rm -rf "$home"' EXIT
cat > "$home/config.toml" <<CONFIG
[source.crates-io]
replace-with = "debian"

[source.debian]
directory = "$registry"

[net]
offline = true
CONFIG

echo "toolchain: $("$cargo" --version), $("$RUSTC" --version)"
# Its own target dir: artifacts of another toolchain (rustup's) must not be mixed in.
CARGO_HOME="$home" CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target/debian}" \
  "$cargo" test --offline --manifest-path "$here/Cargo.toml" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}

passed=0
failed=0
while read -r p f; do
  passed=$((passed + p))
  failed=$((failed + f))
done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$log")
# A build error or a crashed test binary fails the run even when no result line says so.
if [ "$status" -ne 0 ] && [ "$failed" -eq 0 ]; then failed=1; fi
echo "rust: $passed passed, $failed failed"
exit "$status"
