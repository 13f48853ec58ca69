namespace Palm.Gpu.Backends.Cpu;

internal static class CpuSwiGlu
{
    public static void Forward(int threads, float[] output, float[] gate, float[] up, long count) => throw new NotImplementedException();
    public static void Backward(int threads, float[] dgate, float[] dup, float[] dout, float[] gate, float[] up, long count) => throw new NotImplementedException();
}
