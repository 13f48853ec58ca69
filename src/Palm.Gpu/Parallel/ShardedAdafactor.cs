using Palm.Gpu.Backends;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Tensors;
using Palm.Gpu.Training;

namespace Palm.Gpu.Sharding;

/// <summary>
/// Adafactor over a <see cref="ShardedPalm"/>. Each parameter tensor exists as one or more identical copies;
/// a copy is made of pieces on several ranks (model shards, data slices when fully sharded, or both).
/// A copy held whole by one rank uses the backend's fused kernel. A copy in pieces needs the per-tensor
/// RMS(u) and RMS(p) of the whole tensor: each piece runs pass 1 on its own device (second moment, Σu², Σp²),
/// the two sums of the pieces are added in rank order on the host, and each piece runs pass 2 with them —
/// two numbers per piece cross to the host, never the tensor. Every copy sees the same
/// inputs, so replicas stay bit-identical. The gradient norm counts one copy of every tensor.
/// </summary>
public sealed class ShardedAdafactor : IDisposable
{
    readonly ShardedPalm _model;
    readonly AdafactorBuffers[][] _state;   // [parameter][rank]
    readonly int[][][] _copies;             // [parameter][copy][piece] = rank index

    public ShardedAdafactor(ShardedPalm model, AdafactorConfig config)
    {
        _model = model;
        Config = config.Validate();
        var ranks = model.Ranks;
        var meta = model.ShardLayout.All;
        int M = model.Mesh.Model, P = model.Mesh.Data;
        _state = new AdafactorBuffers[meta.Count][];
        _copies = new int[meta.Count][][];
        for (int i = 0; i < meta.Count; i++)
        {
            var p = meta[i];
            bool split = model.AxisOf(i) != ShardAxis.Replicated && M > 1;
            _copies[i] = (split, model.ShardWeights) switch
            {
                (true, false) => Enumerable.Range(0, P).Select(d => Enumerable.Range(0, M).Select(m => d * M + m).ToArray()).ToArray(),
                (true, true) => [Enumerable.Range(0, P * M).ToArray()],
                (false, false) => Enumerable.Range(0, P * M).Select(r => new[] { r }).ToArray(),
                (false, true) => Enumerable.Range(0, M).Select(m => Enumerable.Range(0, P).Select(d => d * M + m).ToArray()).ToArray(),
            };
            bool whole = _copies[i][0].Length == 1;
            bool factor = config.Factored && !p.IsVector && p.Rows > 1 && p.Cols > 1;
            if (factor && !whole)
                throw new ConfigException($"factored Adafactor is not supported when {p.Name} is split over devices (its row/column moments span pieces); train unfactored (PaLM's setting)");
            _state[i] = new AdafactorBuffers[ranks.Count];
            for (int k = 0; k < ranks.Count; k++)
            {
                var be = ranks[k].Be;
                long n = ranks[k].Piece(i).Length;
                _state[i][k] = new AdafactorBuffers(
                    config.Beta1 > 0 ? Zeroed(be, "adafactor.m." + p.Name, n) : null,
                    factor ? null : Zeroed(be, "adafactor.v." + p.Name, n),
                    factor ? Zeroed(be, "adafactor.v_row." + p.Name, p.Rows) : null,
                    factor ? Zeroed(be, "adafactor.v_col." + p.Name, p.Cols) : null);
            }
        }
    }

    public AdafactorConfig Config { get; }

    /// <summary>Bytes of optimizer state held by one device.</summary>
    public long StateBytesPerDevice => _state.Sum(per => new[] { per[0].Momentum, per[0].SecondMoment, per[0].RowMoment, per[0].ColMoment }.OfType<DeviceBuffer>().Sum(b => b.Bytes));

    /// <summary>Global L2 norm of the synchronised gradients: one copy of every tensor, pieces in rank order.</summary>
    public double GradientNorm()
    {
        var ranks = _model.Ranks;
        double sum = 0;
        for (int i = 0; i < _copies.Length; i++)
            foreach (int k in _copies[i][0])
            {
                var piece = ranks[k].Piece(i);
                sum += ranks[k].Be.SumOfSquares(piece.Grad, piece.Length); // slice padding is zero
            }
        return Math.Sqrt(sum);
    }

    /// <summary>Applies step k (1-based) on every rank; returns the learning rate.</summary>
    public float Step(long k, double gradNorm)
    {
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k), "Adafactor steps are counted from 1");
        var step = Config.StepFor(k, gradNorm);
        var meta = _model.ShardLayout.All;
        int ranks = _model.Ranks.Count;
        // Pass 1 on every piece of every split tensor, all ranks at once; whole copies run the fused kernel.
        var sums = new (double U2, double P2)[_copies.Length][];
        for (int i = 0; i < _copies.Length; i++) if (_copies[i][0].Length > 1) sums[i] = new (double, double)[ranks];
        _model.ForRanks(r =>
        {
            int rank = r.Index;
            for (int i = 0; i < _copies.Length; i++)
            {
                var piece = r.Piece(i);
                var st = _state[i][rank];
                if (sums[i] is null) r.Be.AdafactorUpdate(piece.Value, piece.Grad, st, meta[i].Rows, meta[i].Cols, step);
                else
                {
                    var u2 = new double[1];
                    var p2 = new double[1];
                    r.Be.AdafactorSums(piece.Value, piece.Grad, st.SecondMoment!, [new Segment(0, piece.Valid)], step, u2, p2);
                    sums[i][rank] = (u2[0], p2[0]);
                }
            }
        });
        // Each copy's sums over its pieces in rank order: the same total, hence the same update, on every piece.
        var totals = new (double U2, double P2, long Count)[_copies.Length][];
        for (int i = 0; i < _copies.Length; i++)
        {
            if (sums[i] is null) continue;
            totals[i] = new (double, double, long)[ranks];
            foreach (var copy in _copies[i])
            {
                double u2 = 0, p2 = 0;
                long count = 0;
                foreach (int rank in copy) { u2 += sums[i][rank].U2; p2 += sums[i][rank].P2; count += _model.Ranks[rank].Piece(i).Valid; }
                foreach (int rank in copy) totals[i][rank] = (u2, p2, count);
            }
        }
        _model.ForRanks(r =>
        {
            int rank = r.Index;
            for (int i = 0; i < _copies.Length; i++)
            {
                if (totals[i] is null) continue;
                var piece = r.Piece(i);
                var st = _state[i][rank];
                var (u2, p2, count) = totals[i][rank];
                r.Be.AdafactorApply(piece.Value, piece.Grad, st.Momentum, st.SecondMoment!, [new Segment(0, piece.Valid)], [u2], [p2], [count], step);
            }
        });
        return step.LearningRate;
    }

    // ---- checkpoints: state pieces named as the single-device optimizer names them ------------------

    static IEnumerable<(string Prefix, DeviceBuffer? Buffer, bool Elementwise)> Kinds(AdafactorBuffers s) =>
    [
        ("adafactor.m.", s.Momentum, true), ("adafactor.v.", s.SecondMoment, true),
        ("adafactor.v_row.", s.RowMoment, false), ("adafactor.v_col.", s.ColMoment, false),
    ];

    /// <summary>Layout of every state tensor: the moments follow their parameter; factored row/column moments are whole.</summary>
    public Dictionary<string, TensorLayout> Layouts()
    {
        var result = new Dictionary<string, TensorLayout>();
        var meta = _model.ShardLayout.All;
        for (int i = 0; i < meta.Count; i++)
            foreach (var (prefix, buffer, elementwise) in Kinds(_state[i][0]))
                if (buffer is not null)
                    result[prefix + meta[i].Name] = elementwise ? _model.LayoutOf(i) : new TensorLayout("replicated", [buffer.Length]);
        return result;
    }

    /// <summary>Host copies of rank k's optimizer state, padding dropped.</summary>
    public List<NamedTensor> ExportState(int k)
    {
        var list = new List<NamedTensor>();
        var meta = _model.ShardLayout.All;
        var rank = _model.Ranks[k];
        for (int i = 0; i < meta.Count; i++)
        {
            var piece = rank.Piece(i);
            foreach (var (prefix, buffer, elementwise) in Kinds(_state[i][k]))
            {
                if (buffer is null) continue;
                long valid = elementwise ? piece.Valid : buffer.Length;
                long[] shape = !elementwise ? [buffer.Length] : _model.ShardWeights ? [valid] : meta[i].Shape.Select(x => (long)x).ToArray();
                list.Add(new NamedTensor(prefix + meta[i].Name, shape, rank.Be.ToHost(buffer, valid)));
            }
        }
        return list;
    }

    /// <summary>Loads full state tensors (as a single-device optimizer names them) into every rank's pieces.</summary>
    public void LoadState(IReadOnlyDictionary<string, NamedTensor> full, string source)
    {
        var meta = _model.ShardLayout.All;
        _model.ForRanks(r =>
        {
            int k = r.Index;
            for (int i = 0; i < meta.Count; i++)
                foreach (var (prefix, buffer, elementwise) in Kinds(_state[i][k]))
                {
                    if (buffer is null) continue;
                    string name = prefix + meta[i].Name;
                    var values = CheckpointTensors.Get(full, name, elementwise ? _model.FullCount(i) : buffer.Length, source);
                    r.Be.Upload(buffer, elementwise ? _model.PieceOf(values, i, r) : values);
                }
        });
    }

    static DeviceBuffer Zeroed(IBackend be, string name, long n)
    {
        var b = be.Allocate(name, n);
        be.Fill(b, 0f, n);
        return b;
    }

    public void Dispose()
    {
        foreach (var per in _state)
            foreach (var s in per)
                foreach (var b in new[] { s.Momentum, s.SecondMoment, s.RowMoment, s.ColMoment }.OfType<DeviceBuffer>()) b.Dispose();
    }
}
