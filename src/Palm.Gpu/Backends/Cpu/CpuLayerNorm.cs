namespace Palm.Gpu.Backends.Cpu;

internal static class CpuLayerNorm
{
    public static void Forward(int threads, float[] output, float[] mean, float[] rstd, float[] input, float[] weight, int n, int d) => throw new NotImplementedException();
    public static void Backward(int threads, float[] dinput, float[] dweight, float[] dout, float[] input, float[] weight, float[] mean, float[] rstd, int n, int d, bool accumulate) => throw new NotImplementedException();
}
