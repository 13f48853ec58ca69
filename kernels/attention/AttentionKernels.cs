using ILGPU;

namespace Palm.Gpu.Kernels;

// Causal self-attention with multi-query support as ILGPU kernels (the C# twin of attention.cl): G key/value
// heads shared by H query heads (G = 1 multi-query, G = H multi-head); query head h reads kv head h / (H/G);
// scores are q·k/√K. Forward is tiled with an online softmax (flash-attention style): one group owns a query
// tile of BQ time steps × HT heads of one kv group (R = BQ·HT rows, time-major) and walks the causally visible
// key tiles of BK keys in order; the K and V tile it stages in shared memory serves every head of the tile
// (multi-query: one K/V load for HT heads). Per row it keeps a running max m, normaliser l and output
// accumulator in shared memory; tiles past the tile's last query time are never visited and no T×T matrix
// exists anywhere. lse = m + log l is kept for the backward.
// Backward recomputes P_ij = exp(s_ij − lse_i) with Δ_i = Σ_d dout_id·out_id:
//   dV_j = Σ_i P_ij dout_i      dS_ij = P_ij (dout_i·v_j − Δ_i)
//   dQ_i = Σ_j dS_ij k_j / √K   dK_j = Σ_i dS_ij q_i / √K     (i over all heads sharing the kv head)
// Deterministic without atomics: dq is owned per query row (dq pass, key tiles in order) and dk/dv per key row
// (dkdv pass: heads in order, then query tiles from the key tile's diagonal, rows in order). Every element of
// every output has one owning thread, and every sum runs in a fixed order with explicit fused multiply-adds.
// Decode (one query row per sequence against a KV cache) is one group per (b, h): strided scores, a fixed tree
// for the max and Σ exp, and thread d owning output dims d, d + threads, ... summed over rows in order.
//
// Dimensions: B batch, T time, H query heads, G kv heads, K head dim, BQ query times per tile, HT heads per
//             tile (divides H/G), R = BQ·HT rows per tile, BK keys per tile, Tmax cache rows.
//
// Forward:   q (B,T,H,K), k (B,T,G,K), v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T)
// Delta:     dout (B,T,H,K), out (B,T,H,K) -> delta (B,H,T)
// BackwardQ: dout, q, k, v, lse, delta -> dq (B,T,H,K)
// BackwardKV: dout, q, k, v, lse, delta -> dk (B,T,G,K), dv (B,T,G,K)
// Decode:    q (B,H,K), kCache (B,Tmax,G,K), vCache (B,Tmax,G,K), lengths (B), scratch (B,H,Tmax) -> out (B,H,K)
public static class AttentionKernels
{
    /// <summary>
    /// Shapes and tile sizes of one attention launch (passed by value to every kernel). Tiles are chosen on the host
    /// (<see cref="AttentionKnobs.For"/>); kernels read them at run time, so tests shrink them freely.
    /// </summary>
    public struct Shape
    {
        public int B, T, H, G, K;
        /// <summary>BQ query times and HT heads per query tile; BK keys per key tile (forward and dq), per dk/dv tile also BK.</summary>
        public int QueryTimes, HeadsPerTile, KeyTile;
        public float Scale;

        public readonly int HeadsPerKv => H / G;
        public readonly int Rows => QueryTimes * HeadsPerTile;
        public readonly int QueryTiles => (T + QueryTimes - 1) / QueryTimes;
        public readonly int HeadChunks => HeadsPerKv / HeadsPerTile;
        public readonly int KeyTiles => (T + KeyTile - 1) / KeyTile;

        /// <summary>Groups of the forward and dq kernels: B · G · head chunks · query tiles.</summary>
        public readonly int QueryGroups => B * G * HeadChunks * QueryTiles;
        /// <summary>Groups of the dk/dv kernel: B · G · key tiles.</summary>
        public readonly int KeyGroups => B * G * KeyTiles;

        /// <summary>Shared floats of the forward: Q, O (R·K each), K, V tiles (BK·K each), scores (R·BK), m, l, rescale (R each).</summary>
        public readonly int ForwardShared => 2 * Rows * K + 2 * KeyTile * K + Rows * KeyTile + 3 * Rows;
        /// <summary>Shared floats of the dq pass: Q, dO, dQ (R·K), K, V tiles (BK·K), dS (R·BK), lse, Δ (R).</summary>
        public readonly int QueryGradShared => 3 * Rows * K + 2 * KeyTile * K + Rows * KeyTile + 2 * Rows;
        /// <summary>Shared floats of the dk/dv pass: K, V, dK, dV (BK·K), Q, dO (BQ·K), P, dS (BK·BQ), lse, Δ (BQ).</summary>
        public readonly int KeyGradShared => 4 * KeyTile * K + 2 * QueryTimes * K + 2 * KeyTile * QueryTimes + 2 * QueryTimes;

        /// <summary>Group <paramref name="tile"/> of the forward and dq kernels -> its (b, g), first time t0 and first query head h0.</summary>
        public readonly void QueryTile(int tile, out int b, out int g, out int t0, out int h0)
        {
            int qt = tile % QueryTiles; tile /= QueryTiles;
            int hc = tile % HeadChunks; tile /= HeadChunks;
            g = tile % G; b = tile / G;
            t0 = qt * QueryTimes; h0 = g * HeadsPerKv + hc * HeadsPerTile;
        }

        public readonly long QueryRow(int b, int t, int h) => ((long)(b * T + t) * H + h) * K;
        public readonly long KvRow(int b, int t, int g) => ((long)(b * T + t) * G + g) * K;
        public readonly long LseIndex(int b, int h, int t) => (long)(b * H + h) * T + t;
    }

    // ---- forward -------------------------------------------------------------------------------------------

    /// <summary>One group per (b, g, head chunk, query tile); any group size.</summary>
    public static void Forward(ArrayView<float> output, ArrayView<float> lse, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v, Shape s)
    {
        int lid = Group.IdxX, threads = Group.DimX, K = s.K, R = s.Rows, BK = s.KeyTile, HT = s.HeadsPerTile;
        s.QueryTile(Grid.IdxX, out int b, out int g, out int t0, out int h0);

        var shared = SharedMemory.GetDynamic<float>();
        var qs = shared.SubView(0, R * K);
        var acc = shared.SubView(R * K, R * K);
        var ks = shared.SubView(2 * R * K, BK * K);
        var vs = shared.SubView(2 * R * K + BK * K, BK * K);
        var sc = shared.SubView(2 * R * K + 2 * BK * K, R * BK);
        int stats = 2 * R * K + 2 * BK * K + R * BK;
        var m = shared.SubView(stats, R);
        var l = shared.SubView(stats + R, R);
        var rescale = shared.SubView(stats + 2 * R, R);

        for (int e = lid; e < R * K; e += threads)
        {
            int r = e / K, d = e - r * K, i = t0 + r / HT;
            qs[e] = i < s.T ? q[s.QueryRow(b, i, h0 + r % HT) + d] : 0f;
            acc[e] = 0f;
        }
        for (int r = lid; r < R; r += threads) { m[r] = float.NegativeInfinity; l[r] = 0f; }
        Group.Barrier();

        int lastTime = XMin(s.T, t0 + s.QueryTimes) - 1;
        for (int k0 = 0; k0 <= lastTime; k0 += BK)
        {
            LoadKvTile(ks, k, s, b, g, k0, lid, threads);
            LoadKvTile(vs, v, s, b, g, k0, lid, threads);
            Group.Barrier();
            for (int e = lid; e < R * BK; e += threads)
            {
                int r = e / BK, jj = e - r * BK, i = t0 + r / HT, j = k0 + jj;
                sc[e] = j <= i && i < s.T ? Dot(qs, r * K, ks, jj * K, K) * s.Scale : float.NegativeInfinity;
            }
            Group.Barrier();
            for (int r = lid; r < R; r += threads)
            {
                float mOld = m[r], mx = float.NegativeInfinity;
                for (int jj = 0; jj < BK; jj++) mx = XMax(mx, sc[r * BK + jj]);
                float mNew = XMax(mOld, mx);
                if (mNew == float.NegativeInfinity)
                {
                    // A padding row past T: nothing visible yet; keep its zeros.
                    rescale[r] = 1f;
                    for (int jj = 0; jj < BK; jj++) sc[r * BK + jj] = 0f;
                    continue;
                }
                float c = KernelMath.Exp(mOld - mNew);   // 0 on the first tile (m = −∞)
                float sum = 0f;
                for (int jj = 0; jj < BK; jj++)
                {
                    float p = KernelMath.Exp(sc[r * BK + jj] - mNew);
                    sc[r * BK + jj] = p;
                    sum += p;
                }
                l[r] = l[r] * c + sum;
                m[r] = mNew;
                rescale[r] = c;
            }
            Group.Barrier();
            for (int e = lid; e < R * K; e += threads)
            {
                int r = e / K, d = e - r * K;
                float a = acc[e] * rescale[r];
                for (int jj = 0; jj < BK; jj++) a = Fma(sc[r * BK + jj], vs[jj * K + d], a);
                acc[e] = a;
            }
            Group.Barrier();
        }

        for (int e = lid; e < R * K; e += threads)
        {
            int r = e / K, d = e - r * K, i = t0 + r / HT;
            if (i < s.T) output[s.QueryRow(b, i, h0 + r % HT) + d] = acc[e] * (1f / l[r]);
        }
        for (int r = lid; r < R; r += threads)
        {
            int i = t0 + r / HT;
            if (i < s.T) lse[s.LseIndex(b, h0 + r % HT, i)] = m[r] + KernelMath.Log(l[r]);
        }
    }

    // ---- backward ------------------------------------------------------------------------------------------

    /// <summary>Δ (B,H,T) = Σ_d dout·out per query row; one thread per row (any grouping).</summary>
    public static void Delta(ArrayView<float> delta, ArrayView<float> dout, ArrayView<float> output, Shape s)
    {
        long rows = (long)s.B * s.H * s.T;
        for (long n = Grid.GlobalIndex.X; n < rows; n += (long)Grid.DimX * Group.DimX)
        {
            int t = (int)(n % s.T), bh = (int)(n / s.T), h = bh % s.H, b = bh / s.H;
            long o = s.QueryRow(b, t, h);
            float sum = 0f;
            for (int d = 0; d < s.K; d++) sum = Fma(dout[o + d], output[o + d], sum);
            delta[n] = sum;
        }
    }

    /// <summary>dq for one query tile (same groups as the forward): key tiles 0..diagonal in order.</summary>
    public static void BackwardQuery(ArrayView<float> dq, ArrayView<float> dout, ArrayView<float> q, ArrayView<float> k, ArrayView<float> v,
                                     ArrayView<float> lse, ArrayView<float> delta, Shape s)
    {
        int lid = Group.IdxX, threads = Group.DimX, K = s.K, R = s.Rows, BK = s.KeyTile, HT = s.HeadsPerTile;
        s.QueryTile(Grid.IdxX, out int b, out int g, out int t0, out int h0);

        var shared = SharedMemory.GetDynamic<float>();
        var qs = shared.SubView(0, R * K);
        var dos = shared.SubView(R * K, R * K);
        var dqs = shared.SubView(2 * R * K, R * K);
        var ks = shared.SubView(3 * R * K, BK * K);
        var vs = shared.SubView(3 * R * K + BK * K, BK * K);
        var ds = shared.SubView(3 * R * K + 2 * BK * K, R * BK);
        int stats = 3 * R * K + 2 * BK * K + R * BK;
        var lseS = shared.SubView(stats, R);
        var deltaS = shared.SubView(stats + R, R);

        for (int e = lid; e < R * K; e += threads)
        {
            int r = e / K, d = e - r * K, i = t0 + r / HT;
            bool valid = i < s.T;
            long o = valid ? s.QueryRow(b, i, h0 + r % HT) + d : 0;
            qs[e] = valid ? q[o] : 0f;
            dos[e] = valid ? dout[o] : 0f;
            dqs[e] = 0f;
        }
        for (int r = lid; r < R; r += threads)
        {
            int i = t0 + r / HT;
            bool valid = i < s.T;
            long o = valid ? s.LseIndex(b, h0 + r % HT, i) : 0;
            lseS[r] = valid ? lse[o] : 0f;
            deltaS[r] = valid ? delta[o] : 0f;
        }
        Group.Barrier();

        int lastTime = XMin(s.T, t0 + s.QueryTimes) - 1;
        for (int k0 = 0; k0 <= lastTime; k0 += BK)
        {
            LoadKvTile(ks, k, s, b, g, k0, lid, threads);
            LoadKvTile(vs, v, s, b, g, k0, lid, threads);
            Group.Barrier();
            for (int e = lid; e < R * BK; e += threads)
            {
                int r = e / BK, jj = e - r * BK, i = t0 + r / HT, j = k0 + jj;
                float x = 0f;
                if (j <= i && i < s.T)
                {
                    float p = KernelMath.Exp(Dot(qs, r * K, ks, jj * K, K) * s.Scale - lseS[r]);
                    x = p * (Dot(dos, r * K, vs, jj * K, K) - deltaS[r]);
                }
                ds[e] = x;
            }
            Group.Barrier();
            for (int e = lid; e < R * K; e += threads)
            {
                int r = e / K, d = e - r * K;
                float a = dqs[e];
                for (int jj = 0; jj < BK; jj++) a = Fma(ds[r * BK + jj], ks[jj * K + d], a);
                dqs[e] = a;
            }
            Group.Barrier();
        }

        for (int e = lid; e < R * K; e += threads)
        {
            int r = e / K, d = e - r * K, i = t0 + r / HT;
            if (i < s.T) dq[s.QueryRow(b, i, h0 + r % HT) + d] = dqs[e] * s.Scale;
        }
    }

    /// <summary>
    /// dk, dv for one key tile of BK keys of (b, g): the heads of g in order, for each the query tiles of BQ times
    /// from the one holding the tile's first key to T, rows in order.
    /// </summary>
    public static void BackwardKeyValue(ArrayView<float> dk, ArrayView<float> dv, ArrayView<float> dout, ArrayView<float> q, ArrayView<float> k,
                                        ArrayView<float> v, ArrayView<float> lse, ArrayView<float> delta, Shape s)
    {
        int lid = Group.IdxX, threads = Group.DimX, K = s.K, BK = s.KeyTile, BQ = s.QueryTimes;
        int tile = Grid.IdxX;
        int kt = tile % s.KeyTiles; tile /= s.KeyTiles;
        int g = tile % s.G, b = tile / s.G;
        int k0 = kt * BK;

        var shared = SharedMemory.GetDynamic<float>();
        var ks = shared.SubView(0, BK * K);
        var vs = shared.SubView(BK * K, BK * K);
        var dks = shared.SubView(2 * BK * K, BK * K);
        var dvs = shared.SubView(3 * BK * K, BK * K);
        var qs = shared.SubView(4 * BK * K, BQ * K);
        var dos = shared.SubView(4 * BK * K + BQ * K, BQ * K);
        int scores = 4 * BK * K + 2 * BQ * K;
        var ps = shared.SubView(scores, BK * BQ);
        var ds = shared.SubView(scores + BK * BQ, BK * BQ);
        var lseS = shared.SubView(scores + 2 * BK * BQ, BQ);
        var deltaS = shared.SubView(scores + 2 * BK * BQ + BQ, BQ);

        LoadKvTile(ks, k, s, b, g, k0, lid, threads);
        LoadKvTile(vs, v, s, b, g, k0, lid, threads);
        for (int e = lid; e < BK * K; e += threads) { dks[e] = 0f; dvs[e] = 0f; }

        for (int hh = 0; hh < s.HeadsPerKv; hh++)
        {
            int h = g * s.HeadsPerKv + hh;
            for (int i0 = k0 - k0 % BQ; i0 < s.T; i0 += BQ)   // queries before the tile's first key see none of it
            {
                Group.Barrier();   // the previous tile's products are done with qs, dos
                for (int e = lid; e < BQ * K; e += threads)
                {
                    int ii = e / K, d = e - ii * K, i = i0 + ii;
                    bool valid = i < s.T;
                    long o = valid ? s.QueryRow(b, i, h) + d : 0;
                    qs[e] = valid ? q[o] : 0f;
                    dos[e] = valid ? dout[o] : 0f;
                }
                for (int ii = lid; ii < BQ; ii += threads)
                {
                    int i = i0 + ii;
                    bool valid = i < s.T;
                    long o = valid ? s.LseIndex(b, h, i) : 0;
                    lseS[ii] = valid ? lse[o] : 0f;
                    deltaS[ii] = valid ? delta[o] : 0f;
                }
                Group.Barrier();
                for (int e = lid; e < BK * BQ; e += threads)
                {
                    int jj = e / BQ, ii = e - jj * BQ, j = k0 + jj, i = i0 + ii;
                    float p = 0f, x = 0f;
                    if (j < s.T && i < s.T && i >= j)
                    {
                        p = KernelMath.Exp(Dot(ks, jj * K, qs, ii * K, K) * s.Scale - lseS[ii]);
                        x = p * (Dot(vs, jj * K, dos, ii * K, K) - deltaS[ii]);
                    }
                    ps[e] = p;
                    ds[e] = x;
                }
                Group.Barrier();
                for (int e = lid; e < BK * K; e += threads)
                {
                    int jj = e / K, d = e - jj * K;
                    float av = dvs[e], ak = dks[e];
                    for (int ii = 0; ii < BQ; ii++)
                    {
                        av = Fma(ps[jj * BQ + ii], dos[ii * K + d], av);
                        ak = Fma(ds[jj * BQ + ii], qs[ii * K + d], ak);
                    }
                    dvs[e] = av;
                    dks[e] = ak;
                }
            }
        }
        Group.Barrier();
        for (int e = lid; e < BK * K; e += threads)
        {
            int jj = e / K, d = e - jj * K, j = k0 + jj;
            if (j < s.T)
            {
                long o = s.KvRow(b, j, g) + d;
                dk[o] = dks[e] * s.Scale;
                dv[o] = dvs[e];
            }
        }
    }

    // ---- decode --------------------------------------------------------------------------------------------

    /// <summary>
    /// One group per (b, h), a power-of-two group size; dynamic shared memory of one float per thread. Lengths are
    /// clamped to [1, Tmax] (the host validates them).
    /// </summary>
    public static void Decode(ArrayView<float> output, ArrayView<float> scores, ArrayView<float> q, ArrayView<float> kCache, ArrayView<float> vCache,
                              ArrayView<int> lengths, int tMax, int heads, int kvHeads, int headDim, float scale)
    {
        int lid = Group.IdxX, threads = Group.DimX, bh = Grid.IdxX;
        int b = bh / heads, h = bh - b * heads, g = h / (heads / kvHeads);
        int len = XMax(1, XMin(lengths[b], tMax));
        var red = SharedMemory.GetDynamic<float>();
        long qo = (long)bh * headDim, so = (long)bh * tMax;

        float m = float.NegativeInfinity;
        for (int j = lid; j < len; j += threads)
        {
            long ko = (((long)b * tMax + j) * kvHeads + g) * headDim;
            float dot = 0f;
            for (int d = 0; d < headDim; d++) dot = Fma(q[qo + d], kCache[ko + d], dot);
            dot *= scale;
            scores[so + j] = dot;
            m = XMax(m, dot);
        }
        red[lid] = m;
        Group.Barrier();
        for (int w = threads / 2; w > 0; w /= 2)
        {
            if (lid < w) red[lid] = XMax(red[lid], red[lid + w]);
            Group.Barrier();
        }
        m = red[0];
        Group.Barrier();
        float l = 0f;
        for (int j = lid; j < len; j += threads)
        {
            float p = KernelMath.Exp(scores[so + j] - m);
            scores[so + j] = p;
            l += p;
        }
        red[lid] = l;
        Group.Barrier();   // also orders this thread's score writes before every thread reads them below
        for (int w = threads / 2; w > 0; w /= 2)
        {
            if (lid < w) red[lid] += red[lid + w];
            Group.Barrier();
        }
        float inv = 1f / red[0];
        for (int d = lid; d < headDim; d += threads)
        {
            float a = 0f;
            for (int j = 0; j < len; j++) a = Fma(scores[so + j], vCache[(((long)b * tMax + j) * kvHeads + g) * headDim + d], a);
            output[qo + d] = a * inv;
        }
    }

    // ---- helpers -------------------------------------------------------------------------------------------

    /// <summary>Rows k0 .. k0+BK−1 of kv head g of x (B,T,G,K) into the tile, zero past T.</summary>
    static void LoadKvTile(ArrayView<float> tile, ArrayView<float> x, in Shape s, int b, int g, int k0, int lid, int threads)
    {
        int n = s.KeyTile * s.K;
        for (int e = lid; e < n; e += threads)
        {
            int jj = e / s.K, d = e - jj * s.K, j = k0 + jj;
            tile[e] = j < s.T ? x[s.KvRow(b, j, g) + d] : 0f;
        }
    }

    /// <summary>Σ_d a[ao + d]·b[bo + d], d in order, one fused multiply-add per term.</summary>
    static float Dot(ArrayView<float> a, int ao, ArrayView<float> b, int bo, int n)
    {
        float sum = 0f;
        for (int d = 0; d < n; d++) sum = Fma(a[ao + d], b[bo + d], sum);
        return sum;
    }

    static float Fma(float a, float b, float c) => KernelMath.Fma(a, b, c);
    static int XMin(int a, int b) => a < b ? a : b;
    static int XMax(int a, int b) => a > b ? a : b;
    static float XMax(float a, float b) => a > b ? a : b;
}
