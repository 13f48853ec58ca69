using System.Text.Json;
using Palm.Gpu.Backends.Cpu;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Tests.Support;
using Xunit;

namespace Palm.Gpu.Tests.Model;

/// <summary>
/// The whole model against PyTorch: same weights and tokens, loss and every parameter gradient.
/// Reference files come from Reference/pytorch/make_reference.py (float64 PyTorch); no Python at test time.
/// </summary>
public class ModelReferenceTests
{
    [Theory]
    [InlineData("parallel_mqa")]
    [InlineData("serial_mha")]
    public void LossAndGradientsMatchPyTorch(string variant)
    {
        string path = Path.Combine(AppContext.BaseDirectory, "Reference", "pytorch", variant + ".safetensors");
        var meta = SafeTensors.ReadMetadata(path);
        var tensors = SafeTensors.Read(path);
        using var cfgJson = JsonDocument.Parse(meta["config"]);
        var j = cfgJson.RootElement;
        var config = new ModelConfig
        {
            Vocab = j.GetProperty("vocab").GetInt32(),
            DModel = j.GetProperty("d_model").GetInt32(),
            Layers = j.GetProperty("layers").GetInt32(),
            Heads = j.GetProperty("heads").GetInt32(),
            HeadDim = j.GetProperty("head_dim").GetInt32(),
            DFf = j.GetProperty("d_ff").GetInt32(),
            SeqLen = j.GetProperty("seq_len").GetInt32(),
            ZLoss = (float)j.GetProperty("z_loss").GetDouble(),
            Block = j.GetProperty("block").GetString() == "serial" ? BlockKind.Serial : BlockKind.Parallel,
            Attention = j.GetProperty("attention").GetString() == "multi_head" ? AttentionKind.MultiHead : AttentionKind.MultiQuery,
        };
        int batch = j.GetProperty("batch").GetInt32();

        using var be = new CpuBackend(2);
        using var model = new PalmModel(be, config, batch);
        foreach (var p in model.Parameters) be.Upload(p.Value, tensors["param." + p.Name].Data);
        var tokens = Array.ConvertAll(tensors["tokens"].Data, x => (int)x);
        var targets = Array.ConvertAll(tensors["targets"].Data, x => (int)x);

        model.ZeroGradients();
        var loss = model.Forward(tokens, targets, batch);
        model.Backward();

        Assert.Equal(double.Parse(meta["cross_entropy"]), loss.CrossEntropy, 1e-5);
        Assert.Equal(double.Parse(meta["z_loss"]), loss.ZLoss, 1e-7);
        foreach (var p in model.Parameters)
        {
            var expected = tensors["grad." + p.Name].Data;
            var got = new float[p.Count];
            be.Download(p.Grad, got);
            double scale = expected.Max(MathF.Abs);
            Tolerance.AssertClose(expected, got, atol: 1e-4 * scale, rtol: 2e-3, $"{variant} d{p.Name}");
        }
    }
}
