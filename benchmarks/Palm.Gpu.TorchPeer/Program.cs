// palm-torch-peer: the model of `palm bench` in libtorch (TorchSharp-cpu), to compare the two on one machine in one run.
// benchmarks/torch-peer.sh builds it, makes libtorch's wrapper load on Debian 12, and alternates it with palm bench.
using System.Diagnostics;
using System.Text.Json;
using Palm.Gpu.Backends;
using Palm.Gpu.Model;
using Palm.Gpu.TorchPeer;
using TorchSharp;
using static TorchSharp.torch;

PeerOptions options;
try { options = PeerOptions.Parse(args); }
catch (HelpRequested) { Console.WriteLine(PeerOptions.Usage); return 0; }
catch (ConfigException e) { Console.Error.WriteLine($"palm-torch-peer: error: {e.Message}"); return 2; }

try
{
    if (!LoadLibtorch(out string? why)) { Console.Error.WriteLine($"palm-torch-peer: error: {why}"); return 2; }
    torch.set_num_threads(options.Threads);
    var config = options.Config();
    var tokens = TokenSource.Open(options.Data, config.Vocab);
    return options.Check ? Check.Run(options, config, tokens) : Bench(options, config, tokens);
}
catch (Exception e) when (e is ConfigException or FileNotFoundException or DirectoryNotFoundException)
{
    Console.Error.WriteLine($"palm-torch-peer: error: {e.Message}");
    return 2;
}

static bool LoadLibtorch(out string? why)
{
    try
    {
        torch.InitializeDeviceType(DeviceType.CPU);
        why = null;
        return true;
    }
    catch (Exception e) when (e is NotSupportedException or DllNotFoundException or TypeInitializationException)
    {
        var inner = e;
        while (inner.InnerException is not null) inner = inner.InnerException;
        why = $"libtorch did not load ({inner.Message}). On Debian 12 the wrapper libLibTorchSharp.so asks for GLIBCXX_3.4.32, newer than " +
              "the system's libstdc++; run benchmarks/torch-peer.sh, which builds this program and marks that requirement weak " +
              "(see benchmarks/README.md, 'libtorch peer')";
        return false;
    }
}

static int Bench(PeerOptions o, ModelConfig c, TokenSource tokens)
{
    // The same peak palm bench divides by: the FMA loop on as many threads as torch gets (its backend freed before timing).
    double peakGflops;
    using (var cpu = BackendRegistry.Create("cpu", 0, o.Threads)) peakGflops = BackendRegistry.MeasurePeakGflops(cpu);

    using var model = new PeerModel(c, o.ComputeType, seed: 1);
    if (model.ParameterCount != ModelMath.Parameters(c))
        throw new InvalidOperationException($"the peer has {model.ParameterCount} parameters, palm's model {ModelMath.Parameters(c)}; the two models differ");
    // Adam stands in for palm's Adafactor (TorchSharp has none); both keep two elementwise states per parameter.
    using var optimizer = torch.optim.Adam(model.Parameters, lr: 1e-3);
    var rng = new Random(7);
    double lastLoss = double.NaN;

    double Step()
    {
        var sw = Stopwatch.StartNew();
        using (torch.NewDisposeScope())
        {
            var (inputs, targets) = tokens.Batch(rng, o.Batch, c.SeqLen);
            optimizer.zero_grad();
            var (loss, _, _) = model.Forward(inputs, targets);
            loss.backward();
            optimizer.step();
            lastLoss = loss.item<float>();
        }
        return sw.Elapsed.TotalSeconds;
    }

    for (int i = 0; i < o.Warmup; i++) Step();
    var times = new double[o.Steps];
    for (int i = 0; i < o.Steps; i++) times[i] = Step();

    double mean = times.Average(), tps = (double)o.Batch * c.SeqLen / mean;
    double flopsPerToken = ModelMath.TrainingFlopsPerToken(c), gflops = tps * flopsPerToken / 1e9;
    static double R(double x, int digits) => double.IsFinite(x) ? Math.Round(x, digits) : 0;
    Console.WriteLine(JsonSerializer.Serialize(new
    {
        preset = o.Preset,
        backend = "libtorch",
        device = $"libtorch {torch.__version__} CPU (TorchSharp {typeof(torch).Assembly.GetName().Version?.ToString(3)})",
        dtype = o.Dtype,
        threads = torch.get_num_threads(),
        block = c.Block.ToString().ToLowerInvariant(),
        attention = JsonNamingPolicy.SnakeCaseLower.ConvertName(c.Attention.ToString()),
        batch = o.Batch,
        seq = c.SeqLen,
        parameters = model.ParameterCount,
        data = tokens.Description,
        optimizer = "adam",
        step_seconds = R(mean, 4),
        step_seconds_min = R(times.Min(), 4),
        tokens_per_s = R(tps, 1),
        flops_per_token = flopsPerToken,
        achieved_gflops = R(gflops, 1),
        peak_gflops = R(peakGflops, 1),
        mfu = R(gflops / peakGflops, 4),
        last_loss = R(lastLoss, 4),
        ld_preload = Environment.GetEnvironmentVariable("LD_PRELOAD") ?? "",
    }));
    Console.Error.WriteLine($"libtorch {o.Dtype}, {torch.get_num_threads()} threads: {tps:F0} tokens/s, {gflops:F1} GFLOP/s, MFU {100 * gflops / peakGflops:F1}% " +
                            $"of {peakGflops:F0} GFLOP/s (mean step {mean * 1000:F0} ms over {o.Steps}, batch {o.Batch} × {c.SeqLen})");
    return 0;
}
