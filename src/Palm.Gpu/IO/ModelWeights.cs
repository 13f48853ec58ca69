using Palm.Gpu.Backends;
using System.Text.Json;
using Palm.Gpu.Model;
using Palm.Gpu.Training;

namespace Palm.Gpu.IO;

/// <summary>
/// model.safetensors: every parameter under its ParameterSchema name and shape, fp32, plus the model
/// config (JSON) and tokenizer description in the header metadata so the file alone is enough to
/// rebuild the model.
/// </summary>
public static class ModelWeights
{
    public const string Format = "palm-gpu/1";

    public static void Save(PalmModel model, string path, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        Save(model.Config, model.Parameters.ToDictionary(p => p.Name, p => model.Backend.ToHost(p.Value)), path, extraMetadata);
    }

    /// <summary>Writes full host tensors by name (e.g. gathered from a mesh) in the model's parameter order and shapes.</summary>
    public static void Save(ModelConfig config, IReadOnlyDictionary<string, float[]> weights, string path, IReadOnlyDictionary<string, string>? extraMetadata = null)
    {
        var tensors = ParameterSchema.For(config).Tensors.Select(p => new NamedTensor(p.Name, p.Shape.Select(x => (long)x).ToArray(),
            weights.TryGetValue(p.Name, out var w) && w.LongLength == p.Count ? w
                : throw new ArgumentException($"weights lack '{p.Name}' of {p.Count} values"))).ToList();
        var meta = new Dictionary<string, string>
        {
            ["format"] = Format,
            ["config"] = JsonSerializer.Serialize(config, Trainer.Json),
        };
        if (extraMetadata is not null) foreach (var (k, v) in extraMetadata) meta[k] = v;
        SafeTensors.Write(path, tensors, meta);
    }

    /// <summary>Reads the model config stored in a weights file.</summary>
    public static ModelConfig ReadConfig(string path)
    {
        Dictionary<string, string> meta;
        try { meta = SafeTensors.ReadMetadata(path); }
        catch (Exception e) when (e is IOException or JsonException or InvalidDataException)
        { throw new InvalidDataException($"'{path}' is not a readable safetensors file: {e.Message}"); }
        if (!meta.TryGetValue("format", out var f) || f != Format || !meta.TryGetValue("config", out var json))
            throw new InvalidDataException($"'{path}' was not written by palm (no '{Format}' metadata); give the model.safetensors of a palm run");
        try
        {
            return (JsonSerializer.Deserialize<ModelConfig>(json, Trainer.Json) ?? throw new JsonException("config is null")).Validate();
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or NotSupportedException or ConfigException or ArgumentException)
        {
            throw new InvalidDataException($"'{path}': the model config in its metadata is not a valid palm config ({e.Message})");
        }
    }

    public static IReadOnlyDictionary<string, string> ReadMetadata(string path) => SafeTensors.ReadMetadata(path);

    /// <summary>Uploads every parameter from the file; names and shapes must match the model exactly.</summary>
    public static void Load(PalmModel model, string path)
    {
        model.LoadWeights(Read(model.Config, path));
    }

    /// <summary>Every parameter of <paramref name="config"/> from the file, checked by name and shape (e.g. to shard onto a mesh).</summary>
    public static Dictionary<string, float[]> Read(ModelConfig config, string path)
    {
        var tensors = SafeTensors.Read(path);
        var result = new Dictionary<string, float[]>();
        foreach (var p in ParameterSchema.For(config).Tensors)
        {
            if (!tensors.TryGetValue(p.Name, out var t))
                throw new InvalidDataException($"'{path}' has no tensor '{p.Name}'; it was written for a different model shape");
            if (!t.Shape.SequenceEqual(p.Shape.Select(x => (long)x)))
                throw new InvalidDataException($"'{path}': tensor '{p.Name}' has shape [{string.Join(",", t.Shape)}], the model expects [{string.Join(",", p.Shape)}]");
            result[p.Name] = t.Data;
        }
        return result;
    }
}
