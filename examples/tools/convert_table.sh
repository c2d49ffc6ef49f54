#!/usr/bin/env bash
# The expert-construction table of bench/RESULTS.md: moe_convert on tiny-llama for every method and router
# initialisation, N=8 k=2 and N=16 k=4, printed as markdown (means over the 4 layers, measured on
# the held-out quarter of the calibration tokens).
#
# usage: examples/tools/convert_table.sh BUILD_DIR MODEL_DIR
# MODEL_DIR: the tiny-llama checkpoint, with its golden_ffn.safetensors and heldout.txt.
set -euo pipefail
build=${1:?usage: convert_table.sh BUILD_DIR MODEL_DIR}
model_dir=${2:?usage: convert_table.sh BUILD_DIR MODEL_DIR}
tool="$build/examples/tools/moe_convert"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "| N/k | method | router | FFN rel. error | oracle recall | error with oracle routing | scale (auto) | next-byte loss, bits/byte |"
echo "|---|---|---|---|---|---|---|---|"
for nk in "8 2" "16 4"; do
  set -- $nk
  for method in random clustering coactivation gradient sharing-inner sharing-inter; do
    for router in random centroid fit; do
      extra=()
      case $method in gradient | sharing-*) extra=(--importance "$model_dir/golden_ffn.safetensors") ;; esac
      "$tool" --model "$model_dir" --output "$out/$method-$router-$1" --experts "$1" --top-k "$2" \
        --method "$method" --router "$router" --seed 0 --calib "$model_dir/heldout.txt" \
        --calib-tokens 4096 --scale auto "${extra[@]}" >"$out/log"
      rm -rf "${out:?}/$method-$router-$1"
      awk -v nk="$1/$2" -v m="$method" -v r="$router" '
        /scale/ && /^moe_convert/ { split($0, a, "scale "); scale = a[2] }
        /next-byte loss/ { for (i = 1; i <= NF; ++i) if ($i == "MoE") loss = $(i + 1); dense = $0 }
        /^  layer [0-9]+:/ {
          for (i = 1; i <= NF; ++i) {
            if ($i == "rel.err") e += $(i + 1)
            if ($i == "recall") c += $(i + 1)
            if ($i == "routing") { v = $(i + 1); sub(/\)/, "", v); o += v }
          }
          n++
        }
        END { printf "| %s | %s | %s | %.3f | %.3f | %.3f | %s | %s |\n", nk, m, r, e / n, c / n, o / n, scale, loss }' "$out/log"
    done
  done
done
grep -o "dense [0-9.]* bits/byte" "$out/log" | sed 's/^/\nreference: /'
