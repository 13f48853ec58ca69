using Palm.Gpu.Model;
using TorchSharp;
using static TorchSharp.torch;

namespace Palm.Gpu.TorchPeer;

/// <summary>
/// Token batches: windows of T+1 bytes of a corpus at random offsets (palm's byte tokenizer: ids 0..255, all inside the
/// preset's vocabulary), or uniform ids in [0, V) as `palm bench` draws them. Either way the model does the same work.
/// </summary>
internal sealed class TokenSource
{
    readonly byte[]? _text;
    readonly int _vocab;

    TokenSource(byte[]? text, int vocab, string description)
    {
        _text = text;
        _vocab = vocab;
        Description = description;
    }

    public string Description { get; }
    /// <summary>True for a corpus's bytes, false for uniform random ids.</summary>
    public bool IsText => _text is not null;

    public static TokenSource Open(string data, int vocab)
    {
        if (data == "random") return new TokenSource(null, vocab, $"uniform ids in [0, {vocab})");
        if (!File.Exists(data))
            throw new FileNotFoundException($"--data {data}: no such file (from {Environment.CurrentDirectory}); pass the corpus's path, or --data random for uniform token ids");
        if (vocab < 256) throw new ConfigException($"--data {data} uses byte tokens (256 ids) but the model's vocab is {vocab}; use a larger preset or --data random");
        var text = File.ReadAllBytes(data);
        return new TokenSource(text, vocab, $"bytes of {Path.GetFileName(data)} ({text.Length:N0} bytes)");
    }

    /// <summary>One batch as host arrays (B·T each, row-major): inputs and next-token targets.</summary>
    public (int[] Inputs, int[] Targets) HostBatch(Random rng, int batch, int seq)
    {
        var inputs = new int[batch * seq];
        var targets = new int[batch * seq];
        if (_text is null)
        {
            for (int i = 0; i < inputs.Length; i++) { inputs[i] = rng.Next(_vocab); targets[i] = rng.Next(_vocab); }
            return (inputs, targets);
        }
        if (_text.Length < seq + 1) throw new ConfigException($"the corpus has {_text.Length} bytes, fewer than one sequence of {seq + 1}; use a shorter --seq");
        for (int b = 0; b < batch; b++)
        {
            int start = rng.Next(_text.Length - seq);
            for (int t = 0; t < seq; t++)
            {
                inputs[b * seq + t] = _text[start + t];
                targets[b * seq + t] = _text[start + t + 1];
            }
        }
        return (inputs, targets);
    }

    /// <summary>One batch as (B,T) int64 tensors.</summary>
    public (Tensor Inputs, Tensor Targets) Batch(Random rng, int batch, int seq)
    {
        var (inputs, targets) = HostBatch(rng, batch, seq);
        return (ToTensor(inputs, batch, seq), ToTensor(targets, batch, seq));
    }

    public static Tensor ToTensor(int[] ids, int batch, int seq) => torch.tensor(ids.Select(x => (long)x).ToArray(), [batch, seq]);
}
