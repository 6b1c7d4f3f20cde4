#!/usr/bin/env bash
# npm run test:asan [test files]: the addon built with AddressSanitizer and UBSan, the sanitizer
# runtimes preloaded into node, then the binding tests and the kernel grid on that build. Any
# sanitizer report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "--- building the addon with -fsanitize=address,undefined"
addon=$(bash scripts/addon-variant.sh asan "-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g" "-fsanitize=address,undefined")
files=("$@")
if [ ${#files[@]} -eq 0 ]; then
  files=(test/native.test.ts test/attention.test.ts test/streaming.test.ts test/dropout.test.ts test/mha.test.ts test/errors.test.ts test/kvcache-parity.test.ts)
  for f in test/grid.test.ts test/kernels; do [ -e "$f" ] && files+=("$f"); done
fi
# V8 keeps what it allocated until exit: leak reports would only list that.
LD_PRELOAD="$(g++ -print-file-name=libasan.so) $(g++ -print-file-name=libubsan.so)" \
  ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  KVSTREAM_ADDON="$addon" node scripts/test.mjs "${files[@]}"
