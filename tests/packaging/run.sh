#!/usr/bin/env bash
# Packaging test: install moe to a prefix and build a consumer with find_package(moe), then build
# the same consumer with add_subdirectory(moe); each way once more with nlohmann_json hidden, where
# only moe::core is available. Usage: run.sh SOURCE_DIR WORK_DIR
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

# Each way twice: as is, and with nlohmann_json hidden from CMake, where moe::core must still build.
for mode in find_package add_subdirectory; do
  if [[ $mode == find_package ]]; then where=-DCMAKE_PREFIX_PATH="$work/prefix"; else where=-DMOE_SOURCE_DIR="$src"; fi
  for deps in all core; do
    extra=()
    if [[ $deps == core ]]; then extra=(-DMOE_CONSUME_CORE_ONLY=ON -DCMAKE_DISABLE_FIND_PACKAGE_nlohmann_json=ON); fi
    dir="$work/$mode-$deps"
    "$cmake" -S "$src/tests/packaging/consumer" -B "$dir" -DMOE_CONSUME=$mode "$where" \
      -DCMAKE_BUILD_TYPE=Release "${extra[@]}" >/dev/null
    if [[ $deps == all ]]; then
      "$cmake" --build "$dir" --target consumer >/dev/null
      "$dir/consumer"
    else
      "$cmake" --build "$dir" >/dev/null
      "$dir/consumer_core"
    fi
  done
done
