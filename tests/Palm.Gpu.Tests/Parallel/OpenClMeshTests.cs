using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Training;
using Xunit;
using Xunit.Abstractions;

namespace Palm.Gpu.Tests.Sharding;

/// <summary>
/// Meshes of OpenCL devices (PoCL exposes several with POCL_DEVICES="pthread pthread"): a model-parallel
/// mesh over every device there is trains like the CPU reference, and asking for more devices than exist
/// is one clear error.
/// </summary>
[Collection(OpenClCollection.Name)]
public class OpenClMeshTests(ITestOutputHelper output)
{
    const int Batch = 4, Steps = 5;
    const ulong Seed = 5;

    static double[] Train(string backend, int data, int model)
    {
        var c = ModelConfig.Preset("tiny");
        using var mesh = DeviceMesh.Create(backend, data, model, threadsPerDevice: 1);
        using var t = new MeshTrainer(mesh, c, Batch, new AdafactorConfig(), Seed);
        var losses = new double[Steps];
        for (int s = 0; s < Steps; s++)
        {
            var (x, y) = MeshTrainer.SyntheticBatch(c, Batch, Seed, s);
            losses[s] = t.TrainStep(x, y).Loss.Total;
        }
        return losses;
    }

    [Fact]
    public void OpenClMeshTrainsLikeTheCpu()
    {
        int devices = OpenClDevice.All().Count;
        int model = devices >= 2 ? 2 : 1;
        var cpu = Train("cpu", 1, 1);
        var ocl = Train("opencl", 1, model);
        for (int s = 0; s < Steps; s++)
        {
            double rel = Math.Abs(ocl[s] - cpu[s]) / cpu[s];
            output.WriteLine($"opencl mesh 1x{model} step {s + 1}: {ocl[s]:F7} vs cpu 1x1 {cpu[s]:F7} (relative {rel:E2})");
            Assert.True(rel <= 1e-4, $"OpenCL mesh 1x{model} step {s + 1}: {ocl[s]:R} vs CPU {cpu[s]:R}");
        }
        Assert.Equal(ocl, Train("opencl", 1, model));

        var e = Assert.Throws<ConfigException>(() => DeviceMesh.Create("opencl", devices, 2));
        Assert.Contains($"needs {2 * devices} OpenCL devices but {devices} exist", e.Message);
    }
}
