using System.Runtime.Intrinsics;

namespace Palm.Gpu.Backends.Cpu;

// Causal self-attention, FlashAttention-style: tiled over query blocks and key tiles with an online softmax,
// so the T×T score matrix never exists; a worker holds one (rows × 64) score tile at a time.
// B batch, T time, H query heads, G kv heads (G = 1 multi-query, G = H multi-head), K head dim.
// forward:  q (B,T,H,K), k (B,T,G,K), v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T)
// backward: dout (B,T,H,K), q, k, v, out, lse -> dq (B,T,H,K), dk (B,T,G,K), dv (B,T,G,K), all overwritten
//
//   S = q·kᵀ/√K, causal (query t sees keys 0..t); query head h reads kv head h / (H/G)
//   P = softmax(S) = exp(S − lse),  out = P·v,  lse = log Σ_j exp(S_j) per query row
//   dv = Pᵀ·dout,  dP = dout·vᵀ,  dS = P ⊙ (dP − D) with D = rowsum(dout ⊙ out),  dq = dS·k/√K,  dk = dSᵀ·q/√K
//
// A "row" is one (time, query head) pair of a kv group. Rows of a query block are time-major, so the H/G heads
// that share a kv head are processed against every K/V tile in one go (all H heads at once for multi-query).
// Work items:
//   forward          (b, g, query block): key tiles 0..diagonal in order, online softmax; writes out and lse
//   backward, fused  (b, g):              query blocks in order, key tiles in order; dk, dv for all keys in scratch
//   or, when B·G items would leave threads idle, two passes:
//   backward pass 1  (b, g, key tile):    every later query block in order; writes dk and dv for the tile
//   backward pass 2  (b, g, query block): recomputes P and dS per key tile; writes dq
// Each output element is written by exactly one item and summed in a fixed order; the fused and two-pass schemes
// add the same terms in the same order. Same bits for any thread count and vector width (CpuSimd), no atomics.
//
// Tiles live in per-thread scratch. Query-side rows are packed (rows × Kp), Kp = K rounded up to 16 and
// zero-padded, queries pre-scaled by 1/√K. Keys for the score kernel are packed transposed (K × 64): the kernel
// broadcasts one query element and multiplies it into 64 keys at once, so no horizontal sums are needed.
// Keys/values for the accumulate kernel are packed as rows (64 × Kp).
internal static unsafe class CpuAttention
{
    /// <summary>Keys per tile; the score kernels produce exactly this many columns (4 × 16 lanes).</summary>
    const int KeyTile = 64;
    /// <summary>Target query rows (time steps × heads of one kv group) per work item.</summary>
    const int RowsPerBlock = 128;

    /// <summary>The vector path the public entry points take: CpuSimd.Bits (512, 256 or 0). Every path gives the same bits.</summary>
    internal static int BestVectorBits => CpuSimd.Bits;

    [ThreadStatic] static float[]? t_scratch;

    public static void Forward(int threads, CpuView<float> output, CpuView<float> lse, CpuView<float> q, CpuView<float> k, CpuView<float> v,
                               int b, int t, int heads, int kvHeads, int headDim)
        => Forward(threads, output, lse, q, k, v, b, t, heads, kvHeads, headDim, BestVectorBits);

    public static void Backward(int threads, CpuView<float> dq, CpuView<float> dk, CpuView<float> dv, CpuView<float> dout, CpuView<float> q, CpuView<float> k, CpuView<float> v,
                                CpuView<float> output, CpuView<float> lse, int b, int t, int heads, int kvHeads, int headDim)
        => Backward(threads, dq, dk, dv, dout, q, k, v, output, lse, b, t, heads, kvHeads, headDim, BestVectorBits);

    /// <summary>Forward with an explicit vector path (512, 256 or 0), so every path can be tested on one machine.</summary>
    internal static void Forward(int threads, CpuView<float> output, CpuView<float> lse, CpuView<float> q, CpuView<float> k, CpuView<float> v,
                                 int b, int t, int heads, int kvHeads, int headDim, int vectorBits)
    {
        var s = new Shape(b, t, heads, kvHeads, headDim);
        s.CheckQuery(q, "q"); s.CheckQuery(output, "out"); s.CheckKv(k, "k"); s.CheckKv(v, "v"); s.CheckLse(lse, "lse");
        if (b == 0 || t == 0) return;
        CpuParallel.For(threads, b * kvHeads * s.QueryBlocks, item =>
        {
            int block = item % s.QueryBlocks, bg = item / s.QueryBlocks;
            fixed (float* po = output, pl = lse, pq = q, pk = k, pv = v, work = Scratch(s))
                ForwardBlock(s, vectorBits, po, pl, pq, pk, pv, bg / s.G, bg % s.G, block, work);
        });
    }

    /// <summary>Backward with an explicit vector path (512, 256 or 0).</summary>
    internal static void Backward(int threads, CpuView<float> dq, CpuView<float> dk, CpuView<float> dv, CpuView<float> dout, CpuView<float> q, CpuView<float> k, CpuView<float> v,
                                  CpuView<float> output, CpuView<float> lse, int b, int t, int heads, int kvHeads, int headDim, int vectorBits)
    {
        var s = new Shape(b, t, heads, kvHeads, headDim);
        s.CheckQuery(dq, "dq"); s.CheckQuery(dout, "dout"); s.CheckQuery(q, "q"); s.CheckQuery(output, "out");
        s.CheckKv(dk, "dk"); s.CheckKv(dv, "dv"); s.CheckKv(k, "k"); s.CheckKv(v, "v"); s.CheckLse(lse, "lse");
        if (b == 0 || t == 0) return;

        // D = rowsum(dout ⊙ out) per query row, (B,H,T); every key tile needs it, so it is computed once.
        var rowDot = new float[b * heads * t];
        CpuParallel.ForChunks(threads, (long)b * t, 64, (start, end) =>
        {
            fixed (float* pdo = dout, po = output, pd = rowDot)
                for (long bt = start; bt < end; bt++)
                {
                    int bi = (int)(bt / s.T), tt = (int)(bt % s.T);
                    for (int h = 0; h < s.H; h++)
                        pd[s.LseIndex(bi, h, tt)] = Dot(vectorBits, pdo + s.QueryRow(bi, tt, h), po + s.QueryRow(bi, tt, h), s.K);
                }
        });

        // One item per (b, g) does 5 tile products per (query block, key tile) instead of the 7 of the two passes
        // (which recompute S and dP for dq), but offers only B·G items. It adds in the same order as the two
        // passes, so both give the same bits and the choice may follow the thread count.
        int pairs = b * kvHeads, p = Math.Max(1, threads);
        if ((double)pairs / (p * ((pairs + p - 1) / p)) >= 0.75)
        {
            CpuParallel.For(threads, pairs, bg =>
            {
                fixed (float* pdq = dq, pdk = dk, pdv = dv, pdo = dout, pq = q, pk = k, pv = v, pl = lse, pd = rowDot,
                       work = Scratch(s, 2 * s.KeyTiles * KeyTile * s.Kp))
                    BackwardPair(s, vectorBits, pdq, pdk, pdv, pdo, pq, pk, pv, pl, pd, bg / s.G, bg % s.G, work);
            });
            return;
        }

        CpuParallel.For(threads, pairs * s.KeyTiles, item =>
        {
            int tile = item % s.KeyTiles, bg = item / s.KeyTiles;
            fixed (float* pdk = dk, pdv = dv, pdo = dout, pq = q, pk = k, pv = v, pl = lse, pd = rowDot, work = Scratch(s))
                KeyValueGradTile(s, vectorBits, pdk, pdv, pdo, pq, pk, pv, pl, pd, bg / s.G, bg % s.G, tile, work);
        });

        CpuParallel.For(threads, pairs * s.QueryBlocks, item =>
        {
            int block = item % s.QueryBlocks, bg = item / s.QueryBlocks;
            fixed (float* pdq = dq, pdo = dout, pq = q, pk = k, pv = v, pl = lse, pd = rowDot, work = Scratch(s))
                QueryGradBlock(s, vectorBits, pdq, pdo, pq, pk, pv, pl, pd, bg / s.G, bg % s.G, block, work);
        });
    }

    // ---- work items ---------------------------------------------------------------------------------------

    /// <summary>out and lse for the rows of one query block of kv group g.</summary>
    static void ForwardBlock(in Shape s, int vb, float* output, float* lse, float* q, float* k, float* v,
                             int bi, int g, int block, float* work)
    {
        int t0 = block * s.BlockTime, t1 = Math.Min(s.T, t0 + s.BlockTime);
        int rows = (t1 - t0) * s.HeadsPerGroup, rows4 = RoundUp(rows, 4), kp = s.Kp;
        var scratch = new Carver(work);
        float* qs = scratch.Take(rows4 * kp), acc = scratch.Take(rows4 * kp), scores = scratch.Take(rows4 * KeyTile);
        float* kt = scratch.Take(s.K * KeyTile), vr = scratch.Take(KeyTile * kp);
        float* rowMax = scratch.Take(rows4), rowSum = scratch.Take(rows4), rescale = scratch.Take(rows4);

        PackRows(qs, q, s, bi, g, t0, t1, rows4, s.Scale);
        new Span<float>(acc, rows4 * kp).Clear();
        new Span<float>(rowMax, rows4).Fill(float.NegativeInfinity);
        new Span<float>(rowSum, rows4).Clear();

        for (int j0 = 0; j0 < t1; j0 += KeyTile)
        {
            int keys = Math.Min(KeyTile, s.T - j0);
            PackTransposed(kt, k, s, bi, g, j0, keys);
            PackKvRows(vr, v, s, bi, g, j0, keys);
            int r0 = FirstRow(s, t0, j0);
            Scores(vb, qs, kp, kt, scores, r0, rows4, s.K);
            for (int r = r0; r < rows4; r++)
            {
                float* sr = scores + r * KeyTile;
                int visible = Visible(s, r, rows, t0, j0, keys);
                if (visible == 0) { new Span<float>(sr, KeyTile).Clear(); rescale[r] = 1; continue; }
                MaskTail(sr, visible);
                // Online softmax: rescale what was accumulated under the old maximum.
                float newMax = MathF.Max(rowMax[r], RowMax(vb, sr));
                float c = MathF.Exp(rowMax[r] - newMax);
                rowSum[r] = rowSum[r] * c + ExpRow(vb, sr, newMax);
                rowMax[r] = newMax;
                rescale[r] = c;
            }
            Accumulate(vb, acc, kp, scores, KeyTile, 1, vr, kp, r0, rows4, 0, Math.Min(keys, t1 - j0), rescale);
        }

        int row = 0;
        for (int tt = t0; tt < t1; tt++)
            for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++)
            {
                int h = g * s.HeadsPerGroup + hh;
                float inv = 1f / rowSum[row];
                float* dst = output + s.QueryRow(bi, tt, h), src = acc + row * kp;
                for (int d = 0; d < s.K; d++) dst[d] = src[d] * inv;
                lse[s.LseIndex(bi, h, tt)] = rowMax[row] + MathF.Log(rowSum[row]);
            }
    }

    /// <summary>dk and dv for one key tile of kv group g: all query heads of the group, query blocks in order.</summary>
    static void KeyValueGradTile(in Shape s, int vb, float* dk, float* dv, float* dout, float* q, float* k, float* v,
                                 float* lse, float* rowDot, int bi, int g, int tile, float* work)
    {
        int j0 = tile * KeyTile, keys = Math.Min(KeyTile, s.T - j0), keys4 = RoundUp(keys, 4), kp = s.Kp, rowsMax = s.RowsMax;
        var scratch = new Carver(work);
        float* qs = scratch.Take(rowsMax * kp), dos = scratch.Take(rowsMax * kp);
        float* probs = scratch.Take(rowsMax * KeyTile), dscores = scratch.Take(rowsMax * KeyTile);
        float* kt = scratch.Take(s.K * KeyTile), vt = scratch.Take(s.K * KeyTile);
        float* dkAcc = scratch.Take(KeyTile * kp), dvAcc = scratch.Take(KeyTile * kp);
        float* rowLse = scratch.Take(rowsMax), rowD = scratch.Take(rowsMax);

        PackTransposed(kt, k, s, bi, g, j0, keys);
        PackTransposed(vt, v, s, bi, g, j0, keys);
        new Span<float>(dkAcc, KeyTile * kp).Clear();
        new Span<float>(dvAcc, KeyTile * kp).Clear();

        for (int block = j0 / s.BlockTime; block < s.QueryBlocks; block++)
        {
            int t0 = block * s.BlockTime, t1 = Math.Min(s.T, t0 + s.BlockTime);
            int rows = (t1 - t0) * s.HeadsPerGroup, rows4 = RoundUp(rows, 4);
            PackRows(qs, q, s, bi, g, t0, t1, rows4, s.Scale);
            PackRows(dos, dout, s, bi, g, t0, t1, rows4, 1f);
            GatherRowStats(rowLse, rowD, lse, rowDot, s, bi, g, t0, t1);
            int r0 = FirstRow(s, t0, j0);
            Scores(vb, qs, kp, kt, probs, r0, rows4, s.K);
            Scores(vb, dos, kp, vt, dscores, r0, rows4, s.K);
            ProbabilityRows(vb, s, probs, dscores, rowLse, rowD, r0, rows4, rows, t0, j0, keys);
            // dv[j] += Σ_r P[r][j]·dout[r];  dk[j] += Σ_r dS[r][j]·q[r]/√K  (P and dS read transposed)
            Accumulate(vb, dvAcc, kp, probs, 1, KeyTile, dos, kp, 0, keys4, r0, rows4, null);
            Accumulate(vb, dkAcc, kp, dscores, 1, KeyTile, qs, kp, 0, keys4, r0, rows4, null);
        }

        for (int j = 0; j < keys; j++)
        {
            long o = s.KvRow(bi, j0 + j, g);
            new Span<float>(dkAcc + j * kp, s.K).CopyTo(new Span<float>(dk + o, s.K));
            new Span<float>(dvAcc + j * kp, s.K).CopyTo(new Span<float>(dv + o, s.K));
        }
    }

    /// <summary>dq for the rows of one query block of kv group g.</summary>
    static void QueryGradBlock(in Shape s, int vb, float* dq, float* dout, float* q, float* k, float* v,
                               float* lse, float* rowDot, int bi, int g, int block, float* work)
    {
        int t0 = block * s.BlockTime, t1 = Math.Min(s.T, t0 + s.BlockTime);
        int rows = (t1 - t0) * s.HeadsPerGroup, rows4 = RoundUp(rows, 4), kp = s.Kp;
        var scratch = new Carver(work);
        float* qs = scratch.Take(rows4 * kp), dos = scratch.Take(rows4 * kp), dqAcc = scratch.Take(rows4 * kp);
        float* probs = scratch.Take(rows4 * KeyTile), dscores = scratch.Take(rows4 * KeyTile);
        float* kt = scratch.Take(s.K * KeyTile), vt = scratch.Take(s.K * KeyTile), kr = scratch.Take(KeyTile * kp);
        float* rowLse = scratch.Take(rows4), rowD = scratch.Take(rows4);

        PackRows(qs, q, s, bi, g, t0, t1, rows4, s.Scale);
        PackRows(dos, dout, s, bi, g, t0, t1, rows4, 1f);
        GatherRowStats(rowLse, rowD, lse, rowDot, s, bi, g, t0, t1);
        new Span<float>(dqAcc, rows4 * kp).Clear();

        for (int j0 = 0; j0 < t1; j0 += KeyTile)
        {
            int keys = Math.Min(KeyTile, s.T - j0);
            PackTransposed(kt, k, s, bi, g, j0, keys);
            PackTransposed(vt, v, s, bi, g, j0, keys);
            PackKvRows(kr, k, s, bi, g, j0, keys);
            int r0 = FirstRow(s, t0, j0);
            Scores(vb, qs, kp, kt, probs, r0, rows4, s.K);
            Scores(vb, dos, kp, vt, dscores, r0, rows4, s.K);
            ProbabilityRows(vb, s, probs, dscores, rowLse, rowD, r0, rows4, rows, t0, j0, keys);
            Accumulate(vb, dqAcc, kp, dscores, KeyTile, 1, kr, kp, r0, rows4, 0, Math.Min(keys, t1 - j0), null);
        }

        int row = 0;
        for (int tt = t0; tt < t1; tt++)
            for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++)
            {
                float* dst = dq + s.QueryRow(bi, tt, g * s.HeadsPerGroup + hh), src = dqAcc + row * kp;
                for (int d = 0; d < s.K; d++) dst[d] = src[d] * s.Scale;
            }
    }

    /// <summary>
    /// dq, dk and dv for all rows and keys of (b, g) in one sweep: query blocks in order, key tiles in order within
    /// each, with dk and dv for the whole sequence held in scratch. Same sums, same order as the two passes.
    /// </summary>
    static void BackwardPair(in Shape s, int vb, float* dq, float* dk, float* dv, float* dout, float* q, float* k, float* v,
                             float* lse, float* rowDot, int bi, int g, float* work)
    {
        int kp = s.Kp, rowsMax = s.RowsMax;
        var scratch = new Carver(work);
        float* qs = scratch.Take(rowsMax * kp), dos = scratch.Take(rowsMax * kp), dqAcc = scratch.Take(rowsMax * kp);
        float* probs = scratch.Take(rowsMax * KeyTile), dscores = scratch.Take(rowsMax * KeyTile);
        float* kt = scratch.Take(s.K * KeyTile), vt = scratch.Take(s.K * KeyTile), kr = scratch.Take(KeyTile * kp);
        float* rowLse = scratch.Take(rowsMax), rowD = scratch.Take(rowsMax);
        float* dkAll = scratch.Take(s.KeyTiles * KeyTile * kp), dvAll = scratch.Take(s.KeyTiles * KeyTile * kp);
        new Span<float>(dkAll, s.KeyTiles * KeyTile * kp).Clear();
        new Span<float>(dvAll, s.KeyTiles * KeyTile * kp).Clear();

        for (int block = 0; block < s.QueryBlocks; block++)
        {
            int t0 = block * s.BlockTime, t1 = Math.Min(s.T, t0 + s.BlockTime);
            int rows = (t1 - t0) * s.HeadsPerGroup, rows4 = RoundUp(rows, 4);
            PackRows(qs, q, s, bi, g, t0, t1, rows4, s.Scale);
            PackRows(dos, dout, s, bi, g, t0, t1, rows4, 1f);
            GatherRowStats(rowLse, rowD, lse, rowDot, s, bi, g, t0, t1);
            new Span<float>(dqAcc, rows4 * kp).Clear();

            for (int j0 = 0; j0 < t1; j0 += KeyTile)
            {
                int keys = Math.Min(KeyTile, s.T - j0), keys4 = RoundUp(keys, 4);
                PackTransposed(kt, k, s, bi, g, j0, keys);
                PackTransposed(vt, v, s, bi, g, j0, keys);
                PackKvRows(kr, k, s, bi, g, j0, keys);
                int r0 = FirstRow(s, t0, j0);
                Scores(vb, qs, kp, kt, probs, r0, rows4, s.K);
                Scores(vb, dos, kp, vt, dscores, r0, rows4, s.K);
                ProbabilityRows(vb, s, probs, dscores, rowLse, rowD, r0, rows4, rows, t0, j0, keys);
                Accumulate(vb, dvAll + j0 * kp, kp, probs, 1, KeyTile, dos, kp, 0, keys4, r0, rows4, null);
                Accumulate(vb, dkAll + j0 * kp, kp, dscores, 1, KeyTile, qs, kp, 0, keys4, r0, rows4, null);
                Accumulate(vb, dqAcc, kp, dscores, KeyTile, 1, kr, kp, r0, rows4, 0, Math.Min(keys, t1 - j0), null);
            }

            int row = 0;
            for (int tt = t0; tt < t1; tt++)
                for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++)
                {
                    float* dst = dq + s.QueryRow(bi, tt, g * s.HeadsPerGroup + hh), src = dqAcc + row * kp;
                    for (int d = 0; d < s.K; d++) dst[d] = src[d] * s.Scale;
                }
        }

        for (int j = 0; j < s.T; j++)
        {
            long o = s.KvRow(bi, j, g);
            new Span<float>(dkAll + j * kp, s.K).CopyTo(new Span<float>(dk + o, s.K));
            new Span<float>(dvAll + j * kp, s.K).CopyTo(new Span<float>(dv + o, s.K));
        }
    }

    // ---- shape, scratch, packing ---------------------------------------------------------------------------

    readonly struct Shape
    {
        public readonly int B, T, H, G, K;
        public readonly int HeadsPerGroup;   // H/G query heads per kv head
        public readonly int Kp;              // K rounded up to 16: packed row stride
        public readonly int BlockTime;       // time steps per query block (rows = BlockTime·H/G)
        public readonly int QueryBlocks, KeyTiles, RowsMax;
        public readonly float Scale;         // 1/√K

        public Shape(int b, int t, int h, int g, int k)
        {
            if (b < 0 || t < 0 || h <= 0 || g <= 0 || k <= 0) throw new ArgumentException($"attention: bad shape B={b} T={t} H={h} G={g} K={k}");
            if (h % g != 0) throw new ArgumentException($"attention: query heads {h} not a multiple of kv heads {g}");
            B = b; T = t; H = h; G = g; K = k;
            HeadsPerGroup = h / g;
            Kp = RoundUp(k, 16);
            BlockTime = Math.Max(1, RowsPerBlock / HeadsPerGroup);
            QueryBlocks = (t + BlockTime - 1) / BlockTime;
            KeyTiles = (t + KeyTile - 1) / KeyTile;
            RowsMax = RoundUp(Math.Min(BlockTime, Math.Max(t, 1)) * HeadsPerGroup, 4);
            Scale = (float)(1.0 / Math.Sqrt(k));
        }

        public long QueryRow(int bi, int t, int h) => ((long)(bi * T + t) * H + h) * K;
        public long KvRow(int bi, int t, int g) => ((long)(bi * T + t) * G + g) * K;
        public int LseIndex(int bi, int h, int t) => (bi * H + h) * T + t;

        public void CheckQuery(CpuView<float> a, string name) => Check(a, (long)B * T * H * K, name);
        public void CheckKv(CpuView<float> a, string name) => Check(a, (long)B * T * G * K, name);
        public void CheckLse(CpuView<float> a, string name) => Check(a, (long)B * H * T, name);

        static void Check(CpuView<float> a, long need, string name)
        {
            if (a.Length < need) throw new ArgumentException($"attention: {name} has {a.Length} floats, needs {need}");
        }

        /// <summary>Floats of scratch that any of the three work items carves out.</summary>
        public int ScratchFloats =>
            3 * RoundUp(RowsMax * Kp, 16) + 2 * RoundUp(RowsMax * KeyTile, 16) + 2 * K * KeyTile
            + 3 * KeyTile * Kp + 3 * RoundUp(RowsMax, 16);
    }

    static float[] Scratch(in Shape s, int extra = 0)
    {
        int need = s.ScratchFloats + extra;
        var a = t_scratch;
        if (a is null || a.Length < need) t_scratch = a = new float[need];
        return a;
    }

    /// <summary>Hands out consecutive 64-byte multiples of a scratch buffer.</summary>
    struct Carver(float* start)
    {
        float* next = start;
        public float* Take(int floats) { float* p = next; next += RoundUp(floats, 16); return p; }
    }

    static int RoundUp(int x, int m) => (x + m - 1) / m * m;

    /// <summary>First row (rounded down to a group of 4) that sees any key ≥ j0; earlier rows are earlier in time.</summary>
    static int FirstRow(in Shape s, int t0, int j0) => (Math.Max(0, j0 - t0) * s.HeadsPerGroup) & ~3;

    /// <summary>How many keys of the tile at j0 row r may attend to (0 for padding rows).</summary>
    static int Visible(in Shape s, int r, int rows, int t0, int j0, int keys)
        => r >= rows ? 0 : Math.Clamp(t0 + r / s.HeadsPerGroup - j0 + 1, 0, keys);

    /// <summary>rows × Kp rows of src (q or dout) for times [t0, t1) and the heads of group g, scaled, zero-padded.</summary>
    static void PackRows(float* dst, float* src, in Shape s, int bi, int g, int t0, int t1, int rows4, float scale)
    {
        int kp = s.Kp, row = 0;
        for (int tt = t0; tt < t1; tt++)
        {
            float* from = src + s.QueryRow(bi, tt, g * s.HeadsPerGroup);   // the group's heads are adjacent
            for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++, from += s.K)
            {
                float* to = dst + row * kp;
                for (int d = 0; d < s.K; d++) to[d] = from[d] * scale;
                for (int d = s.K; d < kp; d++) to[d] = 0;
            }
        }
        new Span<float>(dst + row * kp, (rows4 - row) * kp).Clear();
    }

    /// <summary>K × 64 transposed key (or value) tile: dst[d·64 + j] = src[j0 + j][d], zero past the last key.</summary>
    static void PackTransposed(float* dst, float* src, in Shape s, int bi, int g, int j0, int keys)
    {
        for (int j = 0; j < keys; j++)
        {
            float* from = src + s.KvRow(bi, j0 + j, g);
            for (int d = 0; d < s.K; d++) dst[d * KeyTile + j] = from[d];
        }
        if (keys < KeyTile)
            for (int d = 0; d < s.K; d++) new Span<float>(dst + d * KeyTile + keys, KeyTile - keys).Clear();
    }

    /// <summary>64 × Kp key (or value) rows, zero-padded in both directions.</summary>
    static void PackKvRows(float* dst, float* src, in Shape s, int bi, int g, int j0, int keys)
    {
        int kp = s.Kp;
        for (int j = 0; j < keys; j++)
        {
            float* from = src + s.KvRow(bi, j0 + j, g), to = dst + j * kp;
            new Span<float>(from, s.K).CopyTo(new Span<float>(to, s.K));
            for (int d = s.K; d < kp; d++) to[d] = 0;
        }
        new Span<float>(dst + keys * kp, (KeyTile - keys) * kp).Clear();
    }

    static void GatherRowStats(float* rowLse, float* rowD, float* lse, float* rowDot, in Shape s, int bi, int g, int t0, int t1)
    {
        int row = 0;
        for (int tt = t0; tt < t1; tt++)
            for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++)
            {
                int i = s.LseIndex(bi, g * s.HeadsPerGroup + hh, tt);
                rowLse[row] = lse[i];
                rowD[row] = rowDot[i];
            }
    }

    // ---- row operations on one 64-wide score row ------------------------------------------------------------

    static void MaskTail(float* row, int visible)
    {
        for (int j = visible; j < KeyTile; j++) row[j] = float.NegativeInfinity;
    }

    static float RowMax(int vb, float* row)
    {
        if (vb >= 512)
        {
            var m = Vector512.Max(Vector512.Max(Vector512.Load(row), Vector512.Load(row + 16)),
                                  Vector512.Max(Vector512.Load(row + 32), Vector512.Load(row + 48)));
            return HorizontalMax(Vector256.Max(m.GetLower(), m.GetUpper()));
        }
        if (vb >= 256)
        {
            var m = Vector256.Max(Vector256.Max(Vector256.Load(row), Vector256.Load(row + 8)),
                                  Vector256.Max(Vector256.Load(row + 16), Vector256.Load(row + 24)));
            m = Vector256.Max(m, Vector256.Max(Vector256.Max(Vector256.Load(row + 32), Vector256.Load(row + 40)),
                                               Vector256.Max(Vector256.Load(row + 48), Vector256.Load(row + 56))));
            return HorizontalMax(m);
        }
        float x = row[0];
        for (int j = 1; j < KeyTile; j++) x = MathF.Max(x, row[j]);
        return x;
    }

    static float HorizontalMax(Vector256<float> v)
    {
        var m = Vector128.Max(v.GetLower(), v.GetUpper());
        return MathF.Max(MathF.Max(m[0], m[1]), MathF.Max(m[2], m[3]));
    }

    /// <summary>
    /// row = exp(row − max) in place (masked −∞ entries become 0); returns the row sum, on CpuSimd's 16 lanes:
    /// the four 16-blocks added as (b0 + b1) + (b2 + b3), then folded, at every width.
    /// </summary>
    static float ExpRow(int vb, float* row, float max)
    {
        if (vb >= 512)
        {
            var m = Vector512.Create(max);
            var p0 = Vector512.Exp(Vector512.Load(row) - m); p0.Store(row);
            var p1 = Vector512.Exp(Vector512.Load(row + 16) - m); p1.Store(row + 16);
            var p2 = Vector512.Exp(Vector512.Load(row + 32) - m); p2.Store(row + 32);
            var p3 = Vector512.Exp(Vector512.Load(row + 48) - m); p3.Store(row + 48);
            return CpuSimd.Fold((p0 + p1) + (p2 + p3));
        }
        if (vb >= 256)
        {
            var m = Vector256.Create(max);
            var p0 = Vector256.Exp(Vector256.Load(row) - m); p0.Store(row);
            var p1 = Vector256.Exp(Vector256.Load(row + 8) - m); p1.Store(row + 8);
            var p2 = Vector256.Exp(Vector256.Load(row + 16) - m); p2.Store(row + 16);
            var p3 = Vector256.Exp(Vector256.Load(row + 24) - m); p3.Store(row + 24);
            var p4 = Vector256.Exp(Vector256.Load(row + 32) - m); p4.Store(row + 32);
            var p5 = Vector256.Exp(Vector256.Load(row + 40) - m); p5.Store(row + 40);
            var p6 = Vector256.Exp(Vector256.Load(row + 48) - m); p6.Store(row + 48);
            var p7 = Vector256.Exp(Vector256.Load(row + 56) - m); p7.Store(row + 56);
            return CpuSimd.Fold((p0 + p2) + (p4 + p6), (p1 + p3) + (p5 + p7));
        }
        return ExpRowScalar(row, max);
    }

    // Kept out of ExpRow so the vector paths carry no lane array in their frame.
    static float ExpRowScalar(float* row, float max)
    {
        for (int j = 0; j < KeyTile; j++) row[j] = CpuSimd.Exp(row[j] - max);
        var lanes = new CpuSimd.Lanes16();
        for (int l = 0; l < 16; l++) lanes[l] = (row[l] + row[16 + l]) + (row[32 + l] + row[48 + l]);
        return CpuSimd.Fold16(lanes);
    }

    /// <summary>For rows [r0, r1): scores → P = exp(S − lse) (masked), dP → dS = P ⊙ (dP − D); invisible rows zeroed.</summary>
    static void ProbabilityRows(int vb, in Shape s, float* probs, float* dscores, float* rowLse, float* rowD,
                                int r0, int r1, int rows, int t0, int j0, int keys)
    {
        for (int r = r0; r < r1; r++)
        {
            float* p = probs + r * KeyTile, ds = dscores + r * KeyTile;
            int visible = Visible(s, r, rows, t0, j0, keys);
            if (visible == 0)
            {
                new Span<float>(p, KeyTile).Clear();
                new Span<float>(ds, KeyTile).Clear();
                continue;
            }
            MaskTail(p, visible);
            float l = rowLse[r], dd = rowD[r];
            if (vb >= 512)
            {
                var vl = Vector512.Create(l); var vd = Vector512.Create(dd);
                for (int j = 0; j < KeyTile; j += 16)
                {
                    var pj = Vector512.Exp(Vector512.Load(p + j) - vl);
                    pj.Store(p + j);
                    (pj * (Vector512.Load(ds + j) - vd)).Store(ds + j);
                }
            }
            else if (vb >= 256)
            {
                var vl = Vector256.Create(l); var vd = Vector256.Create(dd);
                for (int j = 0; j < KeyTile; j += 8)
                {
                    var pj = Vector256.Exp(Vector256.Load(p + j) - vl);
                    pj.Store(p + j);
                    (pj * (Vector256.Load(ds + j) - vd)).Store(ds + j);
                }
            }
            else
            {
                for (int j = 0; j < KeyTile; j++)
                {
                    float pj = CpuSimd.Exp(p[j] - l);
                    p[j] = pj;
                    ds[j] = pj * (ds[j] - dd);
                }
            }
        }
    }

    /// <summary>Σ x·y on CpuSimd's 16 lanes (fused per lane, folded by halving), then the tail in order.</summary>
    static float Dot(int vb, float* x, float* y, int n)
    {
        int i = 0;
        float total;
        if (vb >= 512)
        {
            var acc = Vector512<float>.Zero;
            for (; i + 16 <= n; i += 16) acc = Vector512.FusedMultiplyAdd(Vector512.Load(x + i), Vector512.Load(y + i), acc);
            total = CpuSimd.Fold(acc);
        }
        else if (vb >= 256)
        {
            Vector256<float> acc0 = default, acc1 = default;
            for (; i + 16 <= n; i += 16)
            {
                acc0 = Vector256.FusedMultiplyAdd(Vector256.Load(x + i), Vector256.Load(y + i), acc0);
                acc1 = Vector256.FusedMultiplyAdd(Vector256.Load(x + i + 8), Vector256.Load(y + i + 8), acc1);
            }
            total = CpuSimd.Fold(acc0, acc1);
        }
        else total = DotScalar(x, y, n, ref i);
        for (; i < n; i++) total += x[i] * y[i];
        return total;
    }

    // The whole 16-blocks of Dot on the scalar path, out of line like ExpRowScalar.
    static float DotScalar(float* x, float* y, int n, ref int i)
    {
        var lanes = new CpuSimd.Lanes16();
        for (; i + 16 <= n; i += 16)
            for (int l = 0; l < 16; l++) lanes[l] = MathF.FusedMultiplyAdd(x[i + l], y[i + l], lanes[l]);
        return CpuSimd.Fold16(lanes);
    }

    // ---- tile kernels -----------------------------------------------------------------------------------------

    /// <summary>
    /// s[r][j] = Σ_{d&lt;kdim} a[r][d] · bt[d][j] for rows r in [r0, r1) (multiples of 4) and all 64 columns.
    /// a has row stride lda; bt is K × 64; s is rows × 64.
    /// </summary>
    static void Scores(int vb, float* a, int lda, float* bt, float* s, int r0, int r1, int kdim)
    {
        if (vb >= 512) Scores512(a, lda, bt, s, r0, r1, kdim);
        else if (vb >= 256) Scores256(a, lda, bt, s, r0, r1, kdim);
        else ScoresScalar(a, lda, bt, s, r0, r1, kdim);
    }

    static void Scores512(float* a, int lda, float* bt, float* s, int r0, int r1, int kdim)
    {
        for (int r = r0; r < r1; r += 4)
        {
            float* a0 = a + r * lda, a1 = a0 + lda, a2 = a1 + lda, a3 = a2 + lda;
            Vector512<float> c00 = default, c01 = default, c02 = default, c03 = default;
            Vector512<float> c10 = default, c11 = default, c12 = default, c13 = default;
            Vector512<float> c20 = default, c21 = default, c22 = default, c23 = default;
            Vector512<float> c30 = default, c31 = default, c32 = default, c33 = default;
            float* bp = bt;
            for (int d = 0; d < kdim; d++, bp += KeyTile)
            {
                var b0 = Vector512.Load(bp); var b1 = Vector512.Load(bp + 16);
                var b2 = Vector512.Load(bp + 32); var b3 = Vector512.Load(bp + 48);
                var x = Vector512.Create(a0[d]);
                c00 = Vector512.FusedMultiplyAdd(x, b0, c00); c01 = Vector512.FusedMultiplyAdd(x, b1, c01);
                c02 = Vector512.FusedMultiplyAdd(x, b2, c02); c03 = Vector512.FusedMultiplyAdd(x, b3, c03);
                x = Vector512.Create(a1[d]);
                c10 = Vector512.FusedMultiplyAdd(x, b0, c10); c11 = Vector512.FusedMultiplyAdd(x, b1, c11);
                c12 = Vector512.FusedMultiplyAdd(x, b2, c12); c13 = Vector512.FusedMultiplyAdd(x, b3, c13);
                x = Vector512.Create(a2[d]);
                c20 = Vector512.FusedMultiplyAdd(x, b0, c20); c21 = Vector512.FusedMultiplyAdd(x, b1, c21);
                c22 = Vector512.FusedMultiplyAdd(x, b2, c22); c23 = Vector512.FusedMultiplyAdd(x, b3, c23);
                x = Vector512.Create(a3[d]);
                c30 = Vector512.FusedMultiplyAdd(x, b0, c30); c31 = Vector512.FusedMultiplyAdd(x, b1, c31);
                c32 = Vector512.FusedMultiplyAdd(x, b2, c32); c33 = Vector512.FusedMultiplyAdd(x, b3, c33);
            }
            float* o = s + r * KeyTile;
            c00.Store(o); c01.Store(o + 16); c02.Store(o + 32); c03.Store(o + 48); o += KeyTile;
            c10.Store(o); c11.Store(o + 16); c12.Store(o + 32); c13.Store(o + 48); o += KeyTile;
            c20.Store(o); c21.Store(o + 16); c22.Store(o + 32); c23.Store(o + 48); o += KeyTile;
            c30.Store(o); c31.Store(o + 16); c32.Store(o + 32); c33.Store(o + 48);
        }
    }

    static void Scores256(float* a, int lda, float* bt, float* s, int r0, int r1, int kdim)
    {
        // 2 rows × 32 columns per pass keeps 8 accumulators, within the 16 ymm registers.
        for (int r = r0; r < r1; r += 2)
            for (int half = 0; half < KeyTile; half += 32)
            {
                float* a0 = a + r * lda, a1 = a0 + lda;
                Vector256<float> c00 = default, c01 = default, c02 = default, c03 = default;
                Vector256<float> c10 = default, c11 = default, c12 = default, c13 = default;
                float* bp = bt + half;
                for (int d = 0; d < kdim; d++, bp += KeyTile)
                {
                    var b0 = Vector256.Load(bp); var b1 = Vector256.Load(bp + 8);
                    var b2 = Vector256.Load(bp + 16); var b3 = Vector256.Load(bp + 24);
                    var x = Vector256.Create(a0[d]);
                    c00 = Vector256.FusedMultiplyAdd(x, b0, c00); c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
                    c02 = Vector256.FusedMultiplyAdd(x, b2, c02); c03 = Vector256.FusedMultiplyAdd(x, b3, c03);
                    x = Vector256.Create(a1[d]);
                    c10 = Vector256.FusedMultiplyAdd(x, b0, c10); c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
                    c12 = Vector256.FusedMultiplyAdd(x, b2, c12); c13 = Vector256.FusedMultiplyAdd(x, b3, c13);
                }
                float* o = s + r * KeyTile + half;
                c00.Store(o); c01.Store(o + 8); c02.Store(o + 16); c03.Store(o + 24); o += KeyTile;
                c10.Store(o); c11.Store(o + 8); c12.Store(o + 16); c13.Store(o + 24);
            }
    }

    static void ScoresScalar(float* a, int lda, float* bt, float* s, int r0, int r1, int kdim)
    {
        for (int r = r0; r < r1; r++)
        {
            float* o = s + r * KeyTile, ar = a + r * lda;
            for (int j = 0; j < KeyTile; j++) o[j] = 0;
            for (int d = 0; d < kdim; d++)
            {
                float x = ar[d];
                float* bp = bt + d * KeyTile;
                for (int j = 0; j < KeyTile; j++) o[j] = MathF.FusedMultiplyAdd(x, bp[j], o[j]);   // fused, as the vector kernels
            }
        }
    }

    /// <summary>
    /// c[i][:] = c[i][:]·scale[i] + Σ_{j0≤j&lt;j1} w[i·wRow + j·wCol] · m[j][:] for rows i in [i0, i1) (multiples of 4),
    /// over all ldc = ldm = Kp columns (a multiple of 16). scale may be null (no rescaling). wRow = 1, wCol = 64 reads
    /// a rows × 64 tile transposed.
    /// </summary>
    static void Accumulate(int vb, float* c, int kp, float* w, int wRow, int wCol, float* m, int ldm,
                           int i0, int i1, int j0, int j1, float* scale)
    {
        if (vb >= 512) Accumulate512(c, kp, w, wRow, wCol, m, ldm, i0, i1, j0, j1, scale);
        else if (vb >= 256) Accumulate256(c, kp, w, wRow, wCol, m, ldm, i0, i1, j0, j1, scale);
        else AccumulateScalar(c, kp, w, wRow, wCol, m, ldm, i0, i1, j0, j1, scale);
    }

    static void Accumulate512(float* c, int kp, float* w, int wRow, int wCol, float* m, int ldm,
                              int i0, int i1, int j0, int j1, float* scale)
    {
        for (int i = i0; i < i1; i += 4)
        {
            float* w0 = w + (long)i * wRow, w1 = w0 + wRow, w2 = w1 + wRow, w3 = w2 + wRow;
            float* c0 = c + (long)i * kp, c1 = c0 + kp, c2 = c1 + kp, c3 = c2 + kp;
            var s0 = Vector512.Create(scale == null ? 1f : scale[i]);
            var s1 = Vector512.Create(scale == null ? 1f : scale[i + 1]);
            var s2 = Vector512.Create(scale == null ? 1f : scale[i + 2]);
            var s3 = Vector512.Create(scale == null ? 1f : scale[i + 3]);
            int x = 0;
            for (; x + 64 <= kp; x += 64)
            {
                var a00 = Vector512.Load(c0 + x) * s0; var a01 = Vector512.Load(c0 + x + 16) * s0;
                var a02 = Vector512.Load(c0 + x + 32) * s0; var a03 = Vector512.Load(c0 + x + 48) * s0;
                var a10 = Vector512.Load(c1 + x) * s1; var a11 = Vector512.Load(c1 + x + 16) * s1;
                var a12 = Vector512.Load(c1 + x + 32) * s1; var a13 = Vector512.Load(c1 + x + 48) * s1;
                var a20 = Vector512.Load(c2 + x) * s2; var a21 = Vector512.Load(c2 + x + 16) * s2;
                var a22 = Vector512.Load(c2 + x + 32) * s2; var a23 = Vector512.Load(c2 + x + 48) * s2;
                var a30 = Vector512.Load(c3 + x) * s3; var a31 = Vector512.Load(c3 + x + 16) * s3;
                var a32 = Vector512.Load(c3 + x + 32) * s3; var a33 = Vector512.Load(c3 + x + 48) * s3;
                float* mp = m + (long)j0 * ldm + x;
                for (int j = j0; j < j1; j++, mp += ldm)
                {
                    var m0 = Vector512.Load(mp); var m1 = Vector512.Load(mp + 16);
                    var m2 = Vector512.Load(mp + 32); var m3 = Vector512.Load(mp + 48);
                    long wj = (long)j * wCol;
                    var e = Vector512.Create(w0[wj]);
                    a00 = Vector512.FusedMultiplyAdd(e, m0, a00); a01 = Vector512.FusedMultiplyAdd(e, m1, a01);
                    a02 = Vector512.FusedMultiplyAdd(e, m2, a02); a03 = Vector512.FusedMultiplyAdd(e, m3, a03);
                    e = Vector512.Create(w1[wj]);
                    a10 = Vector512.FusedMultiplyAdd(e, m0, a10); a11 = Vector512.FusedMultiplyAdd(e, m1, a11);
                    a12 = Vector512.FusedMultiplyAdd(e, m2, a12); a13 = Vector512.FusedMultiplyAdd(e, m3, a13);
                    e = Vector512.Create(w2[wj]);
                    a20 = Vector512.FusedMultiplyAdd(e, m0, a20); a21 = Vector512.FusedMultiplyAdd(e, m1, a21);
                    a22 = Vector512.FusedMultiplyAdd(e, m2, a22); a23 = Vector512.FusedMultiplyAdd(e, m3, a23);
                    e = Vector512.Create(w3[wj]);
                    a30 = Vector512.FusedMultiplyAdd(e, m0, a30); a31 = Vector512.FusedMultiplyAdd(e, m1, a31);
                    a32 = Vector512.FusedMultiplyAdd(e, m2, a32); a33 = Vector512.FusedMultiplyAdd(e, m3, a33);
                }
                a00.Store(c0 + x); a01.Store(c0 + x + 16); a02.Store(c0 + x + 32); a03.Store(c0 + x + 48);
                a10.Store(c1 + x); a11.Store(c1 + x + 16); a12.Store(c1 + x + 32); a13.Store(c1 + x + 48);
                a20.Store(c2 + x); a21.Store(c2 + x + 16); a22.Store(c2 + x + 32); a23.Store(c2 + x + 48);
                a30.Store(c3 + x); a31.Store(c3 + x + 16); a32.Store(c3 + x + 32); a33.Store(c3 + x + 48);
            }
            for (; x < kp; x += 16)   // K not a multiple of 64: one vector of columns at a time
            {
                var a0 = Vector512.Load(c0 + x) * s0; var a1 = Vector512.Load(c1 + x) * s1;
                var a2 = Vector512.Load(c2 + x) * s2; var a3 = Vector512.Load(c3 + x) * s3;
                float* mp = m + (long)j0 * ldm + x;
                for (int j = j0; j < j1; j++, mp += ldm)
                {
                    var mj = Vector512.Load(mp);
                    long wj = (long)j * wCol;
                    a0 = Vector512.FusedMultiplyAdd(Vector512.Create(w0[wj]), mj, a0);
                    a1 = Vector512.FusedMultiplyAdd(Vector512.Create(w1[wj]), mj, a1);
                    a2 = Vector512.FusedMultiplyAdd(Vector512.Create(w2[wj]), mj, a2);
                    a3 = Vector512.FusedMultiplyAdd(Vector512.Create(w3[wj]), mj, a3);
                }
                a0.Store(c0 + x); a1.Store(c1 + x); a2.Store(c2 + x); a3.Store(c3 + x);
            }
        }
    }

    static void Accumulate256(float* c, int kp, float* w, int wRow, int wCol, float* m, int ldm,
                              int i0, int i1, int j0, int j1, float* scale)
    {
        // 2 rows × 32 columns per pass: 8 accumulators, then single-vector column tails.
        for (int i = i0; i < i1; i += 2)
        {
            float* w0 = w + (long)i * wRow, w1 = w0 + wRow;
            float* c0 = c + (long)i * kp, c1 = c0 + kp;
            var s0 = Vector256.Create(scale == null ? 1f : scale[i]);
            var s1 = Vector256.Create(scale == null ? 1f : scale[i + 1]);
            int x = 0;
            for (; x + 32 <= kp; x += 32)
            {
                var a00 = Vector256.Load(c0 + x) * s0; var a01 = Vector256.Load(c0 + x + 8) * s0;
                var a02 = Vector256.Load(c0 + x + 16) * s0; var a03 = Vector256.Load(c0 + x + 24) * s0;
                var a10 = Vector256.Load(c1 + x) * s1; var a11 = Vector256.Load(c1 + x + 8) * s1;
                var a12 = Vector256.Load(c1 + x + 16) * s1; var a13 = Vector256.Load(c1 + x + 24) * s1;
                float* mp = m + (long)j0 * ldm + x;
                for (int j = j0; j < j1; j++, mp += ldm)
                {
                    var m0 = Vector256.Load(mp); var m1 = Vector256.Load(mp + 8);
                    var m2 = Vector256.Load(mp + 16); var m3 = Vector256.Load(mp + 24);
                    long wj = (long)j * wCol;
                    var e = Vector256.Create(w0[wj]);
                    a00 = Vector256.FusedMultiplyAdd(e, m0, a00); a01 = Vector256.FusedMultiplyAdd(e, m1, a01);
                    a02 = Vector256.FusedMultiplyAdd(e, m2, a02); a03 = Vector256.FusedMultiplyAdd(e, m3, a03);
                    e = Vector256.Create(w1[wj]);
                    a10 = Vector256.FusedMultiplyAdd(e, m0, a10); a11 = Vector256.FusedMultiplyAdd(e, m1, a11);
                    a12 = Vector256.FusedMultiplyAdd(e, m2, a12); a13 = Vector256.FusedMultiplyAdd(e, m3, a13);
                }
                a00.Store(c0 + x); a01.Store(c0 + x + 8); a02.Store(c0 + x + 16); a03.Store(c0 + x + 24);
                a10.Store(c1 + x); a11.Store(c1 + x + 8); a12.Store(c1 + x + 16); a13.Store(c1 + x + 24);
            }
            for (; x < kp; x += 8)
            {
                var a0 = Vector256.Load(c0 + x) * s0; var a1 = Vector256.Load(c1 + x) * s1;
                float* mp = m + (long)j0 * ldm + x;
                for (int j = j0; j < j1; j++, mp += ldm)
                {
                    var mj = Vector256.Load(mp);
                    long wj = (long)j * wCol;
                    a0 = Vector256.FusedMultiplyAdd(Vector256.Create(w0[wj]), mj, a0);
                    a1 = Vector256.FusedMultiplyAdd(Vector256.Create(w1[wj]), mj, a1);
                }
                a0.Store(c0 + x); a1.Store(c1 + x);
            }
        }
    }

    static void AccumulateScalar(float* c, int kp, float* w, int wRow, int wCol, float* m, int ldm,
                                 int i0, int i1, int j0, int j1, float* scale)
    {
        for (int i = i0; i < i1; i++)
        {
            float* ci = c + (long)i * kp;
            if (scale != null) for (int x = 0; x < kp; x++) ci[x] *= scale[i];
            for (int j = j0; j < j1; j++)
            {
                float e = w[(long)i * wRow + (long)j * wCol];
                float* mj = m + (long)j * ldm;
                for (int x = 0; x < kp; x++) ci[x] = MathF.FusedMultiplyAdd(e, mj[x], ci[x]);
            }
        }
    }
}
