using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.Intrinsics.X86;

namespace Palm.Gpu.Backends.Cpu;

// Picks the GEMM's register and cache blocking for the CPU it runs on, once per thread count, by timing a few
// variants at first use (1–2 s). The variants differ only in what never changes a result:
//   path       the micro-kernel: Vector512 14×32 (zmm) or Vector256 6×16 (ymm). Intel with two 512-bit FMA ports and
//              Zen 5 (full-width 512-bit units) favour zmm; Zen 4 executes a zmm FMA as two 256-bit halves, where the
//              ymm kernel can tie; AVX2-only machines (or DOTNET_EnableAVX512=0) have only the ymm candidates.
//   Kc         the K block: 256 (a 14×32 sliver stays in L1) or 512 (C read and written half as often).
//   McPanels   rows of the A block a work item packs (L2-sized: ~96, ~168 or ~336 rows of a Kc-deep panel).
//   Nc         columns of the shared packed B panel: 4096 (fewer when K is long, see CpuMatmul.PanelFloats). 1024 was a
//              candidate until it measured level at best and 10% behind on the model's widest weight gradient (Zen 4,
//              fused dWin: N 4736 then spans 5 panels, each re-packing the A blocks), which the tuner's narrower
//              problems did not show, so some processes picked it.
// Whatever the tuner picks, the GEMM gives the same bits (MatmulTests.Every_tuner_variant_gives_the_same_bits).
//
// Shape legend: M, N, K the GEMM's; the timed problems are the model's kinds of call at a reduced size,
//   forward/dX    (1024,2048) = (1024,512)·(512,2048)
//   dW, M ≤ 1024  (512,2048) += (1024,512)ᵀ·(1024,2048)    transA: the weights with D rows (dWin, dWqkv, dWup)
//   dW, M > 1024  (2048,512) += (1024,2048)ᵀ·(1024,512)    transA: the weights with F rows (dWout, dWdown), dE
// (all as wide as the model's: with narrow B panels a call spans several, each repacking the A blocks.)
// The kinds pack A differently (a transposed A is read along its rows), and their best blocking differs: on Zen 4
// the short weight gradients want 168-row A blocks (with 336, M 512 makes 2 blocks, so 4 sliver groups each pack the
// same block) and the tall ones 336 (measured: fused dWin 213 vs 206 GFLOP/s, dWout 212 vs 218). So each kind gets
// its own; the path is picked first, from each path's default blocking timed over all three. Candidates are compared
// round by round (Rounds rounds; the median of the ratio of their times), and a default (widest path,
// GemmBlocking.For(path)) is kept unless a variant is 1.5% faster (same path) or 15% (narrower path). On a quiet Zen 4
// those medians agree within about 1% from one process to the next, and kc 512 beats the default on the short weight
// gradients by 2–4.5%, which the 3% margin on each candidate's best timing missed in most processes (it kept kc 256).
// PALM_GEMM pins the blocking instead of timing (A/B comparisons across processes, whose tuners may choose apart):
// "default" takes GemmBlocking.For(path); KC:ROWS[,KC:ROWS[,KC:ROWS]] gives the K block and A-block rows of the forward
// calls, then of the short and the tall weight gradients (each omitted one as the forward's), on the widest path.

/// <summary>
/// What the tuner chose for one thread count: the path, a blocking for each kind of call (forward and dX; ᵀA with M up to
/// <see cref="ShortM"/>; ᵀA with more rows) and how they measured.
/// </summary>
internal sealed record GemmChoice(GemmPath Path, GemmBlocking Blocking, GemmBlocking BlockingTransA, GemmBlocking BlockingTransATall,
                                  double Gflops, double GflopsTransA, double GflopsTransATall, int Candidates, string Cpu, string? Pinned = null)
{
    /// <summary>The most rows of a "short" ᵀA call (the tuner's M-512 problem); taller ones take BlockingTransATall.</summary>
    public const int ShortM = 1024;

    /// <summary>The blocking for an M-row call with op(A) = Aᵀ (the weight gradients) or not.</summary>
    public GemmBlocking For(bool transA, int m) => !transA ? Blocking : m <= ShortM ? BlockingTransA : BlockingTransATall;

    /// <summary>
    /// One line for logs, bench output and a run's config, e.g. "Vector512 14×32, kc 512, mc 24×14, nc 4096; ᵀA kc 512,
    /// mc 12×14, nc 4096; tall ᵀA as forward (tuned: best of 13 at 215 / 213 / 214 GFLOP/s)"; each ᵀA part says what it
    /// shares.
    /// </summary>
    public string Description
    {
        get
        {
            var (mr, nr) = CpuMatmul.TileOf(Path);
            string Of(GemmBlocking b) => $"kc {b.Kc}, mc {b.McPanels}×{mr}, nc {b.Nc}";
            string transA = BlockingTransA == Blocking ? "" : $"; ᵀA {Of(BlockingTransA)}";
            string tall = BlockingTransATall == BlockingTransA ? "" : BlockingTransATall == Blocking ? "; tall ᵀA as forward" : $"; tall ᵀA {Of(BlockingTransATall)}";
            string how = Pinned is not null ? $"pinned: PALM_GEMM={Pinned}"
                : Candidates > 1 ? $"tuned: best of {Candidates} at {Gflops:F0} / {GflopsTransA:F0} / {GflopsTransATall:F0} GFLOP/s" : "default";
            return $"{Path} {mr}×{nr}, {Of(Blocking)}{transA}{tall} ({how})";
        }
    }
}

internal static class GemmTuner
{
    /// <summary>Rounds of timing (odd, for a median): every candidate once per round, so load from other processes falls on all alike.</summary>
    const int Rounds = 3;
    /// <summary>How much faster than the default a variant must measure to be chosen: same path, narrower path.</summary>
    const double SameWidthMargin = 1.015, NarrowerMargin = 1.15;
    /// <summary>A-block rows to try, as multiples of the tile height nearest these.</summary>
    static readonly int[] BlockRows = [96, GemmBlocking.DefaultBlockRows, 336];
    static readonly int[] PanelColumns = [4096];
    static readonly int[] BlockDepths = [GemmBlocking.DefaultKc, GemmBlocking.DeepKc];

    static readonly ConcurrentDictionary<int, Lazy<GemmChoice>> Chosen = new();

    /// <summary>The choice for <paramref name="threads"/> workers, measured on first use.</summary>
    public static GemmChoice For(int threads) => Chosen.GetOrAdd(threads, t => new Lazy<GemmChoice>(() => Tune(t))).Value;

    /// <summary>Candidate (path, blocking) pairs this machine runs natively.</summary>
    public static IReadOnlyList<(GemmPath Path, GemmBlocking Blocking)> Candidates()
    {
        var paths = new[] { GemmPath.Vector512, GemmPath.Vector256 }.Where(p => p <= CpuMatmul.HardwarePath && CpuMatmul.IsSupported(p)).ToList();
        if (paths.Count == 0) paths.Add(CpuMatmul.HardwarePath);
        var list = new List<(GemmPath, GemmBlocking)>();
        foreach (var path in paths)
        {
            foreach (int kc in BlockDepths)
                foreach (int rows in BlockRows)
                    foreach (int nc in PanelColumns)
                        list.Add((path, new GemmBlocking(kc, GemmBlocking.PanelsOf(rows, path), nc)));
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

    /// <summary>Largest K block and A-block rows PALM_GEMM may pin (a worker's packed A block is Kc × rows floats).</summary>
    const int MaxPinned = 4096;

    /// <summary>
    /// The choice PALM_GEMM pins on <paramref name="path"/>: null when it is unset or empty (tune), the defaults for
    /// "default", else KC:ROWS[,KC:ROWS[,KC:ROWS]]; anything else is refused with what it should look like.
    /// </summary>
    internal static GemmChoice? Pinned(string? value, GemmPath path, string cpu)
    {
        if (string.IsNullOrWhiteSpace(value)) return null;
        value = value.Trim();
        if (value == "default") return Untuned(path, cpu);
        var kinds = value.Split(',', StringSplitOptions.TrimEntries);
        var blockings = new List<GemmBlocking>();
        foreach (var kind in kinds)
        {
            var parts = kind.Split(':', StringSplitOptions.TrimEntries);
            if (kinds.Length > 3 || parts.Length != 2 || !int.TryParse(parts[0], out int kc) || !int.TryParse(parts[1], out int rows)
                || kc < 1 || rows < 1 || kc > MaxPinned || rows > MaxPinned)
                throw new Model.ConfigException(
                    $"PALM_GEMM='{value}' is not understood: give 'default' (the untuned blocking), or KC:ROWS[,KC:ROWS[,KC:ROWS]] " +
                    $"(K block and A-block rows, each 1 to {MaxPinned}, for the forward calls, then the short and the tall weight " +
                    "gradients; e.g. 512:336,512:168), or leave it unset to let the tuner measure");
            blockings.Add(GemmBlocking.For(path) with { Kc = kc, McPanels = GemmBlocking.PanelsOf(rows, path) });
        }
        var forward = blockings[0];
        var transA = blockings.Count > 1 ? blockings[1] : forward;
        var tall = blockings.Count > 2 ? blockings[2] : forward;
        return new GemmChoice(path, forward, transA, tall, double.NaN, double.NaN, double.NaN, 1, cpu, value);
    }

    /// <summary>The path's default blocking for every kind of call, untimed.</summary>
    static GemmChoice Untuned(GemmPath path, string cpu)
    {
        var blocking = GemmBlocking.For(path);
        return new GemmChoice(path, blocking, blocking, blocking, double.NaN, double.NaN, double.NaN, 1, cpu);
    }

    static GemmChoice Tune(int threads)
    {
        string cpu = CpuName;
        if (Pinned(Environment.GetEnvironmentVariable("PALM_GEMM"), CpuMatmul.HardwarePath, cpu) is { } pinned) return pinned;
        if (CpuMatmul.HardwarePath < GemmPath.Vector256) return Untuned(CpuMatmul.HardwarePath, cpu);

        var candidates = Candidates();
        var problems = new[]
        {
            (M: 1024, N: 2048, K: 512, TransA: false),
            (M: 512, N: 2048, K: 1024, TransA: true),
            (M: 2048, N: 512, K: 1024, TransA: true),
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
        double Flops(int i) => 2.0 * problems[i].M * problems[i].N * problems[i].K;

        // The model's GEMMs find their operands in L3 or memory, not in L2 (each follows other kernels), and that is where
        // the blockings differ most (a deeper K block halves C's traffic): every timing starts after this thread reads an
        // L3-sized buffer, so the problems' operands have left the L3 and this core's L2.
        var evict = new float[CpuMatmul.CacheBytes(3) / sizeof(float)];
        float sink = 0;
        double Time(int i, GemmPath path, GemmBlocking blocking)
        {
            var p = problems[i];
            for (int f = 0; f < evict.Length; f += 16) sink += evict[f];
            long t0 = Stopwatch.GetTimestamp();
            CpuMatmul.Run(threads, data[i].C, data[i].A, data[i].B, p.M, p.N, p.K, p.TransA, false, 1f, p.TransA, path, blocking);
            return Stopwatch.GetElapsedTime(t0).TotalSeconds;
        }

        // times[c][i][r]: candidate c's timing of problem i in round r. In each round the candidates run one problem
        // after another, so the timings compared below lie tens of milliseconds apart.
        var times = new double[candidates.Count][][];
        void Measure(IReadOnlyList<int> which)
        {
            foreach (int c in which)   // compile every kernel and warm the pack buffers
            {
                times[c] = new double[problems.Length][];
                for (int i = 0; i < problems.Length; i++) { Time(i, candidates[c].Path, candidates[c].Blocking); times[c][i] = new double[Rounds]; }
            }
            for (int round = 0; round < Rounds; round++)
                for (int i = 0; i < problems.Length; i++)
                    foreach (int c in which)
                        times[c][i][round] = Time(i, candidates[c].Path, candidates[c].Blocking);
        }
        // How much faster c ran than the reference on the problems given: the median over the rounds of the ratio of their
        // times in that round. A stall on a shared machine slows one or two timings, and so one round's ratio, which the
        // median leaves out. (Load that lasts leaves no timing clean: beside a bursty load of about half a core, 2 vCPUs,
        // the choice still varied from process to process, as it did with the best timings compared.)
        double Speedup(int c, int reference, params int[] which)
        {
            var ratios = Enumerable.Range(0, Rounds).Select(r => which.Sum(i => times[reference][i][r]) / which.Sum(i => times[c][i][r])).Order().ToArray();
            return ratios[Rounds / 2];   // Rounds is odd
        }
        int[] all = Enumerable.Range(0, problems.Length).ToArray();
        // A shared machine can stall any one timing, so the tuner only leaves a default for a clear win. First the path:
        // each path's default blocking, the widest (candidate 0) kept unless a narrower one is NarrowerMargin faster over
        // all problems (a narrower kernel has half the FMA width).
        var defaults = Enumerable.Range(0, candidates.Count).Where(c => candidates[c].Blocking == GemmBlocking.For(candidates[c].Path)).ToList();
        Measure(defaults);
        int pathWinner = defaults.Where(c => c != 0 && Speedup(c, 0, all) >= NarrowerMargin).DefaultIfEmpty(0).MaxBy(c => c == 0 ? 1 : Speedup(c, 0, all));
        var path = candidates[pathWinner].Path;
        // Then every blocking on that path, and each kind of call its own: the path's default unless another is
        // SameWidthMargin faster on that kind's problem.
        var onPath = Enumerable.Range(0, candidates.Count).Where(c => candidates[c].Path == path).ToList();
        int fallback = defaults.First(c => candidates[c].Path == path);
        Measure(onPath);
        int Winner(int i) => onPath.Where(c => c != fallback && Speedup(c, fallback, i) >= SameWidthMargin).DefaultIfEmpty(fallback)
            .MaxBy(c => c == fallback ? 1 : Speedup(c, fallback, i));
        int forward = Winner(0), transA = Winner(1), tall = Winner(2);
        double Gflops(int c, int i) => Flops(i) / times[c][i].Min() / 1e9;
        GC.KeepAlive(sink);
        return new GemmChoice(path, candidates[forward].Blocking, candidates[transA].Blocking, candidates[tall].Blocking,
                              Gflops(forward, 0), Gflops(transA, 1), Gflops(tall, 2),
                              defaults.Union(onPath).Count(), cpu);
    }
}
