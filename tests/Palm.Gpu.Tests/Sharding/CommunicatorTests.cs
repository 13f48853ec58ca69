using Palm.Gpu.Backends;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.Sharding;
using Xunit;

namespace Palm.Gpu.Tests.Sharding;

/// <summary>The SPMD coupling: each rank on its own thread, meeting the others only inside a collective.</summary>
public class CommunicatorTests
{
    static DeviceMesh Mesh(int data, int model) =>
        new(data, model, Enumerable.Range(0, data * model).Select(_ => (IBackend)new CpuBackend(1)).ToArray(), ownsDevices: true);

    [Fact]
    public void EveryRankGetsTheRankOrderSumOfItsGroups()
    {
        using var mesh = Mesh(2, 3);
        var model = new float[6][];
        var data = new double[6];
        var world = new double[6];
        mesh.Runner.Run(r =>
        {
            var rank = mesh.Ranks[r];
            var be = rank.Backend;
            using var b = be.Allocate("x", 4);
            be.Upload(b, [r, 10 * r, 0.1f * r, -r]);
            rank.ModelGroup.AllReduce(b, 4);
            model[r] = be.ToHost(b);
            Span<double> v = [r + 1.0];
            rank.DataGroup.SumHost(v);
            data[r] = v[0];
            Span<double> w = [r];
            rank.World.SumHost(w);
            world[r] = w[0];
        });
        for (int r = 0; r < 6; r++)
        {
            int d = r / 3, m0 = d * 3;
            Assert.Equal(3f * m0 + 3, model[r][0]);                             // ranks m0, m0 + 1, m0 + 2 of the model group
            Assert.Equal(10f * (3 * m0 + 3), model[r][1]);
            Assert.Equal(-(3f * m0 + 3), model[r][3]);
            Assert.Equal(model[m0], model[r]);                                  // every rank of a model group holds the same bits
            Assert.Equal((r % 3 + 1) + (r % 3 + 4), data[r]);                   // ranks m and 3 + m of the data group
            Assert.Equal(15, world[r]);
        }
    }

    [Fact]
    public void ARankThatFailsReleasesTheOthersAndTheMeshWorksAfterwards()
    {
        using var mesh = Mesh(1, 3);
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var e = Assert.Throws<InvalidOperationException>(() => mesh.Runner.Run(r =>
        {
            var rank = mesh.Ranks[r];
            using var b = rank.Backend.Allocate("x", 8);
            if (r == 1) throw new InvalidOperationException("rank 1 failed before the collective");
            rank.ModelGroup.AllReduce(b, 8);   // ranks 0 and 2 wait here for rank 1, which never comes
        }));
        Assert.Contains("rank 1 failed", e.Message);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), $"the failure took {sw.Elapsed} to surface");

        var sums = new double[3];
        mesh.Runner.Run(r =>
        {
            Span<double> v = [r];
            mesh.Ranks[r].ModelGroup.SumHost(v);
            sums[r] = v[0];
        });
        Assert.Equal([3.0, 3.0, 3.0], sums);
    }
}
