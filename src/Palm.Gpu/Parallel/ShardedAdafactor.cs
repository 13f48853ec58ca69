using Palm.Gpu.Backends;
using Palm.Gpu.Model;
using Palm.Gpu.Tensors;
using Palm.Gpu.Training;

namespace Palm.Gpu.Sharding;

/// <summary>
/// Adafactor over a <see cref="ShardedPalm"/>. Replicated tensors and tensors that live whole on one rank
/// use the backend's fused kernel on every rank (same inputs, same bits). Tensors split over the model
/// axis need the per-tensor RMS(u) and RMS(p) of the whole tensor, so their update runs the same maths
/// (CpuAdafactor.cs) on the host per shard with Σu² and Σp² summed over the model ranks in rank order.
/// The global gradient norm counts every shard once and every replicated tensor once.
/// </summary>
public sealed class ShardedAdafactor : IDisposable
{
    readonly ShardedPalm _model;
    readonly List<AdafactorBuffers[]> _state = []; // [parameter][rank]

    public ShardedAdafactor(ShardedPalm model, AdafactorConfig config)
    {
        _model = model;
        Config = config;
        var ranks = model.Ranks;
        int count = ranks[0].Params.All.Count;
        for (int i = 0; i < count; i++)
        {
            var per = new AdafactorBuffers[ranks.Count];
            for (int k = 0; k < ranks.Count; k++)
            {
                var be = ranks[k].Be;
                var p = ranks[k].Params.All[i];
                bool factor = config.Factored && !p.IsVector && p.Rows > 1 && p.Cols > 1;
                if (factor && model.AxisOf(i) != ShardAxis.Replicated && model.Mesh.Model > 1)
                    throw new ConfigException("factored Adafactor is not supported with a model axis > 1 (its row/column moments span shards); train unfactored (PaLM's setting) or use --mesh Dx1");
                per[k] = new AdafactorBuffers(
                    config.Beta1 > 0 ? Zeroed(be, "adafactor.m." + p.Name, p.Count) : null,
                    factor ? null : Zeroed(be, "adafactor.v." + p.Name, p.Count),
                    factor ? Zeroed(be, "adafactor.v_row." + p.Name, p.Rows) : null,
                    factor ? Zeroed(be, "adafactor.v_col." + p.Name, p.Cols) : null);
            }
            _state.Add(per);
        }
    }

    public AdafactorConfig Config { get; }

    /// <summary>Bytes of optimizer state held by one device.</summary>
    public long StateBytesPerDevice => _state.Sum(per => new[] { per[0].Momentum, per[0].SecondMoment, per[0].RowMoment, per[0].ColMoment }.OfType<DeviceBuffer>().Sum(b => b.Bytes));

    /// <summary>Global L2 norm of the (synchronised) gradients: shards of data index 0 in rank order, replicated tensors once.</summary>
    public double GradientNorm()
    {
        var ranks = _model.Ranks;
        int M = _model.Mesh.Model;
        double sum = 0;
        for (int i = 0; i < _state.Count; i++)
        {
            bool split = _model.AxisOf(i) != ShardAxis.Replicated;
            for (int m = 0; m < (split ? M : 1); m++)
            {
                var p = ranks[m].Params.All[i];
                sum += ranks[m].Be.SumOfSquares(p.Grad, p.Count);
            }
        }
        return Math.Sqrt(sum);
    }

    /// <summary>Applies step k (1-based) on every rank; returns the learning rate.</summary>
    public float Step(long k, double gradNorm)
    {
        if (k < 1) throw new ArgumentOutOfRangeException(nameof(k), "Adafactor steps are counted from 1");
        float lr = Config.LearningRate(k);
        float gradScale = double.IsFinite(gradNorm) && gradNorm > Config.GradClipNorm ? (float)(Config.GradClipNorm / gradNorm) : 1f;
        var step = new AdafactorStep(lr, Config.Beta1, Config.Beta2(k), Config.Epsilon1, Config.Epsilon2,
                                     Config.UpdateClip, gradScale, MathF.Pow(lr, Config.WeightDecayExponent));
        var ranks = _model.Ranks;
        int M = _model.Mesh.Model, P = _model.Mesh.Data;
        for (int i = 0; i < _state.Count; i++)
        {
            int idx = i;
            if (_model.AxisOf(i) == ShardAxis.Replicated || M == 1)
                _model.ForRanks(r =>
                {
                    var p = r.Params.All[idx];
                    r.Be.AdafactorUpdate(p.Value, p.Grad, _state[idx][r.DataRank * M + r.ModelRank], p.Rows, p.Cols, step);
                });
            else
                for (int d = 0; d < P; d++) HostUpdate(i, d, step);
        }
        return lr;
    }

    // The fused kernel's maths (unfactored second moment), with the two per-tensor sums taken over all model shards.
    void HostUpdate(int i, int d, in AdafactorStep s)
    {
        var ranks = _model.Ranks;
        int M = _model.Mesh.Model;
        var p = new float[M][]; var g = new float[M][]; var v = new float[M][]; var mo = new float[M][];
        double sumU2 = 0, sumP2 = 0;
        long total = 0;
        float gs = s.GradScale, b2 = s.Beta2, e1 = s.Epsilon1;
        for (int m = 0; m < M; m++)
        {
            var r = ranks[d * M + m];
            var prm = r.Params.All[i];
            var st = _state[i][d * M + m];
            p[m] = Get(r.Be, prm.Value); g[m] = Get(r.Be, prm.Grad); v[m] = Get(r.Be, st.SecondMoment!);
            mo[m] = st.Momentum is null ? [] : Get(r.Be, st.Momentum);
            for (long j = 0; j < p[m].Length; j++)
            {
                float gg = g[m][j] * gs;
                float vv = b2 * v[m][j] + (1 - b2) * (gg * gg + e1);
                v[m][j] = vv;
                float u = gg / MathF.Sqrt(vv);
                sumU2 += (double)u * u;
                sumP2 += (double)p[m][j] * p[m][j];
            }
            total += p[m].Length;
        }
        float rmsU = (float)Math.Sqrt(sumU2 / total);
        float rmsP = (float)Math.Sqrt(sumP2 / total);
        float clip = 1f / Math.Max(1f, rmsU / s.ClipThreshold);
        float stepSize = Math.Max(s.Epsilon2, rmsP) * s.LearningRate;
        float b1 = s.Beta1, wd = s.WeightDecay;
        for (int m = 0; m < M; m++)
        {
            var r = ranks[d * M + m];
            var st = _state[i][d * M + m];
            bool momentum = st.Momentum is not null;
            for (long j = 0; j < p[m].Length; j++)
            {
                float u = g[m][j] * gs / MathF.Sqrt(v[m][j]) * clip;
                float mm = u;
                if (momentum) { mm = b1 * mo[m][j] + (1 - b1) * u; mo[m][j] = mm; }
                float pp = p[m][j];
                p[m][j] = pp - stepSize * mm - wd * pp;
            }
            var prm = r.Params.All[i];
            r.Be.Upload(prm.Value, p[m]);
            r.Be.Upload(st.SecondMoment!, v[m]);
            if (momentum) r.Be.Upload(st.Momentum!, mo[m]);
        }
    }

    static float[] Get(IBackend be, DeviceBuffer b)
    {
        var h = new float[b.Length];
        be.Download(b, h);
        return h;
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
