#!/usr/bin/env bash
# Packaging test: install moe to a prefix and build a consumer with find_package(moe), then build
# the same consumer with add_subdirectory(moe). Usage: run.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src=$1
work=$2
cmake=${CMAKE:-cmake}
rm -rf "$work"
mkdir -p "$work"

"$cmake" -S "$src" -B "$work/moe-build" -DMOE_BUILD_TESTS=OFF -DMOE_BUILD_EXAMPLES=OFF \
  -DMOE_BUILD_BENCHMARKS=OFF -DCMAKE_INSTALL_PREFIX="$work/prefix" >/dev/null
"$cmake" --install "$work/moe-build" >/dev/null
test -f "$work/prefix/share/cmake/moe/moeConfig.cmake"
test -f "$work/prefix/share/cmake/moe/moeConfigVersion.cmake"
test -f "$work/prefix/include/moe/moe.hpp"

for mode in find_package add_subdirectory; do
  if [[ $mode == find_package ]]; then where=-DCMAKE_PREFIX_PATH="$work/prefix"; else where=-DMOE_SOURCE_DIR="$src"; fi
  "$cmake" -S "$src/tests/packaging/consumer" -B "$work/$mode" -DMOE_CONSUME=$mode "$where" \
    -DCMAKE_BUILD_TYPE=Release >/dev/null
  "$cmake" --build "$work/$mode" >/dev/null
  "$work/$mode/consumer"
done

