using System.Diagnostics;
using System.Reflection;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;
using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Tests.Conformance;
using Xunit;

// The GPU device check (benchmarks/gpu/check.sh runs it from the published folder):
//   device cuda|cpu              the ILGPU device index (`palm devices` order) of the first CUDA GPU, or of the CPU accelerator
//   conformance DEVICE           every conformance test row of ILGPU device DEVICE ("ilgpu-device"), via reflection
//   compare-runs CPU_RUN ILGPU_RUN   the per-step losses of two `palm train` runs, relative difference
//   bench DEVICE [--quick]       GEMM GFLOP/s (ours fp32, ours tensor cores, cuBLAS Sgemm and TF32) and attention times
// Prints one summary line per part; exit 1 when a part fails.
return args switch
{
    ["device", var kind] => DeviceIndex(kind),
    ["conformance", var d] => Conformance(int.Parse(d)),
    ["compare-runs", var a, var b] => CompareRuns(a, b),
    ["bench", var d, ..] => Bench(int.Parse(d), args.Contains("--quick")),
    _ => Usage(),
};

static int Usage()
{
    Console.Error.WriteLine("usage: Palm.Gpu.Check device cuda|cpu | conformance DEVICE | compare-runs CPU_RUN ILGPU_RUN | bench DEVICE [--quick]");
    return 2;
}

static int DeviceIndex(string kind)
{
    var all = IlgpuDevices.All;
    for (int i = 0; i < all.Count; i++)
        if (kind == "cuda" ? all[i].AcceleratorType == AcceleratorType.Cuda : IlgpuDevices.IsSimulator(all[i])) { Console.WriteLine(i); return 0; }
    Console.Error.WriteLine($"no ILGPU {kind} device here ({IlgpuDevices.Problem ?? string.Join("; ", all.Select(d => $"{d.Name} ({d.AcceleratorType})"))}); " +
                            "a CUDA GPU needs the NVIDIA driver (libcuda.so) visible to this process");
    return 1;
}

// ---- conformance -----------------------------------------------------------------------------------

static int Conformance(int device)
{
    Environment.SetEnvironmentVariable(ConformanceBackends.DeviceVariable, device.ToString());
    var all = IlgpuDevices.All;
    Console.WriteLine($"conformance on ILGPU device {device}: {all[device].Name} ({all[device].AcceleratorType})");
    using var fixture = new ConformanceFixture();
    int passed = 0, failed = 0;
    var sw = Stopwatch.StartNew();
    var classes = typeof(ConformanceFixture).Assembly.GetTypes()
        .Where(t => t.Namespace == typeof(ConformanceFixture).Namespace && t.GetCustomAttribute<CollectionAttribute>() is not null && !t.IsAbstract)
        .OrderBy(t => t.Name);
    foreach (var type in classes)
    {
        var ctor = type.GetConstructors().Single();
        object instance = ctor.GetParameters().Length == 1 ? ctor.Invoke([fixture]) : ctor.Invoke([]);
        foreach (var method in type.GetMethods().OrderBy(m => m.Name))
        {
            var rows = new List<object?[]>();
            if (method.GetCustomAttribute<TheoryAttribute>() is not null)
            {
                foreach (var data in method.GetCustomAttributes<MemberDataAttribute>())
                {
                    var source = data.MemberType ?? type;
                    var member = source.GetProperty(data.MemberName, BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static)!;
                    foreach (var row in (System.Collections.IEnumerable)member.GetValue(null)!) rows.Add((object?[])row);
                }
                rows = rows.Where(r => r.Length > 0 && r[0] is "ilgpu-device").ToList();
            }
            else if (method.GetCustomAttribute<FactAttribute>() is not null) continue;   // facts test the CPU reference or validation only
            foreach (var row in rows)
            {
                try { method.Invoke(instance, row); passed++; }
                catch (TargetInvocationException e)
                {
                    failed++;
                    Console.WriteLine($"  FAIL {type.Name}.{method.Name}({string.Join(", ", row.Skip(1))}): {e.InnerException?.Message.Split('\n')[0]}");
                }
            }
        }
    }
    Console.WriteLine($"SUMMARY conformance: {passed} passed, {failed} failed on {all[device].Name} in {sw.Elapsed.TotalSeconds:F0} s");
    return failed == 0 && passed > 0 ? 0 : 1;
}

// ---- training vs the CPU backend -------------------------------------------------------------------

static int CompareRuns(string cpuRun, string ilgpuRun)
{
    static List<double> Losses(string run) => File.ReadLines(Path.Combine(run, "metrics.jsonl"))
        .Select(l => System.Text.Json.JsonDocument.Parse(l).RootElement)
        .Where(j => j.TryGetProperty("loss", out _) && j.TryGetProperty("step", out _))
        .Select(j => j.GetProperty("loss").GetDouble()).ToList();
    var a = Losses(cpuRun);
    var b = Losses(ilgpuRun);
    if (a.Count == 0 || a.Count != b.Count) { Console.WriteLine($"SUMMARY training: FAIL, {a.Count} cpu steps vs {b.Count} ilgpu steps"); return 1; }
    double worst = a.Zip(b, (x, y) => Math.Abs(x - y) / Math.Max(1e-12, Math.Abs(x))).Max();
    bool ok = worst <= 1e-4;
    Console.WriteLine($"SUMMARY training: {(ok ? "ok" : "FAIL")}, {a.Count} steps, loss cpu {a[0]:F5} -> {a[^1]:F5}, ilgpu {b[0]:F5} -> {b[^1]:F5}, worst relative difference {worst:E2} (limit 1e-4)");
    return ok ? 0 : 1;
}

// ---- benchmarks ------------------------------------------------------------------------------------

static int Bench(int device, bool quick)
{
    using var be = new IlgpuBackend(device);
    bool cuda = be.Accelerator is CudaAccelerator;
    Console.WriteLine($"bench on {be.DeviceName}; tensor cores: {be.HasTensorCores}");
    int[][] shapes = quick
        ? [[64, 64, 64], [96, 80, 72]]
        : [[4096, 4096, 4096], [2048, 512, 2048], [2048, 2048, 512], [2048, 512, 512], [2048, 8192, 512]];   // 4096³ and the small preset's (B·T = 2048)
    CuBlas? blas = null;
    if (cuda)
    {
        try { blas = new CuBlas((CudaAccelerator)be.Accelerator); }
        catch (Exception e) { Console.WriteLine($"  cuBLAS unavailable ({e.GetBaseException().Message}): no reference column"); }
    }
    foreach (var s in shapes)
    {
        int m = s[0], n = s[1], k = s[2];
        var a = be.Allocate("a", (long)m * k); var b = be.Allocate("b", (long)k * n); var c = be.Allocate("c", (long)m * n); var c2 = be.Allocate("c2", (long)m * n);
        var rnd = new Random(1);
        be.Upload(a, Enumerable.Range(0, m * k).Select(_ => (float)rnd.NextDouble() - 0.5f).ToArray());
        be.Upload(b, Enumerable.Range(0, k * n).Select(_ => (float)rnd.NextDouble() - 0.5f).ToArray());
        double flops = 2.0 * m * n * k;
        double ours = Gflops(be, flops, quick, () => be.Matmul(c, a, b, m, n, k));
        double tc = Gflops(be, flops, quick, () => be.MatmulTensorCore(c2, a, b, m, n, k));
        var x = be.ToHost(c); var y = be.ToHost(c2);
        double err = x.Zip(y, (p, q) => Math.Abs(p - q)).Max() / Math.Max(1e-30, x.Max(Math.Abs));
        string reference = "";
        if (blas is not null)
        {
            // Row-major C = A·B is column-major Cᵀ = Bᵀ·Aᵀ: cuBLAS gets (n, m, k) with B first.
            var av = ((IlgpuBuffer)a).F; var bv = ((IlgpuBuffer)b).F; var cv = ((IlgpuBuffer)c2).F;
            blas.Stream = (CudaStream)be.Stream;
            blas.MathMode = CuBlasMathMode.DefaultMath;
            double sgemm = Gflops(be, flops, quick, () => blas.Gemm(CuBlasOperation.NonTranspose, CuBlasOperation.NonTranspose, n, m, k, 1f, bv, n, av, k, 0f, cv, n));
            blas.MathMode = (CuBlasMathMode)3;   // CUBLAS_TF32_TENSOR_OP_MATH
            double tf32 = Gflops(be, flops, quick, () => blas.Gemm(CuBlasOperation.NonTranspose, CuBlasOperation.NonTranspose, n, m, k, 1f, bv, n, av, k, 0f, cv, n));
            reference = $", cuBLAS Sgemm {sgemm:F0}, cuBLAS TF32 {tf32:F0} GFLOP/s; ours/Sgemm {ours / sgemm:P0}, tensor cores/TF32 {tc / tf32:P0}";
        }
        Console.WriteLine($"SUMMARY gemm {m}x{n}x{k}: ours fp32 {ours:G4}, ours tensor cores {tc:G4} GFLOP/s (max |Δ|/max|C| {err:E1}){reference}");
        foreach (var buf in new[] { a, b, c, c2 }) buf.Dispose();
    }

    // Attention at the small preset's shape (B 4, T 512, H 8, K 64, multi-query) or a tiny one in the dry run.
    int B = quick ? 1 : 4, T = quick ? 40 : 512, H = quick ? 4 : 8, K = quick ? 16 : 64;
    var q = be.Allocate("q", (long)B * T * H * K); var kk = be.Allocate("k", (long)B * T * K); var v = be.Allocate("v", (long)B * T * K);
    var o = be.Allocate("o", (long)B * T * H * K); var lse = be.Allocate("lse", (long)B * H * T); var dq = be.Allocate("dq", (long)B * T * H * K);
    var dk = be.Allocate("dk", (long)B * T * K); var dv = be.Allocate("dv", (long)B * T * K);
    foreach (var buf in new[] { q, kk, v, o }) be.Fill(buf, 0.01f, buf.Length);
    double attFlops = 4.0 * B * H * T * (T + 1) / 2 * K;   // QKᵀ and PV over the causal half
    double fwd = Gflops(be, attFlops, quick, () => be.AttentionForward(o, lse, q, kk, v, B, T, H, 1, K));
    double bwd = Gflops(be, 2.5 * attFlops, quick, () => be.AttentionBackward(dq, dk, dv, o, q, kk, v, o, lse, B, T, H, 1, K));
    Console.WriteLine($"SUMMARY attention B{B} T{T} H{H} K{K} multi-query: forward {fwd:G4} GFLOP/s, backward {bwd:G4} GFLOP/s");
    blas?.Dispose();
    return 0;
}

// Best of several timed runs after a warm-up (kernels compile on first use).
static double Gflops(IlgpuBackend be, double flops, bool quick, Action op)
{
    op();
    be.Synchronize();
    double best = double.MaxValue;
    for (int r = 0; r < (quick ? 1 : 5); r++)
    {
        var sw = Stopwatch.StartNew();
        op();
        be.Synchronize();
        best = Math.Min(best, sw.Elapsed.TotalSeconds);
    }
    return flops / best / 1e9;
}
