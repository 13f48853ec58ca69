using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Sharding;
using Xunit;

namespace Palm.Gpu.Tests.Backends;

/// <summary>One provider list serves device listing, creation by name, peaks and meshes.</summary>
public class BackendRegistryTests
{
    /// <summary>A provider of CPU backends under another name, with one usable and one unusable device.</summary>
    sealed class TestProvider : BackendProvider
    {
        public int Created;
        public override string Name => "test-cpu";
        public override IReadOnlyList<BackendDeviceInfo> ListDevices() =>
        [
            new(Name, 0, "test device", "CPU", "test platform", 1, 1 << 20, null),
            new(Name, -1, "", "", "", 0, 0, null, "the second test device is switched off"),
        ];
        public override IBackend Create(int device, int threads)
        {
            if (device != 0) throw new ArgumentOutOfRangeException(nameof(device), $"test-cpu has one device, not {device}");
            Created++;
            return new CpuBackend(Math.Max(1, threads));
        }
        public override double MeasurePeakGflops(IBackend backend) => 42;
    }

    [Fact]
    public void ARegisteredProviderIsListedAndCreatableByName()
    {
        var provider = new TestProvider();
        using (BackendRegistry.Register(provider))
        {
            Assert.Contains("test-cpu", BackendRegistry.Names);
            var devices = BackendRegistry.ListDevices();
            Assert.Contains(devices, d => d.Backend == "test-cpu" && d.Index == 0 && d.Available && d.Name == "test device");
            Assert.Contains(devices, d => d.Backend == "test-cpu" && !d.Available && d.ToString() == "test-cpu: unavailable: the second test device is switched off");
            Assert.Contains(devices, d => d.Backend == "cpu" && d.Available);   // the built-in providers stay

            using var be = BackendRegistry.Create("TEST-CPU", 0, 1);
            Assert.Equal(1, provider.Created);
            using var x = be.Allocate("x", 4);
            be.Upload(x, [1f, 2f, 3f, 4f]);
            Assert.Equal(30, be.SumOfSquares(x, 4));
            Assert.Same(provider, BackendRegistry.Get("test-cpu"));
            Assert.Throws<ArgumentException>(() => BackendRegistry.Register(new TestProvider()));   // one name, one provider

            // The default mesh opens devices 0 .. n−1 through Create.
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => DeviceMesh.Create("test-cpu", 1, 2));
            Assert.Contains("one device, not 1", e.Message);
        }
        Assert.DoesNotContain("test-cpu", BackendRegistry.Names);
        var unknown = Assert.Throws<ArgumentException>(() => BackendRegistry.Create("test-cpu"));
        Assert.Contains("choose one of: cpu, opencl", unknown.Message);
    }

    [Fact]
    public void CpuMeshPeakIsTheMachinesAndDeviceCollectivesAreRefused()
    {
        var cpu = BackendRegistry.Get("cpu");
        Assert.True(cpu.DevicesShareMachine);
        Assert.False(BackendRegistry.Get("opencl").DevicesShareMachine);
        Assert.NotNull(cpu.WhyNoDeviceCollectives(2));
        var e = Assert.Throws<Palm.Gpu.Model.ConfigException>(() => DeviceMesh.Create("cpu", 1, 2, 1, CollectiveTransport.Device));
        Assert.Contains("always combine on the host", e.Message);
        using var mesh = DeviceMesh.Create("cpu", 2, 1, 1);
        Assert.Equal(CollectiveTransport.Host, mesh.Transport);
        Assert.All(mesh.Devices, d => Assert.Equal(1, ((CpuBackend)d).Threads));
    }
}
