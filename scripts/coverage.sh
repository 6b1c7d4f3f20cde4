#!/usr/bin/env bash
# npm run coverage: the whole suite against an addon built with --coverage, under c8; prints line
# coverage of src/ (c8) and native/ (gcov), one line per file.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "--- building the addon with --coverage"
addon=$(bash scripts/addon-variant.sh coverage "--coverage -O1" "--coverage")
# The report is printed either way; a failing test under this build fails the run.
set +e
KVSTREAM_ADDON="$addon" npx c8 --reporter=text --include='src/**' --exclude='src/**/*.d.ts' node scripts/test.mjs "$@" | grep -vE '^(ok|#|TAP|1\.\.)'
status=${PIPESTATUS[0]}
set -e
echo "--- native/ line coverage (gcov)"
# gcov runs in the variant's build folder, where the objects name their sources ../native/*.cc.
cd build-variants/coverage/build
for f in ../native/*.cc; do
  printf '%-24s %s\n' "${f#../}" "$(gcov -n -o Release/obj.target/kvstream/native "$f" 2>/dev/null | grep -A1 "^File '$f'" | sed -n 's/^Lines executed://p')"
done
exit "$status"
