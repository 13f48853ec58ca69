using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Gpu.IO;
using Palm.Gpu.Sharding;

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
    // 3: adds the manifest's own checksum, the data fingerprint and the measured peak.
    public const int CurrentFormatVersion = 3;

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
    public string? DataFingerprint { get; init; }                // sha256 of the packed token stream the run trained on
    public double MeasuredPeakGflops { get; init; }              // the peak the run measured (0: given or unknown), reused on resume
    public string? ManifestSha256 { get; init; }                 // sha256 of this file with this field's value zeroed
}

/// <summary>How a background checkpoint save ended: Error is null when the checkpoint is complete on disk.</summary>
public sealed record CheckpointResult(long Step, string Path, Exception? Error);

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

/// <summary>
/// Which checkpoints to keep: the newest <paramref name="KeepLast"/>, every <paramref name="KeepEvery"/>th step forever,
/// and enough older ones that a rollback of <paramref name="KeepOneOlderThan"/> steps (the spike guard's
/// --rollback-steps) always finds a target no more than half that distance further back, whatever the cadence.
/// </summary>
public sealed record RetentionPolicy(int KeepLast = 4, long KeepEvery = 1000, long KeepOneOlderThan = 100)
{
    /// <summary>
    /// Whether <paramref name="step"/> survives among <paramref name="all"/> (newest first). Besides the newest and the
    /// milestones, the oldest checkpoint of every bucket of G = ⌈R/4⌉ steps (absolute, so the choice does not move as
    /// the run advances) is kept while the bucket reaches back past newest − R − G: for any later spike at S the newest
    /// checkpoint at or before S − R is then at most 2G steps older than S − R, and at most R/G + 3 extra are kept.
    /// </summary>
    public bool Keeps(long step, IReadOnlyList<long> all)
    {
        if (all.Count == 0) return true;
        long newest = all[0];
        if (all.Take(KeepLast).Contains(step)) return true;
        if (KeepEvery > 0 && step % KeepEvery == 0) return true;
        long r = Math.Max(1, KeepOneOlderThan), g = Math.Max(1, (r + 3) / 4);
        // The target of a spike right now: the newest checkpoint at or before newest − R.
        if (step == all.Where(s => s <= newest - r).DefaultIfEmpty(-1).Max()) return true;
        long bucket = step / g;
        bool oldestOfBucket = !all.Any(s => s < step && s / g == bucket);
        return oldestOfBucket && (bucket + 1) * g > newest - r - g;
    }
}
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
    readonly ConcurrentQueue<CheckpointResult> _finished = new();

    readonly Sharding.IProcessGroup? _processes;

    /// <param name="processes">
    /// the processes of a multi-process job, on a channel of their own (saves run in the background): each process then
    /// writes the shard files it holds, and the leader, after all have, writes the manifest, renames the directory and
    /// applies retention. Null (or one process): this process writes everything.
    /// </param>
    public CheckpointStore(string directory, RetentionPolicy? retention = null, Sharding.IProcessGroup? processes = null)
    {
        Directory = directory;
        Retention = retention ?? new RetentionPolicy();
        _processes = processes is { Count: > 1 } ? processes : null;
    }

    bool Leads => _processes is null || _processes.IsLeader;

    public string Directory { get; }
    public RetentionPolicy Retention { get; }

    public static string NameFor(long step) => $"step-{step:D9}";

    /// <summary>
    /// Writes the snapshot in the background. Saves are independent: one that fails (a full disk for a moment,
    /// a blocked directory) is reported through <see cref="TakeFinished"/> and the next is attempted as usual.
    /// At most one save runs at a time; call <see cref="WaitForPending"/> before taking the next snapshot so at
    /// most one snapshot is held in memory.
    /// </summary>
    public Task SaveInBackground(TrainingSnapshot snapshot)
    {
        WaitForPending();
        long step = snapshot.Manifest.Step;
        _pending = Task.Run(() =>
        {
            try { _finished.Enqueue(new CheckpointResult(step, Save(snapshot), null)); }
            catch (Exception e) { _finished.Enqueue(new CheckpointResult(step, Path.Combine(Directory, NameFor(step)), e)); }
        });
        return _pending;
    }

    /// <summary>Blocks until the background save (if any) has finished, successfully or not; never throws.</summary>
    public void WaitForPending() => _pending.ContinueWith(_ => { }, TaskScheduler.Default).Wait();

    /// <summary>Waits for the background save; its outcome is then available from <see cref="TakeFinished"/>.</summary>
    public void Flush() => WaitForPending();

    /// <summary>The outcomes of background saves finished since the last call, oldest first.</summary>
    public List<CheckpointResult> TakeFinished()
    {
        var list = new List<CheckpointResult>();
        while (_finished.TryDequeue(out var r)) list.Add(r);
        return list;
    }

    /// <summary>Writes one checkpoint synchronously and applies the retention policy; returns its directory.</summary>
    public string Save(TrainingSnapshot s)
    {
        if (_processes is { } processes) return SaveAcross(s, processes);
        string final = Path.Combine(Directory, NameFor(s.Manifest.Step));
        string tmp = Path.Combine(Directory, $".tmp-{NameFor(s.Manifest.Step)}-{Environment.ProcessId}");
        try
        {
            System.IO.Directory.CreateDirectory(Directory);
            if (System.IO.Directory.Exists(tmp)) System.IO.Directory.Delete(tmp, recursive: true);
            System.IO.Directory.CreateDirectory(tmp);
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
            var manifest = s.Manifest with { FormatVersion = CheckpointManifest.CurrentFormatVersion, Files = files, CreatedUtc = DateTime.UtcNow, HostSimd = Backends.Cpu.CpuSimd.Description };
            AtomicFile.WriteText(Path.Combine(tmp, ManifestFile), SealManifest(manifest));
            if (System.IO.Directory.Exists(final)) System.IO.Directory.Delete(final, recursive: true);
            System.IO.Directory.Move(tmp, final);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(tmp);
            throw new IOException($"could not write checkpoint {NameFor(s.Manifest.Step)} under '{Directory}': {e.Message} (the previous checkpoints are untouched)", e);
        }
        try { ApplyRetention(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }   // the checkpoint is complete; pruning retries next time
        return final;
    }

    /// <summary>
    /// One checkpoint written by the processes of a job together, with the single-process sealing rules: a shared
    /// hidden directory, every process's shard files flushed into it, then (after every process has succeeded) the
    /// leader's manifest and the rename. A failure on any process fails the checkpoint on all of them (each step ends
    /// with an agreement), and the leader removes the partial directory; a crash leaves no manifest, so no checkpoint.
    /// </summary>
    string SaveAcross(TrainingSnapshot s, Sharding.IProcessGroup processes)
    {
        string name = NameFor(s.Manifest.Step), final = Path.Combine(Directory, name);
        string job = System.Text.Encoding.UTF8.GetString(Sharding.ProcessGroups.FromLeader(processes, System.Text.Encoding.UTF8.GetBytes(Environment.ProcessId.ToString())));
        string tmp = Path.Combine(Directory, $".tmp-{name}-{job}");
        string? Attempt(Action act)
        {
            try { act(); return null; }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return e.Message; }
        }
        void Fail(string? problem)
        {
            if (problem is null) return;
            if (processes.IsLeader) TryDelete(tmp);
            throw Sharding.ProcessGroups.JobWide(new IOException($"could not write checkpoint {name} under '{Directory}': {problem} (the previous checkpoints are untouched)"));
        }
        Fail(processes.Agree(processes.IsLeader ? Attempt(() =>
        {
            System.IO.Directory.CreateDirectory(Directory);
            if (System.IO.Directory.Exists(tmp)) System.IO.Directory.Delete(tmp, recursive: true);
            System.IO.Directory.CreateDirectory(tmp);
        }) : null));
        Fail(processes.Agree(Attempt(() =>
        {
            foreach (var shard in s.Shards)
            {
                var meta = new Dictionary<string, string> { ["format"] = "palm-gpu-checkpoint/2", ["step"] = s.Manifest.Step.ToString(), ["shard"] = shard.Tag, ["mesh"] = s.Manifest.Mesh };
                SafeTensors.Write(Path.Combine(tmp, FileFor(WeightsFile, shard.Tag)), shard.Weights, meta);
                FaultInjection.KillIfRequested(s.Manifest.Step);
                SafeTensors.Write(Path.Combine(tmp, FileFor(OptimizerFile, shard.Tag)), shard.OptimizerState, meta);
            }
        })));
        Fail(processes.Agree(processes.IsLeader ? Attempt(() =>
        {
            var files = System.IO.Directory.EnumerateFiles(tmp, "*.safetensors").Order(StringComparer.Ordinal)
                .ToDictionary(f => Path.GetFileName(f), Describe);
            var manifest = s.Manifest with { FormatVersion = CheckpointManifest.CurrentFormatVersion, Files = files, CreatedUtc = DateTime.UtcNow, HostSimd = Backends.Cpu.CpuSimd.Description };
            AtomicFile.WriteText(Path.Combine(tmp, ManifestFile), SealManifest(manifest));
            if (System.IO.Directory.Exists(final)) System.IO.Directory.Delete(final, recursive: true);
            System.IO.Directory.Move(tmp, final);
        }) : null));
        if (processes.IsLeader)
        {
            try { ApplyRetention(); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
        return final;
    }

    const string SealField = "\"manifest_sha256\": \"";
    static readonly string ZeroSeal = new('0', 64);

    /// <summary>The manifest's JSON with its own sha256, computed over the text with the checksum zeroed, so an edit is detected.</summary>
    static string SealManifest(CheckpointManifest m)
    {
        string text = JsonSerializer.Serialize(m with { ManifestSha256 = ZeroSeal }, Trainer.Json);
        return text.Replace(SealField + ZeroSeal, SealField + Sha256Hex(text));
    }

    /// <summary>Recomputes the seal of a manifest text that has a manifest_sha256 field (tests use it to judge edited fields on their own).</summary>
    internal static string Reseal(string text)
    {
        int at = text.IndexOf(SealField, StringComparison.Ordinal);
        if (at < 0 || at + SealField.Length + 64 > text.Length) return text;
        string zeroed = string.Concat(text.AsSpan(0, at + SealField.Length), ZeroSeal, text.AsSpan(at + SealField.Length + 64));
        return zeroed.Replace(SealField + ZeroSeal, SealField + Sha256Hex(zeroed));
    }

    /// <summary>Null when the text's seal matches, else what is wrong.</summary>
    static string? CheckSeal(string text)
    {
        int at = text.IndexOf(SealField, StringComparison.Ordinal);
        if (at < 0 || at + SealField.Length + 64 > text.Length) return "it has no manifest_sha256";
        string stored = text.Substring(at + SealField.Length, 64);
        string zeroed = string.Concat(text.AsSpan(0, at + SealField.Length), ZeroSeal, text.AsSpan(at + SealField.Length + 64));
        string actual = Sha256Hex(zeroed);
        return stored == actual ? null : $"it fails its own checksum (sha256 {actual[..12]}…, recorded {stored[..Math.Min(12, stored.Length)]}…); it was edited or is corrupt";
    }

    static string Sha256Hex(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));

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

    /// <summary>
    /// Loads and verifies one checkpoint directory. Anything wrong with it — a missing or edited manifest, a
    /// malformed field, a file that fails its checksum — is an <see cref="InvalidDataException"/> naming it.
    /// </summary>
    public static LoadedCheckpoint Load(string dir)
    {
        var manifest = ReadManifest(dir);
        var tags = ShardTags(manifest, dir);
        foreach (var name in tags.SelectMany(t => new[] { FileFor(WeightsFile, t), FileFor(OptimizerFile, t) }))
        {
            string path = Path.Combine(dir, name);
            if (!manifest.Files.TryGetValue(name, out var expected) || expected is null || expected.Sha256 is null)
                throw new InvalidDataException($"checkpoint '{dir}': the manifest lists no checksum for {name}");
            if (!File.Exists(path)) throw new InvalidDataException($"checkpoint '{dir}': {name} is missing");
            var actual = Describe(path);
            if (actual.Bytes != expected.Bytes || actual.Sha256 != expected.Sha256)
                throw new InvalidDataException($"checkpoint '{dir}': {name} fails its checksum (sha256 {actual.Sha256[..12]}…, {actual.Bytes} bytes; manifest says {expected.Sha256[..Math.Min(12, expected.Sha256.Length)]}…, {expected.Bytes} bytes); the file is corrupt");
        }
        if (manifest.Layout is null)
            return new LoadedCheckpoint(dir, manifest, SafeTensors.Read(Path.Combine(dir, WeightsFile)), SafeTensors.Read(Path.Combine(dir, OptimizerFile)));
        var (model, slices) = Ranks(manifest, dir);
        Dictionary<string, NamedTensor> Join(string file)
        {
            var pieces = tags.ToDictionary(t => t, t => SafeTensors.Read(Path.Combine(dir, FileFor(file, t))));
            try { return Sharding.ShardMath.Assemble(manifest.Layout, model, slices, (d, m) => pieces[TagFor(d, m)], $"checkpoint '{dir}', {file.Replace(".safetensors", ".*")}"); }
            catch (Exception e) when ((e is InvalidDataException || IsMalformed(e)) && !e.Message.Contains(dir))
            { throw new InvalidDataException($"checkpoint '{dir}': the manifest's tensor layout does not match its files ({e.Message})"); }
        }
        return new LoadedCheckpoint(dir, manifest, Join(WeightsFile), Join(OptimizerFile));
    }

    /// <summary>Reads and checks manifest.json: its own checksum (format 3 on), version, and every field resume relies on.</summary>
    public static CheckpointManifest ReadManifest(string dir)
    {
        string manifestPath = Path.Combine(dir, ManifestFile);
        if (!File.Exists(manifestPath)) throw new InvalidDataException($"checkpoint '{dir}' has no {ManifestFile}; it is incomplete");
        var info = new FileInfo(manifestPath);
        if (info.Length > 64 << 20) throw new InvalidDataException($"checkpoint '{dir}': {ManifestFile} is {info.Length} bytes, too large to be a manifest");
        string text = File.ReadAllText(manifestPath);
        string Bad(string what) => $"checkpoint '{dir}': {ManifestFile} {what}";
        CheckpointManifest? manifest;
        try
        {
            var node = JsonNode.Parse(text) as JsonObject ?? throw new InvalidDataException(Bad("is not a JSON object"));
            if (node["format_version"] is not JsonValue v || !v.TryGetValue(out int version))
                throw new InvalidDataException(Bad("has no valid format_version (an integer)"));
            if (version > CheckpointManifest.CurrentFormatVersion)
                throw new InvalidDataException($"checkpoint '{dir}' has format version {version}, newer than this palm understands ({CheckpointManifest.CurrentFormatVersion}); update palm to resume it");
            if (version < 1) throw new InvalidDataException(Bad($"has format_version {version}; valid versions are 1 to {CheckpointManifest.CurrentFormatVersion}"));
            // Older formats carry no seal of their own; from format 3 on an edited manifest is refused.
            if (version >= 3 && CheckSeal(text) is { } wrong) throw new InvalidDataException(Bad(wrong));
            manifest = node.Deserialize<CheckpointManifest>(Trainer.Json);
        }
        catch (Exception e) when (e is not InvalidDataException && IsMalformed(e))
        {
            throw new InvalidDataException(Bad($"is malformed ({e.Message})"));
        }
        if (manifest is null) throw new InvalidDataException(Bad("is null"));
        if (manifest.Step < 0) throw new InvalidDataException(Bad($"has step {manifest.Step}"));
        if (manifest.Model is not JsonObject || manifest.Training is not JsonObject)
            throw new InvalidDataException(Bad("lacks the model or training settings"));
        if (manifest.Files is null || manifest.RecentLosses is null || manifest.RecentGradNorms is null || manifest.Rollbacks is null || manifest.Mesh is null)
            throw new InvalidDataException(Bad("has a null list (files, recent_losses, recent_grad_norms, rollbacks) or mesh"));
        _ = Ranks(manifest, dir);   // the mesh parses and implies no more shard files than are listed
        try
        {
            manifest.Model.Deserialize<Model.ModelConfig>(Trainer.Json)!.Validate();
            _ = manifest.Training.Deserialize<TrainOptions>(Trainer.Json) ?? throw new JsonException("training is null");
            if (manifest.Cursor is not null) Data.DataCursor.FromJson(manifest.Cursor.ToJsonString());
        }
        catch (Exception e) when (IsMalformed(e) || e is Model.ConfigException or InvalidDataException or Data.DataException)
        {
            throw new InvalidDataException(Bad($"holds settings this palm cannot use ({e.Message})"));
        }
        return manifest;
    }

    /// <summary>Exceptions that mean "this file's content is not what it should be" rather than a bug here.</summary>
    static bool IsMalformed(Exception e) => e is JsonException or InvalidOperationException or FormatException or OverflowException
        or KeyNotFoundException or ArgumentException or NullReferenceException or InvalidCastException or NotSupportedException or IndexOutOfRangeException;

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
        int data, model;
        try { (data, model) = Sharding.DeviceMesh.Parse(m.Mesh); }
        catch (Model.ConfigException e) { throw new InvalidDataException($"checkpoint '{dir}': manifest mesh: {e.Message}"); }
        // Each shard is two listed files: a mesh that implies more shards than the manifest lists is not this checkpoint's
        // (and must not make the loader enumerate or allocate without bound).
        long shards = (long)model * (m.ShardWeights ? data : 1);
        if (shards > Math.Max(1, (m.Files?.Count ?? 0) / 2))
            throw new InvalidDataException($"checkpoint '{dir}': manifest mesh {m.Mesh} implies {shards} shard file pairs but the manifest lists {m.Files?.Count ?? 0} files");
        return (model, m.ShardWeights ? data : 1);
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
        if (!Leads) return;   // the leader prunes for the job
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
        foreach (var (step, path) in all)
            if (!Retention.Keeps(step, all.Select(x => x.Step).ToList())) TryDelete(path);
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
