using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Cli;

/// <summary>One model path: `palm train` on one device and on the 1x1 mesh are the same program, so the same bits.</summary>
public class OneModelPathTests
{
    [Fact]
    public void OneDeviceAndMeshOneByOneWriteByteIdenticalModels()
    {
        string dir = CliRunner.TempDir();
        string plain = Path.Combine(dir, "plain"), mesh = Path.Combine(dir, "mesh");
        string[] common = ["train", "--preset", "tiny", "--steps", "10", "--peak-gflops", "100"];
        var a = CliRunner.Run([.. common, "--out", plain]);
        Assert.True(a.ExitCode == 0, a.Stderr);
        var b = CliRunner.Run([.. common, "--mesh", "1x1", "--out", mesh]);
        Assert.True(b.ExitCode == 0, b.Stderr);
        var x = File.ReadAllBytes(Path.Combine(plain, "model.safetensors"));
        var y = File.ReadAllBytes(Path.Combine(mesh, "model.safetensors"));
        Assert.True(x.AsSpan().SequenceEqual(y), $"model.safetensors differ: {x.Length} vs {y.Length} bytes");
        Directory.Delete(dir, recursive: true);
    }
}
