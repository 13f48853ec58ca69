namespace Palm.Gpu.Backends.Cpu;

internal static class CpuEmbedding
{
    public static void Forward(int threads, float[] output, int[] tokens, float[] table, int n, int d) => throw new NotImplementedException();
    public static void Backward(int threads, float[] dtable, int[] tokens, float[] dout, int n, int d, int v) => throw new NotImplementedException();
}
