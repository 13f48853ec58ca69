using Palm.Gpu.Model;
using Palm.Gpu.IO;
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

    /// <summary>
    /// Full tensors from pieces: for every tensor of <paramref name="layout"/> present in piece (0, 0), the data slices
    /// (d = 0 .. slices−1) of each model rank concatenated, then the model pieces joined along the tensor's axis.
    /// <paramref name="piecesOf"/>(d, m) gives rank (d, m)'s pieces by name; <paramref name="source"/> names them in errors.
    /// </summary>
    public static Dictionary<string, NamedTensor> Assemble(IReadOnlyDictionary<string, TensorLayout> layout, int modelRanks, int slices,
                                                           Func<int, int, IReadOnlyDictionary<string, NamedTensor>> piecesOf, string source)
    {
        var result = new Dictionary<string, NamedTensor>();
        foreach (var name in piecesOf(0, 0).Keys)
        {
            if (!layout.TryGetValue(name, out var tensorLayout))
                throw new InvalidDataException($"{source}: tensor '{name}' has no layout");
            long local = tensorLayout.Shape.Aggregate(1L, (a, b) => a * b);
            var parts = new float[modelRanks][];
            for (int m = 0; m < modelRanks; m++)
            {
                parts[m] = new float[local];
                long at = 0;
                for (int d = 0; d < slices; d++)
                {
                    if (!piecesOf(d, m).TryGetValue(name, out var piece))
                        throw new InvalidDataException($"{source}: shard d{d}-m{m} lacks '{name}'");
                    if (at + piece.Data.LongLength > local)
                        throw new InvalidDataException($"{source}: the pieces of '{name}' hold more than its {local} values");
                    Array.Copy(piece.Data, 0, parts[m], at, piece.Data.LongLength);
                    at += piece.Data.LongLength;
                }
                if (at != local) throw new InvalidDataException($"{source}: the pieces of '{name}' hold {at} of its {local} values");
            }
            var (full, shape) = Join(parts, tensorLayout);
            result[name] = new NamedTensor(name, shape, full);
        }
        return result;
    }
}
