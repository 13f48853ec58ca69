namespace Palm.Gpu.Backends.Cpu;

internal static class CpuCrossEntropy
{
    public static void Forward(int threads, float[] losses, float[] logZ, float[] logits, int[] targets, int n, int v) => throw new NotImplementedException();
    public static void Backward(int threads, float[] dlogits, float[] logits, float[] logZ, int[] targets, float scale, float zLoss, int n, int v) => throw new NotImplementedException();
}
