using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.Intrinsics.X86;

namespace Palm.Gpu.Backends.Cpu;

// Picks the GEMM's register and cache blocking for the CPU it runs on, once per thread count, by timing a few
// variants at first use (about 0.1–0.3 s). The variants differ only in what never changes a result:
//   path       the micro-kernel: Vector512 14×32 (zmm) or Vector256 6×16 (ymm). Intel with two 512-bit FMA ports and
//              Zen 5 (full-width 512-bit units) favour zmm; Zen 4 executes a zmm FMA as two 256-bit halves, where the
//              ymm kernel can tie; AVX2-only machines (or DOTNET_EnableAVX512=0) have only the ymm candidates.
//   McPanels   rows of the A block a work item packs (L2-sized: ~96, ~168 or ~336 rows of a Kc-deep panel).
//   Nc         columns of the shared packed B panel (1024 or 4096; fewer when K is long, see CpuMatmul.PanelFloats).
// Kc is the K block and fixes the summation order, so it is the same for every variant: whatever the tuner picks,
// the GEMM gives the same bits (MatmulTests.Every_tuner_variant_gives_the_same_bits).
//
// Shape legend: M, N, K the GEMM's; the timed problems are the model's two kinds of call at a reduced size,
//   forward/dX   (768,768) = (768,512)·(512,768)          dW   (512,768) += (768,512)ᵀ·(768,768)   transA
// Each candidate keeps its best of 5 interleaved timings; the default (widest path, GemmBlocking.For(path)) is kept
// unless a variant beats it by 3% (same path) or 15% (narrower path), so a stall on a shared machine does not pick a
// slow kernel. PALM_GEMM=default skips the timing and takes the default (for A/B comparisons).

/// <summary>What the tuner chose for one thread count, and how it measured.</summary>
internal sealed record GemmChoice(GemmPath Path, GemmBlocking Blocking, double Gflops, int Candidates, string Cpu)
{
    /// <summary>One line for logs, bench output and a run's config: "Vector512 14×32, kc 256, mc 12×14, nc 4096 (tuned: best of 13 at 390 GFLOP/s)".</summary>
    public string Description
    {
        get
        {
            var (mr, nr) = CpuMatmul.TileOf(Path);
            string how = Candidates > 1 ? $"tuned: best of {Candidates} at {Gflops:F0} GFLOP/s" : "default";
            return $"{Path} {mr}×{nr}, kc {Blocking.Kc}, mc {Blocking.McPanels}×{mr}, nc {Blocking.Nc} ({how})";
        }
    }
}

internal static class GemmTuner
{
    /// <summary>Rounds of timing: every candidate once per round, so load from other processes falls on all alike.</summary>
    const int Rounds = 5;
    /// <summary>How much faster than the default a variant must measure to be chosen: same path, narrower path.</summary>
    const double SameWidthMargin = 1.03, NarrowerMargin = 1.15;
    /// <summary>A-block rows to try, as multiples of the tile height nearest these.</summary>
    static readonly int[] BlockRows = [96, GemmBlocking.DefaultBlockRows, 336];
    static readonly int[] PanelColumns = [1024, 4096];

    static readonly ConcurrentDictionary<int, Lazy<GemmChoice>> Chosen = new();

    /// <summary>The choice for <paramref name="threads"/> workers, measured on first use.</summary>
    public static GemmChoice For(int threads) => Chosen.GetOrAdd(threads, t => new Lazy<GemmChoice>(() => Tune(t))).Value;

    /// <summary>Candidate (path, blocking) pairs this machine runs natively; Kc is always <see cref="GemmBlocking.TunedKc"/>.</summary>
    public static IReadOnlyList<(GemmPath Path, GemmBlocking Blocking)> Candidates()
    {
        var paths = new[] { GemmPath.Vector512, GemmPath.Vector256 }.Where(p => p <= CpuMatmul.BestPath && CpuMatmul.IsSupported(p)).ToList();
        if (paths.Count == 0) paths.Add(CpuMatmul.BestPath);
        var list = new List<(GemmPath, GemmBlocking)>();
        foreach (var path in paths)
        {
            foreach (int rows in BlockRows)
                foreach (int nc in PanelColumns)
                    list.Add((path, new GemmBlocking(GemmBlocking.TunedKc, GemmBlocking.PanelsOf(rows, path), nc)));
        }
        // The default (widest path, GemmBlocking.For(path)) first: the one the tuner keeps unless another clearly wins.
        int at = list.IndexOf((paths[0], GemmBlocking.For(paths[0])));
        if (at > 0) (list[0], list[at]) = (list[at], list[0]);
        else if (at < 0) list.Insert(0, (paths[0], GemmBlocking.For(paths[0])));
        return list;
    }

    static string CpuName
    {
        get
        {
            try
            {
                foreach (var line in File.ReadLines("/proc/cpuinfo"))
                    if (line.StartsWith("model name", StringComparison.Ordinal)) return line[(line.IndexOf(':') + 1)..].Trim();
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            return X86Base.IsSupported ? "x86-64" : System.Runtime.InteropServices.RuntimeInformation.ProcessArchitecture.ToString();
        }
    }

    static GemmChoice Tune(int threads)
    {
        string cpu = CpuName;
        if (Environment.GetEnvironmentVariable("PALM_GEMM") == "default" || CpuMatmul.BestPath < GemmPath.Vector256)
            return new GemmChoice(CpuMatmul.BestPath, GemmBlocking.For(CpuMatmul.BestPath), double.NaN, 1, cpu);

        var candidates = Candidates();
        var problems = new[]
        {
            (M: 768, N: 768, K: 512, TransA: false),
            (M: 512, N: 768, K: 768, TransA: true),
        };
        var rng = new Random(1);
        // Operands laid out as the model's (CpuBuffer: each starts on a cache line).
        CpuView<float> Data(int count, bool random = true)
        {
            var view = new CpuBuffer("tuner", count, Tensors.ElementType.F32).F;
            if (random) for (int i = 0; i < count; i++) view[i] = (float)(rng.NextDouble() - 0.5);
            return view;
        }
        var data = problems.Select(p => (A: Data(p.M * p.K), B: Data(p.K * p.N), C: Data(p.M * p.N, random: false))).ToArray();
        double flops = problems.Sum(p => 2.0 * p.M * p.N * p.K);

        void RunAll(GemmPath path, GemmBlocking blocking)
        {
            for (int i = 0; i < problems.Length; i++)
            {
                var p = problems[i];
                CpuMatmul.Run(threads, data[i].C, data[i].A, data[i].B, p.M, p.N, p.K, p.TransA, false, 1f, p.TransA, path, blocking);
            }
        }

        var best = new double[candidates.Count];
        Array.Fill(best, double.MaxValue);
        foreach (var (path, blocking) in candidates) RunAll(path, blocking);   // compile every kernel and warm the pack buffers
        for (int round = 0; round < Rounds; round++)
            for (int c = 0; c < candidates.Count; c++)
            {
                long t0 = Stopwatch.GetTimestamp();
                RunAll(candidates[c].Path, candidates[c].Blocking);
                best[c] = Math.Min(best[c], Stopwatch.GetElapsedTime(t0).TotalSeconds);
            }
        // A shared machine can stall any one timing, so the tuner only leaves the default (widest path,
        // GemmBlocking.For(path); candidate 0) for a clear win: another blocking of the widest path must be
        // SameWidthMargin faster, a narrower path NarrowerMargin faster (a narrower kernel has half the FMA width).
        double Score(int c) => best[c] * (c == 0 ? 1 : candidates[c].Path == candidates[0].Path ? SameWidthMargin : NarrowerMargin);
        int winner = Enumerable.Range(0, candidates.Count).MinBy(Score);
        return new GemmChoice(candidates[winner].Path, candidates[winner].Blocking, flops / best[winner] / 1e9, candidates.Count, cpu);
    }
}
