using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Gpu.Model;

namespace Palm.Gpu.Training;

/// <summary>
/// The rules of a run directory (RUN/config.json, metrics.jsonl, model.safetensors, checkpoints/): one training
/// process at a time holds its lock; a directory that holds a run is never silently overwritten; a rerun of a
/// run's own command continues it. Other files in the directory are never touched.
/// </summary>
public static class RunDirectory
{
    public const string LockFile = ".palm.lock";   // and .palm.lock.pid, the holder's process id for messages
    /// <summary>What a run writes; --overwrite removes exactly these.</summary>
    public static readonly string[] RunFiles = ["config.json", "metrics.jsonl", "model.safetensors", "loss.svg", "checkpoints"];

    /// <summary>What a directory holds, as far as a new run there is concerned.</summary>
    public enum State { Empty, HasRun, HasCheckpoints }

    public static State Inspect(string dir)
    {
        if (!Directory.Exists(dir)) return State.Empty;
        string ckpt = Path.Combine(dir, "checkpoints");
        if (Directory.Exists(ckpt) && Directory.EnumerateDirectories(ckpt, "step-*").Any()) return State.HasCheckpoints;
        return RunFiles.Any(f => File.Exists(Path.Combine(dir, f)) || Directory.Exists(Path.Combine(dir, f))) ? State.HasRun : State.Empty;
    }

    /// <summary>Removes what an earlier run wrote (and nothing else); the caller holds the lock.</summary>
    public static void RemoveRun(string dir)
    {
        foreach (var f in RunFiles)
        {
            string p = Path.Combine(dir, f);
            if (File.Exists(p)) File.Delete(p);
            else if (Directory.Exists(p)) Directory.Delete(p, recursive: true);
        }
    }

    /// <summary>
    /// Takes the directory's lock (creating the directory), or says which process holds it. The lock is an
    /// advisory whole-file lock on RUN/.palm.lock: the kernel releases it when the holder exits, however it exits,
    /// so a crashed run never leaves a stale lock behind.
    /// </summary>
    public static IDisposable Lock(string dir)
    {
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, LockFile);
        FileStream fs;
        try { fs = new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
        catch (IOException)
        {
            // The holder's pid is in a file of its own: the locked file cannot be opened, even to read it.
            string holder = "another process";
            try { holder = $"process {File.ReadAllText(path + ".pid").Trim()}"; } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw new ConfigException($"'{dir}' is in use by another palm train ({holder}); wait for it to finish, or choose another --out");
        }
        try { File.WriteAllText(path + ".pid", Environment.ProcessId.ToString()); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }   // only a message depends on it
        return fs;
    }

    /// <summary>
    /// The settings a checkpoint fixes (model, data, tokenizer, batch schedule, seed, held-out share, optimizer, mesh)
    /// that differ between it and a new command, as "name: checkpoint → command"; empty when the command is the run's own.
    /// </summary>
    public static List<string> Differences(CheckpointManifest saved, ModelConfig config, TrainOptions options)
    {
        var diffs = new List<string>();
        void Compare(string prefix, JsonNode? a, JsonNode? b, IEnumerable<string> keys)
        {
            foreach (var k in keys)
            {
                string x = a?[k]?.ToJsonString() ?? "null", y = b?[k]?.ToJsonString() ?? "null";
                if (x != y) diffs.Add($"{prefix}{k}: {x} → {y}");
            }
        }
        var model = JsonSerializer.SerializeToNode(config, Trainer.Json)!.AsObject();
        Compare("", saved.Model, model, model.Select(kv => kv.Key));
        var savedOptions = saved.Training!.Deserialize<TrainOptions>(Trainer.Json)!;
        string? Full(string? p) => p is null ? null : Path.GetFullPath(p);
        Compare("", Normalize(savedOptions with { Data = Full(savedOptions.Data), Tokenizer = Full(savedOptions.Tokenizer) }),
                Normalize(options with { Data = Full(options.Data), Tokenizer = Full(options.Tokenizer) }),
                ["data", "tokenizer", "batch_schedule", "seed", "held_out_fraction", "mesh", "shard_weights"]);
        Compare("optimizer.", JsonSerializer.SerializeToNode(savedOptions.Optimizer, Trainer.Json), JsonSerializer.SerializeToNode(options.Optimizer, Trainer.Json),
                JsonSerializer.SerializeToNode(options.Optimizer, Trainer.Json)!.AsObject().Select(kv => kv.Key));
        return diffs;
    }

    static JsonNode Normalize(TrainOptions o) => JsonSerializer.SerializeToNode(o with { Mesh = o.Mesh ?? "1x1" }, Trainer.Json)!;
}
