// SwiGLU activation of the PaLM MLP (the ILGPU twin of swiglu.cl): out = swish(gate) ⊙ up, swish(g) = g·σ(g).
// Backward: d/dg [g·σ(g)] = σ(g)·(1 + g·(1 − σ(g))). σ(x) is evaluated from e = exp(−|x|) ∈ (0,1]: 1/(1+e) for
// x ≥ 0, e/(1+e) otherwise, as the CPU backend does, so exp never overflows and σ keeps its relative accuracy in
// the negative tail. Grid-strided, one element at a time; every element is read before it is written.
//
// Dimensions: N rows, F MLP width; count = N·F.
//
// Forward:  gate (N,F), up (N,F) -> out (N,F)
// Backward: dout (N,F), gate, up -> dgate (N,F), dup (N,F)   (both overwritten)

using ILGPU;

namespace Palm.Gpu.Kernels;

public static class SwiGluKernels
{
    static float Sigmoid(float x)
    {
        float e = KernelMath.Exp(-MathF.Abs(x));
        float r = 1f / (1f + e);
        return x >= 0f ? r : e * r;
    }

    public static void Forward(ArrayView<float> output, ArrayView<float> gate, ArrayView<float> up, long count)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < count; i += stride)
        {
            float g = gate[i];
            output[i] = g * Sigmoid(g) * up[i];
        }
    }

    public static void Backward(ArrayView<float> dgate, ArrayView<float> dup, ArrayView<float> dout, ArrayView<float> gate, ArrayView<float> up, long count)
    {
        long stride = (long)Grid.DimX * Group.DimX;
        for (long i = Grid.GlobalIndex.X; i < count; i += stride)
        {
            float g = gate[i], u = up[i], d = dout[i];
            float s = Sigmoid(g);
            dgate[i] = d * u * s * (1f + g * (1f - s));
            dup[i] = d * g * s;
        }
    }
}
