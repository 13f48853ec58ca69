#!/usr/bin/env bash
# Regenerates the results board benchmarks/results/<machine>.md: the machine's ceilings, every kernel's
# share of them on every backend present, our GEMM vs OpenBLAS, and an end-to-end step's MFU and breakdown.
# Extra arguments go to the board: --machine NAME, --shapes small, --backends cpu, --preset P, --batch B, --seq T,
# --passes N (default 2: every case measured twice, minutes apart, the best kept).
# Takes about ten minutes on a 2-core machine with both backends; close other work first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1
cd "$root"
dotnet build benchmarks/Palm.Gpu.Benchmarks -c Release -nologo -v quiet >/dev/null
exec dotnet benchmarks/Palm.Gpu.Benchmarks/bin/Release/net10.0/Palm.Gpu.Benchmarks.dll board --out benchmarks/results --passes 2 "$@"
