using Palm.Gpu.Backends;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Benchmarks;

// Every kernel of the IBackend contract, forward and backward, at the shapes the model calls it with.
// Legend: B batch, T time, D model width, H query heads, G kv heads, K head dim, F MLP width, V vocab, N = B·T.
//
// Two model shapes:
//   small          the small preset at `palm bench`'s default batch: B 4, T 512, D 512, H 8, G 1, K 64, F 2048, V 8192
//   palm-8b-layer  one block of PaLM 8B with the batch scaled down to one sequence: B 1, T 2048, D 4096, H 16, G 1,
//                  K 256, F 16384; the head (embedding, cross-entropy) at V 256k, without the 4 TFLOP logits GEMMs
// The cost of each case comes from OpCosts, the same description `palm bench` and the results board use.

/// <summary>Model sizes a kernel case is drawn from.</summary>
public sealed record KernelShape(string Name, int B, int T, int D, int H, int G, int K, int F, int V, bool HeadGemms)
{
    public int N => B * T;
    public int HK => H * K;
    public int GK => G * K;

    public static readonly KernelShape Small = new("small", 4, 512, 512, 8, 1, 64, 2048, 8192, HeadGemms: true);
    public static readonly KernelShape Palm8bLayer = new("palm-8b-layer", 1, 2048, 4096, 16, 1, 256, 16384, 256_000, HeadGemms: false);
    public static readonly IReadOnlyList<KernelShape> All = [Small, Palm8bLayer];

    public override string ToString() => Name;
}

/// <summary>Buffers of one case on one backend, and the call to time.</summary>
public sealed class PreparedKernel(IBackend backend, Action run, List<DeviceBuffer> buffers) : IDisposable
{
    public IBackend Backend => backend;
    /// <summary>One kernel call; the caller synchronizes.</summary>
    public void Run() => run();
    public void Dispose()
    {
        foreach (var b in buffers) b.Dispose();
        // Host-backed buffers of the large cases (a 4 GiB embedding table) are garbage now; reclaim them before
        // the next case allocates, since device allocations outside the managed heap do not prompt a collection.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }
}

/// <summary>
/// One kernel call to benchmark: which suite it belongs to ("attention"), its name ("attention.backward"
/// or, for GEMMs, the model role "dWq += hᵀ·dq"), forward or backward, the shape and its cost.
/// </summary>
public sealed class KernelCase(string suite, string name, string pass, KernelShape shape, string backend, OpCost cost,
                               Func<IBackend, PreparedKernel> prepare)
{
    public string Suite { get; } = suite;
    public string Name { get; } = name;
    public string Pass { get; } = pass;
    public KernelShape Shape { get; } = shape;
    public string Backend { get; } = backend;
    public OpCost Cost { get; } = cost;
    public PreparedKernel Prepare(IBackend be) => prepare(be);
    public override string ToString() => $"{Name} {Shape.Name} {Backend}";
}

/// <summary>Builds the cases; <see cref="Shapes"/> and <see cref="Backends"/> narrow them (set from the command line).</summary>
public static class KernelCases
{
    public static IReadOnlyList<KernelShape> Shapes { get; set; } = KernelShape.All;
    public static IReadOnlyList<string> Backends { get; set; } = AvailableBackends();

    public static readonly string[] Suites = ["matmul", "embedding", "layernorm", "rope", "attention", "swiglu", "residual", "cross_entropy", "reduce", "adafactor"];

    /// <summary>
    /// Backends of <see cref="BackendRegistry.Names"/> that can be created here (a missing OpenCL driver is reported, not
    /// fatal). ILGPU's CPU accelerator (what `ilgpu` opens on a machine without a GPU) is a simulator that runs a step in
    /// minutes, so it is left out unless <paramref name="withSimulators"/> (`--backends ilgpu` asks for it by name).
    /// </summary>
    public static IReadOnlyList<string> AvailableBackends(TextWriter? log = null, bool withSimulators = false)
    {
        var ok = new List<string>();
        foreach (var name in BackendRegistry.Names)
        {
            try
            {
                using var be = BackendRegistry.Create(name);
                if (!withSimulators && be is Palm.Gpu.Backends.Ilgpu.IlgpuBackend { IsSimulator: true })
                {
                    log?.WriteLine($"backend {name}: only ILGPU's CPU simulator here ({be.DeviceName}); its cases are skipped unless --backends names it");
                    continue;
                }
                ok.Add(name);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                log?.WriteLine($"backend {name}: not available ({e.Message}); its cases are skipped");
            }
        }
        return ok;
    }

    /// <summary>Every case of one suite for the selected shapes and backends.</summary>
    public static IEnumerable<KernelCase> For(string suite) =>
        from backend in Backends from shape in Shapes from c in Build(shape, backend) where c.Suite == suite select c;

    /// <summary>Every case for the selected shapes and backends, suite by suite.</summary>
    public static IEnumerable<KernelCase> All() => Suites.SelectMany(For);

    static IEnumerable<KernelCase> Build(KernelShape s, string backend)
    {
        int n = s.N, d = s.D, f = s.F, v = s.V, hk = s.HK, gk = s.GK;
        long nd = (long)n * d, nf = (long)n * f, df0 = (long)d * f;

        // ---- matmul: the model's GEMMs by role (forward, then backward) -------------------------
        (string Role, string Pass, int M, int N, int K, bool TA, bool TB, bool Acc)[] gemms =
        [
            ("q = h·Wq", "forward", n, hk, d, false, false, false),
            ("k, v = h·Wk, h·Wv", "forward", n, gk, d, false, false, false),
            ("y += att·Wo", "forward", n, d, hk, false, false, true),
            ("gate, up = h·W", "forward", n, f, d, false, false, false),
            ("y += act·Wdown", "forward", n, d, f, false, false, true),
            ("logits = hf·Eᵀ", "forward", n, v, d, false, true, false),
            ("dWo += attᵀ·dy", "backward", hk, d, n, true, false, true),
            ("datt = dy·Woᵀ", "backward", n, hk, d, false, true, false),
            ("dWq += hᵀ·dq", "backward", d, hk, n, true, false, true),
            ("dWk, dWv += hᵀ·dk", "backward", d, gk, n, true, false, true),
            ("dh = dq·Wqᵀ", "backward", n, d, hk, false, true, false),
            ("dh += dk·Wkᵀ", "backward", n, d, gk, false, true, true),
            ("dWdown += actᵀ·dy", "backward", f, d, n, true, false, true),
            ("dact = dy·Wdownᵀ", "backward", n, f, d, false, true, false),
            ("dWgate, dWup += hᵀ·dg", "backward", d, f, n, true, false, true),
            ("dh += dg·Wgateᵀ", "backward", n, d, f, false, true, true),
            ("dhf = dlogits·E", "backward", n, d, v, false, false, false),
            ("dE += dlogitsᵀ·hf", "backward", v, d, n, true, false, true),
        ];
        foreach (var g in gemms)
        {
            bool head = g.Role is "logits = hf·Eᵀ" or "dhf = dlogits·E" or "dE += dlogitsᵀ·hf";
            if (head && !s.HeadGemms) continue;
            yield return new("matmul", $"matmul {g.Role}", g.Pass, s, backend, OpCosts.Matmul(g.M, g.N, g.K, g.Acc), be =>
            {
                var a = Random(be, "a", (long)g.M * g.K, 1);
                var b = Random(be, "b", (long)g.K * g.N, 2);
                var c = Random(be, "c", (long)g.M * g.N, 3);
                return new(be, () => be.Matmul(c, a, b, g.M, g.N, g.K, g.TA, g.TB, 1f, g.Acc), [a, b, c]);
            });
        }

        // ---- embedding ---------------------------------------------------------------------------
        yield return new("embedding", "embedding.forward", "forward", s, backend, OpCosts.EmbeddingForward(n, d), be =>
        {
            var tokens = Tokens(be, n, v, 4);
            var table = Random(be, "table", (long)v * d, 5);
            var output = be.Allocate("out", nd);
            return new(be, () => be.EmbeddingForward(output, tokens, table, n, d, 0, v), [tokens, table, output]);
        });
        yield return new("embedding", "embedding.backward", "backward", s, backend, OpCosts.EmbeddingBackward(n, d, v), be =>
        {
            var tokens = Tokens(be, n, v, 4);
            var dtable = Zeros(be, "dtable", (long)v * d);
            var dout = Random(be, "dout", nd, 6);
            return new(be, () => be.EmbeddingBackward(dtable, tokens, dout, n, d, 0, v), [tokens, dtable, dout]);
        });

        // ---- layer norm --------------------------------------------------------------------------
        yield return new("layernorm", "layernorm.forward", "forward", s, backend, OpCosts.LayerNormForward(n, d), be =>
        {
            var (input, weight, output, mean, rstd) = LayerNormBuffers(be, n, d);
            return new(be, () => be.LayerNormForward(output, mean, rstd, input, weight, n, d), [input, weight, output, mean, rstd]);
        });
        yield return new("layernorm", "layernorm.backward", "backward", s, backend, OpCosts.LayerNormBackward(n, d, accumulate: true), be =>
        {
            var (input, weight, output, mean, rstd) = LayerNormBuffers(be, n, d);
            be.LayerNormForward(output, mean, rstd, input, weight, n, d);
            var dout = Random(be, "dout", nd, 7);
            var dinput = Zeros(be, "dinp", nd);
            var dweight = Zeros(be, "dw", d);
            return new(be, () => be.LayerNormBackward(dinput, dweight, dout, input, weight, mean, rstd, n, d, accumulate: true),
                       [input, weight, output, mean, rstd, dout, dinput, dweight]);
        });

        // ---- RoPE (queries: H heads; the model also rotates the G key heads) ---------------------
        yield return new("rope", "rope.forward", "forward", s, backend, OpCosts.RopeForward(s.B, s.T, s.H, s.K), be =>
        {
            var x = Random(be, "q", (long)n * hk, 8);
            return new(be, () => be.RopeForward(x, x, s.B, s.T, s.H, s.K), [x]);
        });
        yield return new("rope", "rope.backward", "backward", s, backend, OpCosts.RopeBackward(s.B, s.T, s.H, s.K), be =>
        {
            var x = Random(be, "dq", (long)n * hk, 9);
            return new(be, () => be.RopeBackward(x, x, s.B, s.T, s.H, s.K), [x]);
        });

        // ---- attention ---------------------------------------------------------------------------
        yield return new("attention", "attention.forward", "forward", s, backend, OpCosts.AttentionForward(s.B, s.T, s.H, s.G, s.K), be =>
        {
            var (q, k, vv, o, lse) = AttentionBuffers(be, s);
            return new(be, () => be.AttentionForward(o, lse, q, k, vv, s.B, s.T, s.H, s.G, s.K), [q, k, vv, o, lse]);
        });
        yield return new("attention", "attention.backward", "backward", s, backend, OpCosts.AttentionBackward(s.B, s.T, s.H, s.G, s.K), be =>
        {
            var (q, k, vv, o, lse) = AttentionBuffers(be, s);
            be.AttentionForward(o, lse, q, k, vv, s.B, s.T, s.H, s.G, s.K);
            var dout = Random(be, "dout", (long)n * hk, 10);
            var dq = be.Allocate("dq", (long)n * hk);
            var dk = be.Allocate("dk", (long)n * gk);
            var dv = be.Allocate("dv", (long)n * gk);
            return new(be, () => be.AttentionBackward(dq, dk, dv, dout, q, k, vv, o, lse, s.B, s.T, s.H, s.G, s.K), [q, k, vv, o, lse, dout, dq, dk, dv]);
        });

        // ---- SwiGLU ------------------------------------------------------------------------------
        yield return new("swiglu", "swiglu.forward", "forward", s, backend, OpCosts.SwiGluForward(nf), be =>
        {
            var gate = Random(be, "gate", nf, 11);
            var up = Random(be, "up", nf, 12);
            var output = be.Allocate("out", nf);
            return new(be, () => be.SwiGluForward(output, gate, up, nf), [gate, up, output]);
        });
        yield return new("swiglu", "swiglu.backward", "backward", s, backend, OpCosts.SwiGluBackward(nf), be =>
        {
            var gate = Random(be, "gate", nf, 11);
            var up = Random(be, "up", nf, 12);
            var dout = Random(be, "dout", nf, 13);
            var dgate = be.Allocate("dgate", nf);
            var dup = be.Allocate("dup", nf);
            return new(be, () => be.SwiGluBackward(dgate, dup, dout, gate, up, nf), [gate, up, dout, dgate, dup]);
        });

        // ---- residual (the backward of an add routes dout to both inputs: AddInPlace) -----------
        yield return new("residual", "add", "forward", s, backend, OpCosts.Add(nd), be =>
        {
            var a = Random(be, "a", nd, 14);
            var b = Random(be, "b", nd, 15);
            var o = be.Allocate("out", nd);
            return new(be, () => be.Add(o, a, b, nd), [a, b, o]);
        });
        yield return new("residual", "add_in_place", "backward", s, backend, OpCosts.AddInPlace(nd), be =>
        {
            var acc = Zeros(be, "acc", nd);
            var x = Random(be, "x", nd, 16);
            return new(be, () => be.AddInPlace(acc, x, nd), [acc, x]);
        });

        // ---- memory ops the model calls (serial blocks copy the residual; every step zeroes the gradients)
        yield return new("residual", "copy", "forward", s, backend, OpCosts.Copy(nd), be =>
        {
            var src = Random(be, "src", nd, 28);
            var dst = be.Allocate("dst", nd);
            return new(be, () => be.Copy(dst, src, nd), [src, dst]);
        });
        yield return new("residual", "fill", "optimizer", s, backend, OpCosts.Fill(df0), be =>
        {
            var x = be.Allocate("grad", df0);
            return new(be, () => be.Fill(x, 0f, df0), [x]);
        });

        // ---- cross-entropy with z-loss ----------------------------------------------------------
        long nv = (long)n * v;
        yield return new("cross_entropy", "cross_entropy.forward", "forward", s, backend, OpCosts.CrossEntropyForward(n, v), be =>
        {
            var logits = Random(be, "logits", nv, 18);
            var targets = Tokens(be, n, v, 19);
            var targetLogit = be.Allocate("target_logit", n);
            var logZ = be.Allocate("logz", n);
            return new(be, () => be.CrossEntropyForward(logZ, targetLogit, logits, targets, n, v, 0), [logits, targets, targetLogit, logZ]);
        });
        yield return new("cross_entropy", "cross_entropy.backward", "backward", s, backend, OpCosts.CrossEntropyBackward(n, v), be =>
        {
            var logits = Random(be, "logits", nv, 18);
            var targets = Tokens(be, n, v, 19);
            var targetLogit = be.Allocate("target_logit", n);
            var logZ = be.Allocate("logz", n);
            be.CrossEntropyForward(logZ, targetLogit, logits, targets, n, v, 0);
            // In place, as the model calls it (dlogits overwrites logits): half the memory at V = 256k.
            return new(be, () => be.CrossEntropyBackward(logits, logits, logZ, targets, 1f / n, 1e-4f, n, v, 0), [logits, targets, targetLogit, logZ]);
        });

        // ---- reductions and optimizer: the largest matrix of the block, (D,F) -----------------------
        long df = (long)d * f;
        yield return new("reduce", "sum_of_squares", "optimizer", s, backend, OpCosts.SumOfSquares(df), be =>
        {
            var x = Random(be, "grad", df, 20);
            double sink = 0;
            return new(be, () => sink += be.SumOfSquares(x, df), [x]);
        });
        yield return new("adafactor", "adafactor", "optimizer", s, backend, OpCosts.Adafactor(d, f, momentum: true, factored: false), be =>
        {
            var p = Random(be, "param", df, 21);
            var g = Random(be, "grad", df, 22);
            var m = Zeros(be, "m", df);
            var sv = Zeros(be, "v", df);
            var state = new AdafactorBuffers(m, sv, null, null);
            var step = new AdafactorStep(1e-2f, 0.9f, 0.5f, 1e-30f, 1e-3f, 1f, 1f, 1e-4f);
            return new(be, () => be.AdafactorUpdate(p, g, state, d, f, step), [p, g, m, sv]);
        });
    }

    static float[]? _evictor;
    static float _evictSink;

    /// <summary>
    /// Reads 128 MiB on every core so that no operand of the next kernel call is still in cache: a training
    /// step streams far more than the caches hold between two uses of a buffer, so kernels are timed cold.
    /// </summary>
    public static void EvictCaches()
    {
        var a = _evictor ??= Enumerable.Repeat(1f, 32 << 20).ToArray();
        const int Chunk = 1 << 18;
        var partial = new float[a.Length / Chunk];
        Parallel.For(0, partial.Length, i =>
        {
            float s = 0;
            var span = a.AsSpan(i * Chunk, Chunk);
            for (int j = 0; j < span.Length; j += 16) s += span[j]; // one touch per 64-byte line
            partial[i] = s;
        });
        _evictSink += partial.Sum();
    }

    static (DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer) LayerNormBuffers(IBackend be, int n, int d)
    {
        var input = Random(be, "inp", (long)n * d, 23);
        var weight = Random(be, "w", d, 24);
        return (input, weight, be.Allocate("out", (long)n * d), be.Allocate("mean", n), be.Allocate("rstd", n));
    }

    static (DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer, DeviceBuffer) AttentionBuffers(IBackend be, KernelShape s)
    {
        long n = s.N;
        return (Random(be, "q", n * s.HK, 25), Random(be, "k", n * s.GK, 26), Random(be, "v", n * s.GK, 27),
                be.Allocate("out", n * s.HK), be.Allocate("lse", (long)s.B * s.H * s.T));
    }

    /// <summary>
    /// A buffer of uniform values in [−1, 1), the same for a given seed on every backend. Large buffers (the
    /// 256k × 4096 embedding) repeat one 4M-value block: the values only need to be ordinary numbers.
    /// </summary>
    public static DeviceBuffer Random(IBackend be, string name, long length, int seed)
    {
        const int Block = 1 << 22;
        var host = new float[Math.Min(length, Block)];
        var rng = new Random(seed);
        for (int i = 0; i < host.Length; i++) host[i] = (float)(2 * rng.NextDouble() - 1);
        var b = be.Allocate(name, length);
        for (long at = 0; at < length; at += host.Length)
            be.Upload(b, host.AsSpan(0, (int)Math.Min(host.Length, length - at)), at);
        return b;
    }

    static DeviceBuffer Zeros(IBackend be, string name, long length)
    {
        var b = be.Allocate(name, length);
        be.Fill(b, 0f, length);
        return b;
    }

    static DeviceBuffer Tokens(IBackend be, int n, int v, int seed)
    {
        var rng = new Random(seed);
        var host = new int[n];
        for (int i = 0; i < n; i++) host[i] = rng.Next(v);
        var b = be.Allocate("tokens", n, ElementType.I32);
        be.Upload(b, host);
        return b;
    }
}
