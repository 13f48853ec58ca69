namespace Palm.Gpu.Backends.Cpu;

internal static class CpuAttention
{
    public static void Forward(int threads, float[] output, float[] lse, float[] q, float[] k, float[] v, int b, int t, int heads, int kvHeads, int headDim) => throw new NotImplementedException();
    public static void Backward(int threads, float[] dq, float[] dk, float[] dv, float[] dout, float[] q, float[] k, float[] v, float[] output, float[] lse, int b, int t, int heads, int kvHeads, int headDim) => throw new NotImplementedException();
}
