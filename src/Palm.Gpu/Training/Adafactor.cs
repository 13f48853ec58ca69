using Palm.Gpu.Backends;
using Palm.Gpu.IO;
using Palm.Gpu.Model;
using Palm.Gpu.Sharding;
using Palm.Gpu.Tensors;

namespace Palm.Gpu.Training;

/// <summary>Adafactor settings; the defaults are PaLM's (section 5 of the paper).</summary>
public sealed record AdafactorConfig
{
    public float PeakLearningRate { get; init; } = 1e-2f;  // ρ for the first WarmSteps steps
    public int WarmSteps { get; init; } = 10_000;           // then ρ_k = 1/√k (continuous at k = 10⁴)
    public float Beta1 { get; init; } = 0.9f;               // momentum
    public float Beta2DecayExponent { get; init; } = 0.8f;  // β2 = 1 − k^−0.8
    public float Epsilon1 { get; init; } = 1e-30f;          // added to g² in the second moment
    public float Epsilon2 { get; init; } = 1e-3f;           // floor of the parameter RMS in parameter scaling
    public float UpdateClip { get; init; } = 1.0f;          // d: clip the RMS of the unscaled update; 0 = off
    public float GradClipNorm { get; init; } = 1.0f;        // global-norm gradient clipping; 0 = off
    public float WeightDecayExponent { get; init; } = 2.0f; // PaLM's dynamic weight decay lr^2; 0 = no decay
    public bool Factored { get; init; }                      // factored second moments for matrices (PaLM: off)

    /// <summary>ρ_k for step k (1-based).</summary>
    public float LearningRate(long k) => k <= WarmSteps ? PeakLearningRate : 1f / MathF.Sqrt(k);

    /// <summary>β2 for step k (1-based): 1 − k^−0.8, which is 0 at k = 1 (the first step sees only g²).</summary>
    public float Beta2(long k) => 1f - MathF.Pow(k, -Beta2DecayExponent);

    // "Off" is 0 in the settings but must not reach the kernels as 0: a threshold d = 0 makes the clip
    // factor 1/max(1, RMS(u)/0) = 0 (no update at all), a clip norm of 0 scales every gradient to 0, and
    // lr^0 = 1 would decay every weight to 0 in one step. So the host turns them into "never clips" / 0.

    /// <summary>The update-clipping threshold d the kernel gets: +∞ when clipping is off.</summary>
    public float ClipThreshold() => UpdateClip > 0 ? UpdateClip : float.PositiveInfinity;

    /// <summary>Factor applied to every gradient for global-norm clipping (1 when off or within the norm).</summary>
    public float GradientScale(double gradNorm) =>
        GradClipNorm > 0 && double.IsFinite(gradNorm) && gradNorm > GradClipNorm ? (float)(GradClipNorm / gradNorm) : 1f;

    /// <summary>Decoupled weight decay of a step at rate lr: lr^e, or 0 when decay is off.</summary>
    public float WeightDecay(float lr) => WeightDecayExponent > 0 ? MathF.Pow(lr, WeightDecayExponent) : 0f;

    /// <summary>What the update kernel is told for step k (1-based) with the gradients' global norm: one place for both optimizers.</summary>
    public AdafactorStep StepFor(long k, double gradNorm)
    {
        float lr = LearningRate(k);
        return new AdafactorStep(lr, Beta1, Beta2(k), Epsilon1, Epsilon2, ClipThreshold(), GradientScale(gradNorm), WeightDecay(lr));
    }

    /// <summary>Rejects settings the update cannot mean (negative or non-finite rates, clips, exponents).</summary>
    public AdafactorConfig Validate()
    {
        static bool Ok(float x) => float.IsFinite(x) && x >= 0;
        if (!float.IsFinite(PeakLearningRate) || PeakLearningRate <= 0)
            throw new ConfigException($"--lr must be a positive number, got {PeakLearningRate}");
        if (WarmSteps < 0) throw new ConfigException($"--warmup-steps must be ≥ 0, got {WarmSteps}");
        if (!Ok(UpdateClip)) throw new ConfigException($"--update-clip must be a number ≥ 0 (0 = off), got {UpdateClip}");
        if (!Ok(GradClipNorm)) throw new ConfigException($"--grad-clip must be a number ≥ 0 (0 = off), got {GradClipNorm}");
        if (!Ok(WeightDecayExponent)) throw new ConfigException($"--weight-decay-exponent must be a number ≥ 0 (0 = no decay), got {WeightDecayExponent}");
        if (!Ok(Beta2DecayExponent)) throw new ConfigException($"--beta2-decay must be a number ≥ 0, got {Beta2DecayExponent}");
        if (!(Beta1 >= 0 && Beta1 < 1)) throw new ConfigException($"β1 must be in [0, 1), got {Beta1}");
        return this;
    }
}

/// <summary>
/// Adafactor as PaLM used it, on one rank of a mesh (one device is the 1 × 1 case): global-norm clipping, then the
/// update of every tensor this rank holds (see CpuAdafactor.cs for the maths). The state lives on the device in the
/// model's flat layout (<see cref="PalmModel.Layout"/>): momentum and second moments are one allocation each, every
/// tensor a view, so a step is a few launches whatever the number of tensors:
///
///   norm     SumOfSquaresSegments over the gradient arena              one launch, one read-back of S sums
///   pass 1   AdafactorSums over every segment (v updated, Σu², Σp²)   one launch, one read-back of 2·S sums
///   sums     pieces of a split tensor add their sums over the group that holds them, in rank order (host values)
///   pass 2   AdafactorApply over every segment with the whole tensors' sums              one launch
///
/// A tensor in pieces over several ranks (split on the model axis, sliced on the data axis when fully sharded, or
/// both) thus gets the RMS(u) and RMS(p) of the whole tensor without its values ever meeting on one device; a tensor
/// held whole gets the fused update's bits. Every copy of a tensor sees the same inputs, so replicas stay bit-identical.
/// Factored second moments (an option; PaLM trained unfactored) need whole tensors and run the fused per-tensor kernel.
/// </summary>
public sealed class AdafactorOptimizer : IDisposable
{
    enum Holding { Whole, OverModel, OverData, OverWorld }

    readonly PalmModel _model;
    readonly IBackend _be;
    readonly DeviceBuffer? _momentum, _second;          // arenas in the model's layout (second: unfactored only)
    readonly AdafactorBuffers[] _state;                 // per tensor: views of the arenas, or factored row/column moments
    readonly List<DeviceBuffer> _factoredMoments = [];
    readonly Holding[] _holding;
    readonly Segment[] _segments;                       // every tensor's valid range in the arena
    readonly Segment[] _normSegments;                   // the tensors this rank counts in the global norm
    readonly int[] _normTensors;
    readonly long[] _fullCount;
    readonly bool _factored;

    public AdafactorOptimizer(PalmModel model, AdafactorConfig config)
    {
        _model = model;
        _be = model.Backend;
        Config = config.Validate();
        var rank = model.Rank;
        var specs = model.LocalSchema.Tensors;
        var pieces = model.Pieces;
        var layout = model.Layout;
        int M = rank.ModelSize, n = specs.Count;
        _factored = config.Factored;
        _state = new AdafactorBuffers[n];
        _holding = new Holding[n];
        _fullCount = new long[n];
        _segments = new Segment[n];
        var norm = new List<int>();
        try
        {
            if (config.Beta1 > 0) _momentum = Zeroed("adafactor.m", layout.Length);
            if (!_factored) _second = Zeroed("adafactor.v", layout.Length);
            for (int i = 0; i < n; i++)
            {
                var t = specs[i];
                bool split = t.Axis != ShardAxis.Replicated && M > 1;
                _holding[i] = (split, model.ShardWeights) switch
                {
                    (false, false) => Holding.Whole,
                    (true, false) => Holding.OverModel,
                    (false, true) => Holding.OverData,
                    (true, true) => Holding.OverWorld,
                };
                // The norm counts one copy of every tensor: the pieces of data index 0 (all data slices when fully
                // sharded), and of model index 0 for tensors every model rank holds whole.
                if ((split || rank.ModelRank == 0) && (model.ShardWeights || rank.DataRank == 0)) norm.Add(i);
                _fullCount[i] = t.Count * (split ? M : 1);
                _segments[i] = new Segment(layout.Offsets[i], pieces[i].Valid);
                bool factor = _factored && !t.IsVector && t.Rows > 1 && t.Cols > 1;
                if (_factored && _holding[i] != Holding.Whole)
                    throw new ConfigException($"factored Adafactor is not supported when {t.Name} is split over devices (its row/column moments span pieces); train unfactored (PaLM's setting)");
                _state[i] = new AdafactorBuffers(
                    _momentum is null ? null : layout.View(_momentum, i),
                    _second is not null ? layout.View(_second, i) : factor ? null : Factored("adafactor.v." + t.Name, t.Count),
                    factor ? Factored("adafactor.v_row." + t.Name, t.Rows) : null,
                    factor ? Factored("adafactor.v_col." + t.Name, t.Cols) : null);
            }
        }
        catch
        {
            Dispose();
            throw;
        }
        _normTensors = norm.ToArray();
        _normSegments = norm.Select(i => new Segment(layout.Offsets[i], pieces[i].Length)).ToArray();   // slice padding is zero
    }

    public AdafactorConfig Config { get; }

    /// <summary>Optimizer-state tensors (views) in a fixed order, named for checkpoints.</summary>
    public IEnumerable<DeviceBuffer> StateBuffers => _state.Where(s => s is not null).SelectMany(Kinds).Select(k => k.Buffer).OfType<DeviceBuffer>();

    /// <summary>Bytes of optimizer state this rank holds (the arenas, padding included, and any factored moments).</summary>
    public long StateBytes => (_momentum?.Bytes ?? 0) + (_second?.Bytes ?? 0) + _factoredMoments.Sum(b => b.Bytes);

    /// <summary>
    /// Global L2 norm of the synchronised gradients over the whole mesh: one copy of every tensor, per-tensor sums added
    /// over the ranks in rank order, then over the tensors in order (double). The same value on every rank.
    /// </summary>
    public double GradientNorm()
    {
        var own = new double[_normSegments.Length];
        _be.SumOfSquaresSegments(_model.Gradients, _normSegments, own);
        var sums = new double[_segments.Length];
        for (int k = 0; k < own.Length; k++) sums[_normTensors[k]] = own[k];
        _model.Rank.World.SumHost(sums);
        double total = 0;
        foreach (double s in sums) total += s;
        return Math.Sqrt(total);
    }

    /// <summary>Applies step k (1-based) to every tensor of this rank; returns the learning rate. Every rank of the mesh calls it.</summary>
    public float Step(long k, double gradNorm)
    {
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k), "Adafactor steps are counted from 1");
        var step = Config.StepFor(k, gradNorm);
        var pieces = _model.Pieces;
        var specs = _model.LocalSchema.Tensors;
        int n = _segments.Length;
        if (_factored)
        {
            for (int i = 0; i < n; i++) _be.AdafactorUpdate(pieces[i].Value, pieces[i].Grad, _state[i], specs[i].Rows, specs[i].Cols, step);
            return step.LearningRate;
        }
        var u2 = new double[n];
        var p2 = new double[n];
        _be.AdafactorSums(_model.Values, _model.Gradients, _second!, _segments, step, u2, p2);
        // Each split tensor's sums over the ranks that hold its pieces, in rank order: the same totals on every piece.
        // Every rank has the same tensors of each kind, so all ranks of a group make the same calls.
        var rank = _model.Rank;
        SumOver(Holding.OverModel, rank.ModelGroup, u2, p2);
        SumOver(Holding.OverData, rank.DataGroup, u2, p2);
        SumOver(Holding.OverWorld, rank.World, u2, p2);
        _be.AdafactorApply(_model.Values, _model.Gradients, _momentum, _second!, _segments, u2, p2, _fullCount, step);
        return step.LearningRate;
    }

    void SumOver(Holding kind, Sharding.IGroupCommunicator group, double[] u2, double[] p2)
    {
        if (group.Size == 1 || Array.IndexOf(_holding, kind) < 0) return;
        var both = new double[2 * u2.Length];
        for (int i = 0; i < u2.Length; i++)
            if (_holding[i] == kind) { both[2 * i] = u2[i]; both[2 * i + 1] = p2[i]; }
        group.SumHost(both);
        for (int i = 0; i < u2.Length; i++)
            if (_holding[i] == kind) { u2[i] = both[2 * i]; p2[i] = both[2 * i + 1]; }
    }

    // ---- checkpoints: state pieces named as the single-device optimizer names them --------------------

    static IEnumerable<(string Prefix, DeviceBuffer? Buffer, bool Elementwise)> Kinds(AdafactorBuffers s) =>
    [
        ("adafactor.m.", s.Momentum, true), ("adafactor.v.", s.SecondMoment, true),
        ("adafactor.v_row.", s.RowMoment, false), ("adafactor.v_col.", s.ColMoment, false),
    ];

    /// <summary>Layout of every state tensor: the moments follow their parameter; factored row/column moments are whole.</summary>
    public Dictionary<string, TensorLayout> Layouts()
    {
        var result = new Dictionary<string, TensorLayout>();
        var specs = _model.LocalSchema.Tensors;
        for (int i = 0; i < specs.Count; i++)
            foreach (var (prefix, buffer, elementwise) in Kinds(_state[i]))
                if (buffer is not null)
                    result[prefix + specs[i].Name] = elementwise ? _model.LayoutOf(i) : new TensorLayout("replicated", [buffer.Length]);
        return result;
    }

    /// <summary>Host copies of this rank's optimizer state, padding dropped; <paramref name="flat"/> gives every tensor the shape [count].</summary>
    public List<NamedTensor> ExportState(bool flat = false)
    {
        var list = new List<NamedTensor>();
        var specs = _model.LocalSchema.Tensors;
        for (int i = 0; i < specs.Count; i++)
        {
            var piece = _model.Pieces[i];
            foreach (var (prefix, buffer, elementwise) in Kinds(_state[i]))
            {
                if (buffer is null) continue;
                long valid = elementwise ? piece.Valid : buffer.Length;
                long[] shape = flat || !elementwise ? [valid] : _model.ShardWeights ? [valid] : specs[i].Shape.Select(x => (long)x).ToArray();
                list.Add(new NamedTensor(prefix + specs[i].Name, shape, _be.ToHost(buffer, valid)));
            }
        }
        return list;
    }

    /// <summary>Loads full state tensors (as a single device names them); this rank keeps its pieces.</summary>
    public void LoadState(IReadOnlyDictionary<string, NamedTensor> full, string source)
    {
        var specs = _model.LocalSchema.Tensors;
        for (int i = 0; i < specs.Count; i++)
            foreach (var (prefix, buffer, elementwise) in Kinds(_state[i]))
            {
                if (buffer is null) continue;
                string name = prefix + specs[i].Name;
                var values = CheckpointTensors.Get(full, name, elementwise ? _fullCount[i] : buffer.Length, source);
                _be.Upload(buffer, elementwise ? _model.PieceOf(values, i) : values);
            }
    }

    DeviceBuffer Zeroed(string name, long n)
    {
        var b = _be.Allocate(name, n);
        _be.Fill(b, 0f, n);
        return b;
    }

    DeviceBuffer Factored(string name, long n)
    {
        var b = Zeroed(name, n);
        _factoredMoments.Add(b);
        return b;
    }

    public void Dispose()
    {
        foreach (var s in _state)
        {
            if (s is null) continue;
            if (s.Momentum?.IsView == true) s.Momentum.Dispose();
            if (s.SecondMoment?.IsView == true) s.SecondMoment.Dispose();
        }
        foreach (var b in _factoredMoments) b.Dispose();
        _momentum?.Dispose();
        _second?.Dispose();
    }
}
