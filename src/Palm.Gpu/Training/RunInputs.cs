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
    /// <summary>Loads the tokenizer and resolves the model's vocabulary (the tokenizer's, rounded up to 64, unless fixed).</summary>
    public static (ITokenizer Tokenizer, ModelConfig Config) ResolveModel(ModelConfig requested, TrainOptions options, bool vocabFromTokenizer)
    {
        var tokenizer = options.Tokenizer is null ? new ByteTokenizer() : TokenizerLoader.Load(options.Tokenizer);
        var config = (vocabFromTokenizer ? requested with { Vocab = (tokenizer.VocabSize + 63) / 64 * 64 } : requested).Validate();
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
}
