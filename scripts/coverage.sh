#!/usr/bin/env bash
# npm run coverage: the whole suite against an addon built with --coverage, under c8; prints line
# coverage of src/ (c8) and native/ (gcov), one line per file.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "--- building the addon with --coverage"
addon=$(bash scripts/addon-variant.sh coverage "--coverage -O1" "--coverage")
# A kernel body (vmath.cc's *_body) is inlined into one wrapper per target; anything of it left
# out of line (a lambda, say: it does not take the wrapper's target) is compiled once for baseline
# x86-64, and vectors passed to it cross calling conventions. So is any out-of-line function with
# a vector parameter (a vector result is not in the symbol: hence the *_body check). -O1 inlines
# least, so check here.
syms=$(nm -C "$addon")
[ -n "$syms" ] || { echo "nm listed no symbols in $addon"; exit 1; }
if out_of_line=$(grep -E '_body\(|__vector\(' <<< "$syms"); then
  echo "vector code out of line in the -O1 build (mark it always_inline):"; echo "$out_of_line"; exit 1
fi
# The report is printed either way; a failing test under this build fails the run.
set +e
KVSTREAM_ADDON="$addon" npx c8 --reporter=text --include='src/**' --exclude='src/**/*.d.ts' node scripts/test.mjs "$@" | grep -vE '^(ok|#|TAP|1\.\.)'
status=${PIPESTATUS[0]}
set -e
echo "--- native/ line coverage (gcov)"
# gcov runs in the variant's build folder, where the objects name their sources ../native/*.cc.
cd build-variants/coverage/build
lines() {  # lines executed in file $2, from the gcov data of translation unit $1
  gcov -n -o Release/obj.target/kvstream/native "$1" 2>/dev/null | grep -A1 "^File '$2'" | sed -n 's/^Lines executed://p'
}
for f in ../native/*.cc; do printf '%-28s %s\n' "${f#../}" "$(lines "$f" "$f")"; done
# The tile kernels' body, compiled in tile.cc (once per ISA; lines count if either ran them).
printf '%-28s %s\n' native/tile_kernels.inc "$(lines ../native/tile.cc ../native/tile_kernels.inc)"
exit "$status"
