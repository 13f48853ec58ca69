using System.CommandLine;
using System.Diagnostics;
using System.Text.Json;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Cli;

/// <summary>
/// `palm bench`: end-to-end training-step throughput on random tokens (no data needed): warm-up steps,
/// then timed steps; prints one JSON line with tokens/s, model FLOPs per token, GFLOP/s and MFU.
/// </summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var preset = Cli.Preset();
        var batch = new Option<int>("--batch") { Description = "sequences per step", DefaultValueFactory = _ => 4 };
        var warmup = new Option<int>("--warmup") { Description = "untimed steps first", DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "timed steps", DefaultValueFactory = _ => 3 };
        var seq = Cli.Seq();
        var block = Cli.Block();
        var attention = Cli.Attention();
        var remat = Cli.Remat();
        var backend = Cli.Backend();
        var device = Cli.Device();
        var threads = Cli.Threads();
        var peak = Cli.PeakGflops();
        var cmd = new Command("bench", "measure training throughput and MFU") { preset, batch, warmup, steps, seq, block, attention, remat, backend, device, threads, peak };
        var shape = new Cli.ShapeOptions();
        foreach (var o in shape.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            var c = shape.Apply(Cli.Resolve(r.GetValue(preset)!, r.GetValue(block), r.GetValue(attention), r.GetValue(remat), r.GetValue(seq)), r);
            int b = r.GetValue(batch), timed = r.GetValue(steps), warm = r.GetValue(warmup);
            if (b < 1 || timed < 1 || warm < 0) throw new ConfigException("--batch and --steps must be ≥ 1 and --warmup ≥ 0");
            using var be = BackendFactory.Create(r.GetValue(backend)!, r.GetValue(device), r.GetValue(threads));
            double peakGflops = r.GetValue(peak) > 0 ? r.GetValue(peak) : Peak.Measure(be);
            using var model = new PalmModel(be, c, b);
            model.Parameters.Initialize(be, 1);
            using var opt = new AdafactorOptimizer(be, model.Parameters, new AdafactorConfig());
            var rng = new SplitMix64(7);
            int n = b * c.SeqLen;
            var inputs = new int[n];
            var targets = new int[n];
            for (int i = 0; i < n; i++) { inputs[i] = (int)(rng.Next() % (ulong)c.Vocab); targets[i] = (int)(rng.Next() % (ulong)c.Vocab); }

            double Step(long k)
            {
                var sw = Stopwatch.StartNew();
                model.Parameters.ZeroGradients(be);
                model.Forward(inputs, targets, b);
                model.Backward();
                opt.Step(k, opt.GradientNorm());
                be.Synchronize();
                return sw.Elapsed.TotalSeconds;
            }
            for (int i = 0; i < warm; i++) Step(i + 1);
            var times = Enumerable.Range(0, timed).Select(i => Step(warm + i + 1)).ToArray();
            double seconds = times.Average();
            double flopsPerToken = ModelMath.TrainingFlopsPerToken(c);
            double tps = n / seconds;
            double gflops = tps * flopsPerToken / 1e9;
            var result = new
            {
                preset = r.GetValue(preset),
                backend = be.Name,
                device = be.DeviceName,
                block = c.Block.ToString().ToLowerInvariant(),
                attention = c.Attention.ToString().ToLowerInvariant(),
                remat = c.Rematerialize,
                batch = b,
                seq = c.SeqLen,
                parameters = model.Parameters.Count,
                step_seconds = Math.Round(seconds, 4),
                step_seconds_min = Math.Round(times.Min(), 4),
                tokens_per_s = Math.Round(tps, 1),
                flops_per_token = flopsPerToken,
                achieved_gflops = Math.Round(gflops, 1),
                peak_gflops = Math.Round(peakGflops, 1),
                mfu = Math.Round(gflops / peakGflops, 4),
            };
            Console.WriteLine(JsonSerializer.Serialize(result));
            return 0;
        }));
        return cmd;
    }
}
