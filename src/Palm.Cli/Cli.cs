using System.CommandLine;
using Palm.Gpu.Data;
using Palm.Gpu.Model;

namespace Palm.Cli;

/// <summary>Options shared by several verbs, and the one place user errors become one line on stderr.</summary>
internal static class Cli
{
    public static Option<string> Preset() => new("--preset") { Description = "model shape: tiny, small, palm-8b, palm-62b, palm-540b", DefaultValueFactory = _ => "small" };
    public static Option<string> Backend() => new("--backend") { Description = "cpu, opencl or ilgpu (see `palm devices`)", DefaultValueFactory = _ => "cpu" };
    public static Option<int> Device() => Checked(new Option<int>("--device") { Description = "device index within the backend (see `palm devices`)" },
                                                   v => v >= 0 ? null : $"--device must be ≥ 0, got {v}");
    public static Option<int> Threads() => Checked(new Option<int>("--threads") { Description = "CPU worker threads (0 = all cores)" },
                                                    v => { try { CheckThreads(v); return null; } catch (ConfigException e) { return e.Message; } });

    /// <summary>Adds a value check to an option: a bad value is a parse error ("palm: error: ...", exit 2) before the verb runs.</summary>
    public static Option<T> Checked<T>(Option<T> option, Func<T, string?> problem)
    {
        option.Validators.Add(result =>
        {
            if (result.Tokens.Count == 0) return;
            T? value;
            try { value = result.GetValueOrDefault<T>(); }
            catch (InvalidOperationException) { return; }   // not parseable: reported by the parser itself
            if (value is not null && problem(value) is { } message) result.AddError(message);
        });
        return option;
    }
    public static Option<string?> Block() => new("--block") { Description = "parallel (PaLM) or serial blocks" };
    public static Option<string?> Attention() => new("--attention") { Description = "multi-query (PaLM) or multi-head" };
    public static Option<bool> Remat() => new("--remat") { Description = "rematerialise block internals in backward (less memory, ~1/3 more compute)" };
    public static Option<int?> Seq() => new("--seq") { Description = "sequence length (default: the preset's)" };
    /// <summary>Shape overrides on top of a preset: --layers --d-model --heads --head-dim --d-ff.</summary>
    public sealed class ShapeOptions
    {
        public readonly Option<int?> Layers = new("--layers") { Description = "number of blocks (default: the preset's)" };
        public readonly Option<int?> DModel = new("--d-model") { Description = "model width (default: the preset's)" };
        public readonly Option<int?> Heads = new("--heads") { Description = "query heads (default: the preset's)" };
        public readonly Option<int?> HeadDim = new("--head-dim") { Description = "head width, even (default: the preset's)" };
        public readonly Option<int?> DFf = new("--d-ff") { Description = "SwiGLU hidden width (default: the preset's)" };

        public IEnumerable<Option> All => [Layers, DModel, Heads, HeadDim, DFf];

        public ModelConfig Apply(ModelConfig c, ParseResult r) => (c with
        {
            Layers = r.GetValue(Layers) ?? c.Layers,
            DModel = r.GetValue(DModel) ?? c.DModel,
            Heads = r.GetValue(Heads) ?? c.Heads,
            HeadDim = r.GetValue(HeadDim) ?? c.HeadDim,
            DFf = r.GetValue(DFf) ?? c.DFf,
        }).Validate();
    }

    public static Option<double> PeakGflops() => Checked(new Option<double>("--peak-gflops") { Description = "fp32 peak in GFLOP/s for MFU: the device's, or all mesh devices' together (default: measured)" },
                                                          v => double.IsFinite(v) && v >= 0 ? null : $"--peak-gflops must be a finite number ≥ 0 (0 = measure), got {v}");

    /// <summary>Applies the shape overrides a verb was given to a preset.</summary>
    public static ModelConfig Resolve(string preset, string? block, string? attention, bool remat, int? seq, int? vocab = null)
    {
        var c = ModelConfig.Preset(preset);
        if (block is not null)
            c = c with
            {
                Block = block.ToLowerInvariant() switch
                {
                    "parallel" => BlockKind.Parallel,
                    "serial" => BlockKind.Serial,
                    _ => throw new ConfigException($"--block must be parallel or serial, got '{block}'"),
                },
            };
        if (attention is not null)
            c = c with
            {
                Attention = attention.ToLowerInvariant() switch
                {
                    "multi-query" or "mqa" => AttentionKind.MultiQuery,
                    "multi-head" or "mha" => AttentionKind.MultiHead,
                    _ => throw new ConfigException($"--attention must be multi-query or multi-head, got '{attention}'"),
                },
            };
        if (remat) c = c with { Rematerialize = true };
        if (seq is not null) c = c with { SeqLen = seq.Value };
        if (vocab is not null) c = c with { Vocab = vocab.Value };
        return c.Validate();
    }

    /// <summary>
    /// Runs a verb. A user error — bad input, a missing or malformed file, a full disk, a device that is not there —
    /// prints one line "palm: error: ..." and exits 2. Anything else is a defect in palm: it prints the trace and
    /// asks for a report, and exits 1 (so an internal bug never passes for a user's mistake).
    /// </summary>
    public static int Run(Func<int> body)
    {
        try
        {
            return body();
        }
        catch (Exception e) when (IsUserError(e))
        {
            ReportUserError(e);
            return 2;
        }
        catch (OutOfMemoryException)
        {
            Console.Error.WriteLine("palm: error: out of memory; use a smaller model (--preset, --layers, --d-model), a smaller --batch or --seq, or --remat (`palm plan` shows what fits)");
            return 2;
        }
        catch (Palm.Gpu.Sharding.Mpi.MpiException e)
        {
            Console.Error.WriteLine($"palm: error: {e.Message}");
            return Palm.Gpu.Sharding.Mpi.MpiJob.LostPeerExitCode;
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("palm: interrupted");
            return 130;
        }
        catch (Exception e)
        {
            Console.Error.WriteLine($"palm: internal error: {e.GetType().Name}: {e.Message}");
            Console.Error.WriteLine("This is a bug in palm, not a problem with your input; please report it with the command line and this trace:");
            Console.Error.WriteLine(e.ToString());
            return 1;
        }
    }

    /// <summary>
    /// Whether the verb failed with an error every process of the job raised alike (ProcessGroups.JobWide): the
    /// processes then wait for one another before exiting, so process 0 reports it before the launcher stops the job.
    /// </summary>
    public static bool FailedJobWide { get; private set; }

    /// <summary>Prints a user error's one line (process 0 speaks for a job) and notes whether every process has it.</summary>
    public static void ReportUserError(Exception e)
    {
        FailedJobWide |= Palm.Gpu.Sharding.ProcessGroups.IsJobWide(e);
        // Test hook: process 0 reports late, so a process that exits without waiting for it is seen to lose the line.
        if (Leads && int.TryParse(Environment.GetEnvironmentVariable("PALM_FAULT_DELAY_LEADER_ERROR_MS"), out int ms) && ms > 0)
            Thread.Sleep(ms);
        Console.Error.WriteLine($"palm: error: {e.Message}");
    }

    /// <summary>
    /// Every process of a job must run the same command (SPMD): a job whose processes were given different arguments
    /// (mpiexec's "-n 1 palm … : -n 1 palm …" form) is refused on every process, naming what differs.
    /// </summary>
    public static void CheckSameCommand(Palm.Gpu.Sharding.IProcessGroup job, string[] args)
    {
        var lines = Palm.Gpu.Sharding.ProcessGroups.AllGatherVariable(job, System.Text.Encoding.UTF8.GetBytes(string.Join('\0', args)))
            .Select(b => System.Text.Encoding.UTF8.GetString(b).Split('\0')).ToArray();
        if (lines.All(l => l.SequenceEqual(lines[0]))) return;
        string? Flag(string[] a, string name) { int i = Array.IndexOf(a, name); return i >= 0 && i + 1 < a.Length ? a[i + 1] : null; }
        var backends = lines.Select(l => Flag(l, "--backend") ?? "cpu").ToArray();
        if (backends.Distinct().Count() > 1)
            throw Palm.Gpu.Sharding.ProcessGroups.JobWide(new ConfigException($"the processes of this job run different backends ({string.Join(", ", backends.Select((b, p) => $"process {p}: {b}"))}); every process of a mesh must run the same --backend"));
        int other = Array.FindIndex(lines, l => !l.SequenceEqual(lines[0]));
        throw Palm.Gpu.Sharding.ProcessGroups.JobWide(new ConfigException($"the processes of this job were given different commands (process 0: '{string.Join(' ', lines[0])}', process {other}: '{string.Join(' ', lines[other])}'); every process must run the same palm command"));
    }

    /// <summary>
    /// Runs a step that only the job's leader performs (the run directory's lock, shared files); on one process it
    /// simply runs. A failure there is agreed on, so every process stops with the leader's message.
    /// </summary>
    public static T? LeaderOnly<T>(Func<T> act) where T : class
    {
        if (Palm.Gpu.Sharding.ProcessGroups.World is not { Count: > 1 } job) return act();
        T? result = null;
        string? problem = null;
        if (job.IsLeader)
        {
            try { result = act(); }
            catch (Exception e) when (IsUserError(e)) { problem = e.Message; }
        }
        if (Palm.Gpu.Sharding.ProcessGroups.Agree(job, problem) is { } agreed) throw Palm.Gpu.Sharding.ProcessGroups.JobWide(new ConfigException(problem ?? agreed));
        return result;
    }

    /// <summary>Whether this process speaks for the job (always, on one process).</summary>
    public static bool Leads => Palm.Gpu.Sharding.ProcessGroups.World?.IsLeader ?? true;

    /// <summary>Errors of the user's input or environment (the exception types palm raises for them), as opposed to defects.</summary>
    public static bool IsUserError(Exception e) => e is ConfigException or DataException or InvalidDataException or FileNotFoundException
        or DirectoryNotFoundException or IOException or UnauthorizedAccessException or Palm.Gpu.Backends.OpenCl.OpenClException
        or Palm.Gpu.Backends.OpenCl.OpenClUnavailableException or Palm.Gpu.Backends.Ilgpu.IlgpuUnavailableException
        or Palm.Gpu.Backends.Ilgpu.IlgpuException or PlatformNotSupportedException or Palm.Gpu.Training.SpikeGuardException;

    /// <summary>A parser message without .NET type names: "as expected type 'System.Nullable`1[System.Int64]'" → "as a whole number".</summary>
    public static string PlainParseError(string message) =>
        System.Text.RegularExpressions.Regex.Replace(message, @"as expected type '([^']*)'", m =>
        {
            string t = m.Groups[1].Value;
            string kind = t.Contains("Int") ? "a whole number" : t.Contains("Single") || t.Contains("Double") ? "a number" : t.Contains("Boolean") ? "true or false" : "the expected kind of value";
            return $"as {kind}";
        });

    /// <summary>--threads: 0 (all cores) up to a bound that is still a sensible number of workers.</summary>
    public static int CheckThreads(int threads)
    {
        int max = Math.Max(256, 4 * Environment.ProcessorCount);
        if (threads < 0 || threads > max) throw new ConfigException($"--threads must be 0 (all cores) to {max}, got {threads}");
        return threads;
    }

    /// <summary>--peak-gflops: 0 (measure) or a finite positive figure.</summary>
    public static double CheckPeak(double peak)
    {
        if (!double.IsFinite(peak) || peak < 0) throw new ConfigException($"--peak-gflops must be a finite number ≥ 0 (0 = measure), got {peak}");
        return peak;
    }

    /// <summary>--device means something only where a backend has several devices: the CPU backend has one, 0.</summary>
    public static void CheckDevice(string backend, int device, bool given)
    {
        if (device < 0) throw new ConfigException($"--device must be ≥ 0, got {device}");
        if (given && device != 0 && backend.Equals("cpu", StringComparison.OrdinalIgnoreCase))
            throw new ConfigException($"--device {device}: the CPU backend has one device (0); use --threads for its cores, or --backend opencl or ilgpu for other devices (see `palm devices`)");
        if (!Palm.Gpu.Backends.BackendRegistry.Names.Contains(backend.ToLowerInvariant()))
            throw new ConfigException($"unknown backend '{backend}'; choose one of: {string.Join(", ", Palm.Gpu.Backends.BackendRegistry.Names)}");
    }
}