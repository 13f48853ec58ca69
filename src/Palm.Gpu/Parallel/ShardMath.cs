using Palm.Gpu.Training;

namespace Palm.Gpu.Sharding;

/// <summary>
/// Cutting a full row-major (R, C) tensor into model-rank pieces and joining them back, for loading
/// weights onto a mesh and for assembling sharded checkpoints. M model ranks; rank m holds
///   Rows:       rows [m·R/M, (m+1)·R/M)   piece (R/M, C)
///   Cols:       cols [m·C/M, (m+1)·C/M)   piece (R, C/M)
///   Replicated: the whole tensor          piece (R, C)
/// </summary>
public static class ShardMath
{
    public static string Name(ShardAxis axis) => axis switch
    {
        ShardAxis.Rows => "rows",
        ShardAxis.Cols => "cols",
        _ => "replicated",
    };

    /// <summary>Rank m's piece of <paramref name="full"/>; <paramref name="rows"/> × <paramref name="cols"/> is the piece's shape.</summary>
    public static float[] Cut(float[] full, ShardAxis axis, int rows, int cols, int m, int ranks)
    {
        if (axis == ShardAxis.Replicated || ranks == 1) return full;
        long count = (long)rows * cols;
        var piece = new float[count];
        if (axis == ShardAxis.Rows) Array.Copy(full, m * count, piece, 0, count);
        else
        {
            long fullCols = (long)cols * ranks;
            for (long i = 0; i < rows; i++) Array.Copy(full, i * fullCols + (long)m * cols, piece, i * cols, cols);
        }
        return piece;
    }

    /// <summary>The full tensor and its shape from every model rank's piece (index = rank), laid out as <paramref name="layout"/> says.</summary>
    public static (float[] Full, long[] Shape) Join(float[][] parts, TensorLayout layout)
    {
        int ranks = parts.Length;
        var shape = layout.Shape;
        if (layout.Axis == "replicated" || ranks == 1) return (parts[0], shape);
        if (shape.Length != 2) throw new InvalidDataException($"a tensor split by {layout.Axis} needs a 2-D shape, got [{string.Join(",", shape)}]");
        long rows = shape[0], cols = shape[1], count = rows * cols;
        var full = new float[count * ranks];
        for (int m = 0; m < ranks; m++)
        {
            if (layout.Axis == "rows") Array.Copy(parts[m], 0, full, m * count, count);
            else if (layout.Axis == "cols")
                for (long i = 0; i < rows; i++) Array.Copy(parts[m], i * cols, full, i * cols * ranks + m * cols, cols);
            else throw new InvalidDataException($"unknown shard axis '{layout.Axis}' (expected replicated, rows or cols)");
        }
        return (full, layout.Axis == "rows" ? [rows * ranks, cols] : [rows, cols * ranks]);
    }
}
