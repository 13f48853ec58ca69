using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Data;
using Palm.Gpu.Inference;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Xunit;

namespace Palm.Gpu.Tests.Inference;

// The KV-cache path against the full-forward path (TextGenerator), tiny shapes with random weights.
public class KvCacheGeneratorTests
{
    static IBackend Create(string backend) => backend == "opencl" ? new OpenClBackend(0) : new CpuBackend(2);

    /// <summary>Random weights of the tiny preset (vocab widened to the byte tokenizer's) saved to a temporary file.</summary>
    static string Weights(ModelConfig config, ulong seed)
    {
        string path = Path.Combine(Path.GetTempPath(), $"kvcache-{Guid.NewGuid():N}.safetensors");
        using var be = new CpuBackend(2);
        using var model = new PalmModel(be, config, maxBatch: 1);
        model.Initialize(seed);
        ModelWeights.Save(model, path);
        return path;
    }

    static ModelConfig Tiny(AttentionKind attention, BlockKind block = BlockKind.Parallel) =>
        ModelConfig.Preset("tiny") with { Vocab = 264, Attention = attention, Block = block };

    public static IEnumerable<object[]> Cases =>
        from backend in new[] { "cpu", "opencl" }
        from attention in new[] { AttentionKind.MultiQuery, AttentionKind.MultiHead }
        select new object[] { backend, attention };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Greedy_output_with_the_cache_equals_the_full_forward_path(string backend, AttentionKind attention)
    {
        var config = Tiny(attention);
        string path = Weights(config, 5);
        try
        {
            var tok = new ByteTokenizer();
            using var be = Create(backend);
            using var full = new TextGenerator(be, path, tok, window: config.SeqLen);
            using var cached = new KvCacheGenerator(be, path, tok);
            var greedy = new SamplingOptions(0f);
            int compared = 0;
            foreach (var (prompt, tokens) in new[] { ("", 31), ("a", 5), ("ROMEO:", 25), ("the quick brown fox", 12), ("x", 1) })
            {
                string expected = full.Generate(prompt, tokens, 0f, 0, 1);
                string actual = cached.Generate(prompt, tokens, greedy, 1);
                Assert.Equal(expected, actual);
                compared += expected.Length;
            }
            Assert.True(compared > 20, $"only {compared} characters were generated: the comparison saw too little");
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void Serial_blocks_match_the_full_forward_path()
    {
        var config = Tiny(AttentionKind.MultiQuery, BlockKind.Serial);
        string path = Weights(config, 9);
        try
        {
            var tok = new ByteTokenizer();
            using var be = new CpuBackend(2);
            using var full = new TextGenerator(be, path, tok, window: config.SeqLen);
            using var cached = new KvCacheGenerator(be, path, tok);
            Assert.Equal(full.Generate("to be", 20, 0f, 0, 1), cached.Generate("to be", 20, new SamplingOptions(0f), 1));
        }
        finally { File.Delete(path); }
    }

    // A batch of prompts of different lengths decodes each as it would alone, greedy or sampled.
    [Theory]
    [InlineData(0f, 0, 1f)]
    [InlineData(1.0f, 20, 0.9f)]
    public void A_batch_gives_each_prompt_what_it_gives_alone(float temperature, int topK, float topP)
    {
        var config = Tiny(AttentionKind.MultiQuery);
        string path = Weights(config, 7);
        try
        {
            var tok = new ByteTokenizer();
            using var be = new CpuBackend(2);
            using var batch = new KvCacheGenerator(be, path, tok, maxBatch: 3);
            var sampling = new SamplingOptions(temperature, topK, topP);
            string[] prompts = ["a", "hello there", ""];
            var together = batch.Generate(prompts, 15, sampling, 4);
            for (int s = 0; s < prompts.Length; s++)
            {
                // Sequence s of a batch draws from the stream of (seed, s): alone it is sequence 0 of a batch of s + 1.
                var alone = batch.Generate(Enumerable.Repeat(prompts[s], s + 1).ToArray(), 15, sampling, 4);
                Assert.Equal(together[s], alone[s]);
            }
            Assert.Equal(together, batch.Generate(prompts, 15, sampling, 4));   // deterministic for a seed
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void A_context_past_the_training_length_is_refused_with_one_line()
    {
        var config = Tiny(AttentionKind.MultiQuery);
        string path = Weights(config, 3);
        try
        {
            using var be = new CpuBackend(1);
            using var gen = new KvCacheGenerator(be, path, new ByteTokenizer());
            Assert.Equal(2L * config.Layers * 1 * config.HeadDim * 4, gen.CacheBytesPerToken);
            var e = Assert.Throws<ConfigException>(() => gen.Generate("abc", 29, new SamplingOptions(0f), 1));
            Assert.Contains("longer than the context of 32 tokens", e.Message);
            Assert.DoesNotContain('\n', e.Message);
            Assert.Throws<ConfigException>(() => gen.Generate("abc", 0, new SamplingOptions(0f), 1));
            gen.Generate("abc", 28, new SamplingOptions(0f), 1);   // exactly the context: accepted
        }
        finally { File.Delete(path); }
    }
}

public class SamplerTests
{
    [Fact]
    public void Top_k_and_top_p_keep_only_the_best_tokens()
    {
        float[] logits = [0.5f, 3f, -1f, 2.9f, 3f, 0f];
        Assert.Equal(1, Sampler.ArgMax(logits));   // ties go to the lower id
        var rng = new SplitMix64(1);
        var seen = new HashSet<int>();
        for (int i = 0; i < 400; i++) seen.Add(Sampler.Sample(logits, new SamplingOptions(1f, TopK: 2), ref rng));
        Assert.Equal([1, 4], seen.Order());
        seen.Clear();
        for (int i = 0; i < 400; i++) seen.Add(Sampler.Sample(logits, new SamplingOptions(1f, TopP: 0.5f), ref rng));
        Assert.Equal([1, 4], seen.Order());       // 1 and 4 hold ~0.36 each: together past 0.5, 3 is not needed
        seen.Clear();
        for (int i = 0; i < 2000; i++) seen.Add(Sampler.Sample(logits, new SamplingOptions(1f), ref rng));
        Assert.Equal(6, seen.Count);
        var a = new SplitMix64(9); var b = new SplitMix64(9);
        for (int i = 0; i < 50; i++)
            Assert.Equal(Sampler.Sample(logits, new SamplingOptions(0.7f, 4, 0.95f), ref a), Sampler.Sample(logits, new SamplingOptions(0.7f, 4, 0.95f), ref b));
    }
}
