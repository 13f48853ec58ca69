using System.CommandLine;
using System.Text.Json;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Model;
using Palm.Gpu.Research;

namespace Palm.Cli;

/// <summary>
/// `palm bench`: end-to-end training-step throughput on random tokens (no data needed): warm-up steps,
/// then timed steps, then a separate profiled pass. The first stdout line is one JSON object with
/// tokens/s, model FLOPs per token, GFLOP/s and MFU (from the unprofiled steps), the per-kernel breakdown
/// ("ops", "phases") and memory ("memory"); a readable table of the breakdown follows it.
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
        var profileSteps = new Option<int>("--profile-steps") { Description = "steps of the separate profiled pass (every kernel timed); 0 skips it", DefaultValueFactory = _ => 1 };
        var noTable = new Option<bool>("--no-table") { Description = "print only the JSON line" };
        var cmd = new Command("bench", "measure training throughput and MFU, with a per-kernel time breakdown and the memory high-water mark")
        {
            preset, batch, warmup, steps, seq, block, attention, remat, backend, device, threads, peak, profileSteps, noTable,
        };
        var shape = new Cli.ShapeOptions();
        foreach (var o in shape.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            var c = shape.Apply(Cli.Resolve(r.GetValue(preset)!, r.GetValue(block), r.GetValue(attention), r.GetValue(remat), r.GetValue(seq)), r);
            int b = r.GetValue(batch), timed = r.GetValue(steps), warm = r.GetValue(warmup), profiled = r.GetValue(profileSteps);
            if (b < 1 || timed < 1 || warm < 0 || profiled < 0) throw new ConfigException("--batch and --steps must be ≥ 1, --warmup and --profile-steps ≥ 0");
            using var be = BackendFactory.Create(r.GetValue(backend)!, r.GetValue(device), r.GetValue(threads));
            double peakGflops = r.GetValue(peak) > 0 ? r.GetValue(peak) : Peak.Measure(be);
            var res = StepBenchmark.Run(be, c, b, warm, timed, profiled, peakGflops);
            Console.WriteLine(Json(res, r.GetValue(preset)!));
            if (profiled > 0 && !r.GetValue(noTable)) Console.Write(StepBreakdown.Text(res));
            return 0;
        }));
        return cmd;
    }

    static double R(double x, int digits) => double.IsFinite(x) ? Math.Round(x, digits) : 0;

    internal static string Json(StepBenchmarkResult res, string preset)
    {
        var c = res.Config;
        int steps = Math.Max(1, res.ProfiledSteps);
        var m = res.Memory;
        var result = new
        {
            preset,
            backend = res.Backend,
            device = res.Device,
            block = c.Block.ToString().ToLowerInvariant(),
            attention = c.Attention.ToString().ToLowerInvariant(),
            remat = c.Rematerialize,
            batch = res.Batch,
            seq = c.SeqLen,
            parameters = res.Parameters,
            step_seconds = R(res.MeanStepSeconds, 4),
            step_seconds_min = R(res.StepSeconds.Min(), 4),
            tokens_per_s = R(res.TokensPerSecond, 1),
            flops_per_token = res.FlopsPerToken,
            achieved_gflops = R(res.AchievedGflops, 1),
            peak_gflops = R(res.PeakGflops, 1),
            mfu = R(res.Mfu, 4),
            profiled_steps = res.ProfiledSteps,
            profiled_step_seconds = R(res.ProfiledStepSeconds, 4),
            phases = new
            {
                forward_s = R(res.PhaseSeconds(ProfilePhase.Forward), 5),
                backward_s = R(res.PhaseSeconds(ProfilePhase.Backward), 5),
                optimizer_s = R(res.PhaseSeconds(ProfilePhase.Optimizer), 5),
                collectives_s = R(res.PhaseSeconds(ProfilePhase.Collectives), 5),
                other_s = R(res.PhaseSeconds(ProfilePhase.Other), 5),
            },
            ops = res.Ops.Select(o => new
            {
                kernel = o.Kernel,
                phase = o.Phase.ToString().ToLowerInvariant(),
                calls_per_step = R((double)o.Calls / steps, 2),
                seconds_per_step = R(o.Seconds / steps, 6),
                gflop_per_step = R(o.Flops / steps / 1e9, 4),
                gbytes_per_step = R(o.Bytes / steps / 1e9, 4),
                gflops = R(o.Gflops, 2),
                gbps = R(o.GBps, 2),
            }),
            memory = new
            {
                high_water_bytes = m.HighWaterBytes,
                parameter_bytes = m.ParameterBytes,
                gradient_bytes = m.GradientBytes,
                optimizer_bytes = m.OptimizerBytes,
                activation_bytes = m.ActivationBytes,
                process_peak_bytes = m.ProcessPeakBytes,
            },
        };
        return JsonSerializer.Serialize(result);
    }
}
