using OxyPlot;
using OxyPlot.Annotations;
using OxyPlot.Axes;
using OxyPlot.Legends;
using OxyPlot.Series;

namespace Palm.Gpu.IO;

/// <summary>A line of (x, y) points, drawn on the left axis or, with RightAxis, on a second one. A null name keeps it out of the legend.</summary>
public sealed record PlotSeries(string? Name, IReadOnlyList<(double X, double Y)> Points, bool RightAxis = false, bool Dashed = false, string? Colour = null);

/// <summary>A vertical marker at x (a spike, a rollback) with a label.</summary>
public sealed record PlotMarker(double X, string Label, string Colour = "#d62728");

/// <summary>Line charts as SVG files (OxyPlot's SVG exporter), for runs, ablations and benchmark boards.</summary>
public static class Plots
{
    public static void SaveSvg(string path, string title, string xTitle, string yTitle, IEnumerable<PlotSeries> series,
                               IEnumerable<PlotMarker>? markers = null, string? rightTitle = null, bool logY = false,
                               int width = 900, int height = 500)
    {
        var model = new PlotModel { Title = title, Background = OxyColors.White };
        model.Legends.Add(new Legend { LegendPlacement = LegendPlacement.Outside, LegendPosition = LegendPosition.BottomCenter, LegendOrientation = LegendOrientation.Horizontal, LegendPadding = 24 });
        model.Axes.Add(new LinearAxis { Position = AxisPosition.Bottom, Title = xTitle, MajorGridlineStyle = LineStyle.Dot });
        model.Axes.Add(logY
            ? new LogarithmicAxis { Position = AxisPosition.Left, Title = yTitle, MajorGridlineStyle = LineStyle.Dot, Key = "left" }
            : new LinearAxis { Position = AxisPosition.Left, Title = yTitle, MajorGridlineStyle = LineStyle.Dot, Key = "left" });
        if (rightTitle is not null)
            model.Axes.Add(new LinearAxis { Position = AxisPosition.Right, Title = rightTitle, Key = "right" });

        foreach (var s in series)
        {
            var line = new LineSeries
            {
                Title = s.Name,
                YAxisKey = s.RightAxis ? "right" : "left",
                StrokeThickness = 1.5,
                LineStyle = s.Dashed ? LineStyle.Dash : LineStyle.Solid,
            };
            if (s.Colour is not null) line.Color = OxyColor.Parse(s.Colour);
            foreach (var (x, y) in s.Points)
                if (double.IsFinite(x) && double.IsFinite(y) && (!logY || s.RightAxis || y > 0)) line.Points.Add(new DataPoint(x, y));
            model.Series.Add(line);
        }
        foreach (var m in markers ?? [])
            model.Annotations.Add(new LineAnnotation
            {
                Type = LineAnnotationType.Vertical, X = m.X, Text = m.Label, Color = OxyColor.Parse(m.Colour),
                LineStyle = LineStyle.Dash, TextOrientation = AnnotationTextOrientation.Vertical,
            });

        var dir = Path.GetDirectoryName(Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        var exporter = new SvgExporter { Width = width, Height = height, UseVerticalTextAlignmentWorkaround = true };
        AtomicFile.Write(path, fs => exporter.Export(model, fs));
    }
}
