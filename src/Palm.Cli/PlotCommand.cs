using System.CommandLine;
using System.Text.Json;
using Palm.Gpu.IO;

namespace Palm.Cli;

/// <summary>`palm plot RUN`: loss and gradient norm vs step as SVG, spikes and rollbacks marked.</summary>
internal static class PlotCommand
{
    public static Command Create()
    {
        var run = new Argument<string>("run") { Description = "run directory holding metrics.jsonl" };
        var output = new Option<string?>("--out") { Description = "SVG path (default: RUN/loss.svg)" };
        var cmd = new Command("plot", "plot a run's loss and gradient norm (SVG)") { run, output };
        cmd.SetAction(r => Cli.Run(() =>
        {
            string dir = r.GetValue(run)!;
            string metrics = Path.Combine(dir, "metrics.jsonl");
            if (!File.Exists(metrics)) throw new FileNotFoundException($"'{metrics}' does not exist; give a run directory written by palm train");
            var loss = new List<(double, double)>();
            var grad = new List<(double, double)>();
            var markers = new List<PlotMarker>();
            int lineNo = 0;
            foreach (var line in File.ReadLines(metrics))
            {
                lineNo++;
                if (string.IsNullOrWhiteSpace(line)) continue;
                JsonElement j;
                try { j = JsonDocument.Parse(line).RootElement; }
                catch (JsonException) { throw new InvalidDataException($"{metrics}:{lineNo} is not JSON"); }
                if (j.TryGetProperty("event", out var ev))
                {
                    if (ev.GetString() == "rollback")
                    {
                        long spike = j.GetProperty("spike_step").GetInt64(), restored = j.GetProperty("restored_step").GetInt64();
                        markers.Add(new PlotMarker(spike, $"spike {spike}"));
                        markers.Add(new PlotMarker(restored, $"rollback to {restored}", "#1f77b4"));
                    }
                    continue;
                }
                double step = j.GetProperty("step").GetDouble();
                loss.Add((step, Number(j.GetProperty("loss"))));
                grad.Add((step, Number(j.GetProperty("grad_norm"))));
            }
            if (loss.Count == 0) throw new InvalidDataException($"'{metrics}' holds no step lines yet");
            string outPath = r.GetValue(output) ?? Path.Combine(dir, "loss.svg");
            Plots.SaveSvg(outPath, $"{Path.GetFileName(Path.GetFullPath(dir))}: loss and gradient norm", "step", "loss",
                [new PlotSeries("loss", loss), new PlotSeries("grad norm", grad, RightAxis: true, Dashed: true)], markers, rightTitle: "gradient norm");
            Console.WriteLine($"wrote {outPath} ({loss.Count} steps, {markers.Count / 2} rollbacks)");
            return 0;
        }));
        return cmd;
    }

    static double Number(JsonElement e) => e.ValueKind == JsonValueKind.Number ? e.GetDouble() : double.NaN;
}
