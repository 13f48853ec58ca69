using System.Diagnostics;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends;

/// <summary>Which part of a training step a kernel call belongs to (set by the caller before each part).</summary>
public enum ProfilePhase { Forward, Backward, Optimizer, Collectives, Other }

/// <summary>Accumulated cost of one kernel in one phase.</summary>
public sealed class OpStats
{
    public long Calls { get; internal set; }
    public double Seconds { get; internal set; }
    public double Flops { get; internal set; }
    public double Bytes { get; internal set; }
}

/// <summary>One row of a profile: kernel × phase.</summary>
public sealed record OpProfile(string Kernel, ProfilePhase Phase, long Calls, double Seconds, double Flops, double Bytes)
{
    public double Gflops => Seconds > 0 ? Flops / Seconds / 1e9 : 0;
    public double GBps => Seconds > 0 ? Bytes / Seconds / 1e9 : 0;
}

/// <summary>
/// An <see cref="IBackend"/> decorator: forwards every call to an inner backend and, while
/// <see cref="Enabled"/>, synchronizes around each kernel and times it, accumulating per kernel and
/// <see cref="Phase"/> the calls, seconds, FLOPs and bytes (counted by <see cref="OpCosts"/>). It always
/// tracks the bytes of live buffers it allocated and their high-water mark.
///
/// Timing synchronizes the device before and after every kernel, which serialises an asynchronous
/// backend: a profiled step is slower than a plain one, so throughput is measured with profiling off and
/// the profile says where the time goes. Buffers are wrapped (so that freeing them can be counted) and
/// unwrapped on the way to the inner backend. Like the backends, one caller at a time.
/// </summary>
public sealed class ProfilingBackend : IBackend
{
    readonly IBackend _inner;
    readonly bool _ownsInner;
    readonly Dictionary<(string Kernel, ProfilePhase Phase), OpStats> _stats = [];

    public ProfilingBackend(IBackend inner, bool ownsInner = true)
    {
        _inner = inner ?? throw new ArgumentNullException(nameof(inner));
        _ownsInner = ownsInner;
    }

    public IBackend Inner => _inner;
    /// <summary>Time and count kernel calls (memory is tracked either way).</summary>
    public bool Enabled { get; set; }
    /// <summary>The phase the next kernel calls are attributed to.</summary>
    public ProfilePhase Phase { get; set; } = ProfilePhase.Other;

    /// <summary>Bytes of the buffers allocated through this backend and not yet disposed.</summary>
    public long LiveBytes { get; private set; }
    /// <summary>The largest <see cref="LiveBytes"/> seen since construction or <see cref="ResetHighWater"/>.</summary>
    public long HighWaterBytes { get; private set; }
    public int LiveBuffers { get; private set; }

    public string Name => _inner.Name;
    public string DeviceName => _inner.DeviceName;

    /// <summary>Forgets the timings (memory tracking continues).</summary>
    public void Reset() => _stats.Clear();
    public void ResetHighWater() => HighWaterBytes = LiveBytes;

    /// <summary>Adds a measurement taken outside the kernel contract (e.g. a collective), under the given phase.</summary>
    public void Record(string kernel, ProfilePhase phase, double seconds, double flops = 0, double bytes = 0)
    {
        if (!_stats.TryGetValue((kernel, phase), out var s)) _stats[(kernel, phase)] = s = new OpStats();
        s.Calls++;
        s.Seconds += seconds;
        s.Flops += flops;
        s.Bytes += bytes;
    }

    /// <summary>Every (kernel, phase) measured so far, by phase then by time, largest first.</summary>
    public IReadOnlyList<OpProfile> Snapshot() =>
        [.. _stats.Select(kv => new OpProfile(kv.Key.Kernel, kv.Key.Phase, kv.Value.Calls, kv.Value.Seconds, kv.Value.Flops, kv.Value.Bytes))
                  .OrderBy(p => p.Phase).ThenByDescending(p => p.Seconds).ThenBy(p => p.Kernel, StringComparer.Ordinal)];

    void Timed(in OpCost cost, Action call)
    {
        if (!Enabled) { call(); return; }
        _inner.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        call();
        _inner.Synchronize();
        Record(cost.Kernel, Phase, Stopwatch.GetElapsedTime(t0).TotalSeconds, cost.Flops, cost.Bytes);
    }

    static DeviceBuffer U(DeviceBuffer b) => b is TrackedBuffer t ? t.Inner : b;
    static DeviceBuffer? U0(DeviceBuffer? b) => b is null ? null : U(b);

    // ---- memory -------------------------------------------------------------------------------
    public DeviceBuffer Allocate(string name, long length, ElementType type = ElementType.F32)
    {
        var inner = _inner.Allocate(name, length, type);
        LiveBytes += inner.Bytes;
        LiveBuffers++;
        HighWaterBytes = Math.Max(HighWaterBytes, LiveBytes);
        return new TrackedBuffer(this, inner);
    }

    void Released(DeviceBuffer inner)
    {
        LiveBytes -= inner.Bytes;
        LiveBuffers--;
    }

    public void Upload(DeviceBuffer dst, ReadOnlySpan<float> src, long dstOffset = 0)
    {
        if (!Enabled) { _inner.Upload(U(dst), src, dstOffset); return; }
        _inner.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        _inner.Upload(U(dst), src, dstOffset);
        _inner.Synchronize();
        var c = OpCosts.Upload(src.Length);
        Record(c.Kernel, Phase, Stopwatch.GetElapsedTime(t0).TotalSeconds, c.Flops, c.Bytes);
    }

    public void Upload(DeviceBuffer dst, ReadOnlySpan<int> src, long dstOffset = 0)
    {
        if (!Enabled) { _inner.Upload(U(dst), src, dstOffset); return; }
        _inner.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        _inner.Upload(U(dst), src, dstOffset);
        _inner.Synchronize();
        var c = OpCosts.Upload(src.Length);
        Record(c.Kernel, Phase, Stopwatch.GetElapsedTime(t0).TotalSeconds, c.Flops, c.Bytes);
    }

    public void Download(DeviceBuffer src, Span<float> dst, long srcOffset = 0)
    {
        if (!Enabled) { _inner.Download(U(src), dst, srcOffset); return; }
        _inner.Synchronize();
        long t0 = Stopwatch.GetTimestamp();
        _inner.Download(U(src), dst, srcOffset);
        var c = OpCosts.Download(dst.Length);
        Record(c.Kernel, Phase, Stopwatch.GetElapsedTime(t0).TotalSeconds, c.Flops, c.Bytes);
    }

    public void Fill(DeviceBuffer dst, float value, long n) => Timed(OpCosts.Fill(n), () => _inner.Fill(U(dst), value, n));
    public void Copy(DeviceBuffer dst, DeviceBuffer src, long n, long dstOffset = 0, long srcOffset = 0)
        => Timed(OpCosts.Copy(n), () => _inner.Copy(U(dst), U(src), n, dstOffset, srcOffset));
    public void Synchronize() => _inner.Synchronize();

    // ---- kernels ------------------------------------------------------------------------------
    public void Matmul(DeviceBuffer c, DeviceBuffer a, DeviceBuffer b, int m, int n, int k,
                       bool transA = false, bool transB = false, float alpha = 1f, bool accumulate = false)
        => Timed(OpCosts.Matmul(m, n, k, accumulate), () => _inner.Matmul(U(c), U(a), U(b), m, n, k, transA, transB, alpha, accumulate));

    public void EmbeddingForward(DeviceBuffer output, DeviceBuffer tokens, DeviceBuffer table, int n, int d, int vocabStart, int vocabRows)
        => Timed(OpCosts.EmbeddingForward(n, d), () => _inner.EmbeddingForward(U(output), U(tokens), U(table), n, d, vocabStart, vocabRows));
    public void EmbeddingBackward(DeviceBuffer dtable, DeviceBuffer tokens, DeviceBuffer dout, int n, int d, int vocabStart, int vocabRows)
        => Timed(OpCosts.EmbeddingBackward(n, d, vocabRows), () => _inner.EmbeddingBackward(U(dtable), U(tokens), U(dout), n, d, vocabStart, vocabRows));

    public void LayerNormForward(DeviceBuffer output, DeviceBuffer mean, DeviceBuffer rstd, DeviceBuffer input, DeviceBuffer weight, int n, int d)
        => Timed(OpCosts.LayerNormForward(n, d), () => _inner.LayerNormForward(U(output), U(mean), U(rstd), U(input), U(weight), n, d));
    public void LayerNormBackward(DeviceBuffer dinput, DeviceBuffer dweight, DeviceBuffer dout, DeviceBuffer input, DeviceBuffer weight,
                                  DeviceBuffer mean, DeviceBuffer rstd, int n, int d, bool accumulate)
        => Timed(OpCosts.LayerNormBackward(n, d, accumulate),
                 () => _inner.LayerNormBackward(U(dinput), U(dweight), U(dout), U(input), U(weight), U(mean), U(rstd), n, d, accumulate));

    public void RopeForward(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim)
        => Timed(OpCosts.RopeForward(b, t, heads, headDim), () => _inner.RopeForward(U(output), U(input), b, t, heads, headDim));
    public void RopeBackward(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim)
        => Timed(OpCosts.RopeBackward(b, t, heads, headDim), () => _inner.RopeBackward(U(dinput), U(dout), b, t, heads, headDim));

    public void AttentionForward(DeviceBuffer output, DeviceBuffer lse, DeviceBuffer q, DeviceBuffer k, DeviceBuffer v,
                                 int b, int t, int heads, int kvHeads, int headDim)
        => Timed(OpCosts.AttentionForward(b, t, heads, kvHeads, headDim),
                 () => _inner.AttentionForward(U(output), U(lse), U(q), U(k), U(v), b, t, heads, kvHeads, headDim));
    public void AttentionBackward(DeviceBuffer dq, DeviceBuffer dk, DeviceBuffer dv, DeviceBuffer dout, DeviceBuffer q, DeviceBuffer k,
                                  DeviceBuffer v, DeviceBuffer output, DeviceBuffer lse, int b, int t, int heads, int kvHeads, int headDim)
        => Timed(OpCosts.AttentionBackward(b, t, heads, kvHeads, headDim),
                 () => _inner.AttentionBackward(U(dq), U(dk), U(dv), U(dout), U(q), U(k), U(v), U(output), U(lse), b, t, heads, kvHeads, headDim));

    public void SwiGluForward(DeviceBuffer output, DeviceBuffer gate, DeviceBuffer up, long count)
        => Timed(OpCosts.SwiGluForward(count), () => _inner.SwiGluForward(U(output), U(gate), U(up), count));
    public void SwiGluBackward(DeviceBuffer dgate, DeviceBuffer dup, DeviceBuffer dout, DeviceBuffer gate, DeviceBuffer up, long count)
        => Timed(OpCosts.SwiGluBackward(count), () => _inner.SwiGluBackward(U(dgate), U(dup), U(dout), U(gate), U(up), count));

    public void Add(DeviceBuffer output, DeviceBuffer a, DeviceBuffer b, long count)
        => Timed(OpCosts.Add(count), () => _inner.Add(U(output), U(a), U(b), count));
    public void AddInPlace(DeviceBuffer acc, DeviceBuffer x, long count)
        => Timed(OpCosts.AddInPlace(count), () => _inner.AddInPlace(U(acc), U(x), count));
    public void Scale(DeviceBuffer x, float s, long count)
        => Timed(OpCosts.Scale(count), () => _inner.Scale(U(x), s, count));

    public void CrossEntropyForward(DeviceBuffer logZ, DeviceBuffer targetLogit, DeviceBuffer logits, DeviceBuffer targets, int n, int v, int vocabStart)
        => Timed(OpCosts.CrossEntropyForward(n, v), () => _inner.CrossEntropyForward(U(logZ), U(targetLogit), U(logits), U(targets), n, v, vocabStart));
    public void CrossEntropyBackward(DeviceBuffer dlogits, DeviceBuffer logits, DeviceBuffer logZ, DeviceBuffer targets,
                                     float scale, float zLoss, int n, int v, int vocabStart)
        => Timed(OpCosts.CrossEntropyBackward(n, v), () => _inner.CrossEntropyBackward(U(dlogits), U(logits), U(logZ), U(targets), scale, zLoss, n, v, vocabStart));
    public void LogSumExpShift(DeviceBuffer output, DeviceBuffer logZ, DeviceBuffer max, long n)
        => Timed(OpCosts.LogSumExpShift(n), () => _inner.LogSumExpShift(U(output), U(logZ), U(max), n));
    public void LogSumExpFinish(DeviceBuffer logZ, DeviceBuffer max, DeviceBuffer sumExp, long n)
        => Timed(OpCosts.LogSumExpFinish(n), () => _inner.LogSumExpFinish(U(logZ), U(max), U(sumExp), n));

    public double SumOfSquares(DeviceBuffer x, long count)
    {
        double result = 0;
        Timed(OpCosts.SumOfSquares(count), () => result = _inner.SumOfSquares(U(x), count));
        return result;
    }

    public void SumOfSquaresSegments(DeviceBuffer x, IReadOnlyList<Segment> segments, Span<double> sums)
    {
        var result = new double[sums.Length];
        Timed(OpCosts.SumOfSquaresSegments(segments.Sum(s => s.Count)), () => _inner.SumOfSquaresSegments(U(x), segments, result));
        result.CopyTo(sums);
    }

    public void AdafactorUpdate(DeviceBuffer param, DeviceBuffer grad, AdafactorBuffers state, int rows, int cols, in AdafactorStep step)
    {
        var inner = new AdafactorBuffers(U0(state.Momentum), U0(state.SecondMoment), U0(state.RowMoment), U0(state.ColMoment));
        var s = step;
        Timed(OpCosts.Adafactor(rows, cols, state.Momentum is not null, state.SecondMoment is null),
              () => _inner.AdafactorUpdate(U(param), U(grad), inner, rows, cols, s));
    }

    public void AdafactorSums(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer secondMoment, IReadOnlyList<Segment> segments,
                              in AdafactorStep step, Span<double> sumU2, Span<double> sumP2)
    {
        var s = step;
        var u2 = new double[sumU2.Length];
        var p2 = new double[sumP2.Length];
        Timed(OpCosts.AdafactorSums(segments.Sum(x => x.Count)), () => _inner.AdafactorSums(U(param), U(grad), U(secondMoment), segments, s, u2, p2));
        u2.CopyTo(sumU2);
        p2.CopyTo(sumP2);
    }

    public void AdafactorApply(DeviceBuffer param, DeviceBuffer grad, DeviceBuffer? momentum, DeviceBuffer secondMoment,
                               IReadOnlyList<Segment> segments, ReadOnlySpan<double> sumU2, ReadOnlySpan<double> sumP2,
                               ReadOnlySpan<long> tensorCounts, in AdafactorStep step)
    {
        var s = step;
        double[] u2 = sumU2.ToArray(), p2 = sumP2.ToArray();
        long[] counts = tensorCounts.ToArray();
        Timed(OpCosts.AdafactorApply(segments.Sum(x => x.Count), momentum is not null),
              () => _inner.AdafactorApply(U(param), U(grad), U0(momentum), U(secondMoment), segments, u2, p2, counts, s));
    }

    public void Dispose()
    {
        if (_ownsInner) _inner.Dispose();
    }

    /// <summary>A buffer of the inner backend, counted while alive.</summary>
    sealed class TrackedBuffer(ProfilingBackend owner, DeviceBuffer inner) : DeviceBuffer(inner.Name, inner.Length, inner.Type)
    {
        bool _disposed;
        public DeviceBuffer Inner { get; } = inner;

        public override void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            owner.Released(Inner);
            Inner.Dispose();
        }
    }
}
