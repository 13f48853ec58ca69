using Palm.Gpu.Backends.OpenCl;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tests.OpenCl;
using Palm.Gpu.Training;
using Xunit;
using Xunit.Abstractions;

namespace Palm.Gpu.Tests.Sharding;

/// <summary>
/// Meshes of OpenCL devices (PoCL exposes several with POCL_DEVICES="pthread pthread"; the test assembly sets
/// four): a model-parallel mesh trains like the CPU reference, device-side collectives train bit for bit like
/// host round trips on 1×2, 2×1 and 2×2, and asking for more devices than exist, or for device collectives
/// where there can be none, is one clear error.
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

    const int CompareSteps = 3;

    static (double[] Losses, Dictionary<string, float[]> Weights, CollectiveTransport Transport) Train(int data, int model, bool shard, CollectiveTransport transport)
    {
        var c = ModelConfig.Preset("tiny");
        using var mesh = DeviceMesh.Create("opencl", data, model, transport: transport);
        using var t = new MeshTrainer(mesh, c, Batch, new AdafactorConfig(), Seed, shard);
        var losses = new double[CompareSteps];
        for (int s = 0; s < CompareSteps; s++)
        {
            var (x, y) = MeshTrainer.SyntheticBatch(c, Batch, Seed, s);
            losses[s] = t.TrainStep(x, y).Loss.Total;
        }
        return (losses, t.GatherWeights(), mesh.Transport);
    }

    [Theory]
    [InlineData(1, 2, false)]
    [InlineData(2, 1, false)]
    [InlineData(2, 1, true)]    // fully sharded: weights all-gathered, gradients reduce-scattered on the device
    [InlineData(2, 2, false)]
    public void DeviceCollectives_TrainBitForBitLikeHostRoundTrips(int data, int model, bool shard)
    {
        OpenClTestDevices.OnOnePlatform(data * model);
        var device = Train(data, model, shard, CollectiveTransport.Auto);
        var host = Train(data, model, shard, CollectiveTransport.Host);
        Assert.Equal(CollectiveTransport.Device, device.Transport);   // PoCL devices share a platform of OpenCL 3.0: Auto picks the device path
        Assert.Equal(CollectiveTransport.Host, host.Transport);
        for (int s = 0; s < CompareSteps; s++)
        {
            output.WriteLine($"mesh {data}x{model} step {s + 1}: device {device.Losses[s]:R}, host {host.Losses[s]:R}");
            Assert.True(BitConverter.DoubleToInt64Bits(device.Losses[s]) == BitConverter.DoubleToInt64Bits(host.Losses[s]),
                        $"mesh {data}x{model} step {s + 1}: loss {device.Losses[s]:R} with device collectives, {host.Losses[s]:R} with host ones");
        }
        Assert.Equal(host.Weights.Keys.Order(), device.Weights.Keys.Order());
        foreach (var (name, w) in host.Weights) Bits.AssertIdentical(w, device.Weights[name], $"mesh {data}x{model} weight {name}");
    }

    [Fact]
    public void DeviceCollectives_WhereNoContextCanBeShared_AreOneClearError()
    {
        var cpu = Assert.Throws<ConfigException>(() => DeviceMesh.Create("cpu", 1, 2, 1, CollectiveTransport.Device));
        Assert.Contains("--collectives device", cpu.Message);
        Assert.Contains("--collectives host", cpu.Message);

        // OpenCL backends opened one by one have a context each: the mesh cannot copy between them on the device.
        var devices = OpenClTestDevices.OnOnePlatform(2);
        using var a = new OpenClBackend(devices[0]);
        using var b = new OpenClBackend(devices[1]);
        var separate = Assert.Throws<ConfigException>(() => new DeviceMesh(1, 2, [a, b], transport: CollectiveTransport.Device));
        Assert.Contains("separate OpenCL contexts", separate.Message);
        using var auto = new DeviceMesh(1, 2, [a, b]);
        Assert.Equal(CollectiveTransport.Host, auto.Transport);
        Assert.IsType<InProcessCollectives>(auto.ModelGroups[0]);

        // --collectives reaches the mesh a training run builds through TrainOptions.
        var options = new TrainOptions { Steps = 0, BatchSchedule = "2", Backend = "opencl", Mesh = "1x2", PeakGflops = 100 };
        using (var t = new Trainer(ModelConfig.Preset("tiny"), options with { Collectives = CollectiveTransport.Host }, vocabFromTokenizer: true))
            Assert.Equal(CollectiveTransport.Host, ((MeshTrainer)t.Engine).MeshDevices.Transport);
        using (var t = new Trainer(ModelConfig.Preset("tiny"), options, vocabFromTokenizer: true))
            Assert.Equal(CollectiveTransport.Device, ((MeshTrainer)t.Engine).MeshDevices.Transport);
        using var unscoped = DeviceMesh.Create("opencl", 1, 2);
        Assert.Equal(CollectiveTransport.Device, unscoped.Transport);
        Assert.IsType<OpenClCollectives>(unscoped.ModelGroups[0]);
        Assert.Contains("device", unscoped.TransportDescription);
    }

    [Theory]
    [InlineData(1, 2)]
    [InlineData(2, 1)]
    public void OpenClMeshTrainsLikeTheCpu(int data, int model)
    {
        OpenClTestDevices.OnOnePlatform(data * model);   // fails, naming POCL_DEVICES, when the platform has too few
        var cpu = Train("cpu", 1, 1);
        var ocl = Train("opencl", data, model);
        for (int s = 0; s < Steps; s++)
        {
            double rel = Math.Abs(ocl[s] - cpu[s]) / cpu[s];
            output.WriteLine($"opencl mesh {data}x{model} step {s + 1}: {ocl[s]:F7} vs cpu 1x1 {cpu[s]:F7} (relative {rel:E2})");
            Assert.True(rel <= 1e-5, $"OpenCL mesh {data}x{model} step {s + 1}: {ocl[s]:R} vs CPU {cpu[s]:R}");
        }
        Assert.Equal(ocl, Train("opencl", data, model));

        int devices = OpenClDevice.All().Count;
        var e = Assert.Throws<ConfigException>(() => DeviceMesh.Create("opencl", devices, 2));
        Assert.Contains($"needs {2 * devices} OpenCL devices but {devices} exist", e.Message);
    }

    [Fact]
    public void CheckpointsOnAnOpenClMeshResumeBitForBit()
    {
        OpenClTestDevices.OnOnePlatform(2);
        TrainOptions Options(string dir, long steps) => new()
        {
            Steps = steps, BatchSchedule = "2", Seed = 3, Backend = "opencl", Mesh = "2x1", ShardWeights = true, PeakGflops = 100,
            OutDir = dir, CheckpointEvery = 3,
        };
        var c = ModelConfig.Preset("tiny") with { SeqLen = 16 };
        string a = Support.CliRunner.TempDir(), b = Support.CliRunner.TempDir();
        var straight = new List<double>();
        float[] expected;
        using (var t = new Trainer(c, Options(a, 6), true)) { t.Run(6, m => straight.Add(m.Loss)); expected = Support.TrainerState.WeightsAndOptimizer(t); }
        var resumed = new List<double>();
        using (var t = new Trainer(c, Options(b, 3), true)) t.Run(3, m => resumed.Add(m.Loss));
        using (var t = new Trainer(c, Options(b, 6), true))
        {
            Assert.Equal(CollectiveTransport.Device, ((MeshTrainer)t.Engine).MeshDevices.Transport);
            t.Restore(t.Checkpoints!.LoadLatestValid()!);
            t.Run(6, m => resumed.Add(m.Loss));
            Assert.True(expected.AsSpan().SequenceEqual(Support.TrainerState.WeightsAndOptimizer(t)), "weights or optimizer state differ after resuming on the OpenCL mesh");
        }
        Assert.Equal(straight, resumed);
    }
}
