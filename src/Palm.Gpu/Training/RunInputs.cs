using Palm.Gpu.Data;
using Palm.Gpu.Model;

namespace Palm.Gpu.Training;

/// <summary>
/// The inputs every training run resolves the same way, on one device or a mesh: the tokenizer, the
/// model config whose vocabulary follows it, and the packed dataset — each validated with a message
/// that says what to change.
/// </summary>
public static class RunInputs
{
    /// <summary>
    /// Loads the tokenizer and resolves the model's vocabulary: unless fixed, the tokenizer's, rounded up to a multiple
    /// of 64 that the mesh's model axis also divides (as `palm plan` pads it; the extra rows are never targets).
    /// </summary>
    public static (ITokenizer Tokenizer, ModelConfig Config) ResolveModel(ModelConfig requested, TrainOptions options, bool vocabFromTokenizer)
    {
        var tokenizer = options.Tokenizer is null ? new ByteTokenizer() : TokenizerLoader.Load(options.Tokenizer);
        int model = 1;
        if (options.Mesh is not null) model = Sharding.DeviceMesh.Parse(options.Mesh).Model;
        long multiple = 64L * model / (long)System.Numerics.BigInteger.GreatestCommonDivisor(64, model);
        var config = (vocabFromTokenizer ? requested with { Vocab = (int)((tokenizer.VocabSize + multiple - 1) / multiple * multiple) } : requested).Validate();
        if (tokenizer.VocabSize > config.Vocab)
            throw new ConfigException($"the tokenizer has {tokenizer.VocabSize} tokens but the model's vocab is {config.Vocab}; raise --vocab or drop it to follow the tokenizer");
        return (tokenizer, config);
    }

    /// <summary>Packs --data (or the built-in corpus) into sequences of the config's length; at least one largest batch must fit.</summary>
    public static PackedDataset LoadDataset(ModelConfig config, ITokenizer tokenizer, TrainOptions options, BatchSchedule schedule)
    {
        var dataset = options.Data is null
            ? PackedDataset.FromDocuments(SyntheticCorpus.Generate(), tokenizer, config.SeqLen, options.HeldOutFraction)
            : PackedDataset.Load(options.Data, tokenizer, config.SeqLen, options.HeldOutFraction);
        if (dataset.TrainSequences < schedule.Max)
        {
            long have = dataset.TrainSequences;
            dataset.Dispose();
            throw new DataException($"the data holds {have} training sequences of {config.SeqLen} tokens, fewer than one batch of {schedule.Max}; use a shorter --seq, a smaller --batch or more data");
        }
        return dataset;
    }

    /// <summary>
    /// Refuses, before anything is allocated, a run whose weights, gradients, optimizer state and activations
    /// (<see cref="Sharding.MeshPlan"/>'s figures) do not fit the memory there is: host memory for the CPU backend
    /// (all its logical devices share it, as do ILGPU's CPU accelerators), each device's memory for OpenCL and ILGPU
    /// GPUs. The message gives the figure
    /// and what would fit.
    /// </summary>
    /// <summary>True when the ILGPU run's devices are CPU accelerators (the chosen device, or a mesh on a machine without ILGPU GPUs).</summary>
    static bool IlgpuRunsOnHost(TrainOptions options, int devices)
    {
        var listed = Backends.BackendRegistry.Get("ilgpu").ListDevices().Where(d => d.Available).ToList();
        if (options.Mesh is not null) return listed.Count(d => !d.Kind.Contains("simulator")) < devices;
        return options.Device < listed.Count && listed[options.Device].Kind.Contains("simulator");
    }

    public static void CheckMemory(ModelConfig config, TrainOptions options, BatchSchedule schedule, long? availableOverride = null)
    {
        var (data, model) = options.Mesh is null ? (1, 1) : Sharding.DeviceMesh.Parse(options.Mesh);
        int perRank = Math.Max(1, (schedule.Max + data - 1) / data);
        long Need(ModelConfig c, int batch, bool remat)
        {
            try { return Sharding.MeshPlan.Of(c, data, model, options.ShardWeights, batch, remat).TotalBytes; }
            catch (ConfigException) { return 0; }   // a mesh the engine will refuse with its own message
        }
        long perDevice = Need(config, perRank, config.Rematerialize);
        if (perDevice == 0) return;
        bool cpu = options.Backend.Equals("cpu", StringComparison.OrdinalIgnoreCase);
        bool ilgpu = options.Backend.Equals("ilgpu", StringComparison.OrdinalIgnoreCase);
        int devices = data * model;
        long available;
        string where;
        if (availableOverride is { } a) { available = a; where = "the memory available"; }
        else if (cpu || ilgpu && IlgpuRunsOnHost(options, devices))
        {
            available = GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            where = "the host memory available to palm";
            cpu = true;   // every device lives in host memory, as the CPU backend's logical devices do
        }
        else if (ilgpu)
        {
            var gpus = Backends.BackendRegistry.Get("ilgpu").ListDevices().Where(d => d.Available && !d.Kind.Contains("simulator")).ToList();
            int first = options.Mesh is null ? options.Device : 0;
            if (gpus.Count <= first) return;   // the backend reports the missing device itself
            available = gpus.Skip(first).Take(devices).Min(d => d.MemoryBytes);
            where = $"the memory of ILGPU device {first}{(devices > 1 ? $" (the smallest of devices {first}..{first + devices - 1})" : "")}";
        }
        else
        {
            try
            {
                var all = Backends.OpenCl.OpenClDevice.All();
                int first = options.Mesh is null ? options.Device : 0;
                if (all.Count <= first) return;   // the backend reports the missing device itself
                available = all.Skip(first).Take(devices).Min(d => d.GlobalMemoryBytes);
                where = $"the global memory of OpenCL device {first}{(devices > 1 ? $" (the smallest of devices {first}..{first + devices - 1})" : "")}";
            }
            catch (Exception e) when (e is Backends.OpenCl.OpenClException or Backends.OpenCl.OpenClUnavailableException or DllNotFoundException or EntryPointNotFoundException)
            { return; }   // no runtime: creating the backend says so, with what to install
        }
        // CPU logical devices all live in host memory; OpenCL devices each have their own.
        long need = cpu ? perDevice * devices : perDevice;
        long budget = (long)(available * 0.9);   // headroom for the runtime, the data and the host copies of a checkpoint
        if (need <= budget) return;
        static string G(double b) => $"{b / (1L << 30):F1} GiB";
        var fits = new List<string>();
        if (!config.Rematerialize && (cpu ? Need(config, perRank, true) * devices : Need(config, perRank, true)) is var r && r > 0 && r <= budget) fits.Add($"--remat ({G(r)})");
        for (int b = schedule.Max / 2; b >= 1 && fits.Count < 2; b /= 2)
        {
            long nb = Need(config, Math.Max(1, (b + data - 1) / data), config.Rematerialize) * (cpu ? devices : 1);
            if (nb > 0 && nb <= budget) { fits.Add($"--batch {b} ({G(nb)})"); break; }
        }
        for (int l = config.Layers / 2; l >= 1; l /= 2)
        {
            long nl = Need(config with { Layers = l }, perRank, config.Rematerialize) * (cpu ? devices : 1);
            if (nl > 0 && nl <= budget) { fits.Add($"--layers {l} ({G(nl)})"); break; }
        }
        string advice = fits.Count > 0 ? $"what would fit: {string.Join(", ", fits)}" : "even one layer at batch 1 does not fit: choose a smaller --preset or --d-model";
        throw new ConfigException($"this run needs about {G(need)} ({(cpu && devices > 1 ? $"{devices} devices × {G(perDevice)}: " : "")}weights, gradients, Adafactor state and activations, `palm plan` has the breakdown) " +
                                  $"but {where} is {G(available)}; {advice}");
    }
}
