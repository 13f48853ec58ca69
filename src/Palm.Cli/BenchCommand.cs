using System.CommandLine;
using System.Text.Json;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Model;
using Palm.Gpu.Research;
using Palm.Gpu.Training;

namespace Palm.Cli;

/// <summary>
/// `palm bench`: end-to-end training-step throughput on random tokens (no data needed): warm-up steps,
/// then timed steps, then a separate profiled pass. The first stdout line is one JSON object with
/// tokens/s, model FLOPs per token, GFLOP/s and MFU (from the unprofiled steps), the per-kernel breakdown
/// ("ops", "phases") and memory ("memory"); a readable table of the breakdown follows it.
/// </summary>
internal static class BenchCommand
{
    /// <summary>
    /// KV-cache generation on random weights: b prompts of a quarter of the window, then decoding (temperature 1,
    /// every token) until the window is full; one untimed warm-up call first. One JSON line.
    /// </summary>
    static string BenchGenerate(IBackend be, ModelConfig c, int b, string preset)
    {
        var tok = new ByteTokenizer();
        if (c.Vocab < tok.VocabSize) throw new ConfigException($"bench --generate uses the byte tokenizer ({tok.VocabSize} tokens); the shape's vocab is {c.Vocab}");
        using var model = new PalmModel(be, c with { Rematerialize = false }, b);
        model.Initialize(1);
        using var gen = new Palm.Gpu.Inference.KvCacheGenerator(model, tok);
        string text = string.Concat(Enumerable.Repeat("ROMEO: ", c.SeqLen / 4 / 7 + 1))[..Math.Max(1, c.SeqLen / 4)];
        var prompts = Enumerable.Repeat(text, b).ToArray();
        int tokens = c.SeqLen - 1 - tok.Encode(text).Length;
        var sampling = new Palm.Gpu.Inference.SamplingOptions(1f);
        gen.Generate(prompts, Math.Min(tokens, 4), sampling, 1);   // warm-up: kernels compiled, buffers touched
        gen.Generate(prompts, tokens, sampling, 1);
        var (prefill, decode, decoded) = gen.LastTiming;
        return JsonSerializer.Serialize(new
        {
            bench = "generate", preset, backend = be.Name, device = be.DeviceName, attention = c.Attention.ToString(), batch = b,
            d_model = c.DModel, layers = c.Layers, heads = c.Heads, kv_heads = c.KvHeads, head_dim = c.HeadDim, window = c.SeqLen,
            prompt_tokens = b * (tok.Encode(text).Length + 1), prefill_s = prefill,
            prefill_tokens_per_s = b * (tok.Encode(text).Length + 1) / Math.Max(prefill, 1e-9),
            decoded_tokens = decoded, decode_s = decode, decode_tokens_per_s = decoded / Math.Max(decode, 1e-9),
            kv_cache_bytes_per_token = gen.CacheBytesPerToken, kv_cache_bytes = gen.CacheBytes,
        });
    }

    public static Command Create()
    {
        var preset = Cli.Preset();
        var batch = new Option<int>("--batch") { Description = "sequences per step", DefaultValueFactory = _ => 4 };
        var warmup = new Option<int>("--warmup") { Description = "untimed steps first", DefaultValueFactory = _ => 1 };
        var steps = new Option<int>("--steps") { Description = "timed steps", DefaultValueFactory = _ => 3 };
        var seq = Cli.Seq();
        var block = Cli.Block();
        block.Description = "parallel (PaLM) or serial blocks; a list (parallel,serial) builds each and steps them in turn in one process, then prints each one's tokens/s and their ratio";
        var attention = Cli.Attention();
        var remat = Cli.Remat();
        var backend = Cli.Backend();
        var device = Cli.Device();
        var threads = Cli.Threads();
        var peak = Cli.PeakGflops();
        var profileSteps = new Option<int>("--profile-steps") { Description = "steps of the separate profiled pass (every kernel timed); 0 skips it", DefaultValueFactory = _ => 1 };
        var noTable = new Option<bool>("--no-table") { Description = "print only the JSON line" };
        var generate = new Option<bool>("--generate") { Description = "measure KV-cache generation instead (random weights): prefill and decode tokens/s, KV-cache bytes per token; one JSON line" };
        var cmd = new Command("bench", "measure training throughput and MFU, with a per-kernel time breakdown and the memory high-water mark")
        {
            preset, batch, warmup, steps, seq, block, attention, remat, backend, device, threads, peak, profileSteps, noTable, generate,
        };
        var shape = new Cli.ShapeOptions();
        foreach (var o in shape.All) cmd.Options.Add(o);
        var mesh = new MeshOptions();
        foreach (var o in mesh.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            Cli.CheckDevice(r.GetValue(backend)!, r.GetValue(device), r.GetResult(device) is { Implicit: false });
            if (r.GetValue(block) is { } blocks && blocks.Contains(','))
            {
                var names = blocks.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
                if (names.Length < 2 || names.Distinct().Count() != names.Length)
                    throw new ConfigException($"--block {blocks}: give two or more different blocks to compare, e.g. --block parallel,serial");
                if (mesh.Parse(r) is not null || r.GetValue(generate))
                    throw new ConfigException("--block with a list compares training steps on one device; leave out --mesh and --generate");
                var configs = names.Select(name => shape.Apply(Cli.Resolve(r.GetValue(preset)!, name, r.GetValue(attention), r.GetValue(remat), r.GetValue(seq)), r)).ToList();
                int cb = r.GetValue(batch), ct = r.GetValue(steps), cw = r.GetValue(warmup);
                using var cbe = BackendRegistry.Create(r.GetValue(backend)!, r.GetValue(device), r.GetValue(threads));
                double cpeak = r.GetValue(peak) > 0 ? r.GetValue(peak) : BackendRegistry.MeasurePeakGflops(cbe);
                var results = StepBenchmark.Interleaved(cbe, configs, cb, cw, ct, cpeak);
                Console.WriteLine(CompareJson(results, r.GetValue(preset)!));
                if (!r.GetValue(noTable)) Console.Write(CompareText(results));
                foreach (var x in results)
                    if (BusyNote(x.StepSeconds, x.Mfu, $"{x.Config.Block.ToString().ToLowerInvariant()} block's ") is { } busy) Console.Error.WriteLine(busy);
                return 0;
            }
            var c = shape.Apply(Cli.Resolve(r.GetValue(preset)!, r.GetValue(block), r.GetValue(attention), r.GetValue(remat), r.GetValue(seq)), r);
            int b = r.GetValue(batch), timed = r.GetValue(steps), warm = r.GetValue(warmup), profiled = r.GetValue(profileSteps);
            if (b < 1 || timed < 1 || warm < 0 || profiled < 0) throw new ConfigException("--batch and --steps must be ≥ 1, --warmup and --profile-steps ≥ 0");
            if (mesh.Parse(r) is { } m)
                return BenchMesh(c, b, warm, timed, r.GetValue(backend)!, r.GetValue(threads), r.GetValue(peak), m.Data, m.Model, r.GetValue(mesh.ShardWeights), r.GetValue(preset)!,
                                 mesh.Transport(r));
            if (r.GetValue(generate))
            {
                using var gbe = BackendRegistry.Create(r.GetValue(backend)!, r.GetValue(device), r.GetValue(threads));
                Console.WriteLine(BenchGenerate(gbe, c, b, r.GetValue(preset)!));
                return 0;
            }
            using var be = BackendRegistry.Create(r.GetValue(backend)!, r.GetValue(device), r.GetValue(threads));
            double peakGflops = r.GetValue(peak) > 0 ? r.GetValue(peak) : BackendRegistry.MeasurePeakGflops(be);
            var res = StepBenchmark.Run(be, c, b, warm, timed, profiled, peakGflops);
            Console.WriteLine(Json(res, r.GetValue(preset)!));
            if (BusyNote(res.StepSeconds, res.Mfu) is { } note) Console.Error.WriteLine(note);
            if (profiled > 0 && !r.GetValue(noTable)) Console.Write(StepBreakdown.Text(res));
            return 0;
        }));
        return cmd;
    }

    /// <summary>
    /// Training-step throughput on a device mesh, with the wall time spent inside collectives. On CPU the
    /// logical devices share the machine's cores, so MFU is against the one machine peak.
    /// </summary>
    static int BenchMesh(ModelConfig c, int batch, int warm, int timed, string backend, int threads, double peak, int data, int model, bool shard, string preset,
                         Palm.Gpu.Sharding.CollectiveTransport transport)
    {
        Palm.Gpu.Sharding.DeviceMesh.Validate(c, data, model, batch);
        using var devices = Palm.Gpu.Sharding.DeviceMesh.Create(backend, data, model, threads > 0 ? Math.Max(1, threads / (data * model)) : 0, transport);
        using var trainer = new Palm.Gpu.Sharding.MeshTrainer(devices, c, batch, new Palm.Gpu.Training.AdafactorConfig(), 1, shard);
        double peakGflops = peak > 0 ? peak : trainer.MeasurePeakGflops();
        var times = new List<double>();
        double collectiveSeconds = 0;
        long syncs = 0;   // summed over the mesh's devices, without the timing's own Synchronize
        for (int i = 0; i < warm + timed; i++)
        {
            var (inputs, targets) = Palm.Gpu.Sharding.MeshTrainer.SyntheticBatch(c, batch, 7, i);
            devices.Counters.Reset();
            var sw = System.Diagnostics.Stopwatch.StartNew();
            long syncs0 = devices.Devices.Sum(d => d.HostSyncs);
            trainer.TrainStep(inputs, targets);
            if (i >= warm) syncs += devices.Devices.Sum(d => d.HostSyncs) - syncs0;
            foreach (var d in devices.Devices) d.Synchronize();
            if (i >= warm) { times.Add(sw.Elapsed.TotalSeconds); collectiveSeconds += devices.Counters.Elapsed.TotalSeconds; }
        }
        // One more step with every collective waiting (untimed) for its ranks' queued kernels first: the collectives'
        // own time. The plain steps' figure also holds waits for compute still queued on asynchronous devices.
        devices.Counters.Reset();
        devices.Counters.DrainBeforeTiming = true;
        var (xs, ys) = Palm.Gpu.Sharding.MeshTrainer.SyntheticBatch(c, batch, 7, warm + timed);
        trainer.TrainStep(xs, ys);
        foreach (var d in devices.Devices) d.Synchronize();
        double ownSeconds = devices.Counters.Elapsed.TotalSeconds;
        devices.Counters.DrainBeforeTiming = false;
        var counters = devices.Counters;
        var (allReduceGroup, allReduceSeconds) = AllReduceSeconds(devices, AllReduceFloats);
        double seconds = times.Average(), tps = batch * c.SeqLen / seconds;
        double gflops = tps * ModelMath.TrainingFlopsPerToken(c) / 1e9;
        Console.WriteLine(JsonSerializer.Serialize(new
        {
            preset, backend, mesh = $"{data}x{model}", shard_weights = shard, batch, seq = c.SeqLen,
            step_seconds = Seconds(seconds), tokens_per_s = R(tps, 1), achieved_gflops = R(gflops, 1), peak_gflops = R(peakGflops, 1),
            mfu = R(gflops / peakGflops, 4),
            host_syncs_per_step = R((double)syncs / timed, 2),
            collectives = new
            {
                transport = devices.Transport.ToString().ToLowerInvariant(),
                seconds_per_step = Seconds(collectiveSeconds / timed), share = R(collectiveSeconds / timed / seconds, 4),
                own_seconds_per_step = Seconds(ownSeconds),
                all_reduce = counters.AllReduce, all_gather = counters.AllGather, reduce_scatter = counters.ReduceScatter,
                broadcast = counters.Broadcast, bytes_per_rank = counters.BytesPerRank,
            },
            processes = devices.Processes?.Count ?? 1,
            all_reduce = new
            {
                group = allReduceGroup, floats = AllReduceFloats, seconds = Seconds(allReduceSeconds),
                // Algorithm bandwidth: the buffer's bytes over the time of one all-reduce (NCCL's "algbw").
                gb_per_s = R(4.0 * AllReduceFloats / allReduceSeconds / 1e9, 3),
            },
        }));
        Console.Error.WriteLine($"all-reduce of {AllReduceFloats:N0} floats over the {allReduceGroup} group: {allReduceSeconds * 1000:F2} ms, {4.0 * AllReduceFloats / allReduceSeconds / 1e9:F3} GB/s " +
                                $"({(devices.Processes is { } procs ? $"across {procs.Count} processes" : "in one process")})");
        Console.Error.WriteLine($"collectives: {collectiveSeconds / timed * 1000:F1} ms per step via {devices.TransportDescription} ({100 * collectiveSeconds / timed / seconds:F1}% of the step, summed over groups; " +
                                $"{ownSeconds * 1000:F1} ms of it the collectives' own, with queued kernels drained first; last step: {counters.AllReduce} all-reduce, {counters.AllGather} all-gather, {counters.ReduceScatter} reduce-scatter, {counters.BytesPerRank:N0} bytes per rank)");
        return 0;
    }

    /// <summary>Buffer of the all-reduce throughput probe: 4 MiB, a large layer's gradient piece.</summary>
    const int AllReduceFloats = 1 << 20;

    /// <summary>
    /// Best time of one all-reduce of <paramref name="floats"/> values over the data group (the model group when the
    /// data axis is 1), every rank at once: in one process it is the host rendezvous, across processes the
    /// hierarchical host + MPI exchange, so the two `palm bench --mesh` runs compare the transports.
    /// </summary>
    static (string Group, double Seconds) AllReduceSeconds(Palm.Gpu.Sharding.DeviceMesh mesh, int floats)
    {
        bool data = mesh.Data > 1;
        var buffers = mesh.Ranks.Select((r, i) =>
        {
            var b = r.Backend.Allocate($"allreduce-probe{i}", floats);
            r.Backend.Upload(b, Enumerable.Range(0, floats).Select(k => (float)(k % 97) * 0.01f).ToArray());
            return b;
        }).ToArray();
        try
        {
            double best = double.MaxValue;
            for (int rep = 0; rep < 6; rep++)
            {
                var sw = System.Diagnostics.Stopwatch.StartNew();
                mesh.Runner.Run(i => (data ? mesh.Ranks[i].DataGroup : mesh.Ranks[i].ModelGroup).AllReduce(buffers[i], floats));
                foreach (var d in mesh.Devices) d.Synchronize();
                if (rep > 0) best = Math.Min(best, sw.Elapsed.TotalSeconds);   // the first builds staging
            }
            return (data ? "data" : "model", best);
        }
        finally { foreach (var b in buffers) b.Dispose(); }
    }

    /// <summary>One JSON line for an interleaved comparison: each variant's step times, and tokens/s relative to the last variant.</summary>
    internal static string CompareJson(IReadOnlyList<StepBenchmarkResult> results, string preset)
    {
        var last = results[^1];
        return JsonSerializer.Serialize(new
        {
            bench = "compare", preset, backend = last.Backend, device = last.Device, batch = last.Batch, seq = last.Config.SeqLen,
            steps = last.StepSeconds.Length, peak_gflops = R(last.PeakGflops, 1),
            variants = results.Select(x => new
            {
                block = x.Config.Block.ToString().ToLowerInvariant(),
                attention = System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(x.Config.Attention.ToString()),
                remat = x.Config.Rematerialize,
                step_seconds = Seconds(x.MeanStepSeconds), step_seconds_min = Seconds(x.StepSeconds.Min()), step_seconds_median = Seconds(x.MedianStepSeconds),
                tokens_per_s = R(x.TokensPerSecond, 1), achieved_gflops = R(x.AchievedGflops, 1), mfu = R(x.Mfu, 4),
                tokens_per_s_vs_last = R(x.TokensPerSecond / last.TokensPerSecond, 4),
                median_step_vs_last = R(last.MedianStepSeconds / x.MedianStepSeconds, 4),
            }),
            memory_high_water_bytes = last.Memory.HighWaterBytes,
        });
    }

    static string CompareText(IReadOnlyList<StepBenchmarkResult> results)
    {
        var last = results[^1];
        var sb = new System.Text.StringBuilder();
        sb.AppendLine($"{results.Count} variants stepped in turn, {last.StepSeconds.Length} timed steps each (ratios against {last.Config.Block.ToString().ToLowerInvariant()})");
        sb.AppendLine($"{"block",-10} {"tokens/s",9} {"mean ms",8} {"median ms",9} {"best ms",8} {"MFU",6} {"tokens/s ×",10} {"median ×",9}");
        foreach (var x in results)
            sb.AppendLine($"{x.Config.Block.ToString().ToLowerInvariant(),-10} {x.TokensPerSecond,9:F1} {x.MeanStepSeconds * 1e3,8:F1} {x.MedianStepSeconds * 1e3,9:F1} {x.StepSeconds.Min() * 1e3,8:F1} " +
                          $"{100 * x.Mfu,5:F1}% {x.TokensPerSecond / last.TokensPerSecond,10:F3} {last.MedianStepSeconds / x.MedianStepSeconds,9:F3}");
        return sb.ToString();
    }

    static double R(double x, int digits) => double.IsFinite(x) ? Math.Round(x, digits) : 0;
    /// <summary>Seconds to the microsecond: a tiny model's 3 ms step rounded to 0.1 ms would be off by 1.5%.</summary>
    static double Seconds(double x) => R(x, 6);

    /// <summary>
    /// A line for stderr when the timed steps varied so much that something else took part of the cores' time: the mean
    /// (what tokens/s and MFU are of) is then low by about the spread, and the best step says what the machine gives
    /// alone. Null when the steps agree, or there is only one.
    /// </summary>
    internal static string? BusyNote(IReadOnlyList<double> stepSeconds, double mfu, string whose = "")
    {
        if (stepSeconds.Count < 2) return null;
        double best = stepSeconds.Min(), worst = stepSeconds.Max(), mean = stepSeconds.Average();
        double spread = Statistics.SpreadAboveBest(mean, best);
        if (!(spread >= Statistics.BusySpread)) return null;
        string advice = whose.Length == 0
            ? "Measure again at a quieter time, or compare configurations in one run (--block parallel,serial)."
            : "The blocks stepped in turn, so their ratio is less affected than either rate; measure again at a quieter time to be sure.";
        return $"palm: note: the {whose}{stepSeconds.Count} timed steps took {best:F3}–{worst:F3} s, their mean {100 * spread:F0}% above the best: " +
               $"{(best < 0.1 ? "something else (other processes, or a pause of the runtime on steps this short)" : "other processes")} took part of the cores' time, so tokens/s and MFU " +
               $"(of the mean) read low by about that much; the best step alone gives {100 * mfu * mean / best:F1}% MFU. {advice}";
    }

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
            attention = System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(c.Attention.ToString()),
            remat = c.Rematerialize,
            batch = res.Batch,
            seq = c.SeqLen,
            parameters = res.Parameters,
            step_seconds = Seconds(res.MeanStepSeconds),
            step_seconds_min = Seconds(res.StepSeconds.Min()),
            tokens_per_s = R(res.TokensPerSecond, 1),
            flops_per_token = res.FlopsPerToken,
            achieved_gflops = R(res.AchievedGflops, 1),
            peak_gflops = R(res.PeakGflops, 1),
            mfu = R(res.Mfu, 4),
            host_syncs_per_step = R(res.HostSyncsPerStep, 2),
            profiled_steps = res.ProfiledSteps,
            profiled_step_seconds = Seconds(res.ProfiledStepSeconds),
            phases = new
            {
                forward_s = Seconds(res.PhaseSeconds(ProfilePhase.Forward)),
                backward_s = Seconds(res.PhaseSeconds(ProfilePhase.Backward)),
                optimizer_s = Seconds(res.PhaseSeconds(ProfilePhase.Optimizer)),
                collectives_s = Seconds(res.PhaseSeconds(ProfilePhase.Collectives)),
                other_s = Seconds(res.PhaseSeconds(ProfilePhase.Other)),
            },
            ops = res.Ops.Select(o => new
            {
                kernel = o.Kernel,
                phase = o.Phase.ToString().ToLowerInvariant(),
                calls_per_step = R((double)o.Calls / steps, 2),
                seconds_per_step = Seconds(o.Seconds / steps),
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
