#!/usr/bin/env bash
# The GPU device check for the ILGPU backend, in two halves.
#
#   benchmarks/gpu/check.sh publish [DIR]      on a machine with the .NET 10 SDK: publishes the palm CLI and the check's
#                                              runner self-contained for linux-x64 into DIR (default benchmarks/gpu/out),
#                                              with this script; copy DIR to the GPU machine (it needs no .NET there)
#   DIR/check.sh run [--dry-run]               on the GPU machine, from DIR: (1) the conformance suite on the first CUDA
#                                              device, (2) 5 training steps of the small preset on ilgpu vs the CPU backend
#                                              (loss within 1e-4 relative at every step), (3) GEMM at 4096³ and the small
#                                              preset's shapes (ours fp32, ours tensor cores, cuBLAS Sgemm and TF32) and
#                                              attention; each part under a time limit, 8 minutes in all, then a summary.
#                                              --dry-run does the same on ILGPU's CPU accelerator with tiny shapes: the
#                                              whole path short of a GPU.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

publish() {
    local out="${1:-$here/out}" root
    root="$(cd "$here/../.." && pwd)"
    mkdir -p "$out"
    dotnet publish "$root/src/Palm.Cli" -c Release -r linux-x64 --self-contained -nologo -v q -o "$out/palm" || return 1
    dotnet publish "$here/Palm.Gpu.Check" -c Release -r linux-x64 --self-contained -nologo -v q -o "$out/check" || return 1
    cp "$here/check.sh" "$out/check.sh"
    chmod +x "$out/check.sh"
    echo "published to $out ($(du -sh "$out" | cut -f1)); on the GPU machine: $out/check.sh run"
}

run() {
    local dry="" kind=cuda preset=small
    if [[ "${1:-}" == "--dry-run" ]]; then dry=1; kind=cpu; preset=tiny; fi
    local check="$here/check/Palm.Gpu.Check" palm="$here/palm/palm" work summary status=0
    [[ -x "$check" && -x "$palm" ]] || { echo "check.sh: run it from the published folder (check.sh publish first)" >&2; return 2; }
    work="$(mktemp -d)"; summary="$work/summary.txt"
    local device
    device="$("$check" device "$kind")" || return 2
    echo "== ILGPU device $device ($kind); work in $work"
    part() {   # part NAME SECONDS COMMAND...: runs one part under a time limit, keeps its SUMMARY lines
        local name="$1" limit="$2"; shift 2
        echo "== $name (limit ${limit}s)"
        timeout "$limit" "$@" 2>&1 | tee "$work/$name.log"
        local rc=${PIPESTATUS[0]}
        grep '^SUMMARY' "$work/$name.log" >> "$summary"
        [[ $rc -eq 124 ]] && echo "SUMMARY $name: TIMED OUT after ${limit}s" >> "$summary"
        [[ $rc -ne 0 ]] && status=1
        return 0
    }
    part conformance 240 "$check" conformance "$device"
    local train=(--preset "$preset" --steps 5 --batch 4 --seq 128 --seed 1 --peak-gflops 1)
    [[ -n "$dry" ]] && train=(--preset tiny --steps 5 --batch 2 --seed 1 --peak-gflops 1)
    part train-cpu 60 "$palm" train --backend cpu "${train[@]}" --out "$work/cpu"
    part train-ilgpu 60 "$palm" train --backend ilgpu --device "$device" "${train[@]}" --out "$work/ilgpu"
    part training 10 "$check" compare-runs "$work/cpu" "$work/ilgpu"
    part bench 110 "$check" bench "$device" ${dry:+--quick}
    echo "== summary"
    cat "$summary"
    [[ $status -eq 0 ]] && echo "check: all parts passed" || echo "check: a part failed (logs in $work)"
    return $status
}

case "${1:-}" in
    publish) shift; publish "$@" ;;
    run) shift; run "$@" ;;
    *) echo "usage: check.sh publish [DIR] | check.sh run [--dry-run]" >&2; exit 2 ;;
esac
