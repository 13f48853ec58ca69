using Palm.Gpu.Model;

namespace Palm.Gpu.Training;

/// <summary>
/// Batch size in sequences as a function of the step: a list of (from step, sequences) pairs.
/// PaLM 540B: 512 sequences until step 50k, 1024 until 115k, then 2048 — "0:512,50000:1024,115000:2048".
/// </summary>
public sealed class BatchSchedule
{
    readonly (long Step, int Batch)[] _points;

    public BatchSchedule(IEnumerable<(long Step, int Batch)> points)
    {
        _points = points.OrderBy(p => p.Step).ToArray();
        if (_points.Length == 0 || _points[0].Step != 0)
            throw new ConfigException("a batch schedule must start at step 0, e.g. \"0:8,100:16\"");
        foreach (var (s, b) in _points)
            if (b <= 0) throw new ConfigException($"batch schedule: step {s} asks for {b} sequences; batch sizes must be positive");
        for (int i = 1; i < _points.Length; i++)
            if (_points[i].Step == _points[i - 1].Step) throw new ConfigException($"batch schedule names step {_points[i].Step} twice");
    }

    public static BatchSchedule Constant(int batch) => new([(0, batch)]);

    /// <summary>Parses "0:8,100:16" (step:sequences pairs); a single number means a constant batch.</summary>
    public static BatchSchedule Parse(string text)
    {
        if (int.TryParse(text, out int constant)) return Constant(constant);
        var pts = new List<(long, int)>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var kv = part.Split(':');
            if (kv.Length != 2 || !long.TryParse(kv[0], out long s) || !int.TryParse(kv[1], out int b))
                throw new ConfigException($"batch schedule entry '{part}' is not step:sequences; write e.g. \"0:8,100:16\"");
            pts.Add((s, b));
        }
        return new BatchSchedule(pts);
    }

    /// <summary>Sequences in the batch of step (0-based).</summary>
    public int At(long step)
    {
        int b = _points[0].Batch;
        foreach (var (s, size) in _points) if (step >= s) b = size;
        return b;
    }

    public int Max => _points.Max(p => p.Batch);
    /// <summary>Every batch size the schedule uses.</summary>
    public IEnumerable<int> Sizes => _points.Select(p => p.Batch);
    public override string ToString() => string.Join(",", _points.Select(p => $"{p.Step}:{p.Batch}"));
}
