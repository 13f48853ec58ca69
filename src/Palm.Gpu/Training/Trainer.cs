using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.IO;
using Palm.Gpu.Model;

namespace Palm.Gpu.Training;

/// <summary>
/// The training loop: deterministic batches → forward → backward → global norm → Adafactor. Every
/// input is validated before anything is allocated or written, so bad input never leaves a half run
/// directory.
/// </summary>
public sealed class Trainer : IDisposable
{
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter(JsonNamingPolicy.SnakeCaseLower) },
    };

    readonly BatchSampler _sampler;
    readonly DataCursor _cursor = new();
    readonly int[] _inputs, _targets;

    public Trainer(ModelConfig requested, TrainOptions options, bool vocabFromTokenizer)
    {
        Options = options;
        Schedule = Training.BatchSchedule.Parse(options.BatchSchedule);
        if (options.Steps < 0) throw new ConfigException($"--steps must be ≥ 0, got {options.Steps}");
        Tokenizer = options.Tokenizer is null ? new ByteTokenizer() : TokenizerLoader.Load(options.Tokenizer);
        // The model's vocabulary follows the tokenizer's unless the caller fixed it, rounded up to a multiple of 64.
        Config = (vocabFromTokenizer ? requested with { Vocab = RoundUp(Tokenizer.VocabSize, 64) } : requested).Validate();
        if (Tokenizer.VocabSize > Config.Vocab)
            throw new ConfigException($"the tokenizer has {Tokenizer.VocabSize} tokens but the model's vocab is {Config.Vocab}; raise --vocab or drop it to follow the tokenizer");

        Dataset = options.Data is null
            ? PackedDataset.FromDocuments(SyntheticCorpus.Generate(), Tokenizer, Config.SeqLen, options.HeldOutFraction)
            : PackedDataset.Load(options.Data, Tokenizer, Config.SeqLen, options.HeldOutFraction);
        if (Dataset.TrainSequences < Schedule.Max)
            throw new DataException($"the data holds {Dataset.TrainSequences} training sequences of {Config.SeqLen} tokens, fewer than one batch of {Schedule.Max}; use a shorter --seq, a smaller --batch or more data");

        Backend = BackendFactory.Create(options.Backend, options.Device, options.Threads);
        Model = new PalmModel(Backend, Config, Schedule.Max);
        Model.Parameters.Initialize(Backend, options.Seed);
        Optimizer = new AdafactorOptimizer(Backend, Model.Parameters, options.Optimizer);
        _sampler = new BatchSampler(Dataset, options.Seed);
        _inputs = new int[Schedule.Max * Config.SeqLen];
        _targets = new int[Schedule.Max * Config.SeqLen];
        FlopsPerToken = ModelMath.TrainingFlopsPerToken(Config);
        PeakGflops = options.PeakGflops > 0 ? options.PeakGflops : Peak.Measure(Backend);
    }

    public ModelConfig Config { get; }
    public TrainOptions Options { get; }
    public BatchSchedule Schedule { get; }
    public ITokenizer Tokenizer { get; }
    public PackedDataset Dataset { get; }
    public IBackend Backend { get; }
    public PalmModel Model { get; }
    public AdafactorOptimizer Optimizer { get; }
    public double FlopsPerToken { get; }
    public double PeakGflops { get; }
    /// <summary>Optimizer steps taken so far.</summary>
    public long Step { get; private set; }

    /// <summary>Runs one optimizer step and returns its metrics.</summary>
    public StepMetrics TrainStep(Stopwatch? runClock = null)
    {
        var sw = Stopwatch.StartNew();
        // The batch-size schedule is keyed by batch index: equal to the step until a rollback skips batches.
        long batchIndex = _sampler.NextBatch(_cursor, Schedule.At, _inputs, _targets);
        int batch = Schedule.At(batchIndex);
        int n = batch * Config.SeqLen;
        Model.Parameters.ZeroGradients(Backend);
        var loss = Model.Forward(_inputs.AsSpan(0, n), _targets.AsSpan(0, n), batch);
        Model.Backward();
        double gradNorm = Optimizer.GradientNorm();
        float lr = Optimizer.Step(Step + 1, gradNorm);
        Backend.Synchronize();
        Step++;
        double seconds = sw.Elapsed.TotalSeconds;
        double tps = n / seconds;
        return new StepMetrics(Step, loss.CrossEntropy, loss.ZLoss, gradNorm, lr, batch, n, tps,
                               tps * FlopsPerToken / (PeakGflops * 1e9), seconds, runClock?.Elapsed.TotalSeconds ?? seconds);
    }

    /// <summary>Mean cross-entropy over (up to maxSequences of) the held-out split.</summary>
    public double Evaluate(int maxSequences = 64)
    {
        long count = Math.Min(Dataset.EvalSequences, maxSequences);
        if (count == 0) return double.NaN;
        int t = Config.SeqLen;
        var seq = new int[t + 1];
        double total = 0;
        long done = 0;
        while (done < count)
        {
            int batch = (int)Math.Min(Schedule.Max, count - done);
            for (int s = 0; s < batch; s++)
            {
                Dataset.GetEvalSequence(done + s, seq);
                seq.AsSpan(0, t).CopyTo(_inputs.AsSpan(s * t));
                seq.AsSpan(1, t).CopyTo(_targets.AsSpan(s * t));
            }
            total += Model.Forward(_inputs.AsSpan(0, batch * t), _targets.AsSpan(0, batch * t), batch).CrossEntropy * batch;
            done += batch;
        }
        return total / count;
    }

    /// <summary>The resolved configuration of this run, as written to config.json.</summary>
    public JsonObject DescribeRun() => new()
    {
        ["model"] = JsonSerializer.SerializeToNode(Config, Json),
        ["training"] = JsonSerializer.SerializeToNode(Options, Json),
        ["tokenizer"] = new JsonObject { ["kind"] = Tokenizer.Kind, ["vocab_size"] = Tokenizer.VocabSize, ["vocabulary_hash"] = Tokenizer.VocabularyHash, ["path"] = Options.Tokenizer },
        ["data"] = new JsonObject { ["tokens"] = Dataset.TokenCount, ["train_sequences"] = Dataset.TrainSequences, ["eval_sequences"] = Dataset.EvalSequences },
        ["backend"] = new JsonObject { ["name"] = Backend.Name, ["device"] = Backend.DeviceName, ["peak_gflops"] = PeakGflops },
        ["parameters"] = Model.Parameters.Count,
        ["flops_per_token"] = FlopsPerToken,
    };

    static int RoundUp(int x, int m) => (x + m - 1) / m * m;

    public void Dispose()
    {
        Optimizer.Dispose();
        Model.Dispose();
        Dataset.Dispose();
        Backend.Dispose();
    }
}
