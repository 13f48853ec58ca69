namespace Palm.Gpu.Backends.Cpu;

internal static class CpuResidual
{
    public static void Add(int threads, float[] output, float[] a, float[] b, long count) => throw new NotImplementedException();
    public static void AddInPlace(int threads, float[] acc, float[] x, long count) => throw new NotImplementedException();
    public static void Scale(int threads, float[] x, float s, long count) => throw new NotImplementedException();
}
