#!/usr/bin/env bash
# scripts/addon-variant.sh NAME CXXFLAGS LDFLAGS: builds the addon with extra compiler flags in
# build-variants/NAME/ (a copy of native/ and binding.gyp; build/ is left alone) and prints the
# path of the .node file. The sanitizer and coverage runs load it through KVSTREAM_ADDON.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/build-variants/$1"
rm -rf "$dir" && mkdir -p "$dir"
cp -r "$root/native" "$root/binding.gyp" "$dir/"
ln -s "$root/node_modules" "$dir/node_modules"
(cd "$dir" && CXXFLAGS="$2" LDFLAGS="$3" node-gyp rebuild >build.log 2>&1) || { tail -30 "$dir/build.log" >&2; exit 1; }
echo "$dir/build/Release/kvstream.node"
