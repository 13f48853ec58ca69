using System.Text.Json;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Cli;

/// <summary>
/// `--collectives auto|host|device` on `palm bench` and `palm train`: the bench names the transport next to the
/// collective time, and a transport that cannot be had, or the option without a mesh, is one clear line.
/// </summary>
public class CollectivesCliTests
{
    static readonly Dictionary<string, string> TwoPoclDevices = new() { ["POCL_DEVICES"] = "pthread pthread" };

    [Theory]
    [InlineData("device", "device (copies within one OpenCL context)")]
    [InlineData("host", "host (download, combine on the host, upload)")]
    public void BenchOnAnOpenClMesh_NamesTheTransport(string transport, string description)
    {
        var r = CliRunner.RunWithEnv(TwoPoclDevices, "bench", "--preset", "tiny", "--batch", "2", "--backend", "opencl", "--mesh", "1x2",
                                     "--steps", "1", "--warmup", "0", "--peak-gflops", "100", "--collectives", transport);
        Assert.True(r.ExitCode == 0, r.Stderr);
        using var j = JsonDocument.Parse(r.Stdout.Split('\n')[0]);
        var col = j.RootElement.GetProperty("collectives");
        Assert.Equal(transport, col.GetProperty("transport").GetString());
        Assert.True(col.GetProperty("all_reduce").GetInt64() > 0);
        Assert.Contains($"ms per step via {description}", r.Stderr);
    }

    [Theory]
    [InlineData("bench", new[] { "--mesh", "1x2", "--collectives", "device" }, "--collectives device")]          // CPU devices: host only
    [InlineData("train", new[] { "--mesh", "1x2", "--collectives", "device" }, "--collectives device")]          // reaches the mesh the run builds
    [InlineData("train", new[] { "--collectives", "host" }, "--collectives needs --mesh")]
    [InlineData("bench", new[] { "--mesh", "1x2", "--collectives", "sideways" }, "--collectives takes auto, host or device")]
    public void ImpossibleTransport_IsOneClearLine(string verb, string[] args, string expected)
    {
        string run = Path.Combine(CliRunner.TempDir(), "run");
        var full = new List<string> { verb, "--preset", "tiny", "--batch", "2", "--steps", "1" };
        if (verb == "train") full.AddRange(["--out", run]);
        full.AddRange(args);
        var r = CliRunner.Run(full.ToArray());
        Assert.True(r.ExitCode != 0, $"{string.Join(' ', args)}: exit code 0");
        var lines = r.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one error line, got:\n{r.Stderr}");
        Assert.Contains(expected, lines[0]);
        Assert.False(Directory.Exists(run), "a run directory was written");
    }
}
