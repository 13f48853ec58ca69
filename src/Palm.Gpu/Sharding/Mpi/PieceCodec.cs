using System.Runtime.InteropServices;
using Palm.Gpu.IO;

namespace Palm.Gpu.Sharding.Mpi;

/// <summary>
/// Mesh pieces (data rank, model rank) → named tensors, as bytes for an exchange between processes: for each piece
/// d, m, its tensor count, then per tensor its name, shape and fp32 values (little-endian, as safetensors).
/// </summary>
internal static class PieceCodec
{
    public static byte[] Encode(IReadOnlyDictionary<(int D, int M), IReadOnlyDictionary<string, NamedTensor>> pieces)
    {
        using var ms = new MemoryStream();
        using var w = new BinaryWriter(ms);
        w.Write(pieces.Count);
        foreach (var ((d, m), tensors) in pieces)
        {
            w.Write(d);
            w.Write(m);
            w.Write(tensors.Count);
            foreach (var t in tensors.Values)
            {
                w.Write(t.Name);
                w.Write(t.Shape.Length);
                foreach (long x in t.Shape) w.Write(x);
                w.Write(t.Data.Length);
                w.Write(MemoryMarshal.AsBytes(t.Data.AsSpan()));
            }
        }
        w.Flush();
        return ms.ToArray();
    }

    public static Dictionary<(int D, int M), IReadOnlyDictionary<string, NamedTensor>> Decode(byte[] bytes)
    {
        using var r = new BinaryReader(new MemoryStream(bytes));
        var result = new Dictionary<(int, int), IReadOnlyDictionary<string, NamedTensor>>();
        int count = r.ReadInt32();
        for (int i = 0; i < count; i++)
        {
            int d = r.ReadInt32(), m = r.ReadInt32(), n = r.ReadInt32();
            var tensors = new Dictionary<string, NamedTensor>();
            for (int j = 0; j < n; j++)
            {
                string name = r.ReadString();
                var shape = new long[r.ReadInt32()];
                for (int k = 0; k < shape.Length; k++) shape[k] = r.ReadInt64();
                var data = new float[r.ReadInt32()];
                r.Read(MemoryMarshal.AsBytes(data.AsSpan()));
                tensors[name] = new NamedTensor(name, shape, data);
            }
            result[(d, m)] = tensors;
        }
        return result;
    }
}
