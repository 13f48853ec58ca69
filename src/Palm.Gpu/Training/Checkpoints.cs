using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Gpu.IO;

namespace Palm.Gpu.Training;

/// <summary>One file of a checkpoint, with its checksum.</summary>
public sealed record CheckpointFile(string Sha256, long Bytes);

/// <summary>A loss-spike rollback, kept in every later manifest so a resumed run skips the same data.</summary>
public sealed record RollbackEvent(long SpikeStep, long RestoredStep, long SkipFirst, long SkipLast, string Reason);

/// <summary>
/// manifest.json of a checkpoint directory: everything besides the tensors that a bit-identical
/// resume needs, plus the sha256 of every file. Written last: a directory without a valid manifest
/// is not a checkpoint.
/// </summary>
public sealed record CheckpointManifest
{
    // 1: one weights and one optimizer file. 2: adds the mesh layout (one file pair per device shard).
    public const int CurrentFormatVersion = 2;

    public int FormatVersion { get; init; } = CurrentFormatVersion;
    public long Step { get; init; }                              // optimizer steps completed
    public JsonNode? Model { get; init; }                        // ModelConfig
    public JsonNode? Training { get; init; }                     // TrainOptions
    public JsonNode? Cursor { get; init; }                       // DataCursor: batches drawn, sequences consumed, skips
    public string Mesh { get; init; } = "1x1";                   // DxM the run trained on
    public bool ShardWeights { get; init; }                      // weights and optimizer state sliced over the data axis
    public Dictionary<string, TensorLayout>? Layout { get; init; } // how shard files form full tensors; null: whole tensors
    public string Backend { get; init; } = "cpu";
    public string? HostSimd { get; init; }                       // information only: the CPU vector path that wrote it (results do not depend on it)
    public List<double> RecentLosses { get; init; } = [];
    public List<double> RecentGradNorms { get; init; } = [];
    public List<RollbackEvent> Rollbacks { get; init; } = [];
    public Dictionary<string, CheckpointFile> Files { get; init; } = [];
    public DateTime CreatedUtc { get; init; }
}

/// <summary>
/// What one device shard holds: its pieces of the weights and optimizer state, under the full tensors' names.
/// Tag "" is a single device (weights.safetensors); "d1-m0" is data rank 1, model rank 0 (weights.d1-m0.safetensors).
/// </summary>
public sealed record CheckpointShard(string Tag, List<NamedTensor> Weights, List<NamedTensor> OptimizerState);

/// <summary>
/// How one tensor is cut over a mesh: Axis "replicated", "rows" or "cols" over the model ranks, and the shape
/// of one model rank's piece. With sharded weights that piece is further sliced over the data ranks, in order,
/// as a flat run of values (the last slice shorter).
/// </summary>
public sealed record TensorLayout(string Axis, long[] Shape);

/// <summary>Host copies of everything a checkpoint holds, taken between steps so writing can run in the background.</summary>
public sealed record TrainingSnapshot(CheckpointManifest Manifest, IReadOnlyList<CheckpointShard> Shards);

/// <summary>A checkpoint read back and verified; Weights and OptimizerState are full tensors, whatever mesh wrote them.</summary>
public sealed record LoadedCheckpoint(string Directory, CheckpointManifest Manifest, Dictionary<string, NamedTensor> Weights, Dictionary<string, NamedTensor> OptimizerState);

/// <summary>
/// Crash testing: PALM_FAULT_KILL_DURING_CHECKPOINT=STEP makes the process SIGKILL itself halfway through
/// writing the checkpoint of that step (weights written, optimizer state and manifest not).
/// </summary>
internal static class FaultInjection
{
    public static void KillIfRequested(long step)
    {
        if (Environment.GetEnvironmentVariable("PALM_FAULT_KILL_DURING_CHECKPOINT") is { } v && long.TryParse(v, out long at) && at == step)
            System.Diagnostics.Process.GetCurrentProcess().Kill();
    }
}

/// <summary>Which checkpoints to keep. The default keeps the newest 4, every 1000th step forever, and always one ≥ 100 steps old.</summary>
public sealed record RetentionPolicy(int KeepLast = 4, long KeepEvery = 1000, long KeepOneOlderThan = 100);

/// <summary>
/// RUN/checkpoints/step-000000123/{weights.safetensors, optimizer.safetensors, manifest.json}; on a mesh one
/// weights/optimizer pair per device shard (weights.d0-m1.safetensors, ...), replicas written once.
/// A checkpoint is written into a hidden temporary directory, every file flushed to disk, the manifest
/// last, then the directory renamed into place — a crash at any moment leaves either the complete
/// checkpoint or none. Loading verifies every checksum and refuses anything incomplete, corrupt or
/// from a newer format, with a message naming what is wrong.
/// </summary>
public sealed class CheckpointStore
{
    public const string WeightsFile = "weights.safetensors";
    public const string OptimizerFile = "optimizer.safetensors";
    public const string ManifestFile = "manifest.json";

    Task _pending = Task.CompletedTask;

    public CheckpointStore(string directory, RetentionPolicy? retention = null)
    {
        Directory = directory;
        Retention = retention ?? new RetentionPolicy();
    }

    public string Directory { get; }
    public RetentionPolicy Retention { get; }

    public static string NameFor(long step) => $"step-{step:D9}";

    /// <summary>Writes the snapshot in the background; a second save first waits for the previous one.</summary>
    public Task SaveInBackground(TrainingSnapshot snapshot)
    {
        var previous = _pending;
        _pending = Task.Run(async () =>
        {
            await previous;
            Save(snapshot);
        });
        return _pending;
    }

    /// <summary>Blocks until the last background save is on disk; rethrows its failure.</summary>
    public void Flush() => _pending.GetAwaiter().GetResult();

    /// <summary>Writes one checkpoint synchronously and applies the retention policy; returns its directory.</summary>
    public string Save(TrainingSnapshot s)
    {
        System.IO.Directory.CreateDirectory(Directory);
        string final = Path.Combine(Directory, NameFor(s.Manifest.Step));
        string tmp = Path.Combine(Directory, $".tmp-{NameFor(s.Manifest.Step)}-{Environment.ProcessId}");
        if (System.IO.Directory.Exists(tmp)) System.IO.Directory.Delete(tmp, recursive: true);
        System.IO.Directory.CreateDirectory(tmp);
        try
        {
            var files = new Dictionary<string, CheckpointFile>();
            foreach (var shard in s.Shards)
            {
                var meta = new Dictionary<string, string> { ["format"] = "palm-gpu-checkpoint/2", ["step"] = s.Manifest.Step.ToString(), ["shard"] = shard.Tag, ["mesh"] = s.Manifest.Mesh };
                string weights = FileFor(WeightsFile, shard.Tag), optimizer = FileFor(OptimizerFile, shard.Tag);
                SafeTensors.Write(Path.Combine(tmp, weights), shard.Weights, meta);
                FaultInjection.KillIfRequested(s.Manifest.Step);
                SafeTensors.Write(Path.Combine(tmp, optimizer), shard.OptimizerState, meta);
                files[weights] = Describe(Path.Combine(tmp, weights));
                files[optimizer] = Describe(Path.Combine(tmp, optimizer));
            }
            var manifest = s.Manifest with { Files = files, CreatedUtc = DateTime.UtcNow, HostSimd = Backends.Cpu.CpuSimd.Description };
            AtomicFile.WriteText(Path.Combine(tmp, ManifestFile), JsonSerializer.Serialize(manifest, Trainer.Json));
            if (System.IO.Directory.Exists(final)) System.IO.Directory.Delete(final, recursive: true);
            System.IO.Directory.Move(tmp, final);
        }
        catch (IOException e)
        {
            TryDelete(tmp);
            throw new IOException($"could not write checkpoint {NameFor(s.Manifest.Step)} under '{Directory}': {e.Message} (the previous checkpoints are untouched)", e);
        }
        ApplyRetention();
        return final;
    }

    /// <summary>Complete checkpoint directories (by name), newest first. Says nothing about validity.</summary>
    public List<(long Step, string Path)> List()
    {
        if (!System.IO.Directory.Exists(Directory)) return [];
        return System.IO.Directory.EnumerateDirectories(Directory, "step-*")
            .Select(d => (Step: long.TryParse(Path.GetFileName(d)["step-".Length..], out long s) ? s : -1, Path: d))
            .Where(x => x.Step >= 0)
            .OrderByDescending(x => x.Step)
            .ToList();
    }

    /// <summary>Loads and verifies one checkpoint directory.</summary>
    public static LoadedCheckpoint Load(string dir)
    {
        string manifestPath = Path.Combine(dir, ManifestFile);
        if (!File.Exists(manifestPath)) throw new InvalidDataException($"checkpoint '{dir}' has no {ManifestFile}; it is incomplete");
        CheckpointManifest manifest;
        try
        {
            var node = JsonNode.Parse(File.ReadAllText(manifestPath));
            int version = node?["format_version"]?.GetValue<int>() ?? 0;
            if (version > CheckpointManifest.CurrentFormatVersion)
                throw new InvalidDataException($"checkpoint '{dir}' has format version {version}, newer than this palm understands ({CheckpointManifest.CurrentFormatVersion}); update palm to resume it");
            if (version < 1) throw new InvalidDataException($"checkpoint '{dir}': manifest has no valid format_version");
            manifest = node.Deserialize<CheckpointManifest>(Trainer.Json)!;
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"checkpoint '{dir}': {ManifestFile} is not valid JSON ({e.Message})");
        }
        var tags = ShardTags(manifest, dir);
        foreach (var name in tags.SelectMany(t => new[] { FileFor(WeightsFile, t), FileFor(OptimizerFile, t) }))
        {
            string path = Path.Combine(dir, name);
            if (!manifest.Files.TryGetValue(name, out var expected))
                throw new InvalidDataException($"checkpoint '{dir}': the manifest lists no checksum for {name}");
            if (!File.Exists(path)) throw new InvalidDataException($"checkpoint '{dir}': {name} is missing");
            var actual = Describe(path);
            if (actual.Bytes != expected.Bytes || actual.Sha256 != expected.Sha256)
                throw new InvalidDataException($"checkpoint '{dir}': {name} fails its checksum (sha256 {actual.Sha256[..12]}…, {actual.Bytes} bytes; manifest says {expected.Sha256[..12]}…, {expected.Bytes} bytes); the file is corrupt");
        }
        if (manifest.Layout is null)
            return new LoadedCheckpoint(dir, manifest, SafeTensors.Read(Path.Combine(dir, WeightsFile)), SafeTensors.Read(Path.Combine(dir, OptimizerFile)));
        var (model, slices) = Ranks(manifest, dir);
        Dictionary<string, NamedTensor> Join(string file)
        {
            var pieces = tags.ToDictionary(t => t, t => SafeTensors.Read(Path.Combine(dir, FileFor(file, t))));
            return Sharding.ShardMath.Assemble(manifest.Layout, model, slices, (d, m) => pieces[TagFor(d, m)], $"checkpoint '{dir}', {file.Replace(".safetensors", ".*")}");
        }
        return new LoadedCheckpoint(dir, manifest, Join(WeightsFile), Join(OptimizerFile));
    }

    /// <summary>weights.safetensors for a single device, weights.d0-m1.safetensors for a mesh shard.</summary>
    public static string FileFor(string file, string tag) => tag.Length == 0 ? file : file.Replace(".safetensors", $".{tag}.safetensors");

    public static string TagFor(int dataRank, int modelRank) => $"d{dataRank}-m{modelRank}";

    /// <summary>The shard files a manifest implies: one pair for whole tensors, else model ranks × (data ranks when sharded).</summary>
    static List<string> ShardTags(CheckpointManifest m, string dir)
    {
        if (m.Layout is null) return [""];
        var (model, slices) = Ranks(m, dir);
        return [.. from d in Enumerable.Range(0, slices) from r in Enumerable.Range(0, model) select TagFor(d, r)];
    }

    /// <summary>Model ranks, and data slices per model rank (the data ranks when sharded, else one), of the manifest's mesh.</summary>
    static (int Model, int Slices) Ranks(CheckpointManifest m, string dir)
    {
        try
        {
            var (data, model) = Sharding.DeviceMesh.Parse(m.Mesh);
            return (model, m.ShardWeights ? data : 1);
        }
        catch (Model.ConfigException e) { throw new InvalidDataException($"checkpoint '{dir}': manifest mesh: {e.Message}"); }
    }

    /// <summary>The newest checkpoint that verifies, optionally at or before a step; refused ones are reported through warn.</summary>
    public LoadedCheckpoint? LoadLatestValid(long atOrBefore = long.MaxValue, Action<string>? warn = null)
    {
        foreach (var (step, path) in List())
        {
            if (step > atOrBefore) continue;
            try { return Load(path); }
            catch (InvalidDataException e) { warn?.Invoke($"skipping checkpoint: {e.Message}"); }
        }
        return null;
    }

    /// <summary>Deletes checkpoints newer than step: after a rollback they belong to an abandoned trajectory.</summary>
    public void DeleteAfter(long step)
    {
        Flush();
        foreach (var (s, path) in List())
            if (s > step) TryDelete(path);
    }

    /// <summary>The oldest checkpoint that verifies.</summary>
    public LoadedCheckpoint? LoadOldestValid(Action<string>? warn = null)
    {
        foreach (var (_, path) in Enumerable.Reverse(List()))
        {
            try { return Load(path); }
            catch (InvalidDataException e) { warn?.Invoke($"skipping checkpoint: {e.Message}"); }
        }
        return null;
    }

    void ApplyRetention()
    {
        var all = List();
        if (all.Count == 0) return;
        long newest = all[0].Step;
        var keep = new HashSet<long>(all.Take(Retention.KeepLast).Select(x => x.Step));
        foreach (var (step, _) in all)
            if (Retention.KeepEvery > 0 && step % Retention.KeepEvery == 0) keep.Add(step);
        // Always keep the newest checkpoint that is at least KeepOneOlderThan steps behind the newest, so a rollback has a target.
        var old = all.FirstOrDefault(x => x.Step <= newest - Retention.KeepOneOlderThan);
        if (old.Path is not null) keep.Add(old.Step);
        foreach (var (step, path) in all)
            if (!keep.Contains(step)) TryDelete(path);
        foreach (var stale in System.IO.Directory.EnumerateDirectories(Directory, ".tmp-*")) TryDelete(stale);
    }

    static CheckpointFile Describe(string path)
    {
        using var fs = File.OpenRead(path);
        return new CheckpointFile(Convert.ToHexStringLower(SHA256.HashData(fs)), fs.Length);
    }

    static void TryDelete(string dir)
    {
        try { if (System.IO.Directory.Exists(dir)) System.IO.Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
    }
}
