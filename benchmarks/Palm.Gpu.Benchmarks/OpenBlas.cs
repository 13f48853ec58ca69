using Palm.Gpu.Backends.Cpu;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace Palm.Gpu.Benchmarks;

/// <summary>
/// OpenBLAS's cblas_sgemm, the yardstick for our GEMM, found at run time (libopenblas.so.0; Debian/Ubuntu:
/// `apt-get install libopenblas0`). Debian builds OpenBLAS for many cores and picks one by CPU id; on an
/// AMD CPU with AVX-512 it would pick a Zen (AVX2) kernel, so unless OPENBLAS_CORETYPE is already set we
/// set it to SkylakeX (the AVX-512 kernels) before the library loads — the library reads it once, when loaded.
/// </summary>
internal static unsafe partial class OpenBlas
{
    const string Library = "libopenblas.so.0";
    const int RowMajor = 101, NoTrans = 111, Trans = 112;

    static readonly Lazy<(bool Ok, string Description)> State = new(Load);

    public static bool Available => State.Value.Ok;
    /// <summary>"OpenBLAS 0.3.21 … (core SkylakeX)" or why it is missing.</summary>
    public static string Description => State.Value.Description;

    static nint _handle;

    static (bool, string) Load()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS())
            return (false, "OpenBLAS comparison: only looked for on Linux and macOS");
        string? coreType = Environment.GetEnvironmentVariable("OPENBLAS_CORETYPE");
        if (coreType is null && Avx512F.IsSupported)
        {
            // .NET's Environment.SetEnvironmentVariable does not reach the C runtime's environment; setenv does.
            SetEnv("OPENBLAS_CORETYPE", "SkylakeX", 1);
            coreType = "SkylakeX (set here: this CPU has AVX-512)";
        }
        foreach (var name in new[] { Library, "libopenblas.so", "libopenblas.dylib" })
        {
            if (!NativeLibrary.TryLoad(name, out var handle)) continue;
            if (!NativeLibrary.TryGetExport(handle, "cblas_sgemm", out _))
                return (false, $"{name} has no cblas_sgemm");
            _handle = handle;
            // The [LibraryImport("openblas")] functions below bind to the library just loaded.
            NativeLibrary.SetDllImportResolver(typeof(OpenBlas).Assembly, (lib, _, _) => lib == "openblas" ? _handle : 0);
            string core = NativeLibrary.TryGetExport(handle, "openblas_get_corename", out _) ? Marshal.PtrToStringUTF8(GetCoreName()) ?? "?" : "?";
            string config = NativeLibrary.TryGetExport(handle, "openblas_get_config", out _) ? Marshal.PtrToStringUTF8(GetConfig()) ?? "" : "";
            return (true, $"{name}: {config.Trim()}, core {core}{(coreType is null ? "" : $", OPENBLAS_CORETYPE={coreType}")}");
        }
        return (false, $"OpenBLAS not found ({Library}); install it (Debian/Ubuntu: apt-get install libopenblas0) to compare against cblas_sgemm");
    }

    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    [LibraryImport("openblas", EntryPoint = "cblas_sgemm")]
    private static partial void CblasSgemm(int order, int transA, int transB, int m, int n, int k, float alpha,
                                           float* a, int lda, float* b, int ldb, float beta, float* c, int ldc);

    [LibraryImport("openblas", EntryPoint = "openblas_set_num_threads")]
    private static partial void SetNumThreads(int threads);

    [LibraryImport("openblas", EntryPoint = "openblas_get_corename")]
    private static partial nint GetCoreName();

    [LibraryImport("openblas", EntryPoint = "openblas_get_config")]
    private static partial nint GetConfig();

    /// <summary>OpenBLAS's own thread pool size (our GEMM's is per call).</summary>
    public static void SetThreads(int threads)
    {
        if (!Available) throw new InvalidOperationException(Description);
        if (NativeLibrary.TryGetExport(_handle, "openblas_set_num_threads", out _)) SetNumThreads(threads);
    }

    /// <summary>The same contract as IBackend.Matmul on host arrays: C (M,N) = alpha·op(A)·op(B) [+ C], row-major.</summary>
    public static void Sgemm(CpuView<float> c, CpuView<float> a, CpuView<float> b, int m, int n, int k, bool transA, bool transB, float alpha, bool accumulate)
    {
        if (!Available) throw new InvalidOperationException(Description);
        fixed (float* pa = a, pb = b, pc = c)
            CblasSgemm(RowMajor, transA ? Trans : NoTrans, transB ? Trans : NoTrans, m, n, k, alpha,
                   pa, transA ? m : k, pb, transB ? k : n, accumulate ? 1f : 0f, pc, n);
    }
}
