using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Palm.Gpu.Backends.Cpu;

// Causal self-attention, FlashAttention-style: tiled over query blocks and key tiles with an online softmax,
// so the T×T score matrix never exists; a worker holds one (64 keys × rows) score tile at a time.
// B batch, T time, H query heads, G kv heads (G = 1 multi-query, G = H multi-head), K head dim.
// forward:  q (B,T,H,K), k (B,T,G,K), v (B,T,G,K) -> out (B,T,H,K), lse (B,H,T)
// backward: dout (B,T,H,K), q, k, v, out, lse -> dq (B,T,H,K), dk (B,T,G,K), dv (B,T,G,K), all overwritten
//
//   S = q·kᵀ/√K, causal (query t sees keys 0..t); query head h reads kv head h / (H/G)
//   P = softmax(S) = exp(S − lse),  out = P·v,  lse = log Σ_j exp(S_j) per query row
//   dv = Pᵀ·dout,  dP = dout·vᵀ,  dS = P ⊙ (dP − D) with D = rowsum(dout ⊙ out),  dq = dS·k/√K,  dk = dSᵀ·q/√K
//
// A "row" is one (time, query head) pair of a kv group. Rows of a query block are time-major, so the H/G heads
// that share a kv head are rows of one tile against each K/V tile (all H heads at once for multi-query): K and
// V are read once per tile for all of them.
// Work items:
//   forward          (b, g, query block): key tiles 0..diagonal in order, online softmax; writes out and lse
//   backward, fused  (b, g, chunk):       the chunk's query blocks in order, key tiles in order; dq, and dk, dv
//                                         for all keys in scratch (then summed over the chunks in order)
//   or, when B·G·chunks items would leave threads idle, two passes:
//   backward pass 1  (b, g, key tile):    every later query block in order; writes dk and dv for the tile
//   backward pass 2  (b, g, query block): recomputes P and dS per key tile; writes dq
// Each output element is written by exactly one item and summed in a fixed order; the fused and two-pass schemes
// add the same terms in the same order. Same bits for any thread count and vector width (CpuSimd), no atomics.
//
// Score tiles are kept transposed, Sᵀ (keys × rows), so that everything the softmax does per query row (max,
// exp, sum, rescale, mask) is lane-wise across 16 rows: no horizontal reductions, and every row sums its keys in
// key order at any vector width. The tile products are register-blocked micro-kernels over packed operands:
//   Sᵀ  = K·Qᵀ, dPᵀ = V·dOᵀ   (TileProduct: broadcast one key element, multiply 64 query rows of Qᵀ at once)
//   O  += P·V,  dQ += dS·K,  dV += Pᵀ·dO,  dK += dSᵀ·Q   (Accumulate: broadcast one P element into a K/V/q/dout row)
// Queries and douts are packed once per query block, as rows (rows × Kp) and transposed (Kp × rows), queries
// pre-scaled by 1/√K; K and V are read where they lie when they are contiguous rows (G = 1, K a multiple of 16),
// and packed zero-padded per tile otherwise or for a ragged last tile. On the diagonal only the keys up to the
// block's last time step are computed (rounded up to 4), so causal work past the diagonal is a few keys per row.
// exp is CpuSimd.Exp, a polynomial of FMAs: the same IEEE operations on every lane at every width.
internal static unsafe class CpuAttention
{
    /// <summary>Keys per tile (a multiple of 4: the score kernel makes 4 keys at a time).</summary>
    const int KeyTile = 64;
    /// <summary>Target query rows (time steps × heads of one kv group) per work item: a 64-key × 64-row score tile and the
    /// transposed queries (64 × 80 floats each) stay in L1 together; 128 rows measured a few % slower on Zen 5.</summary>
    const int RowsPerBlock = 64;
    /// <summary>
    /// Query blocks per backward chunk: dk and dv are summed per chunk (in block order), then over the chunks in
    /// order, so the fused backward has B·G·chunks items and one long sequence still fills the threads. 64 blocks
    /// end on a key-tile boundary (64 · time steps per block) and hold the whole small preset (T 512) in one chunk.
    /// </summary>
    const int ChunkBlocks = 64;

    /// <summary>The vector path the public entry points take: CpuSimd.Bits (512, 256 or 0). Every path gives the same bits.</summary>
    internal static int BestVectorBits => CpuSimd.Bits;

    [ThreadStatic] static CpuBuffer? t_scratch;   // a CpuBuffer: it starts on a cache line, as the Carver's 64-byte pieces assume

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

        // One item per (b, g, chunk of query blocks) does 5 tile products per (query block, key tile) instead of the
        // 7 of the two passes (which recompute S and dP for dq), but offers only B·G·chunks items. Both add dk and
        // dv per chunk in block order and then the chunks in order, so both give the same bits and the choice may
        // follow the thread count.
        int pairs = b * kvHeads, items = pairs * s.Chunks, p = Math.Max(1, threads);
        if ((double)items / (p * ((items + p - 1) / p)) >= 0.75)
        {
            // With one chunk the item writes dk and dv itself; with several, each writes its partial sums here.
            long partialFloats = (long)s.KeyTiles * KeyTile * s.Kp;
            var partials = s.Chunks > 1 ? GC.AllocateUninitializedArray<float>(checked((int)(2 * items * partialFloats))) : null;
            CpuParallel.For(threads, items, item =>
            {
                int chunk = item % s.Chunks, bg = item / s.Chunks;
                fixed (float* pdq = dq, pdk = dk, pdv = dv, pdo = dout, pq = q, pk = k, pv = v, pl = lse, pd = rowDot, ppart = partials,
                       work = Scratch(s, 2 * s.KeyTiles * KeyTile * s.Kp))
                {
                    float* dkOut = ppart == null ? null : ppart + 2 * item * partialFloats, dvOut = ppart == null ? null : dkOut + partialFloats;
                    BackwardChunk(s, vectorBits, pdq, pdk, pdv, pdo, pq, pk, pv, pl, pd, bg / s.G, bg % s.G, chunk, dkOut, dvOut, work);
                }
            });
            if (partials is null) return;
            CpuParallel.For(threads, pairs * s.KeyTiles, item =>
            {
                int tile = item % s.KeyTiles, bg = item / s.KeyTiles;
                fixed (float* pdk = dk, pdv = dv, ppart = partials)
                {
                    float* first = ppart + 2 * (bg * s.Chunks) * partialFloats + tile * KeyTile * s.Kp;
                    int c0 = ChunkOfTile(s, tile), kp = s.Kp, n = KeyTile * kp;
                    float* dkSum = first + 2 * c0 * partialFloats, dvSum = dkSum + partialFloats;
                    for (int c = c0 + 1; c < s.Chunks; c++)
                    {
                        AddInto(dkSum, first + 2 * c * partialFloats, n);
                        AddInto(dvSum, first + 2 * c * partialFloats + partialFloats, n);
                    }
                    StoreKv(s, pdk, pdv, dkSum, dvSum, bg / s.G, bg % s.G, tile * KeyTile, Math.Min(KeyTile, s.T - tile * KeyTile));
                }
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
        var blk = new Block(s, block);
        int kp = s.Kp, ld = s.Ld;
        var scratch = new Carver(work);
        float* qs = scratch.Take(s.Ld * kp), qt = scratch.Take(kp * ld), acc = scratch.Take(s.Ld * kp), st = scratch.Take(KeyTile * ld);
        float* kr = scratch.Take(KeyTile * kp), vr = scratch.Take(KeyTile * kp);
        float* rowTime = scratch.Take(ld), rowMax = scratch.Take(ld), rowSum = scratch.Take(ld), rescale = scratch.Take(ld);

        PackRows(qs, q, s, bi, g, blk.T0, blk.T1, blk.Rows16, s.Scale);
        Transpose(vb, qt, ld, qs, kp, blk.Rows16, kp);
        RowTimes(rowTime, s, blk);
        new Span<float>(acc, blk.Rows16 * kp).Clear();
        new Span<float>(rowMax, ld).Fill(float.NegativeInfinity);
        new Span<float>(rowSum, ld).Clear();

        for (int j0 = 0; j0 < blk.T1; j0 += KeyTile)
        {
            var tile = new KeyTileView(s, blk, bi, g, j0, k, v, kr, vr);
            TileProduct(vb, tile.K, tile.Ld, qt, ld, st, ld, tile.Keys4, tile.R0, blk.Rows16, s.K);
            Softmax(vb, st, ld, tile.Keys4, tile.R0, blk.Rows16, j0, tile.Diagonal, rowTime, rowMax, rowSum, rescale);
            Accumulate(vb, acc, kp, st, 1, ld, tile.V, tile.Ld, tile.R0, blk.Rows16, 0, tile.Keys, rescale);
        }

        int row = 0;
        for (int tt = blk.T0; tt < blk.T1; tt++)
            for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++)
            {
                int h = g * s.HeadsPerGroup + hh;
                CpuSimd.ScaleCopy(output + s.QueryRow(bi, tt, h), acc + row * kp, s.K, 1f / rowSum[row]);
                lse[s.LseIndex(bi, h, tt)] = rowMax[row] + MathF.Log(rowSum[row]);
            }
    }

    /// <summary>The query-side operands of one block for the backward: q and dout as rows and transposed, row statistics.</summary>
    readonly struct BackwardBlock
    {
        public readonly float* Qs, Qt, Dos, Dot, RowTime, RowLse, RowD;

        public BackwardBlock(in Shape s, int vb, in Block blk, float* q, float* dout, float* lse, float* rowDot, int bi, int g, ref Carver scratch)
        {
            int kp = s.Kp, ld = s.Ld;
            Qs = scratch.Take(ld * kp); Qt = scratch.Take(kp * ld); Dos = scratch.Take(ld * kp); Dot = scratch.Take(kp * ld);
            RowTime = scratch.Take(ld); RowLse = scratch.Take(ld); RowD = scratch.Take(ld);
            Pack(s, vb, blk, q, dout, lse, rowDot, bi, g);
        }

        public void Pack(in Shape s, int vb, in Block blk, float* q, float* dout, float* lse, float* rowDot, int bi, int g)
        {
            PackRows(Qs, q, s, bi, g, blk.T0, blk.T1, blk.Rows16, s.Scale);
            PackRows(Dos, dout, s, bi, g, blk.T0, blk.T1, blk.Rows16, 1f);
            Transpose(vb, Qt, s.Ld, Qs, s.Kp, blk.Rows16, s.Kp);
            Transpose(vb, Dot, s.Ld, Dos, s.Kp, blk.Rows16, s.Kp);
            RowTimes(RowTime, s, blk);
            // Padding rows get lse = +∞ and D = 0, so their P and dS are exactly 0.
            new Span<float>(RowLse, blk.Rows16).Fill(float.PositiveInfinity);
            new Span<float>(RowD, blk.Rows16).Clear();
            int row = 0;
            for (int tt = blk.T0; tt < blk.T1; tt++)
                for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++)
                {
                    int i = s.LseIndex(bi, g * s.HeadsPerGroup + hh, tt);
                    RowLse[row] = lse[i];
                    RowD[row] = rowDot[i];
                }
        }
    }

    /// <summary>Pᵀ and dSᵀ of one (block, key tile): the two score products and the elementwise step.</summary>
    static void ProbabilityTile(in Shape s, int vb, in Block blk, in BackwardBlock qb, in KeyTileView tile, float* pt, float* dst)
    {
        TileProduct(vb, tile.K, tile.Ld, qb.Qt, s.Ld, pt, s.Ld, tile.Keys4, tile.R0, blk.Rows16, s.K);
        TileProduct(vb, tile.V, tile.Ld, qb.Dot, s.Ld, dst, s.Ld, tile.Keys4, tile.R0, blk.Rows16, s.K);
        Gradients(vb, pt, dst, s.Ld, tile.Keys4, tile.R0, blk.Rows16, tile.J0, tile.Diagonal, qb.RowTime, qb.RowLse, qb.RowD);
    }

    /// <summary>dk and dv for one key tile of kv group g: all query heads of the group, query blocks in order.</summary>
    static void KeyValueGradTile(in Shape s, int vb, float* dk, float* dv, float* dout, float* q, float* k, float* v,
                                 float* lse, float* rowDot, int bi, int g, int tileIndex, float* work)
    {
        int j0 = tileIndex * KeyTile, kp = s.Kp, ld = s.Ld;
        var scratch = new Carver(work);
        float* pt = scratch.Take(KeyTile * ld), dst = scratch.Take(KeyTile * ld);
        float* kr = scratch.Take(KeyTile * kp), vr = scratch.Take(KeyTile * kp);
        float* dkAcc = scratch.Take(KeyTile * kp), dvAcc = scratch.Take(KeyTile * kp);
        new Span<float>(dkAcc, KeyTile * kp).Clear();
        new Span<float>(dvAcc, KeyTile * kp).Clear();
        BackwardBlock qb = default;
        bool first = true;
        // dk and dv are summed per chunk of query blocks, then chunk by chunk, as the fused scheme sums them.
        float* dkSum = scratch.Take(KeyTile * kp), dvSum = scratch.Take(KeyTile * kp);
        int firstBlock = j0 / s.BlockTime;

        for (int block = firstBlock; block < s.QueryBlocks; block++)
        {
            if (block % ChunkBlocks == 0 && block > firstBlock) FoldChunk(dkSum, dvSum, dkAcc, dvAcc, KeyTile * kp, firstChunk: block - ChunkBlocks <= firstBlock);
            var blk = new Block(s, block);
            if (first) { qb = new BackwardBlock(s, vb, blk, q, dout, lse, rowDot, bi, g, ref scratch); first = false; }
            else qb.Pack(s, vb, blk, q, dout, lse, rowDot, bi, g);
            var tile = new KeyTileView(s, blk, bi, g, j0, k, v, kr, vr);
            ProbabilityTile(s, vb, blk, qb, tile, pt, dst);
            // dv[j] += Σ_r P[j][r]·dout[r];  dk[j] += Σ_r dS[j][r]·q[r]/√K
            Accumulate(vb, dvAcc, kp, pt, ld, 1, qb.Dos, kp, 0, tile.Keys4, tile.R0, blk.Rows16, null);
            Accumulate(vb, dkAcc, kp, dst, ld, 1, qb.Qs, kp, 0, tile.Keys4, tile.R0, blk.Rows16, null);
        }

        if (ChunkOfTile(s, tileIndex) < s.Chunks - 1)
        {
            FoldChunk(dkSum, dvSum, dkAcc, dvAcc, KeyTile * kp, firstChunk: false);   // the last chunk, not the tile's first
            dkAcc = dkSum; dvAcc = dvSum;
        }
        StoreKv(s, dk, dv, dkAcc, dvAcc, bi, g, j0, Math.Min(KeyTile, s.T - j0));
    }

    /// <summary>Ends one chunk's sums: the first becomes the total, later ones are added to it; acc starts again at 0.</summary>
    static void FoldChunk(float* dkSum, float* dvSum, float* dkAcc, float* dvAcc, int n, bool firstChunk)
    {
        if (firstChunk)
        {
            new Span<float>(dkAcc, n).CopyTo(new Span<float>(dkSum, n));
            new Span<float>(dvAcc, n).CopyTo(new Span<float>(dvSum, n));
        }
        else
        {
            AddInto(dkSum, dkAcc, n);
            AddInto(dvSum, dvAcc, n);
        }
        new Span<float>(dkAcc, n).Clear();
        new Span<float>(dvAcc, n).Clear();
    }

    /// <summary>sum[i] += x[i]: one rounding per element, the same bits at any vector width.</summary>
    static void AddInto(float* sum, float* x, int n)
    {
        int i = 0;
        if (Vector512.IsHardwareAccelerated)
            for (; i + 16 <= n; i += 16) (Vector512.Load(sum + i) + Vector512.Load(x + i)).Store(sum + i);
        for (; i < n; i++) sum[i] += x[i];
    }

    /// <summary>The chunk holding the first query block that sees key tile <paramref name="tile"/>.</summary>
    static int ChunkOfTile(in Shape s, int tile) => tile * KeyTile / s.BlockTime / ChunkBlocks;

    /// <summary>dk and dv rows [j0, j0 + keys) of group g from packed 64 × Kp tiles.</summary>
    static void StoreKv(in Shape s, float* dk, float* dv, float* dkTile, float* dvTile, int bi, int g, int j0, int keys)
    {
        for (int j = 0; j < keys; j++)
        {
            long o = s.KvRow(bi, j0 + j, g);
            new Span<float>(dkTile + j * s.Kp, s.K).CopyTo(new Span<float>(dk + o, s.K));
            new Span<float>(dvTile + j * s.Kp, s.K).CopyTo(new Span<float>(dv + o, s.K));
        }
    }

    /// <summary>dq for the rows of one query block of kv group g.</summary>
    static void QueryGradBlock(in Shape s, int vb, float* dq, float* dout, float* q, float* k, float* v,
                               float* lse, float* rowDot, int bi, int g, int block, float* work)
    {
        var blk = new Block(s, block);
        int kp = s.Kp, ld = s.Ld;
        var scratch = new Carver(work);
        var qb = new BackwardBlock(s, vb, blk, q, dout, lse, rowDot, bi, g, ref scratch);
        float* dqAcc = scratch.Take(ld * kp), pt = scratch.Take(KeyTile * ld), dst = scratch.Take(KeyTile * ld);
        float* kr = scratch.Take(KeyTile * kp), vr = scratch.Take(KeyTile * kp);
        new Span<float>(dqAcc, blk.Rows16 * kp).Clear();

        for (int j0 = 0; j0 < blk.T1; j0 += KeyTile)
        {
            var tile = new KeyTileView(s, blk, bi, g, j0, k, v, kr, vr);
            ProbabilityTile(s, vb, blk, qb, tile, pt, dst);
            Accumulate(vb, dqAcc, kp, dst, 1, ld, tile.K, tile.Ld, tile.R0, blk.Rows16, 0, tile.Keys, null);
        }
        StoreDq(s, dq, dqAcc, blk, bi, g);
    }

    /// <summary>
    /// dq of the query blocks of one chunk of kv group g, and their sums for dk and dv: query blocks in order, key
    /// tiles in order (the two passes' order). Written to dk and dv when there is one chunk, else to dkOut, dvOut
    /// (KeyTiles·64 × Kp, the tiles this chunk reaches).
    /// </summary>
    static void BackwardChunk(in Shape s, int vb, float* dq, float* dk, float* dv, float* dout, float* q, float* k, float* v,
                              float* lse, float* rowDot, int bi, int g, int chunk, float* dkOut, float* dvOut, float* work)
    {
        int kp = s.Kp, ld = s.Ld, block0 = chunk * ChunkBlocks, block1 = Math.Min(s.QueryBlocks, block0 + ChunkBlocks);
        int tiles = (new Block(s, block1 - 1).T1 + KeyTile - 1) / KeyTile;
        var scratch = new Carver(work);
        var qb = new BackwardBlock(s, vb, new Block(s, block0), q, dout, lse, rowDot, bi, g, ref scratch);
        float* dqAcc = scratch.Take(ld * kp), pt = scratch.Take(KeyTile * ld), dst = scratch.Take(KeyTile * ld);
        float* kr = scratch.Take(KeyTile * kp), vr = scratch.Take(KeyTile * kp);
        float* dkAll = scratch.Take(s.KeyTiles * KeyTile * kp), dvAll = scratch.Take(s.KeyTiles * KeyTile * kp);
        new Span<float>(dkAll, tiles * KeyTile * kp).Clear();
        new Span<float>(dvAll, tiles * KeyTile * kp).Clear();

        for (int block = block0; block < block1; block++)
        {
            var blk = new Block(s, block);
            if (block > block0) qb.Pack(s, vb, blk, q, dout, lse, rowDot, bi, g);
            new Span<float>(dqAcc, blk.Rows16 * kp).Clear();
            for (int j0 = 0; j0 < blk.T1; j0 += KeyTile)
            {
                var tile = new KeyTileView(s, blk, bi, g, j0, k, v, kr, vr);
                ProbabilityTile(s, vb, blk, qb, tile, pt, dst);
                Accumulate(vb, dvAll + j0 * kp, kp, pt, ld, 1, qb.Dos, kp, 0, tile.Keys4, tile.R0, blk.Rows16, null);
                Accumulate(vb, dkAll + j0 * kp, kp, dst, ld, 1, qb.Qs, kp, 0, tile.Keys4, tile.R0, blk.Rows16, null);
                Accumulate(vb, dqAcc, kp, dst, 1, ld, tile.K, tile.Ld, tile.R0, blk.Rows16, 0, tile.Keys, null);
            }
            StoreDq(s, dq, dqAcc, blk, bi, g);
        }

        if (dkOut == null)
        {
            StoreKv(s, dk, dv, dkAll, dvAll, bi, g, 0, s.T);
            return;
        }
        new Span<float>(dkAll, tiles * KeyTile * kp).CopyTo(new Span<float>(dkOut, tiles * KeyTile * kp));
        new Span<float>(dvAll, tiles * KeyTile * kp).CopyTo(new Span<float>(dvOut, tiles * KeyTile * kp));
    }

    static void StoreDq(in Shape s, float* dq, float* dqAcc, in Block blk, int bi, int g)
    {
        int row = 0;
        for (int tt = blk.T0; tt < blk.T1; tt++)
            for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++)
                CpuSimd.ScaleCopy(dq + s.QueryRow(bi, tt, g * s.HeadsPerGroup + hh), dqAcc + row * s.Kp, s.K, s.Scale);
    }

    // ---- shape, blocks, tiles, scratch, packing ------------------------------------------------------------

    readonly struct Shape
    {
        public readonly int B, T, H, G, K;
        public readonly int HeadsPerGroup;   // H/G query heads per kv head
        public readonly int Kp;              // K rounded up to 16: packed row stride
        public readonly int BlockTime;       // time steps per query block (rows = BlockTime·H/G)
        public readonly int QueryBlocks, KeyTiles, Chunks;   // Chunks: groups of ChunkBlocks query blocks (backward)
        public readonly int Ld;              // stride of transposed tiles: rows of the largest block rounded up to 16, + 16
        public readonly bool KvInPlace;      // K and V rows are read where they lie (G = 1, K a multiple of 16)
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
            Chunks = (QueryBlocks + ChunkBlocks - 1) / ChunkBlocks;
            // One cache line more than the rows: a column walk of a transposed tile (stride Ld) then spreads over
            // the L1 sets instead of landing on the few that a power-of-two stride maps to.
            Ld = RoundUp(Math.Min(BlockTime, Math.Max(t, 1)) * HeadsPerGroup, 16) + 16;
            // In place only when the rows of a tile are contiguous: with G > 1 their stride G·K is a large power
            // of two for the usual K, which would fold a tile onto a few L1 sets; a packed copy costs ~3% of a tile.
            KvInPlace = Kp == k && g == 1;
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

        /// <summary>Floats of scratch that any of the three work items carves out (the largest, the backward ones).</summary>
        public int ScratchFloats => 5 * Ld * Kp + 2 * KeyTile * Ld + 6 * KeyTile * Kp + 4 * Ld + 16 * 16;
    }

    /// <summary>One query block: time steps [T0, T1), Rows real rows, Rows16 = Rows rounded up to 16 (the rest zero padding).</summary>
    readonly struct Block
    {
        public readonly int T0, T1, Rows, Rows16;
        public Block(in Shape s, int block)
        {
            T0 = block * s.BlockTime;
            T1 = Math.Min(s.T, T0 + s.BlockTime);
            Rows = (T1 - T0) * s.HeadsPerGroup;
            Rows16 = RoundUp(Rows, 16);
        }
    }

    /// <summary>
    /// One key tile as a block sees it: K and V rows (in place, or packed zero-padded), the keys computed (up to the
    /// block's last time step; Keys4 rounded up to 4), the first row group that sees any of them, and whether the
    /// causal mask cuts through the computed part.
    /// </summary>
    readonly struct KeyTileView
    {
        public readonly float* K, V;
        public readonly int Ld, J0, Keys, Keys4, R0;
        public readonly bool Diagonal;

        public KeyTileView(in Shape s, in Block blk, int bi, int g, int j0, float* k, float* v, float* kr, float* vr)
        {
            J0 = j0;
            Keys = Math.Min(KeyTile, blk.T1 - j0);
            Keys4 = RoundUp(Keys, 4);
            // Rows earlier in time than j0 see none of these keys; whole groups of 16 of them are skipped.
            R0 = (Math.Max(0, j0 - blk.T0) * s.HeadsPerGroup) & ~15;
            Diagonal = j0 + Keys4 - 1 > blk.T0;
            if (s.KvInPlace && j0 + Keys4 <= s.T)
            {
                K = k + s.KvRow(bi, j0, g);
                V = v + s.KvRow(bi, j0, g);
                Ld = s.G * s.K;
            }
            else
            {
                PackKvRows(kr, k, s, bi, g, j0, Math.Min(Keys4, s.T - j0));
                PackKvRows(vr, v, s, bi, g, j0, Math.Min(Keys4, s.T - j0));
                K = kr; V = vr; Ld = s.Kp;
            }
        }
    }

    /// <summary>This thread's scratch of at least the shape's floats, starting on a cache line.</summary>
    static CpuView<float> Scratch(in Shape s, int extra = 0)
    {
        int need = s.ScratchFloats + extra;
        if (t_scratch is null || t_scratch.Length < need) t_scratch = new CpuBuffer("attention scratch", need, Tensors.ElementType.F32);
        return t_scratch.F;
    }

    /// <summary>Hands out consecutive 64-byte multiples of a scratch buffer.</summary>
    struct Carver(float* start)
    {
        float* next = start;
        public float* Take(int floats) { float* p = next; next += RoundUp(floats, 16); return p; }
    }

    static int RoundUp(int x, int m) => (x + m - 1) / m * m;

    /// <summary>Time step of each row of the block as a float (exact below 2^24); padding rows get −1, so every key is masked for them.</summary>
    static void RowTimes(float* rowTime, in Shape s, in Block blk)
    {
        for (int r = 0; r < blk.Rows16; r++) rowTime[r] = r < blk.Rows ? blk.T0 + r / s.HeadsPerGroup : -1f;
    }

    /// <summary>rows16 × Kp rows of src (q or dout) for times [t0, t1) and the heads of group g, scaled, zero-padded.</summary>
    static void PackRows(float* dst, float* src, in Shape s, int bi, int g, int t0, int t1, int rows16, float scale)
    {
        int kp = s.Kp, row = 0;
        for (int tt = t0; tt < t1; tt++)
        {
            float* from = src + s.QueryRow(bi, tt, g * s.HeadsPerGroup);   // the group's heads are adjacent
            for (int hh = 0; hh < s.HeadsPerGroup; hh++, row++, from += s.K)
            {
                float* to = dst + row * kp;
                CpuSimd.ScaleCopy(to, from, s.K, scale);
                for (int d = s.K; d < kp; d++) to[d] = 0;
            }
        }
        new Span<float>(dst + row * kp, (rows16 - row) * kp).Clear();
    }

    /// <summary>Rows of K (or V) [j0, j0 + keys) of group g as 64 × Kp rows, zero-padded in both directions.</summary>
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

    /// <summary>dst[c·ldd + r] = src[r·lds + c] for r &lt; rows, c &lt; cols (both multiples of 16). Data movement only.</summary>
    static void Transpose(int vb, float* dst, int ldd, float* src, int lds, int rows, int cols)
    {
        if (vb >= 512 && Avx512F.IsSupported)
        {
            for (int r = 0; r < rows; r += 16)
                for (int c = 0; c < cols; c += 16)
                    Transpose16(dst + c * ldd + r, ldd, src + r * lds + c, lds);
            return;
        }
        if (vb >= 256 && Avx.IsSupported)
        {
            for (int r = 0; r < rows; r += 8)
                for (int c = 0; c < cols; c += 8)
                    Transpose8(dst + c * ldd + r, ldd, src + r * lds + c, lds);
            return;
        }
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) dst[c * ldd + r] = src[r * lds + c];
    }

    /// <summary>One 8 × 8 block: unpack pairs of rows, then pairs of pairs, then swap 128-bit halves.</summary>
    static void Transpose8(float* dst, int ldd, float* src, int lds)
    {
        var t0 = Avx.UnpackLow(Avx.LoadVector256(src), Avx.LoadVector256(src + lds));
        var t1 = Avx.UnpackHigh(Avx.LoadVector256(src), Avx.LoadVector256(src + lds));
        var t2 = Avx.UnpackLow(Avx.LoadVector256(src + 2 * lds), Avx.LoadVector256(src + 3 * lds));
        var t3 = Avx.UnpackHigh(Avx.LoadVector256(src + 2 * lds), Avx.LoadVector256(src + 3 * lds));
        var t4 = Avx.UnpackLow(Avx.LoadVector256(src + 4 * lds), Avx.LoadVector256(src + 5 * lds));
        var t5 = Avx.UnpackHigh(Avx.LoadVector256(src + 4 * lds), Avx.LoadVector256(src + 5 * lds));
        var t6 = Avx.UnpackLow(Avx.LoadVector256(src + 6 * lds), Avx.LoadVector256(src + 7 * lds));
        var t7 = Avx.UnpackHigh(Avx.LoadVector256(src + 6 * lds), Avx.LoadVector256(src + 7 * lds));
        // u0..u3: columns 0|4, 1|5, 2|6, 3|7 of rows 0–3 (low half: columns 0–3, high half: 4–7); u4..u7 the same of rows 4–7.
        var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
        Avx.Store(dst, Avx.Permute2x128(u0, u4, 0x20)); Avx.Store(dst + ldd, Avx.Permute2x128(u1, u5, 0x20));
        Avx.Store(dst + 2 * ldd, Avx.Permute2x128(u2, u6, 0x20)); Avx.Store(dst + 3 * ldd, Avx.Permute2x128(u3, u7, 0x20));
        Avx.Store(dst + 4 * ldd, Avx.Permute2x128(u0, u4, 0x31)); Avx.Store(dst + 5 * ldd, Avx.Permute2x128(u1, u5, 0x31));
        Avx.Store(dst + 6 * ldd, Avx.Permute2x128(u2, u6, 0x31)); Avx.Store(dst + 7 * ldd, Avx.Permute2x128(u3, u7, 0x31));
    }

    /// <summary>One 16 × 16 block: unpack pairs of rows, then pairs of pairs, then two 128-bit lane shuffles.</summary>
    static void Transpose16(float* dst, int ldd, float* src, int lds)
    {
        var t = new Rows16();
        for (int i = 0; i < 16; i += 2)
        {
            var a = Vector512.Load(src + i * lds); var b = Vector512.Load(src + (i + 1) * lds);
            t[i] = Avx512F.UnpackLow(a, b); t[i + 1] = Avx512F.UnpackHigh(a, b);
        }
        var u = new Rows16();
        for (int i = 0; i < 16; i += 4)
        {
            var a0 = t[i].AsDouble(); var a1 = t[i + 1].AsDouble(); var b0 = t[i + 2].AsDouble(); var b1 = t[i + 3].AsDouble();
            u[i] = Avx512F.UnpackLow(a0, b0).AsSingle(); u[i + 1] = Avx512F.UnpackHigh(a0, b0).AsSingle();
            u[i + 2] = Avx512F.UnpackLow(a1, b1).AsSingle(); u[i + 3] = Avx512F.UnpackHigh(a1, b1).AsSingle();
        }
        // u[4i + c] holds element c + 4·L of rows 4i..4i+3 in its 128-bit lane L.
        for (int c = 0; c < 4; c++)
        {
            var v0 = Avx512F.Shuffle4x128(u[c], u[4 + c], 0x88); var w0 = Avx512F.Shuffle4x128(u[c], u[4 + c], 0xDD);
            var v1 = Avx512F.Shuffle4x128(u[8 + c], u[12 + c], 0x88); var w1 = Avx512F.Shuffle4x128(u[8 + c], u[12 + c], 0xDD);
            Avx512F.Shuffle4x128(v0, v1, 0x88).Store(dst + c * ldd);
            Avx512F.Shuffle4x128(w0, w1, 0x88).Store(dst + (c + 4) * ldd);
            Avx512F.Shuffle4x128(v0, v1, 0xDD).Store(dst + (c + 8) * ldd);
            Avx512F.Shuffle4x128(w0, w1, 0xDD).Store(dst + (c + 12) * ldd);
        }
    }

    [InlineArray(16)]
    struct Rows16 { Vector512<float> element; }

    // ---- lane-wise softmax steps on a transposed tile (keys × rows) ------------------------------------------

    /// <summary>
    /// Online softmax of one Sᵀ tile for rows [r0, r1) and keys [0, keys): masks keys past each row's time on the
    /// diagonal (to −∞), raises the row maxima, rescale[r] = exp(old max − new max), Sᵀ → P = exp(S − max) in place,
    /// and rowSum = rowSum·rescale + Σ_j P (keys added in order). A row that has seen no key yet keeps max −∞ and
    /// subtracts 0 instead, so it stays at P = 0, rescale = 0 without NaN.
    /// </summary>
    static void Softmax(int vb, float* st, int ld, int keys, int r0, int r1, int j0, bool diagonal,
                        float* rowTime, float* rowMax, float* rowSum, float* rescale)
    {
        if (vb >= 512)
        {
            var ninf = Vector512.Create(float.NegativeInfinity);
            for (int r = r0; r < r1; r += 16)
            {
                var time = Vector512.Load(rowTime + r);
                var oldMax = Vector512.Load(rowMax + r);
                var max = oldMax;
                for (int j = 0; j < keys; j++)
                {
                    float* p = st + j * ld + r;
                    var x = Vector512.Load(p);
                    if (diagonal)
                    {
                        x = Vector512.ConditionalSelect(Vector512.GreaterThan(Vector512.Create((float)(j0 + j)), time), ninf, x);
                        x.Store(p);
                    }
                    max = Vector512.Max(max, x);
                }
                var sub = Vector512.ConditionalSelect(Vector512.Equals(max, ninf), Vector512<float>.Zero, max);
                var c = CpuSimd.Exp(oldMax - sub);
                var sum = Vector512<float>.Zero;
                for (int j = 0; j < keys; j++)
                {
                    float* p = st + j * ld + r;
                    var e = CpuSimd.Exp(Vector512.Load(p) - sub);
                    e.Store(p);
                    sum += e;
                }
                (Vector512.Load(rowSum + r) * c + sum).Store(rowSum + r);
                max.Store(rowMax + r);
                c.Store(rescale + r);
            }
        }
        else if (vb >= 256)
        {
            var ninf = Vector256.Create(float.NegativeInfinity);
            for (int r = r0; r < r1; r += 8)
            {
                var time = Vector256.Load(rowTime + r);
                var oldMax = Vector256.Load(rowMax + r);
                var max = oldMax;
                for (int j = 0; j < keys; j++)
                {
                    float* p = st + j * ld + r;
                    var x = Vector256.Load(p);
                    if (diagonal)
                    {
                        x = Vector256.ConditionalSelect(Vector256.GreaterThan(Vector256.Create((float)(j0 + j)), time), ninf, x);
                        x.Store(p);
                    }
                    max = Vector256.Max(max, x);
                }
                var sub = Vector256.ConditionalSelect(Vector256.Equals(max, ninf), Vector256<float>.Zero, max);
                var c = CpuSimd.Exp(oldMax - sub);
                var sum = Vector256<float>.Zero;
                for (int j = 0; j < keys; j++)
                {
                    float* p = st + j * ld + r;
                    var e = CpuSimd.Exp(Vector256.Load(p) - sub);
                    e.Store(p);
                    sum += e;
                }
                (Vector256.Load(rowSum + r) * c + sum).Store(rowSum + r);
                max.Store(rowMax + r);
                c.Store(rescale + r);
            }
        }
        else
        {
            for (int r = r0; r < r1; r++)
            {
                float time = rowTime[r], oldMax = rowMax[r], max = oldMax;
                for (int j = 0; j < keys; j++)
                {
                    float* p = st + j * ld + r;
                    if (diagonal && j0 + j > time) *p = float.NegativeInfinity;
                    max = MathF.Max(max, *p);
                }
                float sub = max == float.NegativeInfinity ? 0f : max;
                float c = CpuSimd.Exp(oldMax - sub), sum = 0;
                for (int j = 0; j < keys; j++)
                {
                    float* p = st + j * ld + r;
                    float e = CpuSimd.Exp(*p - sub);
                    *p = e;
                    sum += e;
                }
                rowSum[r] = rowSum[r] * c + sum;
                rowMax[r] = max;
                rescale[r] = c;
            }
        }
    }

    /// <summary>
    /// Backward step of one tile for rows [r0, r1) and keys [0, keys): Sᵀ → P = exp(S − lse), dPᵀ → dS = P ⊙ (dP − D),
    /// both 0 where the causal mask hides the key (diagonal tiles) and for padding rows (lse = +∞, D = 0).
    /// </summary>
    static void Gradients(int vb, float* pt, float* dst, int ld, int keys, int r0, int r1, int j0, bool diagonal,
                          float* rowTime, float* rowLse, float* rowD)
    {
        if (vb >= 512)
        {
            for (int r = r0; r < r1; r += 16)
            {
                var time = Vector512.Load(rowTime + r);
                var l = Vector512.Load(rowLse + r);
                var dd = Vector512.Load(rowD + r);
                for (int j = 0; j < keys; j++)
                {
                    float* p = pt + j * ld + r, ds = dst + j * ld + r;
                    var e = CpuSimd.Exp(Vector512.Load(p) - l);
                    if (diagonal) e = Vector512.ConditionalSelect(Vector512.GreaterThan(Vector512.Create((float)(j0 + j)), time), Vector512<float>.Zero, e);
                    e.Store(p);
                    (e * (Vector512.Load(ds) - dd)).Store(ds);
                }
            }
        }
        else if (vb >= 256)
        {
            for (int r = r0; r < r1; r += 8)
            {
                var time = Vector256.Load(rowTime + r);
                var l = Vector256.Load(rowLse + r);
                var dd = Vector256.Load(rowD + r);
                for (int j = 0; j < keys; j++)
                {
                    float* p = pt + j * ld + r, ds = dst + j * ld + r;
                    var e = CpuSimd.Exp(Vector256.Load(p) - l);
                    if (diagonal) e = Vector256.ConditionalSelect(Vector256.GreaterThan(Vector256.Create((float)(j0 + j)), time), Vector256<float>.Zero, e);
                    e.Store(p);
                    (e * (Vector256.Load(ds) - dd)).Store(ds);
                }
            }
        }
        else
        {
            for (int r = r0; r < r1; r++)
                for (int j = 0; j < keys; j++)
                {
                    float* p = pt + j * ld + r, ds = dst + j * ld + r;
                    float e = diagonal && j0 + j > rowTime[r] ? 0f : CpuSimd.Exp(*p - rowLse[r]);
                    *p = e;
                    *ds = e * (*ds - rowD[r]);
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

    // The whole 16-blocks of Dot on the scalar path, out of line so the vector paths carry no lane array in their frame.
    static float DotScalar(float* x, float* y, int n, ref int i)
    {
        var lanes = new CpuSimd.Lanes16();
        for (; i + 16 <= n; i += 16)
            for (int l = 0; l < 16; l++) lanes[l] = MathF.FusedMultiplyAdd(x[i + l], y[i + l], lanes[l]);
        return CpuSimd.Fold16(lanes);
    }

    // ---- tile kernels -----------------------------------------------------------------------------------------

    /// <summary>
    /// s[i·lds + c] = Σ_{d&lt;kdim} a[i·lda + d] · bt[d·ldb + c] for rows i &lt; rows (a multiple of 4) and columns
    /// c in [c0, c1) (multiples of 16): one key row of a against 64 transposed query rows at a time, so each output
    /// element is one FMA chain over d in order at every width.
    /// </summary>
    static void TileProduct(int vb, float* a, int lda, float* bt, int ldb, float* s, int lds, int rows, int c0, int c1, int kdim)
    {
        if (vb >= 512) TileProduct512(a, lda, bt, ldb, s, lds, rows, c0, c1, kdim);
        else if (vb >= 256) TileProduct256(a, lda, bt, ldb, s, lds, rows, c0, c1, kdim);
        else TileProductScalar(a, lda, bt, ldb, s, lds, rows, c0, c1, kdim);
    }

    static void TileProduct512(float* a, int lda, float* bt, int ldb, float* s, int lds, int rows, int c0, int c1, int kdim)
    {
        int c = c0;
        // Columns outer: a 64-column panel of bt (kdim × 64) stays in L1 while every key row passes over it.
        for (; c + 64 <= c1; c += 64)
            for (int i = 0; i < rows; i += 4)
            {
                float* a0 = a + i * lda, a1 = a0 + lda, a2 = a1 + lda, a3 = a2 + lda;
                Vector512<float> c00 = default, c01 = default, c02 = default, c03 = default;
                Vector512<float> c10 = default, c11 = default, c12 = default, c13 = default;
                Vector512<float> c20 = default, c21 = default, c22 = default, c23 = default;
                Vector512<float> c30 = default, c31 = default, c32 = default, c33 = default;
                float* bp = bt + c;
                for (int d = 0; d < kdim; d++, bp += ldb)
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
                float* o = s + i * lds + c;
                c00.Store(o); c01.Store(o + 16); c02.Store(o + 32); c03.Store(o + 48); o += lds;
                c10.Store(o); c11.Store(o + 16); c12.Store(o + 32); c13.Store(o + 48); o += lds;
                c20.Store(o); c21.Store(o + 16); c22.Store(o + 32); c23.Store(o + 48); o += lds;
                c30.Store(o); c31.Store(o + 16); c32.Store(o + 32); c33.Store(o + 48);
            }
        for (; c < c1; c += 16)   // a last panel narrower than 64 columns: one vector at a time
            for (int i = 0; i < rows; i += 4)
            {
                float* a0 = a + i * lda, a1 = a0 + lda, a2 = a1 + lda, a3 = a2 + lda;
                Vector512<float> x0 = default, x1 = default, x2 = default, x3 = default;
                float* bp = bt + c;
                for (int d = 0; d < kdim; d++, bp += ldb)
                {
                    var bv = Vector512.Load(bp);
                    x0 = Vector512.FusedMultiplyAdd(Vector512.Create(a0[d]), bv, x0);
                    x1 = Vector512.FusedMultiplyAdd(Vector512.Create(a1[d]), bv, x1);
                    x2 = Vector512.FusedMultiplyAdd(Vector512.Create(a2[d]), bv, x2);
                    x3 = Vector512.FusedMultiplyAdd(Vector512.Create(a3[d]), bv, x3);
                }
                float* o = s + i * lds + c;
                x0.Store(o); x1.Store(o + lds); x2.Store(o + 2 * lds); x3.Store(o + 3 * lds);
            }
    }

    static void TileProduct256(float* a, int lda, float* bt, int ldb, float* s, int lds, int rows, int c0, int c1, int kdim)
    {
        // 6 rows × 16 columns per pass: 12 accumulators + 2 loads + 1 broadcast = 15 of the 16 ymm registers, and
        // 8 loads per 12 FMAs. (The 2 × 32 blocks held 8 accumulators, as many as two FMA pipes of 4-cycle latency
        // need with no slack; with both kernels at 6 × 16 the small preset's forward went from 18.1 to 16.7 ms on one
        // Zen 3 core.)
        int six = rows / 6 * 6;
        for (int c = c0; c < c1; c += 16)
            for (int i = 0; i < six; i += 6)
            {
                // Rows 0–2 of a from a0, rows 3–5 from a3, both advanced per step: no index arithmetic in the loop.
                float* a0 = a + i * lda, a3 = a0 + 3 * lda;
                long r1 = lda;
                Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default;
                Vector256<float> c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
                float* bp = bt + c;
                for (int d = 0; d < kdim; d++, bp += ldb, a0++, a3++)
                {
                    var b0 = Vector256.Load(bp); var b1 = Vector256.Load(bp + 8);
                    var x = Vector256.Create(a0[0]);
                    c00 = Vector256.FusedMultiplyAdd(x, b0, c00); c01 = Vector256.FusedMultiplyAdd(x, b1, c01);
                    x = Vector256.Create(a0[r1]);
                    c10 = Vector256.FusedMultiplyAdd(x, b0, c10); c11 = Vector256.FusedMultiplyAdd(x, b1, c11);
                    x = Vector256.Create(a0[2 * r1]);
                    c20 = Vector256.FusedMultiplyAdd(x, b0, c20); c21 = Vector256.FusedMultiplyAdd(x, b1, c21);
                    x = Vector256.Create(a3[0]);
                    c30 = Vector256.FusedMultiplyAdd(x, b0, c30); c31 = Vector256.FusedMultiplyAdd(x, b1, c31);
                    x = Vector256.Create(a3[r1]);
                    c40 = Vector256.FusedMultiplyAdd(x, b0, c40); c41 = Vector256.FusedMultiplyAdd(x, b1, c41);
                    x = Vector256.Create(a3[2 * r1]);
                    c50 = Vector256.FusedMultiplyAdd(x, b0, c50); c51 = Vector256.FusedMultiplyAdd(x, b1, c51);
                }
                float* o = s + i * lds + c;
                c00.Store(o); c01.Store(o + 8); o += lds;
                c10.Store(o); c11.Store(o + 8); o += lds;
                c20.Store(o); c21.Store(o + 8); o += lds;
                c30.Store(o); c31.Store(o + 8); o += lds;
                c40.Store(o); c41.Store(o + 8); o += lds;
                c50.Store(o); c51.Store(o + 8);
            }
        // The rows past the last six (rows is a multiple of 4, so 2 or 4); c0 and c1 are multiples of 16, so no columns are left.
        if (six < rows) TileProduct256Pairs(a, lda, bt, ldb, s, lds, six, rows, c0, c1, kdim);
    }

    /// <summary>TileProduct256 for rows [r0, r1) (an even count) and columns [c0, c1), 2 rows at a time.</summary>
    static void TileProduct256Pairs(float* a, int lda, float* bt, int ldb, float* s, int lds, int r0, int r1, int c0, int c1, int kdim)
    {
        // 2 rows × 32 columns per pass keeps 8 accumulators, within the 16 ymm registers.
        int c = c0;
        for (; c + 32 <= c1; c += 32)
            for (int i = r0; i < r1; i += 2)
            {
                float* a0 = a + i * lda, a1 = a0 + lda;
                Vector256<float> c00 = default, c01 = default, c02 = default, c03 = default;
                Vector256<float> c10 = default, c11 = default, c12 = default, c13 = default;
                float* bp = bt + c;
                for (int d = 0; d < kdim; d++, bp += ldb)
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
                float* o = s + i * lds + c;
                c00.Store(o); c01.Store(o + 8); c02.Store(o + 16); c03.Store(o + 24); o += lds;
                c10.Store(o); c11.Store(o + 8); c12.Store(o + 16); c13.Store(o + 24);
            }
        for (; c < c1; c += 8)
            for (int i = r0; i < r1; i += 2)
            {
                float* a0 = a + i * lda, a1 = a0 + lda;
                Vector256<float> x0 = default, x1 = default;
                float* bp = bt + c;
                for (int d = 0; d < kdim; d++, bp += ldb)
                {
                    var bv = Vector256.Load(bp);
                    x0 = Vector256.FusedMultiplyAdd(Vector256.Create(a0[d]), bv, x0);
                    x1 = Vector256.FusedMultiplyAdd(Vector256.Create(a1[d]), bv, x1);
                }
                float* o = s + i * lds + c;
                x0.Store(o); x1.Store(o + lds);
            }
    }

    static void TileProductScalar(float* a, int lda, float* bt, int ldb, float* s, int lds, int rows, int c0, int c1, int kdim)
    {
        for (int i = 0; i < rows; i++)
        {
            float* o = s + i * lds, ar = a + i * lda;
            for (int c = c0; c < c1; c++) o[c] = 0;
            for (int d = 0; d < kdim; d++)
            {
                float x = ar[d];
                float* bp = bt + d * ldb;
                for (int c = c0; c < c1; c++) o[c] = MathF.FusedMultiplyAdd(x, bp[c], o[c]);   // fused, as the vector kernels
            }
        }
    }

    /// <summary>
    /// c[i][:] = c[i][:]·scale[i] + Σ_{j0≤j&lt;j1} w[i·wRow + j·wCol] · m[j·ldm + :] for rows i in [i0, i1) (multiples of
    /// 4), over all ldc = Kp columns (a multiple of 16). scale may be null (no rescaling). wRow = 1 reads a transposed
    /// tile (P·V from Pᵀ), wCol = 1 a row of it (Pᵀ·dout). Each element is one FMA chain over j in order.
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
                long wj = (long)j0 * wCol;
                for (int j = j0; j < j1; j++, mp += ldm, wj += wCol)
                {
                    var m0 = Vector512.Load(mp); var m1 = Vector512.Load(mp + 16);
                    var m2 = Vector512.Load(mp + 32); var m3 = Vector512.Load(mp + 48);
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
        // 6 rows × 16 columns per pass, as TileProduct256: 12 accumulators, 8 loads per 12 FMAs; the 2 or 4 rows
        // past the last six (i1 − i0 is a multiple of 4) by Accumulate256Pairs.
        int six = i0 + (i1 - i0) / 6 * 6;
        for (int i = i0; i < six; i += 6)
        {
            float* wi = w + (long)i * wRow;
            float* ci = c + (long)i * kp;
            for (int x = 0; x < kp; x += 16)
            {
                float* cx = ci + x;
                var a00 = Vector256.Load(cx); var a01 = Vector256.Load(cx + 8);
                var a10 = Vector256.Load(cx + kp); var a11 = Vector256.Load(cx + kp + 8);
                var a20 = Vector256.Load(cx + 2 * kp); var a21 = Vector256.Load(cx + 2 * kp + 8);
                var a30 = Vector256.Load(cx + 3 * kp); var a31 = Vector256.Load(cx + 3 * kp + 8);
                var a40 = Vector256.Load(cx + 4 * kp); var a41 = Vector256.Load(cx + 4 * kp + 8);
                var a50 = Vector256.Load(cx + 5 * kp); var a51 = Vector256.Load(cx + 5 * kp + 8);
                if (scale != null)
                {
                    // Broadcast per row here rather than held across the loop: the 12 accumulators need the registers.
                    var t = Vector256.Create(scale[i]); a00 *= t; a01 *= t;
                    t = Vector256.Create(scale[i + 1]); a10 *= t; a11 *= t;
                    t = Vector256.Create(scale[i + 2]); a20 *= t; a21 *= t;
                    t = Vector256.Create(scale[i + 3]); a30 *= t; a31 *= t;
                    t = Vector256.Create(scale[i + 4]); a40 *= t; a41 *= t;
                    t = Vector256.Create(scale[i + 5]); a50 *= t; a51 *= t;
                }
                float* mp = m + (long)j0 * ldm + x;
                // Rows 0–2 of w from wj, rows 3–5 from wk: two pointers and one stride, no index arithmetic per step.
                float* wj = wi + (long)j0 * wCol, wk = wj + 3L * wRow;
                long r1 = wRow;
                for (int j = j0; j < j1; j++, mp += ldm, wj += wCol, wk += wCol)
                {
                    var m0 = Vector256.Load(mp); var m1 = Vector256.Load(mp + 8);
                    var e = Vector256.Create(wj[0]);
                    a00 = Vector256.FusedMultiplyAdd(e, m0, a00); a01 = Vector256.FusedMultiplyAdd(e, m1, a01);
                    e = Vector256.Create(wj[r1]);
                    a10 = Vector256.FusedMultiplyAdd(e, m0, a10); a11 = Vector256.FusedMultiplyAdd(e, m1, a11);
                    e = Vector256.Create(wj[2 * r1]);
                    a20 = Vector256.FusedMultiplyAdd(e, m0, a20); a21 = Vector256.FusedMultiplyAdd(e, m1, a21);
                    e = Vector256.Create(wk[0]);
                    a30 = Vector256.FusedMultiplyAdd(e, m0, a30); a31 = Vector256.FusedMultiplyAdd(e, m1, a31);
                    e = Vector256.Create(wk[r1]);
                    a40 = Vector256.FusedMultiplyAdd(e, m0, a40); a41 = Vector256.FusedMultiplyAdd(e, m1, a41);
                    e = Vector256.Create(wk[2 * r1]);
                    a50 = Vector256.FusedMultiplyAdd(e, m0, a50); a51 = Vector256.FusedMultiplyAdd(e, m1, a51);
                }
                a00.Store(cx); a01.Store(cx + 8); a10.Store(cx + kp); a11.Store(cx + kp + 8);
                a20.Store(cx + 2 * kp); a21.Store(cx + 2 * kp + 8); a30.Store(cx + 3 * kp); a31.Store(cx + 3 * kp + 8);
                a40.Store(cx + 4 * kp); a41.Store(cx + 4 * kp + 8); a50.Store(cx + 5 * kp); a51.Store(cx + 5 * kp + 8);
            }
        }
        if (six < i1) Accumulate256Pairs(c, kp, w, wRow, wCol, m, ldm, six, i1, j0, j1, scale);
    }

    /// <summary>Accumulate256 for rows [i0, i1), an even count: 2 rows × 32 columns per pass, then single-vector column tails.</summary>
    static void Accumulate256Pairs(float* c, int kp, float* w, int wRow, int wCol, float* m, int ldm,
                                   int i0, int i1, int j0, int j1, float* scale)
    {
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
