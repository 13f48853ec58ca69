namespace Palm.Gpu.Backends.Cpu;

internal static class CpuRope
{
    public static void Forward(int threads, float[] output, float[] input, int b, int t, int heads, int headDim) => throw new NotImplementedException();
    public static void Backward(int threads, float[] dinput, float[] dout, int b, int t, int heads, int headDim) => throw new NotImplementedException();
}
