using System.Diagnostics;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Training;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// Our GEMM under several cache blockings side by side, to check what the tuner picks:
/// `gemm-blocking [threads] [match] [kc:rows:nc ...]` (default: the tuner's defaults and its deeper K block, with 168-
/// and 336-row A blocks). The blockings take turns call by call on each shape (the GemmBenchmarks shapes whose name
/// contains match; the call gemm-quick times, weight gradients accumulating), each after the caches have been evicted,
/// as a training step finds its operands; best and median of the rounds. Every blocking gives the same bits, so the
/// only difference is time.
/// </summary>
public static class GemmBlockingQuick
{
    const int Rounds = 9;

    public static void Run(int threads, string match, IReadOnlyList<string> specs)
    {
        var choice = GemmTuner.For(threads);
        var path = choice.Path;
        var (mr, _) = CpuMatmul.TileOf(path);
        if (specs.Count == 0) specs = [$"{GemmBlocking.DefaultKc}:168:4096", $"{GemmBlocking.DeepKc}:168:4096", $"{GemmBlocking.DefaultKc}:336:4096", $"{GemmBlocking.DeepKc}:336:4096"];
        var blockings = specs.Select(s => Parse(s, path)).ToList();
        Console.WriteLine($"{path} {mr}-row tiles, {threads} thread(s); the tuner chose: {choice.Description}");
        Console.WriteLine($"{"shape",-32} " + string.Join(" ", specs.Select(s => $"{s + " best/median",26}")));
        foreach (var shape in GemmBenchmarks.Shapes().Where(s => s.Name.Contains(match, StringComparison.OrdinalIgnoreCase)))
        {
            var bench = new GemmBenchmarks { Shape = shape, Threads = threads };
            bench.Setup();
            var times = blockings.Select(_ => new List<double>()).ToArray();
            for (int round = 0; round <= Rounds; round++)
                for (int i = 0; i < blockings.Count; i++)
                {
                    KernelCases.EvictCaches();
                    long t0 = Stopwatch.GetTimestamp();
                    bench.Matmul(path, blockings[i]);
                    if (round > 0) times[i].Add(Stopwatch.GetElapsedTime(t0).TotalSeconds);   // round 0 warms up
                }
            Console.WriteLine($"{shape.Name,-32} " + string.Join(" ", times.Select(t =>
                $"{shape.Flops / t.Min() / 1e9,12:F1} / {shape.Flops / Statistics.Median(t) / 1e9,-11:F1}")));
        }
    }

    static GemmBlocking Parse(string spec, GemmPath path)
    {
        var parts = spec.Split(':');
        if (parts.Length != 3 || !parts.All(p => int.TryParse(p, out int v) && v > 0))
            throw new ArgumentException($"gemm-blocking: '{spec}' is not KC:ROWS:NC (three positive integers, e.g. 512:336:4096)");
        return new GemmBlocking(int.Parse(parts[0]), GemmBlocking.PanelsOf(int.Parse(parts[1]), path), int.Parse(parts[2]));
    }
}
