using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using System.Text.Json.Nodes;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Training;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Training;

/// <summary>
/// Hundreds of seeded mutations of a model.safetensors header and of checkpoint manifests (single device and mesh):
/// each is read back as a loader would, and must either load or fail with an InvalidDataException that names the
/// file — never another exception type (a stack trace for the user), never a hang, never an unbounded allocation.
/// </summary>
public class MalformedFilesFuzzTests
{
    static readonly JsonNode?[] Replacements =
    [
        null, new JsonArray(), new JsonObject(), "x", "F32", "F16", -1, 0, 1.5, 1e308, long.MaxValue, -long.MaxValue, true, "50000x50000", "1x1",
        new JsonArray(-1), new JsonArray(1.5), new JsonArray(long.MaxValue, long.MaxValue), new JsonArray(1 << 20, 1 << 20), new JsonArray("a"),
        new JsonArray(0, 4), new JsonArray(4, 0), new JsonObject { ["x"] = 1 }, "{\"vocab\": 1}", "not json", new JsonArray(new JsonArray()),
    ];

    /// <summary>Every node of a JSON tree with a setter that replaces it (or removes it, when the replacement is a marker).</summary>
    static List<(JsonNode Parent, object Key)> Slots(JsonNode root)
    {
        var slots = new List<(JsonNode, object)>();
        void Walk(JsonNode? n)
        {
            if (n is JsonObject o) foreach (var (k, v) in o.ToList()) { slots.Add((o, k)); Walk(v); }
            else if (n is JsonArray a) for (int i = 0; i < a.Count; i++) { slots.Add((a, i)); Walk(a[i]); }
        }
        Walk(root);
        return slots;
    }

    /// <summary>One structural mutation (replace a value, remove a key, swap in another subtree) or, one time in five, a textual one.</summary>
    static string Mutate(string json, Random rng)
    {
        if (rng.Next(5) == 0)
        {
            var b = Encoding.UTF8.GetBytes(json);
            switch (rng.Next(3))
            {
                case 0: return Encoding.UTF8.GetString(b, 0, rng.Next(b.Length));                     // truncated
                case 1: b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8)); return Encoding.Latin1.GetString(b);   // a flipped bit
                default: return json.Insert(rng.Next(json.Length), "[{\"".Substring(rng.Next(3), 1));  // a stray bracket
            }
        }
        var root = JsonNode.Parse(json)!;
        var slots = Slots(root);
        var (parent, key) = slots[rng.Next(slots.Count)];
        int what = rng.Next(10);
        JsonNode? value = what == 0 ? slots[rng.Next(slots.Count)] switch { var (p, k) => (k is string s ? p[s] : p[(int)k])?.DeepClone() }
                                    : Replacements[rng.Next(Replacements.Length)]?.DeepClone();
        if (parent is JsonObject o)
        {
            if (what == 1) o.Remove((string)key);
            else o[(string)key] = value;
        }
        else ((JsonArray)parent)[(int)key] = value;
        return root.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true });
    }

    /// <summary>Runs a load on its own thread: returns the exception (null when it loaded); fails on a hang.</summary>
    static Exception? Try(Action load, string what)
    {
        Exception? thrown = null;
        var t = new Thread(() => { try { load(); } catch (Exception e) { thrown = e; } }, 256 << 20) { IsBackground = true };
        t.Start();
        Assert.True(t.Join(TimeSpan.FromSeconds(10)), $"{what}: no answer within 10 s");
        return thrown;
    }

    static void AssertClear(Exception? e, string path, string what)
    {
        if (e is null) return;
        Assert.True(e is InvalidDataException, $"{what}: {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void MutatedSafetensorsHeadersLoadOrFailClearly()
    {
        string dir = CliRunner.TempDir();
        string good = Path.Combine(dir, "model.safetensors");
        using (var t = new Trainer(ModelConfig.Preset("tiny"), new TrainOptions { Steps = 0, Threads = 2, PeakGflops = 100 }, true))
            ModelWeights.Save(t.Config, t.Engine.GatherWeights(), good, new Dictionary<string, string> { ["tokenizer"] = "bytes" });
        var bytes = File.ReadAllBytes(good);
        int headerLength = (int)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        string header = Encoding.UTF8.GetString(bytes, 8, headerLength);
        var data = bytes.AsSpan(8 + headerLength).ToArray();
        // The model config lives in the metadata as a JSON string: mutate it as JSON too, so its fields are reached.
        var withConfig = JsonNode.Parse(header)!;
        withConfig["__metadata__"]!["config"] = JsonNode.Parse((string)withConfig["__metadata__"]!["config"]!);
        string expanded = withConfig.ToJsonString();

        var rng = new Random(20261201);
        var sw = Stopwatch.StartNew();
        int loaded = 0, refused = 0;
        for (int i = 0; i < 400; i++)
        {
            string text = Mutate(i % 2 == 0 ? header : expanded, rng);
            if (i % 2 == 1) text = Restring(text);
            string path = Path.Combine(dir, $"m{i}.safetensors");
            var hb = Encoding.UTF8.GetBytes(text);
            using (var fs = File.Create(path))
            {
                var len = new byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)hb.Length);
                fs.Write(len);
                fs.Write(hb);
                fs.Write(data);
            }
            string what = $"mutation {i}: {Trim(text)}";
            var e = Try(() =>
            {
                var cfg = ModelWeights.ReadConfig(path);    // what generate and eval do first
                ModelWeights.Read(cfg, path);
            }, what);
            AssertClear(e, path, what);
            var raw = Try(() => SafeTensors.Read(path), what);
            AssertClear(raw, path, what);
            if (e is null) loaded++; else refused++;
            File.Delete(path);
        }
        Assert.True(refused > 300, $"only {refused} of 400 mutations were refused; the fuzzer is not reaching the checks");
        Assert.True(sw.Elapsed.TotalSeconds < 30, $"400 header mutations took {sw.Elapsed.TotalSeconds:F1}s");
    }

    /// <summary>The config back to a JSON string, as the format stores it (when the mutation left a parseable header with a structured config).</summary>
    static string Restring(string json)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(json); }
        catch (System.Text.Json.JsonException) { return json; }
        if (root is JsonObject o && o["__metadata__"] is JsonObject m && m["config"] is JsonNode c && c is not JsonValue)
        {
            m["config"] = c.ToJsonString();
            return o.ToJsonString();
        }
        return json;
    }

    static string Trim(string s) => s.Length > 300 ? s[..300] + "…" : s;

    [Theory]
    [InlineData(null, 150)]
    [InlineData("1x2", 150)]
    public void MutatedManifestsLoadOrFailClearlyAndResumeFallsBack(string? mesh, int mutations)
    {
        string run = CliRunner.TempDir();
        var options = new TrainOptions { Steps = 4, BatchSchedule = "2", Threads = 2, PeakGflops = 100, OutDir = run, CheckpointEvery = 2, Mesh = mesh };
        using (var t = new Trainer(ModelConfig.Preset("tiny") with { SeqLen = 16 }, options, true)) t.Run(4);
        var store = new CheckpointStore(Path.Combine(run, "checkpoints"));
        string newest = store.List()[0].Path;
        string manifestPath = Path.Combine(newest, CheckpointStore.ManifestFile);
        string original = File.ReadAllText(manifestPath);

        var rng = new Random(mesh is null ? 7 : 8);
        var sw = Stopwatch.StartNew();
        int refused = 0;
        for (int i = 0; i < mutations; i++)
        {
            string mutated = Mutate(original, rng);
            // Half the mutations get a fresh seal, so the edited field itself is what the loader must judge.
            if (i % 2 == 0) mutated = CheckpointStore.Reseal(mutated);
            File.WriteAllText(manifestPath, mutated);
            string what = $"manifest mutation {i} (mesh {mesh ?? "none"}): {Trim(mutated)}";
            var e = Try(() => CheckpointStore.Load(newest), what);
            AssertClear(e, newest, what);
            if (e is not null)
            {
                refused++;
                var fallback = Try(() => Assert.Equal(2, store.LoadLatestValid()!.Manifest.Step), what);
                Assert.True(fallback is null, $"{what}: resume did not fall back to step 2: {fallback}");
            }
            else
            {
                // It loaded: a trainer must accept it or refuse it with a clear error, never crash.
                var r = Try(() => { using var t = Trainer.Resume(CheckpointStore.Load(newest), new ResumeOverrides { OutDir = CliRunner.TempDir() }); }, what);
                Assert.True(r is null or ConfigException or InvalidDataException or Palm.Gpu.Data.DataException, $"{what}: Trainer.Resume threw {r?.GetType().Name}: {r?.Message}\n{r?.StackTrace}");
            }
        }
        File.WriteAllText(manifestPath, original);
        Assert.Equal(4, CheckpointStore.Load(newest).Manifest.Step);
        Assert.True(refused > mutations / 2, $"only {refused} of {mutations} manifest mutations were refused");
        Assert.True(sw.Elapsed.TotalSeconds < 30, $"{mutations} manifest mutations took {sw.Elapsed.TotalSeconds:F1}s");
    }
}
