using System.CommandLine;
using Palm.Gpu.Model;

namespace Palm.Cli;

/// <summary>`palm plan PRESET`: parameters, FLOPs per token and memory per device, with the arithmetic shown.</summary>
internal static class PlanCommand
{
    public static Command Create()
    {
        var preset = new Argument<string>("preset") { Description = "tiny, small, palm-8b, palm-62b or palm-540b" };
        var batch = new Option<int>("--batch") { Description = "sequences per device per step", DefaultValueFactory = _ => 1 };
        var block = Cli.Block();
        var attention = Cli.Attention();
        var mesh = new MeshOptions();
        var cmd = new Command("plan", "print parameter count, training FLOPs per token and memory per device") { preset, batch, block, attention };
        foreach (var o in mesh.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            var c = Cli.Resolve(r.GetValue(preset)!, r.GetValue(block), r.GetValue(attention), false, null);
            int b = r.GetValue(batch);
            if (b < 1) throw new ConfigException($"--batch must be ≥ 1, got {b}");
            var grid = mesh.Parse(r);
            if (grid is { } g) Palm.Gpu.Sharding.DeviceMesh.Validate(c with { Vocab = Palm.Gpu.Sharding.MeshPlan.PaddedVocab(c.Vocab, g.Model) }, g.Data, g.Model, b * g.Data);
            long p = ModelMath.Parameters(c);
            double flops = ModelMath.TrainingFlopsPerToken(c);
            Console.WriteLine($"{r.GetValue(preset)}: L={c.Layers} D={c.DModel} H={c.Heads} K={c.HeadDim} G={c.KvHeads} F={c.DFf} V={c.Vocab} T={c.SeqLen}, {c.Block.ToString().ToLowerInvariant()} blocks");
            Console.WriteLine($"parameters            {p,22:N0}  ({p / 1e9:F2} B)");
            Console.WriteLine($"FLOPs per token       {flops,22:N0}  = 6·N + 12·L·T·H·K = 6·{p:N0} + 12·{c.Layers}·{c.SeqLen}·{c.Heads * c.HeadDim}");
            Console.WriteLine($"FLOPs per step        {flops * b * c.SeqLen,22:E3}  (batch {b} × {c.SeqLen} tokens)");
            Console.WriteLine();
            Console.WriteLine($"memory per device (fp32, batch {b}):");
            Row("weights", 4L * p, $"4 B × {p:N0}");
            Row("gradients", 4L * p, $"4 B × {p:N0}");
            Row("Adafactor (unfactored)", ModelMath.OptimizerBytes(c, factored: false), "momentum + full second moment: 8 B × N");
            Row("Adafactor (factored)", ModelMath.OptimizerBytes(c, factored: true), "momentum 4 B × N + row/col moments");
            long act = ModelMath.ActivationBytes(c, b, rematerialize: false);
            long actRemat = ModelMath.ActivationBytes(c, b, rematerialize: true);
            Row("activations", act, $"{ModelMath.ActivationFloatsPerTokenPerLayer(c)} floats/token/layer stored");
            Row("activations (remat)", actRemat, "block inputs only + one layer's internals");
            long total = 8L * p + ModelMath.OptimizerBytes(c, false) + act;
            long totalRemat = 8L * p + ModelMath.OptimizerBytes(c, true) + actRemat;
            Row("total", total, "weights + grads + unfactored state + activations");
            Row("total (factored, remat)", totalRemat, "weights + grads + factored state + remat activations");
            if (grid is { } m) MeshOptions.PrintPlan(c, m.Data, m.Model, r.GetValue(mesh.ShardWeights), b);
            return 0;
        }));
        return cmd;
    }

    static void Row(string name, long bytes, string how) =>
        Console.WriteLine($"  {name,-24}{Human(bytes),12}   {how}");

    public static string Human(double bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
        int u = 0;
        while (bytes >= 1024 && u < units.Length - 1) { bytes /= 1024; u++; }
        return $"{bytes:F2} {units[u]}";
    }
}
