using ILGPU;
using ILGPU.Runtime;
using Palm.Gpu.Kernels;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Backends.Ilgpu;

// RoPE: kernels/rope/RopeKernels.cs. The cos/sin tables are built on the host in double (the CPU backend's values).
public sealed partial class IlgpuBackend
{
    /// <summary>(positions.Length, K/2, 2): cos and sin of position·θ_i, θ_i = 10000^(−2i/K), angles in double, rounded once.</summary>
    static float[] RopeAngles(ReadOnlySpan<int> positions, int headDim)
    {
        int half = headDim / 2;
        var table = new float[positions.Length * headDim];
        for (int i = 0; i < half; i++)
        {
            double theta = Math.Pow(10000.0, -2.0 * i / headDim);
            for (int p = 0; p < positions.Length; p++)
            {
                double a = positions[p] * theta;
                table[2 * (p * half + i)] = (float)Math.Cos(a);
                table[2 * (p * half + i) + 1] = (float)Math.Sin(a);
            }
        }
        return table;
    }

    void RopeLaunch(ArrayView<float> output, ArrayView<float> input, ArrayView<float> table, long pairs, int heads, int headDim, int positions, float sign) =>
        Kernel<Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, long, int, int, int, float>>(RopeKernels.Rotate)(
            stream, Elementwise(pairs), output, input, table, pairs, heads, headDim, positions, sign);

    void Rope(IlgpuBuffer output, IlgpuBuffer input, int b, int t, int heads, int headDim, float sign)
    {
        if (b == 0 || t == 0 || heads == 0) return;
        string name = $"rope.table.{t}.{headDim}";
        bool built = HasScratch(name);
        var table = Scratch<float>(name, (long)t * headDim);   // (T, K/2, 2): built once, kept
        if (!built)
        {
            Upload(stream, table, RopeAngles([.. Enumerable.Range(0, t)], headDim));
            stream.Synchronize();
        }
        RopeLaunch(output.F, input.F, table, (long)b * t * heads * (headDim / 2), heads, headDim, t, sign);
    }

    protected override void RopeForwardCore(DeviceBuffer output, DeviceBuffer input, int b, int t, int heads, int headDim)
        => Rope(Buf(output), Buf(input), b, t, heads, headDim, 1f);

    protected override void RopeBackwardCore(DeviceBuffer dinput, DeviceBuffer dout, int b, int t, int heads, int headDim)
        => Rope(Buf(dinput), Buf(dout), b, t, heads, headDim, -1f);

    /// <summary>
    /// Decoding: the B positions are read back (one small host wait) and their angles built on the host as the
    /// table's are, so each row gets the bits of <see cref="RopeForwardCore"/> at its position.
    /// </summary>
    protected override void RopeForwardAtCore(DeviceBuffer output, DeviceBuffer input, DeviceBuffer positions, int b, int heads, int headDim)
    {
        if (b == 0 || heads == 0) return;
        var at = new int[b];
        Download(stream, Buf(positions).I, at.AsSpan());
        stream.Synchronize();
        CountHostSync();
        for (int s = 0; s < b; s++)
            if (at[s] < 0) throw new ArgumentOutOfRangeException(nameof(positions), $"rope forward at: position {at[s]} of sequence {s} is negative");
        var table = Scratch<float>("rope.at", (long)b * headDim);
        Upload(stream, table, RopeAngles(at, headDim));
        stream.Synchronize();
        // Row (b, h) of the (B, Hs, K) input takes table row b: the (B,T=1,Hs,K) layout with T = B positions, one per sequence.
        RopeLaunch(Buf(output).F, Buf(input).F, table, (long)b * heads * (headDim / 2), heads, headDim, b, 1f);
    }
}
