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
            // A rollback sends the step back: each trajectory segment gets its own pair of lines, and the steps a
            // rollback threw away (after the restored checkpoint) are drawn faded as an abandoned segment.
            var segments = new List<(List<(double, double)> Loss, List<(double, double)> Grad, bool Abandoned)> { ([], [], false) };
            var markers = new List<PlotMarker>();
            // The run may still be writing: a last line without its newline is a line in progress, not an error.
            string all = File.ReadAllText(metrics);
            var lines = all.Split('\n');
            int complete = lines.Length - 1;   // the piece after the last newline is empty, or a line still being written
            for (int lineNo = 1; lineNo <= complete; lineNo++)
            {
                string line = lines[lineNo - 1];
                if (string.IsNullOrWhiteSpace(line)) continue;
                JsonElement j;
                try { j = JsonDocument.Parse(line).RootElement; }
                catch (JsonException) { throw new InvalidDataException($"{metrics}:{lineNo} is not JSON"); }
                string Bad(string what) => $"{metrics}:{lineNo} {what}; it is not a line palm train writes";
                if (j.ValueKind != JsonValueKind.Object) throw new InvalidDataException(Bad($"is a JSON {j.ValueKind.ToString().ToLowerInvariant()}, not an object"));
                long Whole(string name) => j.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long x)
                    ? x : throw new InvalidDataException(Bad($"has no whole-number \"{name}\""));
                if (j.TryGetProperty("event", out var ev))
                {
                    string? kind = ev.ValueKind == JsonValueKind.String ? ev.GetString() : null;
                    if (kind == "resume")
                    {
                        long at = Whole("step");
                        markers.Add(new PlotMarker(at, $"resume at {at}", "#7f7f7f"));
                        segments.Add(([], [], false));
                    }
                    if (kind == "rollback")
                    {
                        long spike = Whole("spike_step"), restored = Whole("restored_step");
                        markers.Add(new PlotMarker(spike, $"spike {spike}"));
                        markers.Add(new PlotMarker(restored, $"rollback to {restored}", "#1f77b4"));
                        var last = segments[^1];
                        segments[^1] = (last.Loss.Where(p => p.Item1 <= restored).ToList(), last.Grad.Where(p => p.Item1 <= restored).ToList(), false);
                        segments.Add((last.Loss.Where(p => p.Item1 > restored).ToList(), last.Grad.Where(p => p.Item1 > restored).ToList(), true));
                        segments.Add(([], [], false));
                    }
                    continue;
                }
                double step = Whole("step");
                if (!j.TryGetProperty("loss", out var loss) || !j.TryGetProperty("grad_norm", out var grad))
                    throw new InvalidDataException(Bad("has no \"loss\" or \"grad_norm\""));
                segments[^1].Loss.Add((step, Number(loss)));
                segments[^1].Grad.Add((step, Number(grad)));
            }
            int steps = segments.Sum(x => x.Loss.Count);
            if (steps == 0) throw new InvalidDataException($"'{metrics}' holds no step lines yet");
            var series = new List<PlotSeries>();
            // Every kept segment in the same two colours (restarts are told apart by the markers); abandoned ones faded.
            bool namedAbandoned = false;
            for (int i = 0; i < segments.Count; i++)
            {
                var (loss, grad, abandoned) = segments[i];
                string? name = i == 0 ? "loss" : abandoned && !namedAbandoned ? "rolled back" : null;
                namedAbandoned |= abandoned;
                series.Add(new PlotSeries(name, loss, Colour: abandoned ? "#b5dcb5" : "#2ca02c"));
                series.Add(new PlotSeries(i == 0 ? "grad norm" : null, grad, RightAxis: true, Dashed: true, Colour: abandoned ? "#ffd0a6" : "#ff7f0e"));
            }
            string outPath = r.GetValue(output) ?? Path.Combine(dir, "loss.svg");
            Plots.SaveSvg(outPath, $"{Path.GetFileName(Path.GetFullPath(dir))}: loss and gradient norm", "step", "loss",
                series, markers, rightTitle: "gradient norm");
            Console.WriteLine($"wrote {outPath} ({steps} steps, {markers.Count(m => m.Label.StartsWith("spike"))} rollbacks)");
            return 0;
        }));
        return cmd;
    }

    static double Number(JsonElement e) => e.ValueKind == JsonValueKind.Number ? e.GetDouble() : double.NaN;
}
