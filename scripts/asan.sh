#!/usr/bin/env bash
# npm run test:asan [test files]: builds the addon with AddressSanitizer and UBSan in a scratch
# folder (build/ is left alone), preloads the sanitizer runtimes into node and runs the binding
# tests and the kernel grid against that build. Any sanitizer report fails the run.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/native" "$root/binding.gyp" "$work/"
ln -s "$root/node_modules" "$work/node_modules"
flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g"
echo "--- building the sanitizer addon in $work"
(cd "$work" && CXXFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" node-gyp rebuild >build.log 2>&1) || { tail -30 "$work/build.log"; exit 1; }
runtimes="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)"
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(test/native.test.ts test/attention.test.ts test/streaming.test.ts test/dropout.test.ts test/mha.test.ts)
for f in test/grid.test.ts test/kernels; do [ -e "$root/$f" ] && [ $# -eq 0 ] && files+=("$f"); done
cd "$root"
# V8 reserves large address ranges and frees nothing at exit: leak checks would only report that.
LD_PRELOAD="$runtimes" ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:halt_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 KVSTREAM_ADDON="$work/build/Release/kvstream.node" \
  node scripts/test.mjs "${files[@]}"
