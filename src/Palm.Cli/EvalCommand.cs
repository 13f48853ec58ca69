using System.CommandLine;
using Palm.Gpu.Backends;
using Palm.Gpu.Data;
using Palm.Gpu.Inference;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;

namespace Palm.Cli;

/// <summary>`palm eval`: mean cross-entropy of saved weights on a text file.</summary>
internal static class EvalCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "model.safetensors, or a run directory", DefaultValueFactory = _ => "runs/latest" };
        var data = new Option<string>("--data") { Description = "UTF-8 text file or directory to score", Required = true };
        var batch = new Option<int>("--batch") { Description = "sequences per forward pass", DefaultValueFactory = _ => 4 };
        var maxSeqs = new Option<int>("--max-sequences") { Description = "score at most this many sequences (0 = all)" };
        var tokenizer = new Option<string?>("--tokenizer") { Description = "tokenizer file (default: the one recorded in the weights)" };
        var backend = Cli.Backend();
        var device = Cli.Device();
        var threads = Cli.Threads();
        var cmd = new Command("eval", "print the mean loss of saved weights on a text file") { model, data, batch, maxSeqs, tokenizer, backend, device, threads };
        var mesh = new MeshOptions();
        foreach (var o in mesh.All) cmd.Options.Add(o);
        cmd.SetAction(r => Cli.Run(() =>
        {
            Cli.CheckDevice(r.GetValue(backend)!, r.GetValue(device), r.GetResult(device) is { Implicit: false });
            string path = GenerateCommand.WeightsPath(r.GetValue(model)!);
            var config = ModelWeights.ReadConfig(path);
            var tok = GenerateCommand.LoadTokenizer(r.GetValue(tokenizer) ?? ModelWeights.ReadMetadata(path).GetValueOrDefault("tokenizer", "bytes"));
            using var ds = PackedDataset.Load(r.GetValue(data)!, tok, config.SeqLen, heldOutFraction: 0);
            int b = r.GetValue(batch);
            if (b < 1) throw new ConfigException($"--batch must be ≥ 1, got {b}");
            long count = r.GetValue(maxSeqs) > 0 ? Math.Min(r.GetValue(maxSeqs), ds.TrainSequences) : ds.TrainSequences;
            double loss;
            if (mesh.Parse(r) is { } shape)
            {
                var (dataAxis, modelAxis) = shape;
                DeviceMesh.Validate(config, dataAxis, modelAxis, b);
                long whole = count - count % dataAxis;
                if (whole == 0) throw new ConfigException($"the data axis {dataAxis} needs at least {dataAxis} sequences; the data holds {count}");
                if (whole < count)
                    Console.Error.WriteLine($"palm: scoring {whole} of {count} sequences: each batch is split over {dataAxis} data ranks; use --mesh 1x{modelAxis} to score all");
                count = whole;
                int threadCount = r.GetValue(threads);
                using var devices = DeviceMesh.Create(r.GetValue(backend)!, dataAxis, modelAxis, threadCount > 0 ? Math.Max(1, threadCount / (dataAxis * modelAxis)) : 0,
                                                mesh.Transport(r));
                using var sharded = new MeshTrainer(devices, config, b, optimizer: null, seed: null, shardWeights: r.GetValue(mesh.ShardWeights));
                sharded.LoadWeights(ModelWeights.Read(config, path));
                loss = Evaluator.MeanLoss((i, t, n) => sharded.Forward(i, t, n).CrossEntropy, config.SeqLen, b, dataAxis, ds, heldOut: false, count);
            }
            else
            {
                using var be = BackendRegistry.Create(r.GetValue(backend)!, r.GetValue(device), r.GetValue(threads));
                using var m = new PalmModel(be, config, b);
                ModelWeights.Load(m, path);
                loss = Evaluator.MeanLoss(m, ds, heldOut: false, count);
            }
            Console.WriteLine($"{{\"loss\": {loss:F6}, \"perplexity\": {Math.Exp(loss):F3}, \"sequences\": {count}, \"tokens\": {count * config.SeqLen}}}");
            return 0;
        }));
        return cmd;
    }
}
