using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Ilgpu;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tests.Support;
using Palm.Gpu.Training;
using Xunit;
using Xunit.Abstractions;

namespace Palm.Gpu.Tests.Ilgpu;

/// <summary>
/// The ILGPU backend beyond the per-op conformance suite (which runs on "ilgpu-cpu"): the registry lists its CPU
/// accelerator as a simulator, a 1×2 mesh of two CPU accelerators trains like one device, the tiny preset trains like
/// the CPU backend and repeats itself bit for bit, and bad devices are one clear line.
/// </summary>
public class IlgpuBackendTests(ITestOutputHelper output)
{
    const int Batch = 4;
    const ulong Seed = 3;
    static ModelConfig Tiny => ModelConfig.Preset("tiny");

    static (double[] Losses, Dictionary<string, float[]> Weights) Train(string backend, int data, int model, int steps)
    {
        var c = Tiny;
        using var mesh = DeviceMesh.Create(backend, data, model, threadsPerDevice: 1);
        using var t = new MeshTrainer(mesh, c, Batch, new AdafactorConfig(), Seed);
        var losses = new double[steps];
        for (int s = 0; s < steps; s++)
        {
            var (x, y) = MeshTrainer.SyntheticBatch(c, Batch, Seed, s);
            losses[s] = t.TrainStep(x, y).Loss.Total;
        }
        return (losses, t.GatherWeights());
    }

    [Fact]
    public void Registry_lists_the_cpu_accelerator_as_a_simulator()
    {
        var devices = BackendRegistry.Get("ilgpu").ListDevices();
        var simulator = Assert.Single(devices, d => d.Kind.Contains("simulator"));
        Assert.True(simulator.Available, simulator.Problem);
        Assert.Equal(IlgpuDevices.SimulatorIndex, simulator.Index);
        using var be = BackendRegistry.Create("ilgpu", simulator.Index);
        var ilgpu = Assert.IsType<IlgpuBackend>(be);
        Assert.True(ilgpu.IsSimulator);
        Assert.Equal(IlgpuTuning.Simulator, ilgpu.Tuning);
    }

    [Fact]
    public void Peak_is_a_positive_finite_rate_measured_once()
    {
        using var be = BackendRegistry.Create("ilgpu", IlgpuDevices.SimulatorIndex);
        double peak = BackendRegistry.MeasurePeakGflops(be);
        output.WriteLine($"CPU accelerator fp32 FMA peak: {peak:F2} GFLOP/s");
        Assert.True(double.IsFinite(peak) && peak > 0, $"peak {peak}");
        Assert.Equal(peak, BackendRegistry.MeasurePeakGflops(be));
    }

    [Fact]
    public void A_device_index_out_of_range_is_one_clear_error()
    {
        var e = Assert.Throws<IlgpuException>(() => BackendRegistry.Create("ilgpu", IlgpuDevices.All.Count));
        Assert.Contains($"ILGPU device index {IlgpuDevices.All.Count} does not exist", e.Message);
        Assert.Contains("palm devices", e.Message);
    }

    [Fact]
    public void Tuning_that_does_not_fit_the_device_is_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => new IlgpuBackend(IlgpuDevices.SimulatorIndex, IlgpuTuning.Gpu));
        Assert.Contains("groups hold 1..16", e.Message);
    }

    // The must-show of the ILGPU backend at library level: the tiny preset on the CPU accelerator follows the CPU backend
    // within 1e-4 relative at every step, and a second run is the same bits.
    [Fact]
    public void Tiny_preset_trains_like_the_cpu_backend_and_repeats_bitwise()
    {
        const int steps = 5;
        var cpu = Train("cpu", 1, 1, steps);
        var first = Train("ilgpu", 1, 1, steps);
        for (int s = 0; s < steps; s++)
        {
            double rel = Math.Abs(first.Losses[s] - cpu.Losses[s]) / Math.Abs(cpu.Losses[s]);
            output.WriteLine($"step {s + 1}: ilgpu {first.Losses[s]:R}  cpu {cpu.Losses[s]:R}  relative {rel:E2}");
            Assert.True(rel <= 1e-4, $"step {s + 1}: ilgpu loss {first.Losses[s]:R} vs cpu {cpu.Losses[s]:R} (relative {rel:E2})");
        }
        var second = Train("ilgpu", 1, 1, steps);
        Assert.Equal(first.Losses, second.Losses);
        foreach (var (name, w) in first.Weights) Assert.True(w.AsSpan().SequenceEqual(second.Weights[name]), $"{name} differs between two ilgpu runs");
    }

    // Two CPU accelerators as a 1×2 (model-parallel) mesh: the same losses and weights as one, within the tolerance of
    // the CPU meshes (MeshTests): split GEMM sums and the vocabulary-parallel softmax round differently, nothing more.
    [Fact]
    public void A_1x2_mesh_of_cpu_accelerators_equals_one_device()
    {
        const int steps = 3;
        var one = Train("ilgpu", 1, 1, steps);
        var two = Train("ilgpu", 1, 2, steps);
        for (int s = 0; s < steps; s++)
        {
            double rel = Math.Abs(two.Losses[s] - one.Losses[s]) / Math.Abs(one.Losses[s]);
            Assert.True(rel <= 1e-5, $"mesh 1x2 step {s + 1}: loss {two.Losses[s]:R} vs 1x1 {one.Losses[s]:R} (relative {rel:E2})");
        }
        foreach (var (name, w) in one.Weights) Tolerance.AssertClose(w, two.Weights[name], 2e-6, 1e-5, $"mesh 1x2 final {name}");
    }

    [Fact]
    public void Palm_devices_lists_the_ilgpu_cpu_accelerator_as_a_simulator()
    {
        var r = CliRunner.Run("devices");
        Assert.True(r.ExitCode == 0, r.Stderr);
        var line = Assert.Single(r.Stdout.Split('\n'), l => l.StartsWith("ilgpu:", StringComparison.Ordinal) && l.Contains("simulator"));
        Assert.Contains("CPU accelerator", line);
        Assert.StartsWith($"ilgpu:{IlgpuDevices.SimulatorIndex} ", line);
    }

    [Fact]
    public void Train_with_an_ilgpu_device_that_does_not_exist_is_one_line()
    {
        var r = CliRunner.Run("train", "--backend", "ilgpu", "--device", "7", "--preset", "tiny", "--steps", "1", "--out", CliRunner.TempDir());
        Assert.Equal(2, r.ExitCode);
        var lines = r.Stderr.Trim().Split('\n');
        Assert.Single(lines);
        Assert.StartsWith("palm: error: ILGPU device index 7 does not exist", lines[0]);
    }
}
