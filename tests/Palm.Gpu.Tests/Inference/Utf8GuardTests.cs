using System.Text;
using Palm.Gpu.Data;
using Palm.Gpu.Inference;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Inference;

/// <summary>Generated text is valid UTF-8 whatever the model's logits say: accents, CJK and emoji come back whole.</summary>
public class Utf8GuardTests
{
    static readonly UTF8Encoding Strict = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);

    [Fact]
    public void TokensDrawnFromRandomLogitsThroughTheGuardAlwaysFormValidUtf8()
    {
        // A "model" that prefers invalid bytes: continuation bytes, overlong leads, surrogates and > U+10FFFF leads get
        // the largest logits. Every draw through the guard must still extend valid UTF-8, including E0/ED/F0/F4's
        // restricted second bytes, which a decoder would otherwise turn into U+FFFD.
        var tok = new ByteTokenizer();
        var guard = Utf8Guard.For(tok)!;
        var rng = new Random(5);
        var logits = new float[tok.VocabSize];
        var ids = new List<int>();
        int state = Utf8Guard.Boundary;
        for (int i = 0; i < 20_000; i++)
        {
            for (int t = 0; t < logits.Length; t++) logits[t] = (float)rng.NextDouble();
            foreach (int b in new[] { 0x80, 0xBF, 0xC0, 0xC1, 0xED, 0xA0, 0xF4, 0x90, 0xF5, 0xFF, 0xE0, 0xF0 }) logits[b] += 0.9f;
            guard.Mask(logits, state);
            int next = Array.IndexOf(logits, logits.Max());
            if (next == tok.EodId || next == tok.PadId) continue;
            state = guard.Advance(state, next);
            ids.Add(next);
        }
        while (state != Utf8Guard.Boundary) { ids.RemoveAt(ids.Count - 1); state = Replay(guard, ids); }
        var bytes = tok.DecodeBytes(ids.ToArray());
        string text = Strict.GetString(bytes);   // throws on any invalid sequence
        Assert.Contains(text, c => char.IsSurrogate(c));                     // 4-byte characters were drawn
        Assert.Contains(text, c => c >= 0x800 && !char.IsSurrogate(c));       // and 3-byte ones
    }

    static int Replay(Utf8Guard guard, List<int> ids)
    {
        int s = Utf8Guard.Boundary;
        foreach (int id in ids) s = guard.Advance(s, id);
        return s;
    }

    [Fact]
    public void AModelTrainedOnAccentsCjkAndEmojiGeneratesThemBackWithoutReplacementCharacters()
    {
        string dir = CliRunner.TempDir();
        var random = new Random(1);
        string[] parts = ["café crème ", "naïve façade ", "日本語のテキスト ", "中文字符 ", "emoji 🙂🚀 ", "ñandú über "];
        File.WriteAllText(Path.Combine(dir, "text.txt"), string.Concat(Enumerable.Range(0, 3000).Select(_ => parts[random.Next(parts.Length)])));
        string run = Path.Combine(dir, "run");
        var t = CliRunner.Run("train", "--data", Path.Combine(dir, "text.txt"), "--preset", "tiny", "--seq", "128", "--steps", "300", "--out", run, "--peak-gflops", "100");
        Assert.True(t.ExitCode == 0, t.Stderr);
        var all = new StringBuilder();
        foreach (string prompt in new[] { "café ", "日本", "emoji ", "ñ" })
        {
            var cached = CliRunner.Run("generate", "--model", run, "--prompt", prompt, "--tokens", "120", "--temperature", "0");
            var full = CliRunner.Run("generate", "--model", run, "--prompt", prompt, "--tokens", "120", "--temperature", "0", "--no-kv-cache", "--window", "128");
            Assert.True(cached.ExitCode == 0 && full.ExitCode == 0, cached.Stderr + full.Stderr);
            Assert.Equal(full.Stdout, cached.Stdout);
            all.Append(cached.Stdout);
            foreach (int seed in new[] { 1, 2, 3 })
            {
                var sampled = CliRunner.Run("generate", "--model", run, "--prompt", prompt, "--tokens", "120", "--seed", seed.ToString());
                Assert.True(sampled.ExitCode == 0, sampled.Stderr);
                all.Append(sampled.Stdout);
            }
        }
        string text = all.ToString();
        Assert.DoesNotContain('\uFFFD', text);
        Assert.Contains(text, c => char.IsSurrogate(c));                   // emoji
        Assert.Contains(text, c => c >= 0x3040 && c <= 0x9FFF);             // kana / CJK
        Assert.Contains(text, c => c is 'é' or 'ï' or 'ç' or 'ñ' or 'ü');   // accents
    }
}
