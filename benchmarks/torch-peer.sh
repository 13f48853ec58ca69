#!/usr/bin/env bash
# Compares `palm bench` with the same model in libtorch (benchmarks/Palm.Gpu.TorchPeer, TorchSharp-cpu) in one run:
# builds the peer (Release; restores the ~1 GB libtorch package the first time), checks it against palm's model, then
# alternates palm and the peer's rows for --rounds rounds and prints tokens/s and palm's ratio to each row.
#
#   benchmarks/torch-peer.sh [--rounds 2] [--steps 3] [--warmup 1] [--threads N] [--preset small] [--batch 4] [--seq T]
#                            [--no-check] [--no-mkl-intel-path] [--bf16 auto|on|off]
#
# Rows: palm fp32; torch fp32 (libtorch as shipped); on AMD CPUs torch fp32 with MKL's vendor test answered "Intel"
# (native/mkl-intel-path.c, preloaded); torch bf16 (bf16 matmuls and attention on fp32 master weights), by default only
# on CPUs with bf16 arithmetic (avx512_bf16 or amx_bf16): elsewhere libtorch emulates it (Zen 3: 97 s a step).
# Raw JSON lines go to .build/torch-peer-results/<time>.jsonl. See benchmarks/README.md, "libtorch peer".
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
peer_project="$root/benchmarks/Palm.Gpu.TorchPeer"
out="$root/.build/torch-peer"
native_out="$root/.build/torch-peer-native"
export DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

rounds=2 steps=3 warmup=1 threads="$(nproc)" preset=small batch=4 seq="" check=1 mkl_row=auto bf16=auto
usage() { sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds|--steps|--warmup|--threads|--preset|--batch|--seq)
      [ $# -ge 2 ] || { echo "torch-peer: error: $1 needs a value" >&2; exit 2; }
      name="${1#--}"; printf -v "$name" '%s' "$2"; shift 2 ;;
    --no-check) check=0; shift ;;
    --no-mkl-intel-path) mkl_row=0; shift ;;
    --bf16)
      [ $# -ge 2 ] && [[ "$2" =~ ^(auto|on|off)$ ]] || { echo "torch-peer: error: --bf16 takes auto, on or off" >&2; exit 2; }
      bf16="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "torch-peer: error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
for v in rounds steps threads batch; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "torch-peer: error: --$v must be an integer ≥ 1, got '${!v}'" >&2; exit 2; }
done
[[ "$warmup" =~ ^[0-9]+$ ]] || { echo "torch-peer: error: --warmup must be an integer ≥ 0, got '$warmup'" >&2; exit 2; }
[ -z "$seq" ] || [[ "$seq" =~ ^[1-9][0-9]*$ ]] || { echo "torch-peer: error: --seq must be an integer ≥ 1, got '$seq'" >&2; exit 2; }
command -v dotnet >/dev/null || { echo "torch-peer: error: the .NET 10 SDK is needed (dotnet not found on PATH)" >&2; exit 2; }
command -v cc >/dev/null || { echo "torch-peer: error: a C compiler (cc) is needed for the two small native helpers; Debian: apt-get install gcc" >&2; exit 2; }
if [ "$mkl_row" = auto ]; then
  if grep -q -m1 AuthenticAMD /proc/cpuinfo 2>/dev/null; then mkl_row=1; else mkl_row=0; fi
fi
if [ "$bf16" = auto ]; then
  if grep -q -m1 -w -E 'avx512_bf16|amx_bf16|bf16' /proc/cpuinfo 2>/dev/null; then bf16=on; else
    bf16=off
    echo "torch-peer: no bf16 arithmetic on this CPU (avx512_bf16, amx_bf16): the torch-bf16 row is left out, as libtorch would emulate it (--bf16 on runs it anyway)" >&2
  fi
fi

echo "torch-peer: building the peer (Release; the first build restores TorchSharp-cpu 0.107.0 and libtorch 2.10, ~1 GB)..." >&2
if ! log="$(dotnet build "$peer_project/Palm.Gpu.TorchPeer.csproj" -c Release -o "$out" -nologo 2>&1)"; then
  echo "$log" >&2; echo "torch-peer: error: the peer's build failed (log above)" >&2; exit 1
fi
# A failed native load makes TorchSharp copy all of libtorch into $out/cpu and retry from there; never keep that copy.
rm -rf "$out/cpu"

# libLibTorchSharp.so (GCC 13) requires GLIBCXX_3.4.32 only for an anchor symbol nothing calls; Debian 12's libstdc++
# (GCC 12) stops at 3.4.30, so the requirement is marked weak in the build output's copy (the NuGet cache is untouched).
mkdir -p "$native_out"
cc -O2 -Wall -o "$native_out/weaken-version-need" "$peer_project/native/weaken-version-need.c"
wrapper="$out/runtimes/linux-x64/native/libLibTorchSharp.so"
[ -f "$wrapper" ] || { echo "torch-peer: error: $wrapper is missing from the build output" >&2; exit 1; }
"$native_out/weaken-version-need" "$wrapper" "$wrapper.tmp" GLIBCXX_3.4.32 >/dev/null
mv "$wrapper.tmp" "$wrapper"
preload_mkl=""
if [ "$mkl_row" = 1 ]; then
  cc -O2 -Wall -shared -fPIC -o "$native_out/libmkl-intel-path.so" "$peer_project/native/mkl-intel-path.c"
  preload_mkl="$native_out/libmkl-intel-path.so"
fi

cd "$root"
data="$root/../shared/data/tinyshakespeare.txt"
[ -f "$data" ] || { echo "torch-peer: $data not found; the peer draws uniform token ids instead" >&2; data=random; }
shape=(--preset "$preset" --batch "$batch"); [ -z "$seq" ] || shape+=(--seq "$seq")
timing=(--steps "$steps" --warmup "$warmup" --threads "$threads")

if [ "$check" = 1 ]; then
  echo "torch-peer: checking the peer against palm's model (batch 2 × 128; --no-check skips)..." >&2
  "$out/palm-torch-peer" --check --preset "$preset" --batch 2 --seq 128 --threads "$threads" --data "$data" --check-steps 20 >&2 \
    || { echo "torch-peer: error: the peer's check failed; its timings would not be of palm's model" >&2; exit 1; }
fi

mkdir -p "$root/.build/torch-peer-results"
results="$root/.build/torch-peer-results/$(date -u +%Y%m%dT%H%M%SZ).jsonl"
field() { grep -o "\"$2\":[0-9.eE+-]*" <<<"$1" | head -1 | cut -d: -f2; }
# CPU ticks: all cores busy and in total (/proc/stat), and this shell's finished children (/proc/$$/stat cutime + cstime).
busy_ticks() { awk '/^cpu /{ print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9 }' /proc/stat; }
child_ticks() { awk '{ print $16 + $17 }' "/proc/$$/stat"; }

# One row: its label, then the command; the JSON line (first stdout line) is kept, the label added.
run_row() {
  local label="$1"; shift
  local line
  if ! line="$("$@" | head -1)" || [ -z "$line" ] || [ -z "$(field "$line" tokens_per_s)" ]; then
    echo "torch-peer: error: '$label' gave no result ($*)" >&2; exit 1
  fi
  echo "{\"round\":$round,\"row\":\"$label\",${line#\{}" >>"$results"
  printf '%s\t%s\n' "$label" "$line"
}

declare -a table
for round in $(seq 1 "$rounds"); do
  rows=(palm torch-fp32)
  [ "$mkl_row" = 1 ] && rows+=(torch-fp32-mkl-intel)
  [ "$bf16" = on ] && rows+=(torch-bf16)
  # Even rounds run in reverse order, so that load drifting during the run falls on both sides alike.
  if [ $((round % 2)) = 0 ]; then
    reversed=(); for ((i=${#rows[@]}-1; i>=0; i--)); do reversed+=("${rows[i]}"); done; rows=("${reversed[@]}")
  fi
  declare -A tps=() best=() mfu=() others=()
  for row in "${rows[@]}"; do
    echo "torch-peer: round $round/$rounds: $row" >&2
    read -r busy0 total0 < <(busy_ticks); own0="$(child_ticks)"
    case "$row" in
      palm) result="$(run_row palm ./palm bench "${shape[@]}" "${timing[@]}" --no-table --profile-steps 0)" ;;
      torch-fp32) result="$(run_row torch-fp32 "$out/palm-torch-peer" "${shape[@]}" "${timing[@]}" --data "$data" --dtype fp32)" ;;
      torch-fp32-mkl-intel) result="$(run_row torch-fp32-mkl-intel env LD_PRELOAD="$preload_mkl" "$out/palm-torch-peer" "${shape[@]}" "${timing[@]}" --data "$data" --dtype fp32)" ;;
      torch-bf16) result="$(run_row torch-bf16 "$out/palm-torch-peer" "${shape[@]}" "${timing[@]}" --data "$data" --dtype bf16)" ;;
    esac
    read -r busy1 total1 < <(busy_ticks); own1="$(child_ticks)"
    # Share of the machine's CPU time that other processes took while the row ran (its own build steps count as its own).
    others[$row]="$(awk -v b=$((busy1 - busy0)) -v t=$((total1 - total0)) -v o=$((own1 - own0)) 'BEGIN { x = t > 0 ? 100 * (b - o) / t : 0; printf "%.0f", x < 0 ? 0 : x }')"
    line="${result#*$'\t'}"
    tps[$row]="$(field "$line" tokens_per_s)"; mfu[$row]="$(field "$line" mfu)"
    best[$row]="$(awk -v b="$(field "$line" batch)" -v t="$(field "$line" seq)" -v s="$(field "$line" step_seconds_min)" 'BEGIN { printf "%.1f", b * t / s }')"
  done
  for row in palm torch-fp32 torch-fp32-mkl-intel torch-bf16; do
    [ -n "${tps[$row]:-}" ] || continue
    ratio="$(awk -v p="${tps[palm]}" -v t="${tps[$row]}" 'BEGIN { printf "%.2f", p / t }')"
    ratio_best="$(awk -v p="${best[palm]}" -v t="${best[$row]}" 'BEGIN { printf "%.2f", p / t }')"
    mfu_pct="$(awk -v m="${mfu[$row]}" 'BEGIN { printf "%.1f", 100 * m }')"
    table+=("| $round | $row | ${tps[$row]} | ${best[$row]} | $mfu_pct | $ratio | $ratio_best | ${others[$row]} |")
  done
  unset tps best mfu others
done

echo
echo "$preset, batch $batch${seq:+, seq $seq}, $threads threads, $steps timed steps after $warmup warm-up per row. tokens/s and MFU: mean step"
echo "(MFU against the measured fp32 FMA peak, bf16 included); best: the fastest step; others' CPU: the share of all cores'"
echo "time that other processes took while the row ran (above a few % the row's figures are low by about that much or more)"
echo
echo "| round | row | tokens/s | tokens/s, best step | MFU % | palm / row | palm / row, best steps | others' CPU % |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
printf '%s\n' "${table[@]}"
echo
echo "raw JSON lines: $results"
