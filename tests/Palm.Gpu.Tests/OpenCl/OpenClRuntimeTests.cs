using Palm.Gpu.Backends;
using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Tensors;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.OpenCl;

/// <summary>
/// The host side of the OpenCL backend: program builds and their cache, error reporting (compiler logs,
/// status names, bad device indices, failed allocations, bad token ids found on the device), device
/// listing, memory operations and profiling.
/// </summary>
[Collection(OpenClCollection.Name)]
public class OpenClRuntimeTests(OpenClFixture fx)
{
    [Fact]
    public void BuildFailure_CarriesTheCompilerLog()
    {
        const string broken = "__kernel void broken(__global float* x)\n{\n    x[0] = undeclared_identifier_xyz * 2.0f;\n}\n";
        var e = Assert.Throws<OpenClBuildException>(() => fx.Ocl.BuildProgram("broken.cl", broken));
        Assert.Equal("CL_BUILD_PROGRAM_FAILURE", e.StatusName);
        Assert.Contains("undeclared_identifier_xyz", e.BuildLog);
        Assert.Contains("broken.cl", e.BuildLog);                 // #line maps diagnostics to the file name
        Assert.Contains("undeclared_identifier_xyz", e.Message);  // the log is in the message, not only a property
        Assert.Contains("broken.cl", e.Message);
    }

    [Fact]
    public void EveryKernelFile_CompilesAndOpensWithItsContract()
    {
        string[] expected = ["adafactor.cl", "attention.cl", "collectives.cl", "crossentropy.cl", "embedding.cl", "layernorm.cl",
                             "matmul.cl", "reduce.cl", "residual.cl", "rope.cl", "swiglu.cl"];
        Assert.Equal(expected, OpenClKernelSources.Files);
        foreach (var file in expected)
        {
            string source = OpenClKernelSources.Load(file);
            Assert.StartsWith("// ", source);                        // opens with a paragraph on what it does
            Assert.Contains("// Dimensions:", source);               // the dimension legend
            Assert.Contains(" -> ", source);                         // shape lines
            Assert.DoesNotMatch(@"\batomic_\w+\s*\(|\batom_\w+\s*\(", source);   // determinism: no atomic read-modify-writes
            fx.Ocl.BuildProgram(file, source, "-D HEAD_DIM=8");      // attention.cl needs its head dim; others ignore it
        }
    }

    [Fact]
    public void InvalidBuildOption_NamesTheStatus()
    {
        var e = Assert.ThrowsAny<OpenClException>(() => fx.Ocl.BuildProgram("ok.cl", "__kernel void ok(__global float* x) { x[0] = 1.0f; }", "-cl-no-such-option"));
        Assert.StartsWith("CL_", e.StatusName);
        Assert.Contains(e.StatusName, e.Message);
    }

    [Fact]
    public void StatusCodes_AreNamedInMessages()
    {
        var e = Assert.Throws<OpenClException>(() => OpenClException.Check(-5, "clEnqueueNDRangeKernel(matmul)"));
        Assert.Equal("clEnqueueNDRangeKernel(matmul) failed with CL_OUT_OF_RESOURCES (-5)", e.Message);
        OpenClException.Check(0, "clFinish");   // CL_SUCCESS passes
    }

    [Fact]
    public void ProgramCache_ReusesBuilds()
    {
        const string source = "__kernel void twice(__global float* x) { x[get_global_id(0)] *= 2.0f; }";
        var first = fx.Ocl.BuildProgram("twice.cl", source);
        int built = fx.Ocl.Context.ProgramsBuilt;
        Assert.Same(first, fx.Ocl.BuildProgram("twice.cl", source));
        Assert.Equal(built, fx.Ocl.Context.ProgramsBuilt);
        Assert.NotSame(first, fx.Ocl.BuildProgram("twice.cl", source, "-D UNUSED=1"));   // options are part of the key
        Assert.Equal(built + 1, fx.Ocl.Context.ProgramsBuilt);
    }

    [Fact]
    public void FastRelaxedMath_IsNeverUsed()
        => Assert.DoesNotContain("fast-relaxed", fx.Ocl.BaseOptions);

    [Theory]
    [InlineData(-1)]
    [InlineData(999)]
    public void BogusDeviceIndex_ListsTheDevices(int index)
    {
        var e = Assert.Throws<Palm.Gpu.Model.ConfigException>(() => new OpenClBackend(index));
        Assert.Contains($"device index {index} does not exist", e.Message);
        Assert.Contains(fx.Ocl.Device.Name, e.Message);
        Assert.Throws<Palm.Gpu.Model.ConfigException>(() => BackendRegistry.Create("opencl", index));
    }

    [Fact]
    public void LastDeviceIndex_Works()
    {
        // With POCL_DEVICES="pthread pthread" this is a second device; otherwise the same one again.
        int last = OpenClDevice.All().Count - 1;
        using var be = new OpenClBackend(last);
        var got = new OpCase().F("a", [1, 2, 3]).F("b", [10, 20, 30]).Run(be, t => be.Add(t("a"), t("a"), t("b"), 3), "a");
        Assert.Equal(new float[] { 11, 22, 33 }, got["a"]);
    }

    [Fact]
    public void AllocationBeyondTheDeviceLimit_NamesTheTensorAndItsBytes()
    {
        long length = fx.Ocl.Device.MaxAllocationBytes / 4 + 1;
        var e = Assert.Throws<OpenClAllocationException>(() => fx.Ocl.Allocate("layer0.mlp.up", length));
        Assert.Equal("layer0.mlp.up", e.BufferName);
        Assert.Equal(length * 4, e.Bytes);
        Assert.Contains("'layer0.mlp.up'", e.Message);
        Assert.Contains($"{length * 4} bytes", e.Message);
    }

    [Fact]
    public void UnavailableMessage_SaysWhatToInstall()
    {
        var e = new OpenClUnavailableException("the OpenCL loader library libOpenCL.so.1 could not be loaded");
        Assert.Contains("libOpenCL.so.1", e.Message);
        Assert.Contains("apt-get install pocl-opencl-icd ocl-icd-libopencl1", e.Message);
    }

    /// <summary>Runs the palm CLI (built next to the tests) in a child process with an environment override.</summary>
    static (int Code, string Out, string Err) RunPalm(Dictionary<string, string> environment, params string[] args)
    {
        var start = new System.Diagnostics.ProcessStartInfo(Environment.GetEnvironmentVariable("DOTNET_HOST_PATH") ?? "dotnet")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "palm.dll"));
        foreach (var a in args) start.ArgumentList.Add(a);
        foreach (var (key, value) in environment) start.Environment[key] = value;
        using var process = System.Diagnostics.Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        Assert.True(process.WaitForExit(60_000), "palm did not exit within 60 s");
        return (process.ExitCode, stdout.Result, stderr.Result);
    }

    [Fact]
    public void NoOpenClPlatform_GivesOneClearMessage()
    {
        // The ICD loader reads its vendor list from OCL_ICD_VENDORS: pointing it at nothing is a machine with
        // libOpenCL.so.1 but no driver installed.
        var noDriver = new Dictionary<string, string> { ["OCL_ICD_VENDORS"] = Path.Combine(Path.GetTempPath(), "no-opencl-vendors-here") };

        var devices = RunPalm(noDriver, "devices");
        Assert.Equal(0, devices.Code);
        Assert.Contains("cpu:0", devices.Out);
        Assert.Contains("opencl: unavailable: OpenCL is not available", devices.Out);
        Assert.Contains("apt-get install pocl-opencl-icd ocl-icd-libopencl1", devices.Out);

        var bench = RunPalm(noDriver, "bench", "--backend", "opencl");
        Assert.Equal(2, bench.Code);
        Assert.StartsWith("palm: error: OpenCL is not available", bench.Err);
        Assert.Contains("apt-get install pocl-opencl-icd ocl-icd-libopencl1", bench.Err);
        Assert.DoesNotContain("   at ", bench.Err);   // one message, no stack trace
    }

    [Fact]
    public void ListDevices_DescribesCpuAndOpenClDevices()
    {
        var devices = BackendRegistry.ListDevices();
        Assert.Contains(devices, d => d.Backend == "cpu" && d.ComputeUnits > 0 && d.MemoryBytes > 0);
        var ocl = devices.Where(d => d.Backend == "opencl").ToList();
        Assert.NotEmpty(ocl);
        Assert.All(ocl, d =>
        {
            Assert.True(d.Available, d.Problem);
            Assert.True(d.ComputeUnits > 0);
            Assert.True(d.MemoryBytes > 0);
            Assert.StartsWith("OpenCL C ", d.LanguageVersion);
        });
        Assert.Equal(Enumerable.Range(0, ocl.Count), ocl.Select(d => d.Index));
        Assert.Equal(fx.Ocl.Device.Name, ocl[0].Name);
    }

    [Fact]
    public void MemoryOps_RoundTripAndRespectOffsets()
    {
        var be = fx.Ocl;
        using var a = be.Allocate("a", 10);
        using var b = be.Allocate("b", 10);
        var zeros = new float[10];
        be.Download(a, zeros);
        Assert.All(zeros, z => Assert.Equal(0f, z));   // fresh buffers are zeroed like host arrays

        be.Upload(a, new float[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 });
        be.Upload(a, new float[] { -1, -2 }, dstOffset: 8);
        be.Fill(b, 0.5f, 10);
        be.Copy(b, a, 3, dstOffset: 6, srcOffset: 1);
        var got = new float[10];
        be.Download(b, got);
        Assert.Equal(new float[] { 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 0.5f, 2, 3, 4, 0.5f }, got);
        var tail = new float[3];
        be.Download(a, tail, srcOffset: 7);
        Assert.Equal(new float[] { 8, -1, -2 }, tail);

        Assert.Throws<ArgumentOutOfRangeException>(() => be.Upload(a, new float[3], dstOffset: 8));
        using var ints = be.Allocate("ids", 4, ElementType.I32);
        Assert.Throws<ArgumentException>(() => be.Upload(ints, new float[4]));
        using var cpuBuffer = fx.Cpu.Allocate("host", 4);
        Assert.Throws<ArgumentException>(() => be.Fill(cpuBuffer, 1f, 4));
    }

    [Fact]
    public void BadTokenId_IsRaisedAtTheNextSynchronize()
    {
        var be = fx.Ocl;
        int n = 4, d = 8, v = 10;
        using var tokens = be.Allocate("tokens", n, ElementType.I32);
        using var table = be.Allocate("table", v * d);
        using var output = be.Allocate("out", n * d);
        be.Upload(tokens, new[] { 1, 2, 1000, 3 });   // past the table: another shard's token, not an error
        be.EmbeddingForward(output, tokens, table, n, d, 0, v);
        be.Synchronize();
        be.Upload(tokens, new[] { 1, 2, -5, 3 });
        be.EmbeddingForward(output, tokens, table, n, d, 0, v);
        var e = Assert.Throws<IndexOutOfRangeException>(() => be.Synchronize());
        Assert.Contains("token -5 at position 2", e.Message);
        Assert.Contains("negative", e.Message);
        be.Synchronize();   // reported once, then cleared

        using var targets = be.Allocate("targets", 2, ElementType.I32);
        using var logits = be.Allocate("logits", 2 * v);
        using var targetLogit = be.Allocate("target_logit", 2);
        using var logZ = be.Allocate("logZ", 2);
        be.Upload(targets, new[] { 3, -7 });
        be.CrossEntropyForward(logZ, targetLogit, logits, targets, 2, v, 0);
        var ce = Assert.Throws<IndexOutOfRangeException>(() => be.Download(targetLogit, new float[2]));
        Assert.Contains("target -7 at row 1", ce.Message);
    }

    [Fact]
    public void Profiler_RecordsKernelTimes()
    {
        var be = fx.Ocl;
        using var x = be.Allocate("x", 1000);
        be.EventProfiler = new OpenClProfiler();
        try
        {
            be.AddInPlace(x, x, 1000);
            be.AddInPlace(x, x, 1000);
            var totals = be.EventProfiler.Totals;
            Assert.Equal(2, totals["add_inplace"].Calls);
            Assert.True(totals["add_inplace"].Milliseconds >= 0);
        }
        finally { be.EventProfiler = null; }
    }
}
