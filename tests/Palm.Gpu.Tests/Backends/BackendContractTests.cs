using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.OpenCl;
using Xunit;

namespace Palm.Gpu.Tests.Backends;

/// <summary>
/// The checks of <see cref="BackendBase"/>: a wrong call is an <see cref="ArgumentException"/> that names the op, the
/// buffer and the sizes, on every backend, before any kernel touches memory (the CPU kernels do unchecked pointer
/// arithmetic, so without the checks a short buffer corrupts the heap).
/// </summary>
[Collection(OpenClCollection.Name)]
public class BackendContractTests(OpenClFixture fx)
{
    IEnumerable<IBackend> Backends => [fx.Cpu, fx.Ocl];

    static ArgumentException Refused(Action call, params string[] mentions)
    {
        var e = Assert.ThrowsAny<ArgumentException>(call);
        foreach (var m in mentions) Assert.Contains(m, e.Message);
        return e;
    }

    [Fact]
    public void TooShortBuffersAreRefusedNamingTheBuffer()
    {
        foreach (var be in Backends)
        {
            using var a = be.Allocate("a", 12 * 10);
            using var b = be.Allocate("b", 10 * 8);
            using var shortC = be.Allocate("short c", 12 * 8 - 1);
            var e = Refused(() => be.Matmul(shortC, a, b, 12, 8, 10), "matmul", "'short c'", "has 95 elements", "needs m·n = 96");
            Assert.Equal("c", e.ParamName);
            using var c = be.Allocate("c", 12 * 8);
            Refused(() => be.Matmul(c, a, b, 12, 8, 11), "matmul", "'a'", "needs m·k = 132");

            using var x = be.Allocate("x", 5 * 16);
            using var w = be.Allocate("w", 16);
            using var shortMean = be.Allocate("mean", 4);
            using var rstd = be.Allocate("rstd", 5);
            using var y = be.Allocate("y", 5 * 16);
            Refused(() => be.LayerNormForward(y, shortMean, rstd, x, w, 5, 16), "layer norm forward", "'mean'", "needs n = 5");

            using var q = be.Allocate("q", 2 * 8 * 4 * 16);
            using var kv = be.Allocate("kv", 2 * 8 * 2 * 16 - 16);
            using var kv2 = be.Allocate("kv2", 2 * 8 * 2 * 16);
            using var o = be.Allocate("o", 2 * 8 * 4 * 16);
            using var lse = be.Allocate("lse", 2 * 4 * 8);
            Refused(() => be.AttentionForward(o, lse, q, kv, kv2, 2, 8, 4, 2, 16), "attention forward", "'kv'", "needs b·t·kvHeads·headDim = 512");

            using var logits = be.Allocate("logits", 3 * 50);
            using var targets = be.Allocate("targets", 2, ElementType.I32);
            using var losses = be.Allocate("losses", 3);
            using var logZ = be.Allocate("logZ", 3);
            Refused(() => be.CrossEntropyForward(logZ, losses, logits, targets, 3, 50, 0), "cross-entropy forward", "'targets'", "needs n = 3");
            Refused(() => be.CrossEntropyForward(logZ, losses, logits, logZ, 3, 50, 0), "'logZ'", "holds F32 elements, needs I32");

            Refused(() => be.SwiGluForward(y, x, w, 5 * 16), "swiglu forward", "'w'", "needs count = 80");
            Refused(() => be.SumOfSquares(w, 17), "sum of squares", "'w'");
            Refused(() => be.Upload(w, new float[10], 7), "upload", "'w'", "[7, 17)");
            Refused(() => be.Download(w, new float[3], 14), "download", "'w'");
            Refused(() => be.Fill(w, 0f, 17), "fill", "'w'");
            Refused(() => be.Add(y, x, y, -1), "add", "count = -1 is negative");
            Refused(() => be.AdafactorUpdate(w, w, new AdafactorBuffers(null, null, rstd, null), 4, 4, default), "adafactor", "row and column moments");
        }
    }

    [Fact]
    public void BuffersOfAnotherInstanceAreRefused()
    {
        using var other = new CpuBackend(1);
        using var foreign = other.Allocate("foreign", 64);
        foreach (var be in Backends)
        {
            using var mine = be.Allocate("mine", 64);
            Refused(() => be.Add(mine, mine, foreign, 64), "add", "'foreign'", "not a buffer of this");
            Refused(() => be.Copy(foreign, mine, 8), "copy", "'foreign'");
            var dead = be.Allocate("dead", 64);
            dead.Dispose();
            Assert.Throws<ObjectDisposedException>(() => be.Fill(dead, 1f, 64));
        }
    }

    [Fact]
    public void AliasingFollowsTheDocumentedRules()
    {
        foreach (var be in Backends)
        {
            long al = be.ViewAlignment;
            using var arena = be.Allocate("arena", 8 * al);
            var first = arena.Slice(0, 2 * al);
            var second = arena.Slice(al, 2 * al);   // overlaps first in its second half
            var other = arena.Slice(4 * al, 2 * al);
            be.Fill(arena, 1f, 8 * al);
            // out may be a or b itself ...
            be.Add(first, first, other, 2 * al);
            Assert.Equal(2f, be.ToHost(first)[0]);
            // ... but not a partial overlap.
            Refused(() => be.Add(second, first, other, 2 * al), "add", "overlaps", "'arena[0..");
            // matmul's output may not alias an input at all.
            Refused(() => be.Matmul(first, first, other, 1, 1, 1), "matmul", "c may not alias a");
            // copies between overlapping ranges of one allocation are refused; disjoint ones are fine.
            Refused(() => be.Copy(second, first, 2 * al), "copy", "overlap");
            be.Copy(other, first, 2 * al);
            // RoPE may run in place; SwiGLU's output may not alias its gate.
            be.RopeForward(other, other, 1, 1, 1, 2);
            Refused(() => be.SwiGluForward(first, first, other, 2 * al), "swiglu forward", "output may not alias gate");
        }
    }

    [Fact]
    public void HostSynchronisationsAreCountedPerBlockingCall()
    {
        foreach (var be in Backends)
        {
            using var x = be.Allocate("x", 100);
            using var y = be.Allocate("y", 100);
            long before = be.HostSyncs;
            be.Add(y, x, x, 100);            // queued: no wait
            be.Fill(y, 2f, 100);
            Assert.Equal(before, be.HostSyncs);
            be.Upload(x, new float[100]);    // blocking write
            be.SumOfSquares(y, 100);         // result to the host
            be.Download(y, new float[100]);
            be.Synchronize();
            Assert.Equal(before + 4, be.HostSyncs);
            // The profiler's own waits are not counted.
            be.Profiler = new BackendProfiler();
            try { be.Add(y, x, x, 100); }
            finally { be.Profiler = null; }
            Assert.Equal(before + 4, be.HostSyncs);
        }
    }
}
