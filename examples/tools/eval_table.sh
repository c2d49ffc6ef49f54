#!/usr/bin/env bash
# The end-to-end table of bench/RESULTS.md: bits/byte on tiny-llama's heldout.txt of the dense model and of
# LLaMA-MoE checkpoints from every partition method and router initialisation, N=8 k=2 and
# N=16 k=4, each evaluated with score_scale_factor 1 (no rescale), N/k (formula 6) and the
# least-squares scale moe_convert fits ("auto").
#
# The conversions calibrate on the first 4096 bytes of heldout.txt (16 windows of 256; the
# gradient and sharing methods also read the golden 16-window importance); moe_eval then scores
# the rest of heldout.txt, so no evaluated byte was seen by a conversion.
#
# usage: examples/tools/eval_table.sh BUILD_DIR MODEL_DIR
# MODEL_DIR: the tiny-llama checkpoint, with its golden_ffn.safetensors and heldout.txt.
set -euo pipefail
build=${1:?usage: eval_table.sh BUILD_DIR MODEL_DIR}
model_dir=${2:?usage: eval_table.sh BUILD_DIR MODEL_DIR}
convert="$build/examples/tools/moe_convert"
eval_tool="$build/examples/tools/moe_eval"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
calib_bytes=4096
tail -c +$((calib_bytes + 1)) "$model_dir/heldout.txt" >"$out/eval.txt"

bits() { # bits_per_byte of checkpoint $1 on the evaluation text
  "$eval_tool" --model "$1" --text "$out/eval.txt" | sed -n 's/.*bits_per_byte=//p'
}
with_scale() { # a copy of checkpoint $1 whose config says score_scale_factor $2 (weights linked)
  local dir="$1-s$2"
  mkdir -p "$dir"
  ln -s "$(cd "$1" && pwd)/model.safetensors" "$dir/model.safetensors"
  sed -E "s/(\"score_scale_factor\": *)[0-9.eE+-]+/\1$2/" "$1/config.json" >"$dir/config.json"
  echo "$dir"
}

dense=$(bits "$model_dir")
windows=$("$eval_tool" --model "$model_dir" --text "$out/eval.txt" | grep -o "[0-9]* windows of 256")
echo "bits/byte on heldout.txt after its first $calib_bytes bytes ($windows bytes); dense: $dense"
echo
echo "| N/k | method | router | scale 1 | scale N/k | fitted scale | bits/byte at fitted scale |"
echo "|---|---|---|---|---|---|---|"
best=""
for nk in "8 2" "16 4"; do
  set -- $nk
  for method in random clustering coactivation gradient sharing-inner sharing-inter; do
    for router in random centroid fit; do
      extra=()
      case $method in gradient | sharing-*) extra=(--importance "$model_dir/golden_ffn.safetensors") ;; esac
      ckpt="$out/$method-$router-$1"
      "$convert" --model "$model_dir" --output "$ckpt" --experts "$1" --top-k "$2" --method "$method" \
        --router "$router" --seed 0 --calib "$model_dir/heldout.txt" --calib-tokens $calib_bytes \
        --scale auto "${extra[@]}" >"$out/log"
      fitted=$(sed -n 's/^moe_convert:.*, scale //p' "$out/log")
      one=$(bits "$(with_scale "$ckpt" 1)")
      nk_scale=$(bits "$(with_scale "$ckpt" "$(($1 / $2)).0")")
      auto=$(bits "$ckpt")
      rm -rf "${ckpt:?}" "$ckpt"-s*
      printf "| %s | %s | %s | %.3f | %.3f | %s | %.3f |\n" "$1/$2" "$method" "$router" "$one" "$nk_scale" \
        "$fitted" "$auto"
      for v in "$one:1" "$nk_scale:N/k" "$auto:fitted $fitted"; do
        if [ -z "$best" ] || awk -v a="${v%%:*}" -v b="${best%%:*}" 'BEGIN { exit !(a < b) }'; then
          best="${v%%:*}:N/k $1/$2, $method, router $router, scale ${v#*:}"
        fi
      done
    done
  done
done
echo
awk -v b="${best%%:*}" -v d="$dense" -v what="${best#*:}" \
  'BEGIN { printf "best: %s, %.3f bits/byte, %.3f above dense (%.3f), %.2fx its loss\n", what, b, b - d, d, b / d }'
