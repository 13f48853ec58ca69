using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Palm.Gpu.Backends.Cpu;

// Matmul on the CPU: a packed, cache-blocked GEMM in the GotoBLAS/BLIS style.
//
// The GEMM speaks in its own sizes: C is M×N and K is the summed dimension. The model (B batch, T time,
// D model width, F MLP width, V vocab, N = B·T rows) calls it as
//   forward   y (N,F)  = x (N,D) · W (D,F)
//   backward  dx (N,D) = dy (N,F) · Wᵀ           transB
//             dW (D,F) += xᵀ · dy                transA, accumulate
//   logits    (N,V)    = h (N,D) · Eᵀ · 1/√D     transB, alpha
// so matmul needs no backward kernel of its own: its gradients are the same call with transposes.
//
// C (M,N) = alpha · op(A) (M,K) · op(B) (K,N) [+ C]; A stored (M,K) or (K,M) when transA, B stored (K,N) or (N,K) when transB.
// Pieces (the fused block's projections): C, A and B may each be a list of buffers concatenated along one axis of the
// GEMM (M: A and C split by rows; N: B and C split by columns; K: A and B split along K). The packers read the pieces
// straight into their panels, so a fused GEMM copies nothing and each piece keeps its own leading dimension.
//
// Loops, outer to inner:
//   jc  N in panels of ≤ NC columns  the packed B panel (K × NC, all of K, ≤ half the L3) is shared by every thread;
//                                    one parallel loop per panel, so the only barrier is at its end
//   items (MC rows × NR slivers)     the parallel unit, claimed one at a time: owns those C tiles for all of K
//     pc  K in blocks of KC          the item packs its A block (MC × KC, stays in L2) per block, and the first item
//                                    to need a chunk of 8 B slivers of the block claims and packs it
//       jr, ir  MR × NR tiles        the micro-kernel loads the tile into registers, runs kc FMAs per element and
//                                    stores it back
// Packing turns the four transpose cases into one layout (A: MR rows interleaved per k; B: NR columns per k),
// zero-padded at the edges, so the micro-kernel never looks at M, N, the transposes or the pieces. An operand stored
// along the tile (A when transA, B when not transB) is packed by the kernels of its first use, which read it in place
// and write each row into the packed panel as they go (PackingRows): the copy rides on FMA-bound code instead of
// taking a pass of its own (Zen 4, weight gradients: +2–9%). Other operands, and edges, are packed in a pass.
//
// Determinism: element C[i,j] is one chain of FMAs, c = fma(a_p, alpha·b_p, c) for p = 0 … K−1 in order, starting
// from C[i,j] (accumulate) or from 0. (alpha is folded into B as it is packed, and is usually 1.) A K block boundary
// only stores c and loads it back, which is exact, so nothing depends on the thread count, the tile the element falls
// in, the instruction path or the cache blocking the tuner picks (GemmTuner.cs: KC, MC and NC move work around, the
// micro-tile shape only groups elements): the Vector512, Vector256, Vector128 and scalar kernels perform the same fused
// operations in the same order, so all give the same bits. Pieces along M or N
// give the bits of one call per piece; pieces along K the bits of one call on the concatenated operands. (Without
// hardware FMA only the scalar path runs, still fused, through the runtime's software fma.) A, B and C must not overlap.

/// <summary>Which micro-kernel runs; the best accelerated one is the default.</summary>
internal enum GemmPath { Scalar, Vector128, Vector256, Vector512 }

/// <summary>
/// Cache blocking: Kc (the K block), McPanels (A panels per work item) and Nc (columns per B panel, rounded up to the
/// tile width). They only move work around: every blocking gives the same bits (see "Determinism" above).
/// </summary>
internal readonly record struct GemmBlocking(int Kc, int McPanels, int Nc)
{
    /// <summary>
    /// The default K block: C is read and written once per 256 FMAs per element and one B sliver of 256 × 32 floats =
    /// 32 KiB stays in L1 (Kc 128 lost ~30% on Zen 4). A deeper block halves C's traffic but its sliver spills to L2;
    /// which wins depends on the CPU and the shape, so the tuner also tries <see cref="DeepKc"/>.
    /// </summary>
    public const int DefaultKc = 256;
    /// <summary>The deeper K block the tuner tries.</summary>
    public const int DeepKc = 512;

    /// <summary>
    /// Rows of the default A block, for every tile height: 168 × 256 floats = 168 KiB in L2. Each B sliver comes from
    /// L3 and is reused by every panel of the block, so a block of fewer rows pays that miss more often (Zen 3, 6×16
    /// tile, K = 2048 shapes on 2 threads, cold operands: 72 rows 158–167 GFLOP/s, 168 rows 167–175).
    /// </summary>
    public const int DefaultBlockRows = 168;

    /// <summary>
    /// The blocking used until the tuner has measured: a DefaultBlockRows A block of the path's tile height and a B panel
    /// of K × 4096 floats in L3 (fewer columns when K is long: see PanelFloats). The tuner (GemmTuner) replaces
    /// them with what measures best on the machine it runs on.
    /// </summary>
    public static GemmBlocking For(GemmPath path) => new(Kc: DefaultKc, McPanels: PanelsOf(DefaultBlockRows, path), Nc: 4096);

    /// <summary>The whole tiles of the path's height nearest <paramref name="rows"/> rows, at least one.</summary>
    public static int PanelsOf(int rows, GemmPath path)
    {
        int mr = CpuMatmul.TileOf(path).Mr;
        return Math.Max(1, (rows + mr / 2) / mr);
    }
}

/// <summary>
/// One GEMM operand as the packers see it, A or B: element (t, p) with t along the micro-tile (M for A, N for B) and p
/// along K, stored contiguously along t (packed[p, t] = src[p·ld + t]: A when transA, B when not transB) or along p.
/// Given as pieces concatenated along t or along p, each with its own start and leading dimension; pinned for the call.
/// </summary>
internal sealed unsafe class GemmOperand
{
    readonly nint[] _ptr;
    readonly int[] _start;     // _start[i] = first index of piece i along the split axis; _start[^1] = the extent
    readonly long[] _ld;
    readonly bool _alongK;
    readonly bool _contiguous;

    public GemmOperand(nint[] ptr, int[] start, long[] ld, bool alongK, bool contiguous)
    {
        _ptr = ptr; _start = start; _ld = ld; _alongK = alongK; _contiguous = contiguous;
    }

    /// <summary>A whole matrix: T × K stored with leading dimension ld.</summary>
    public static GemmOperand Single(float* p, long ld, bool contiguous) => new([(nint)p], [0, int.MaxValue], [ld], false, contiguous);

    int PieceAt(int index)
    {
        int i = 0;
        while (index >= _start[i + 1]) i++;
        return i;
    }

    /// <summary>Packs t in [t0, t0 + live), p in [pc, pc + kc) into kc rows of `width` floats, zero past `live`.</summary>
    public void Pack(float* dst, int t0, int live, int width, int pc, int kc)
    {
        if (_ptr.Length == 1) { PackOne(dst, 0, t0, pc, live, width, kc); return; }
        if (_alongK)
        {
            // Each piece gives whole packed rows.
            for (int i = PieceAt(pc), end = pc + kc; i < _ptr.Length && _start[i] < end; i++)
            {
                int q0 = Math.Max(pc, _start[i]), q1 = Math.Min(end, _start[i + 1]);
                PackOne(dst + (long)(q0 - pc) * width, i, t0, q0 - _start[i], live, width, q1 - q0);
            }
            return;
        }
        int first = PieceAt(t0);
        if (t0 + live <= _start[first + 1]) { PackOne(dst, first, t0 - _start[first], pc, live, width, kc); return; }
        // The panel straddles pieces (once per piece boundary): element by element.
        for (int i = first, end = t0 + live; i < _ptr.Length && _start[i] < end; i++)
        {
            int u0 = Math.Max(t0, _start[i]), u1 = Math.Min(end, _start[i + 1]);
            float* src = (float*)_ptr[i];
            long ld = _ld[i];
            for (int p = 0; p < kc; p++)
                for (int u = u0; u < u1; u++)
                {
                    long tl = u - _start[i], pl = pc + p;
                    dst[(long)p * width + (u - t0)] = _contiguous ? src[pl * ld + tl] : src[tl * ld + pl];
                }
        }
        for (int p = 0; p < kc; p++) for (int t = live; t < width; t++) dst[(long)p * width + t] = 0f;
    }

    /// <summary>
    /// Packs `count` consecutive panels of `width` starting at t0 (panel i at dst + i·width·kc), t below `extent` live.
    /// An operand stored along t is copied a source row at a time across several panels, so each row is read as one
    /// run instead of a short run per panel (the transposed-A and plain-B cases); ragged or straddling panels use Pack.
    /// </summary>
    public void PackPanels(float* dst, int t0, int count, int width, int extent, int pc, int kc)
    {
        long panelStride = (long)width * kc;
        for (int i = 0; i < count;)
        {
            int t = t0 + i * width, run = 0;
            if (_contiguous && width >= 4)
            {
                if (_alongK)
                {
                    run = Math.Min(Math.Min(count - i, PanelsPerPass), (extent - t) / width);
                    if (run > 0)
                        for (int q = PieceAt(pc), end = pc + kc; q < _ptr.Length && _start[q] < end; q++)
                        {
                            int q0 = Math.Max(pc, _start[q]), q1 = Math.Min(end, _start[q + 1]);
                            CpuMatmul.PackContiguousPanels(dst + i * panelStride + (long)(q0 - pc) * width,
                                (float*)_ptr[q] + (q0 - _start[q]) * _ld[q] + t, _ld[q], run, width, q1 - q0, panelStride);
                        }
                }
                else
                {
                    int piece = _ptr.Length == 1 ? 0 : PieceAt(t);
                    run = Math.Min(Math.Min(count - i, PanelsPerPass), (Math.Min(extent, _start[piece + 1]) - t) / width);
                    if (run > 0)
                        CpuMatmul.PackContiguousPanels(dst + i * panelStride,
                            (float*)_ptr[piece] + pc * _ld[piece] + (t - _start[piece]), _ld[piece], run, width, kc, panelStride);
                }
            }
            if (run > 0) { i += run; continue; }
            Pack(dst + i * panelStride, t, Math.Min(width, extent - t), width, pc, kc);
            i++;
        }
    }

    /// <summary>
    /// The source of packed rows [pc, pc + kc) of the panels covering t in [t0, t0 + width), when the operand is stored
    /// along t (A when transA, B otherwise) and that range lies in one piece: packed[p, t] = rows[(p − pc)·ld + t − t0].
    /// A micro-kernel can then read a block's first use in place and write the packed copy as it goes.
    /// </summary>
    public bool TryRows(int t0, int width, int pc, int kc, out float* rows, out long ld)
    {
        rows = null; ld = 0;
        if (!_contiguous) return false;
        int piece = PieceAt(_alongK ? pc : t0);
        if ((_alongK ? pc + kc : t0 + width) > _start[piece + 1]) return false;
        ld = _ld[piece];
        rows = (float*)_ptr[piece] + (_alongK ? pc - _start[piece] : pc) * ld + (_alongK ? t0 : t0 - _start[piece]);
        return true;
    }

    /// <summary>Panels copied together per source row: 8 keep the destination lines in flight few and the source run ≥ 448 B.</summary>
    internal const int PanelsPerPass = 8;

    void PackOne(float* dst, int piece, int t, int p, int live, int width, int kc)
    {
        float* b = (float*)_ptr[piece];
        long ld = _ld[piece];
        if (_contiguous) PackContiguousAt(dst, b + p * ld + t, ld, live, width, kc);
        else PackStridedAt(dst, b + t * ld + p, ld, live, width, kc);
    }

    static void PackContiguousAt(float* dst, float* src, long ld, int live, int width, int kc) => CpuMatmul.PackContiguous(dst, src, ld, live, width, kc);
    static void PackStridedAt(float* dst, float* src, long ld, int live, int width, int kc) => CpuMatmul.PackStrided(dst, src, ld, live, width, kc);
}

/// <summary>C (M,N), whole or as pieces along M (each (m_i, N)) or along N (each (M, n_i)); pinned for the call.</summary>
internal sealed unsafe class GemmOutput
{
    readonly nint[] _ptr;
    readonly int[] _start;
    readonly long[] _ld;
    readonly bool _alongN;

    public GemmOutput(nint[] ptr, int[] start, long[] ld, bool alongN)
    {
        _ptr = ptr; _start = start; _ld = ld; _alongN = alongN;
    }

    public static GemmOutput Single(float* c, long ldc) => new([(nint)c], [0, int.MaxValue], [ldc], false);

    public int Pieces => _ptr.Length;
    public float* PieceStart(int i) => (float*)_ptr[i];

    int PieceAt(int index)
    {
        int i = 0;
        while (index >= _start[i + 1]) i++;
        return i;
    }

    /// <summary>The tile (i0.., j0..) of rows × cols inside one piece: its address and leading dimension; false when it straddles.</summary>
    public bool TryTile(int i0, int j0, int rows, int cols, out float* tile, out long ldc)
    {
        int at = _alongN ? j0 : i0, extent = _alongN ? cols : rows;
        int i = _ptr.Length == 1 ? 0 : PieceAt(at);
        ldc = _ld[i];
        tile = null;
        if (at + extent > _start[i + 1]) return false;
        long r = _alongN ? i0 : i0 - _start[i], c = _alongN ? j0 - _start[i] : j0;
        tile = (float*)_ptr[i] + r * ldc + c;
        return true;
    }

    /// <summary>
    /// Where column j0 of every row lies when columns [j0, j0 + cols) sit in one piece that spans all of M (C whole or
    /// split along N): tile (i0, j0) is then at the result + i0·ldc. Null when C is split along M or the columns straddle.
    /// </summary>
    public float* ColumnBase(int j0, int cols, out long ldc)
    {
        int i = _ptr.Length == 1 ? 0 : _alongN ? PieceAt(j0) : -1;
        if (i < 0 || (_alongN && j0 + cols > _start[i + 1])) { ldc = 0; return null; }
        ldc = _ld[i];
        return (float*)_ptr[i] + (_alongN ? j0 - _start[i] : j0);
    }

    /// <summary>Copies the live rows × cols of C at (i0, j0) into a scratch tile (ldScratch apart), piece by piece.</summary>
    public void Gather(float* scratch, int ldScratch, int i0, int j0, int rows, int cols) => Copy(scratch, ldScratch, i0, j0, rows, cols, toC: false);

    /// <summary>Copies a scratch tile's live rows × cols back into C at (i0, j0), piece by piece.</summary>
    public void Scatter(float* scratch, int ldScratch, int i0, int j0, int rows, int cols) => Copy(scratch, ldScratch, i0, j0, rows, cols, toC: true);

    void Copy(float* scratch, int ldScratch, int i0, int j0, int rows, int cols, bool toC)
    {
        int at = _alongN ? j0 : i0, end = at + (_alongN ? cols : rows);
        for (int i = _ptr.Length == 1 ? 0 : PieceAt(at); i < _ptr.Length && _start[i] < end; i++)
        {
            int u0 = Math.Max(at, _start[i]), u1 = Math.Min(end, _start[i + 1]);
            long ld = _ld[i];
            float* s, c;
            int r, w;
            if (_alongN) { s = scratch + (u0 - j0); c = (float*)_ptr[i] + (long)i0 * ld + (u0 - _start[i]); r = rows; w = u1 - u0; }
            else { s = scratch + (long)(u0 - i0) * ldScratch; c = (float*)_ptr[i] + (long)(u0 - _start[i]) * ld + j0; r = u1 - u0; w = cols; }
            if (toC) CpuMatmul.CopyEdge(s, ldScratch, c, ld, r, w);
            else CpuMatmul.CopyEdge(c, ld, s, ldScratch, r, w);
        }
    }
}

internal static unsafe partial class CpuMatmul
{
    /// <summary>Below this many multiply-adds one thread is faster than waking others.</summary>
    private const long SmallMacs = 64 * 64 * 64;
    /// <summary>
    /// Work items per worker and K block at least: the items are claimed as workers come free, so a worker that starts
    /// late or is briefly descheduled leaves at most one small item to wait for (M = 512 gives 4 A blocks: 2 groups each).
    /// </summary>
    private const int ItemsPerWorker = 4;
    /// <summary>Largest micro-tile of any path (14×32), for the edge-tile scratch.</summary>
    private const int MaxTile = 14 * 32;

    /// <summary>The widest supported path within CpuSimd.Bits (every path gives the same bits; this only picks the speed).</summary>
    public static GemmPath BestPath => WidestWithin(CpuSimd.Bits);

    /// <summary>
    /// The widest path the machine runs natively, whatever a test has lowered CpuSimd.Bits to: what the tuner measures,
    /// so that its choice (made once per process) never depends on which test happened to call it first.
    /// </summary>
    public static GemmPath HardwarePath => WidestWithin(512);

    static GemmPath WidestWithin(int bits) =>
        bits >= 512 && IsSupported(GemmPath.Vector512) ? GemmPath.Vector512 :
        bits >= 256 && IsSupported(GemmPath.Vector256) ? GemmPath.Vector256 :
        bits >= 128 && IsSupported(GemmPath.Vector128) ? GemmPath.Vector128 : GemmPath.Scalar;

    public static bool IsSupported(GemmPath path) => path switch
    {
        GemmPath.Vector512 => Vector512.IsHardwareAccelerated && CpuSimd.HasFma,
        GemmPath.Vector256 => Vector256.IsHardwareAccelerated && CpuSimd.HasFma,
        GemmPath.Vector128 => Vector128.IsHardwareAccelerated && CpuSimd.HasFma,
        _ => true,
    };

    /// <summary>
    /// a·b + c with one rounding, so that scalar code rounds exactly like the vector kernels. Always fused: without
    /// hardware FMA (e.g. DOTNET_EnableAVX2=0) the runtime's software fma is slower but gives the same bits.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static float MulAdd(float a, float b, float c) => MathF.FusedMultiplyAdd(a, b, c);

    /// <summary>Micro-tile rows (MR, broadcast from packed A) and columns (NR, vector loads from packed B).</summary>
    public static (int Mr, int Nr) TileOf(GemmPath path) => path switch
    {
        GemmPath.Vector512 => (14, 32),
        GemmPath.Vector256 => (6, 16),
        GemmPath.Vector128 => (6, 8),
        _ => (4, 8),
    };

    /// <summary>The path and blocking the tuner picked for this thread count and kind of call (narrowed to CpuSimd.Bits when a test lowers it).</summary>
    static (GemmPath Path, GemmBlocking Blocking) Tuned(int threads, bool transA, int m)
    {
        var choice = GemmTuner.For(threads);
        return choice.Path <= BestPath ? (choice.Path, choice.For(transA, m)) : (BestPath, GemmBlocking.For(BestPath));
    }

    // C (M,N) = op(A) (M,K) · alpha·op(B) (K,N) [+ C]
    public static void Run(int threads, CpuView<float> c, CpuView<float> a, CpuView<float> b, int m, int n, int k,
                           bool transA, bool transB, float alpha, bool accumulate)
    {
        var (path, blocking) = Tuned(threads, transA, m);
        Run(threads, c, a, b, m, n, k, transA, transB, alpha, accumulate, path, blocking);
    }

    public static void Run(int threads, CpuView<float> c, CpuView<float> a, CpuView<float> b, int m, int n, int k,
                           bool transA, bool transB, float alpha, bool accumulate, GemmPath path, GemmBlocking blocking)
    {
        Check(threads, c, a, b, m, n, k, path, blocking);
        if (m == 0 || n == 0) return;
        if (k == 0)
        {
            // Empty sum: C = alpha·0 (+ C).
            if (!accumulate) c.AsSpan(0, (long)m * n).Clear();
            return;
        }
        // The arrays stay pinned while the workers run: every loop below returns before this scope ends.
        fixed (float* cPtr = c, aPtr = a, bPtr = b)
        {
            var opA = GemmOperand.Single(aPtr, transA ? m : k, contiguous: transA);
            var opB = GemmOperand.Single(bPtr, transB ? k : n, contiguous: !transB);
            Gemm(threads, GemmOutput.Single(cPtr, n), opA, opB, m, n, k, alpha, accumulate, path, blocking);
        }
    }

    /// <summary>
    /// The fused form: C, A and B as lists of pieces, those of <paramref name="split"/> concatenated along it (M: A and C;
    /// N: B and C; K: A and B; the other operand is one buffer), piece i spanning extents[i] of that axis. Each A piece
    /// is stored (m_i, K) or (K, m_i) when transA, (M, k_i) or (k_i, M) for split K; likewise B; a C piece is (m_i, N)
    /// or (M, n_i). The caller has checked the sizes and aliasing (BackendBase.MatmulPieces).
    /// </summary>
    public static void RunPieces(int threads, MatmulSplit split, int[] extents, CpuView<float>[] c, CpuView<float>[] a, CpuView<float>[] b,
                                 int m, int n, int k, bool transA, bool transB, float alpha, bool accumulate)
    {
        if (m == 0 || n == 0) return;
        var (path, blocking) = Tuned(threads, transA, m);
        var handles = new List<GCHandle>();
        nint[] Pin(CpuView<float>[] views)
        {
            var ptrs = new nint[views.Length];
            for (int i = 0; i < views.Length; i++)
            {
                var h = GCHandle.Alloc(views[i].Array ?? Array.Empty<float>(), GCHandleType.Pinned);
                handles.Add(h);
                ptrs[i] = h.AddrOfPinnedObject() + (nint)(views[i].Offset * sizeof(float));
            }
            return ptrs;
        }
        try
        {
            var starts = new int[extents.Length + 1];
            for (int i = 0; i < extents.Length; i++) starts[i + 1] = starts[i] + extents[i];
            int[] whole = [0, int.MaxValue];
            nint[] cp = Pin(c), ap = Pin(a), bp = Pin(b);
            if (k == 0)
            {
                if (!accumulate)
                    for (int i = 0; i < c.Length; i++)
                        new Span<float>((void*)cp[i], (int)((long)(split == MatmulSplit.M ? extents[i] : m) * (split == MatmulSplit.N ? extents[i] : n))).Clear();
                return;
            }
            long[] Lds(int count, Func<int, long> ld) => Enumerable.Range(0, count).Select(ld).ToArray();
            // A: t = M, p = K. Stored (M,K) → ld is its K extent; transA (K,M) → its M extent.
            var opA = new GemmOperand(ap, split is MatmulSplit.M or MatmulSplit.K ? starts : whole,
                Lds(ap.Length, i => transA ? (split == MatmulSplit.M ? extents[i] : m) : (split == MatmulSplit.K ? extents[i] : k)),
                alongK: split == MatmulSplit.K, contiguous: transA);
            // B: t = N, p = K. Stored (K,N) → ld is its N extent; transB (N,K) → its K extent.
            var opB = new GemmOperand(bp, split is MatmulSplit.N or MatmulSplit.K ? starts : whole,
                Lds(bp.Length, i => transB ? (split == MatmulSplit.K ? extents[i] : k) : (split == MatmulSplit.N ? extents[i] : n)),
                alongK: split == MatmulSplit.K, contiguous: !transB);
            var outC = new GemmOutput(cp, split is MatmulSplit.M or MatmulSplit.N ? starts : whole,
                Lds(cp.Length, i => split == MatmulSplit.N ? extents[i] : n), alongN: split == MatmulSplit.N);
            Gemm(threads, outC, opA, opB, m, n, k, alpha, accumulate, path, blocking);
        }
        finally
        {
            foreach (var h in handles) h.Free();
        }
    }

    static void Gemm(int threads, GemmOutput c, GemmOperand a, GemmOperand b, int m, int n, int k, float alpha, bool accumulate,
                     GemmPath path, GemmBlocking blocking)
    {
        var (mr, nr) = TileOf(path);
        int workers = (long)m * n * k < SmallMacs ? 1 : threads;

        // K blocks of near-equal size; the split depends on K and Kc only.
        int kBlocks = (k + blocking.Kc - 1) / blocking.Kc;
        int kcBlock = (k + kBlocks - 1) / kBlocks;
        // Column panels: at most Nc columns, and few enough that a panel's B for all of K fits in PanelFloats; then split
        // evenly, so the last panel is not a sliver or two.
        long panelWidth = Math.Min((long)blocking.Nc, Math.Max(nr, PanelFloats / ((long)kBlocks * kcBlock)));
        int jcBlocks = (int)((n + panelWidth - 1) / panelWidth);
        int ncMax = ((n + jcBlocks - 1) / jcBlocks + nr - 1) / nr * nr;
        int sliversMax = ncMax / nr, chunksPerBlock = (sliversMax + SliversPerChunk - 1) / SliversPerChunk;

        // Items: A blocks of at most McPanels whole MR panels, as many as a multiple of the workers and as even as
        // possible, so the workers finish together. At least two per worker: with fewer, the items split the slivers
        // into more groups below, and each group packs the same A block again for fewer slivers (Zen 4, M 512 in
        // 336-row blocks: 2 blocks in 4 groups, dWqkv 188 GFLOP/s against 205 in 168-row blocks).
        int mPanels = (m + mr - 1) / mr;
        int mcPanels = workers > 1 ? Math.Min(blocking.McPanels, Math.Max(1, (mPanels + 2 * workers - 1) / (2 * workers))) : blocking.McPanels;
        int mItems = (mPanels + mcPanels - 1) / mcPanels;
        if (workers > 1) mItems = Math.Min(mPanels, (mItems + workers - 1) / workers * workers);

        var job = new Job
        {
            M = m, N = n, K = k, Alpha = alpha, Accumulate = accumulate, Path = path, Mr = mr, Nr = nr,
            MPanels = mPanels, MItems = mItems, A = a, B = b, C = c,
            KBlocks = kBlocks, KcBlock = kcBlock, SliversMax = sliversMax, ChunksPerBlock = chunksPerBlock,
        };
        float* packB = PackBuffer.ForB((long)kBlocks * kcBlock * ncMax);
        // Which B chunks of the current panel are packed: stamps, so the array is never cleared (see Job.Chunks).
        var chunks = new int[kBlocks * chunksPerBlock];
        int panelIndex = 0;

        for (int jc = 0; jc < n; jc += ncMax)
        {
            int nc = Math.Min(ncMax, n - jc);
            int slivers = (nc + nr - 1) / nr;
            // Too few A blocks to keep every worker busy to the end: split the slivers into groups as well.
            int groups = 1;
            if (workers > 1 && mItems < ItemsPerWorker * workers)
                groups = Math.Min(slivers, (ItemsPerWorker * workers + mItems - 1) / mItems);
            var step = job with { Jc = jc, Nc = nc, Slivers = slivers, Groups = groups, PackedB = (nint)packB, Chunks = chunks, Panel = ++panelIndex };
            // One parallel loop per column panel: each item runs its A block through every K block, and B is packed a
            // chunk at a time by the first item that needs it, so the workers never wait for each other between K blocks.
            CpuParallel.For(workers, mItems * groups, item => step.ComputeItem(item));
        }
    }

    private static void Check(int threads, CpuView<float> c, CpuView<float> a, CpuView<float> b, int m, int n, int k, GemmPath path, GemmBlocking blocking)
    {
        if (c.IsNull || a.IsNull || b.IsNull) throw new ArgumentNullException(c.IsNull ? nameof(c) : a.IsNull ? nameof(a) : nameof(b));
        if (threads < 1) throw new ArgumentOutOfRangeException(nameof(threads), $"matmul: threads must be ≥ 1, got {threads}");
        if (m < 0 || n < 0 || k < 0) throw new ArgumentOutOfRangeException(nameof(m), $"matmul: sizes must be ≥ 0, got M={m} N={n} K={k}");
        if ((long)m * k > a.Length) throw new ArgumentException($"matmul: op(A) is {m}×{k} = {(long)m * k} floats but A holds {a.Length}; check M, K and transA", nameof(a));
        if ((long)k * n > b.Length) throw new ArgumentException($"matmul: op(B) is {k}×{n} = {(long)k * n} floats but B holds {b.Length}; check K, N and transB", nameof(b));
        if ((long)m * n > c.Length) throw new ArgumentException($"matmul: C is {m}×{n} = {(long)m * n} floats but holds {c.Length}; check M and N", nameof(c));
        if ((long)m * n > int.MaxValue) throw new ArgumentException($"matmul: C of {m}×{n} exceeds one array", nameof(c));
        if (!IsSupported(path)) throw new PlatformNotSupportedException($"matmul: the {path} path is not accelerated on this machine");
        if (blocking.Kc < 1 || blocking.McPanels < 1 || blocking.Nc < 1) throw new ArgumentOutOfRangeException(nameof(blocking), $"matmul: blocking sizes must be ≥ 1, got {blocking}");
    }

    /// <summary>B slivers packed together, by one item: one pass of GemmOperand.PackPanels.</summary>
    private const int SliversPerChunk = GemmOperand.PanelsPerPass;
    /// <summary>
    /// Most floats of packed B a column panel holds for all of K: half the last-level cache, 4–16 MiB (8 MiB when the
    /// size is unknown). The panel is packed once and read by every item, so the items go through all K blocks without
    /// a barrier; a wider panel saves a barrier per column panel (Zen 3, 32 MiB L3, cold operands: dh = dy·Wᵀ of
    /// 2048×512×4736 ran at 162 GFLOP/s with 8 MiB panels, 177 with 16).
    /// </summary>
    private static readonly long PanelFloats = Math.Clamp(CacheBytes(3) / 2, 4L << 20, 16L << 20) / sizeof(float);

    /// <summary>The size of the level-n cache CPU 0 sees (Linux sysfs), or 16 MiB when it cannot be read.</summary>
    internal static long CacheBytes(int level)
    {
        try
        {
            foreach (var dir in Directory.EnumerateDirectories("/sys/devices/system/cpu/cpu0/cache", "index*"))
            {
                if (File.ReadAllText(Path.Combine(dir, "level")).Trim() != level.ToString()) continue;
                string size = File.ReadAllText(Path.Combine(dir, "size")).Trim();
                long scale = size.EndsWith('K') ? 1L << 10 : size.EndsWith('M') ? 1L << 20 : 1;
                if (long.TryParse(size.TrimEnd('K', 'M'), out long value)) return value * scale;
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return 16L << 20;
    }

    /// <summary>One column panel (jc) of a GEMM: everything a work item needs, passed by value to the workers.</summary>
    private record struct Job
    {
        public int M, N, K, Mr, Nr;
        public bool Accumulate;
        public float Alpha;
        public GemmPath Path;
        public int MPanels, MItems;
        public int KBlocks, KcBlock, SliversMax, ChunksPerBlock;
        public int Jc, Nc, Slivers, Groups;
        /// <summary>op(B) for the panel's columns and all of K: K block kb at PackedB + kb·KcBlock·SliversMax·NR, its
        /// sliver s a further s·NR·kc on (kc rows of NR floats).</summary>
        public nint PackedB;
        public GemmOperand A, B;
        public GemmOutput C;
        /// <summary>
        /// Per (K block, chunk of SliversPerChunk B slivers): 2·Panel − 1 while an item packs it, 2·Panel once packed, less
        /// before. The first item to need a chunk claims it and packs it as it computes it (its kernels' first reads), so
        /// the panel is not written out in a pass of its own and read back, and no worker waits at a barrier between
        /// packing and computing; others take their other chunks first.
        /// </summary>
        public int[] Chunks;
        /// <summary>This column panel's number in the call, from 1: the stamps of earlier panels are smaller.</summary>
        public int Panel;

        /// <summary>Updates the C tiles of one A block and sliver group through every K block in order.</summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public readonly void ComputeItem(int item)
        {
            int mItem = item / Groups, group = item % Groups;
            // Even split: item i gets panels [i·P/I, (i+1)·P/I), slivers likewise per group.
            int panel0 = (int)((long)mItem * MPanels / MItems);
            int panels = (int)((long)(mItem + 1) * MPanels / MItems) - panel0;
            int row0 = panel0 * Mr;
            int s0 = (int)((long)group * Slivers / Groups), s1 = (int)((long)(group + 1) * Slivers / Groups);
            float* packA = PackBuffer.ForA(panels * (long)Mr * KcBlock);
            int c0 = s0 / SliversPerChunk, c1 = (s1 - 1) / SliversPerChunk;
            Span<int> later = stackalloc int[c1 - c0 + 1];

            for (int kb = 0; kb < KBlocks; kb++)
            {
                var block = new KBlock(kb, Math.Min(KcBlock, K - kb * KcBlock), kb == 0 && !Accumulate);
                // A stored along M (transA) is packed by the kernels of the block's first sliver as they read it;
                // otherwise (A stored (M,K), or panels straddling pieces) in a pass of its own now.
                var a = new ABlock(packA, panels, row0);
                if (A.TryRows(row0, Math.Min(panels * Mr, M - row0), kb * KcBlock, block.Kc, out a.Rows, out a.Ld)) a.Pending = true;
                else PackA(block, ref a);
                // The group's slivers a chunk at a time. A chunk another worker is packing is left for later, not waited on;
                // one nobody has claimed is claimed and packed by this item's kernels as they first read it.
                int deferred = 0;
                for (int c = c0; c <= c1; c++)
                {
                    bool packing = false;
                    if (!Packed(block, c) && !(packing = TryClaim(block, c))) { later[deferred++] = c; continue; }
                    ComputeChunk(block, ref a, s0, s1, c, packing);
                }
                for (int d = 0; d < deferred; d++)
                {
                    int c = later[d];
                    var spin = new SpinWait();
                    while (!Packed(block, c)) spin.SpinOnce(sleep1Threshold: -1);
                    ComputeChunk(block, ref a, s0, s1, c, packing: false);
                }
            }
        }

        /// <summary>One K block of the panel: its index, depth and whether it overwrites C (the first, unless accumulating).</summary>
        readonly record struct KBlock(int Index, int Kc, bool Overwrite);

        /// <summary>An item's A block in the current K block: its packed panels and, while Pending, where to read them in place.</summary>
        struct ABlock(float* packed, int panels, int row0)
        {
            public readonly float* Packed = packed;
            public readonly int Panels = panels, Row0 = row0;
            /// <summary>Not packed yet: the first sliver's kernels read it at Rows (Ld apart) and pack it.</summary>
            public bool Pending;
            public float* Rows;
            public long Ld;
        }

        readonly void PackA(in KBlock block, ref ABlock a)
        {
            A.PackPanels(a.Packed, a.Row0, a.Panels, Mr, M, block.Index * KcBlock, block.Kc);
            a.Pending = false;
        }

        readonly float* Sliver(in KBlock block, int s) => (float*)PackedB + ((long)block.Index * KcBlock * SliversMax + (long)s * block.Kc) * Nr;

        readonly bool Packed(in KBlock block, int chunk) => Volatile.Read(ref Chunks[block.Index * ChunksPerBlock + chunk]) == 2 * Panel;

        /// <summary>Claims the chunk for packing if no other item has; true if this one now packs it.</summary>
        readonly bool TryClaim(in KBlock block, int chunk)
        {
            ref int state = ref Chunks[block.Index * ChunksPerBlock + chunk];
            int seen = Volatile.Read(ref state);
            return seen < 2 * Panel - 1 && Interlocked.CompareExchange(ref state, 2 * Panel - 1, seen) == seen;
        }

        /// <summary>Packs B slivers [first, end) of the block in a pass of their own.</summary>
        readonly void PackSlivers(in KBlock block, int first, int end)
        {
            if (end <= first) return;
            // Sliver s holds op(B)[pc.., jc + s·NR ..] as kc rows of NR floats.
            B.PackPanels(Sliver(block, first), Jc + first * Nr, end - first, Nr, N, block.Index * KcBlock, block.Kc);
            // alpha · op(A) · op(B) as op(A) · (alpha · op(B)): the kernels then only add into C, so a K block boundary
            // is only a store and a load of the running sums and never changes a bit.
            if (Alpha != 1f) CpuSimd.ScaleCopy(Sliver(block, first), Sliver(block, first), (end - first) * Nr * block.Kc, Alpha);
        }

        /// <summary>
        /// The group's slivers [s0, s1) that lie in chunk c. If this item claimed the chunk (packing), its slivers outside
        /// the group are packed first and those inside by their first kernel, and the chunk is marked packed at the end.
        /// </summary>
        readonly void ComputeChunk(in KBlock block, ref ABlock a, int s0, int s1, int c, bool packing)
        {
            int chunk0 = c * SliversPerChunk, chunk1 = Math.Min(Slivers, chunk0 + SliversPerChunk);
            int first = Math.Max(s0, chunk0), end = Math.Min(s1, chunk1);
            if (packing)
            {
                PackSlivers(block, chunk0, first);
                PackSlivers(block, end, chunk1);
            }
            int prefetchEnd = end < s1 && Packed(block, c + 1) ? end + 1 : end;
            Compute(block, ref a, first, end, prefetchEnd, packing);
            if (packing) Volatile.Write(ref Chunks[block.Index * ChunksPerBlock + c], 2 * Panel);
        }

        /// <summary>
        /// The C tiles of the A block's panels against B slivers [s0, s1), prefetching packed slivers below prefetchEnd;
        /// packB: the slivers are not packed yet and each is packed by its first kernel (or first, if that tile is an edge).
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        readonly void Compute(in KBlock block, ref ABlock a, int s0, int s1, int prefetchEnd, bool packB)
        {
            int kc = block.Kc, pc = block.Index * KcBlock, panels = a.Panels, row0 = a.Row0;
            bool overwrite = block.Overwrite;
            long panelSize = (long)Mr * kc;
            float* scratch = stackalloc float[MaxTile];
            // The packed B panel is larger than L2 and each sliver is read from L3 as the first panel starts on it, a new
            // line every few FMAs. While this sliver's panels run, the next sliver is asked for into L2, a share per
            // panel. (Measured on Zen 3, 512 KiB L2: the micro-kernel went from 84–89% to 90–92% of peak.)
            int sliverLines = Nr * kc / 16, linesPerPanel = (sliverLines + panels - 1) / panels;
            for (int s = s0; s < s1; s++)
            {
                int j0 = Jc + s * Nr;
                int cols = Math.Min(Nr, N - j0);
                float* sliver = Sliver(block, s);
                float* nextSliver = s + 1 < prefetchEnd && Sse.IsSupported ? sliver + (long)Nr * kc : null;
                long columnLd = 0;
                float* column = cols == Nr ? C.ColumnBase(j0, Nr, out columnLd) : null;
                // Reading B or A in place needs whole tiles written straight into C (edge tiles go through scratch).
                bool direct = column != null && Mr <= M - row0;
                float* bRows = null;
                long ldb = 0;
                if (packB && !(direct && B.TryRows(j0, Nr, pc, kc, out bRows, out ldb))) { PackSlivers(block, s, s + 1); bRows = null; }
                bool aInPlace = a.Pending && direct;
                if (a.Pending && !aInPlace) PackA(block, ref a);
                // Each kernel starts from its C tile, so a tile is asked for one kernel ahead: the sliver's first here,
                // the next panel's in the loop.
                PrefetchTileAt(column, columnLd, row0, j0, cols);
                for (int ir = 0; ir < panels; ir++)
                {
                    int i0 = row0 + ir * Mr;
                    int rows = Math.Min(Mr, M - i0);
                    float* panel = a.Packed + ir * panelSize;
                    if (nextSliver != null)
                        for (int l = ir * linesPerPanel, end = Math.Min(sliverLines, l + linesPerPanel); l < end; l++)
                            Sse.Prefetch1(nextSliver + l * 16);
                    if (ir + 1 < panels) PrefetchTileAt(column, columnLd, i0 + Mr, j0, cols);
                    if (aInPlace && rows < Mr) A.Pack(panel, i0, rows, Mr, pc, kc); // the ragged last panel: zero-padded
                    bool aRead = aInPlace && rows == Mr, bRead = bRows != null && ir == 0;
                    if (aRead || bRead)
                    {
                        var feedB = new PackingRows(bRows, ldb, sliver, Nr, Alpha);
                        if (!aRead) MicroKernel(Path, kc, new PackedRows(panel, Mr), feedB, column + i0 * columnLd, columnLd, overwrite);
                        else if (!bRead) MicroKernel(Path, kc, new PackingRows(a.Rows + (i0 - row0), a.Ld, panel, Mr, 1f), new PackedRows(sliver, Nr), column + i0 * columnLd, columnLd, overwrite);
                        else MicroKernel(Path, kc, new PackingRows(a.Rows + (i0 - row0), a.Ld, panel, Mr, 1f), feedB, column + i0 * columnLd, columnLd, overwrite);
                    }
                    else if (rows == Mr && column != null)
                    {
                        MicroKernel(Path, kc, panel, sliver, column + i0 * columnLd, columnLd, overwrite);
                    }
                    else if (rows == Mr && cols == Nr && C.TryTile(i0, j0, Mr, Nr, out float* tile, out long ldc))
                    {
                        MicroKernel(Path, kc, panel, sliver, tile, ldc, overwrite);
                    }
                    else if (rows < Mr && column != null && EdgeRows(Path, rows) == rows)
                    {
                        // The ragged last panel, as tall as a short kernel: that kernel, straight into C.
                        EdgeKernel(Path, rows, kc, panel, sliver, column + i0 * columnLd, columnLd, overwrite);
                    }
                    else
                    {
                        // Edge or straddling tile: the live part of C into scratch, the tile there, the live part back.
                        if (!overwrite)
                        {
                            new Span<float>(scratch, MaxTile).Clear();
                            C.Gather(scratch, Nr, i0, j0, rows, cols);
                        }
                        EdgeKernel(Path, rows, kc, panel, sliver, scratch, Nr, overwrite);
                        C.Scatter(scratch, Nr, i0, j0, rows, cols);
                    }
                }
                if (aInPlace) a.Pending = false;
            }
        }

        /// <summary>Asks for the whole C tile at (i0, j0) if the kernel will update it in place (edge tiles go through scratch).</summary>
        readonly void PrefetchTileAt(float* column, long columnLd, int i0, int j0, int cols)
        {
            if (i0 + Mr > M || cols < Nr) return;
            if (column != null) PrefetchTile(column + i0 * columnLd, columnLd, Mr, Nr);
            else if (C.TryTile(i0, j0, Mr, Nr, out float* tile, out long ldc)) PrefetchTile(tile, ldc, Mr, Nr);
        }
    }

    // ---- packing -------------------------------------------------------------------------------
    // A panel and a B sliver have the same shape: kc rows of `width` floats (MR for A, NR for B), the first `live`
    // of them taken from the source and the rest zero.

    /// <summary>Source lines run along the packed rows: packed[p, t] = src[p·stride + t] (A when transA, B otherwise).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void PackContiguous(float* dst, float* src, long stride, int live, int width, int kc)
    {
        if (live == width && width >= 16 && Vector512.IsHardwareAccelerated)
        {
            // Whole vectors; a width that is not a multiple of 16 ends with one vector overlapping the previous.
            for (int p = 0; p < kc; p++, src += stride, dst += width)
            {
                int t = 0;
                for (; t + 16 <= width; t += 16) Vector512.Store(Vector512.Load(src + t), dst + t);
                if (t < width) Vector512.Store(Vector512.Load(src + width - 16), dst + width - 16);
            }
            return;
        }
        if (live == width && width >= 8 && Vector256.IsHardwareAccelerated)
        {
            for (int p = 0; p < kc; p++, src += stride, dst += width)
            {
                int t = 0;
                for (; t + 8 <= width; t += 8) Vector256.Store(Vector256.Load(src + t), dst + t);
                if (t < width) Vector256.Store(Vector256.Load(src + width - 8), dst + width - 8);
            }
            return;
        }
        if (live == width && width >= 4 && Vector128.IsHardwareAccelerated)
        {
            for (int p = 0; p < kc; p++, src += stride, dst += width)
            {
                int t = 0;
                for (; t + 4 <= width; t += 4) Vector128.Store(Vector128.Load(src + t), dst + t);
                if (t < width) Vector128.Store(Vector128.Load(src + width - 4), dst + width - 4);
            }
            return;
        }
        for (int p = 0; p < kc; p++, src += stride, dst += width)
        {
            int t = 0;
            for (; t < live; t++) dst[t] = src[t];
            for (; t < width; t++) dst[t] = 0f;
        }
    }

    /// <summary>PackContiguous of `panels` whole panels side by side in the source (rows of them), panel i to dst + i·panelStride; rows outermost.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void PackContiguousPanels(float* dst, float* src, long stride, int panels, int width, int rows, long panelStride)
    {
        int run = panels * width;
        for (int p = 0; p < rows; p++, src += stride, dst += width)
        {
            // Each row is a short run far from the last (a transposed A's row is a whole activation row): ask for the
            // run PrefetchRows ahead now, since the hardware prefetchers do not follow a stride of a row.
            if (Sse.IsSupported && p + PrefetchRows < rows)
            {
                float* ahead = src + PrefetchRows * stride;
                for (int f = 0; f < run; f += 16) Sse.Prefetch0(ahead + f);
                Sse.Prefetch0(ahead + run - 1);
            }
            for (int i = 0; i < panels; i++)
                CopyRun(src + i * width, dst + i * panelStride, width);
        }
    }

    /// <summary>Rows ahead that PackContiguousPanels prefetches: enough to cover a DRAM miss at a row's copy time.</summary>
    const int PrefetchRows = 8;
    /// <summary>Floats ahead along each source line that PackStrided prefetches (four 64-byte lines).</summary>
    const int StridedPrefetch = 64;

    /// <summary>Copies width ≥ 4 floats with whole vectors, the last one overlapping the previous when width is not a multiple.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyRun(float* src, float* dst, int width)
    {
        if (width >= 16 && Vector512.IsHardwareAccelerated)
        {
            int t = 0;
            for (; t + 16 <= width; t += 16) Vector512.Store(Vector512.Load(src + t), dst + t);
            if (t < width) Vector512.Store(Vector512.Load(src + width - 16), dst + width - 16);
        }
        else if (width >= 8 && Vector256.IsHardwareAccelerated)
        {
            int t = 0;
            for (; t + 8 <= width; t += 8) Vector256.Store(Vector256.Load(src + t), dst + t);
            if (t < width) Vector256.Store(Vector256.Load(src + width - 8), dst + width - 8);
        }
        else if (Vector128.IsHardwareAccelerated)
        {
            int t = 0;
            for (; t + 4 <= width; t += 4) Vector128.Store(Vector128.Load(src + t), dst + t);
            if (t < width) Vector128.Store(Vector128.Load(src + width - 4), dst + width - 4);
        }
        else for (int t = 0; t < width; t++) dst[t] = src[t];
    }

    /// <summary>Source lines run across the packed rows: packed[p, t] = src[t·stride + p] (A stored (M,K), B when transB).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static void PackStrided(float* dst, float* src, long stride, int live, int width, int kc)
    {
        int p0 = 0;
        if (live == width && (width >= 8 || width == 6) && Avx.IsSupported)
        {
            // Register transposes: 8 source lines × 8 values of p become 8 packed rows × 8 columns. Column groups
            // start every 8; the last starts at width − 8 and may overlap the previous one (same values, no overrun).
            // A panel of 6 lines (the Vector256 and Vector128 tiles' MR) takes the 6×8 transpose: 48 contiguous floats.
            for (; p0 + 8 <= kc; p0 += 8)
            {
                // An A panel's lines (MR of them, read side by side) are more streams than the prefetchers follow
                // well: every other step (one 64-byte line per line), ask for each line's data StridedPrefetch floats
                // ahead. (Measured: +2–3% on A stored (M,K); none for the 32 lines of a transposed B sliver.)
                if (Sse.IsSupported && width <= 16 && (p0 & 15) == 0 && p0 + StridedPrefetch < kc)
                    for (int t = 0; t < width; t++) Sse.Prefetch0(src + t * stride + p0 + StridedPrefetch);
                if (width == 6)
                    Transpose6x8(src + p0, stride, dst + (long)p0 * 6);
                else
                    for (int t0 = 0; t0 < width; t0 += 8)
                    {
                        int t = Math.Min(t0, width - 8);
                        Transpose8x8(src + t * stride + p0, stride, dst + (long)p0 * width + t, width);
                    }
            }
        }
        for (int t = 0; t < width; t++)
        {
            float* line = src + t * stride;
            float* d = dst + t;
            if (t < live) for (int p = p0; p < kc; p++) d[(long)p * width] = line[p];
            else for (int p = p0; p < kc; p++) d[(long)p * width] = 0f;
        }
    }

    /// <summary>dst[j·6 + i] = src[i·ldSrc + j] for i in [0, 6), j in [0, 8): 48 contiguous floats.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose6x8(float* src, long ldSrc, float* dst)
    {
        var r4 = Avx.LoadVector256(src + 4 * ldSrc);
        var r5 = Avx.LoadVector256(src + 5 * ldSrc);
        // Lines 6 and 7 are absent: lines 4 and 5 stand in, and lanes 6–7 of every row are never kept.
        Transpose8(Avx.LoadVector256(src), Avx.LoadVector256(src + ldSrc), Avx.LoadVector256(src + 2 * ldSrc),
                   Avx.LoadVector256(src + 3 * ldSrc), r4, r5, r4, r5,
                   out var o0, out var o1, out var o2, out var o3, out var o4, out var o5, out var o6, out var o7);
        // Row j holds p0 + j's 6 values in lanes 0–5; each 8-wide store's last 2 lanes are overwritten by the next row,
        // and the last row is stored as 4 + 2 so nothing is written past the 48 floats.
        Avx.Store(dst, o0); Avx.Store(dst + 6, o1); Avx.Store(dst + 12, o2); Avx.Store(dst + 18, o3);
        Avx.Store(dst + 24, o4); Avx.Store(dst + 30, o5); Avx.Store(dst + 36, o6);
        Sse.Store(dst + 42, o7.GetLower());
        Sse.StoreLow(dst + 46, o7.GetUpper());
    }

    /// <summary>dst[j·ldDst + i] = src[i·ldSrc + j] for i, j in [0, 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8x8(float* src, long ldSrc, float* dst, long ldDst)
    {
        Transpose8(Avx.LoadVector256(src), Avx.LoadVector256(src + ldSrc), Avx.LoadVector256(src + 2 * ldSrc),
                   Avx.LoadVector256(src + 3 * ldSrc), Avx.LoadVector256(src + 4 * ldSrc), Avx.LoadVector256(src + 5 * ldSrc),
                   Avx.LoadVector256(src + 6 * ldSrc), Avx.LoadVector256(src + 7 * ldSrc),
                   out var o0, out var o1, out var o2, out var o3, out var o4, out var o5, out var o6, out var o7);
        Avx.Store(dst, o0); Avx.Store(dst + ldDst, o1); Avx.Store(dst + 2 * ldDst, o2); Avx.Store(dst + 3 * ldDst, o3);
        Avx.Store(dst + 4 * ldDst, o4); Avx.Store(dst + 5 * ldDst, o5); Avx.Store(dst + 6 * ldDst, o6); Avx.Store(dst + 7 * ldDst, o7);
    }

    /// <summary>o_j lane i = r_i lane j: interleave pairs of lines, then pairs of pairs, then swap 128-bit halves.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose8(Vector256<float> r0, Vector256<float> r1, Vector256<float> r2, Vector256<float> r3,
                                   Vector256<float> r4, Vector256<float> r5, Vector256<float> r6, Vector256<float> r7,
                                   out Vector256<float> o0, out Vector256<float> o1, out Vector256<float> o2, out Vector256<float> o3,
                                   out Vector256<float> o4, out Vector256<float> o5, out Vector256<float> o6, out Vector256<float> o7)
    {
        var t0 = Avx.UnpackLow(r0, r1); var t1 = Avx.UnpackHigh(r0, r1);
        var t2 = Avx.UnpackLow(r2, r3); var t3 = Avx.UnpackHigh(r2, r3);
        var t4 = Avx.UnpackLow(r4, r5); var t5 = Avx.UnpackHigh(r4, r5);
        var t6 = Avx.UnpackLow(r6, r7); var t7 = Avx.UnpackHigh(r6, r7);
        var u0 = Avx.Shuffle(t0, t2, 0x44); var u1 = Avx.Shuffle(t0, t2, 0xEE);
        var u2 = Avx.Shuffle(t1, t3, 0x44); var u3 = Avx.Shuffle(t1, t3, 0xEE);
        var u4 = Avx.Shuffle(t4, t6, 0x44); var u5 = Avx.Shuffle(t4, t6, 0xEE);
        var u6 = Avx.Shuffle(t5, t7, 0x44); var u7 = Avx.Shuffle(t5, t7, 0xEE);
        o0 = Avx.Permute2x128(u0, u4, 0x20); o1 = Avx.Permute2x128(u1, u5, 0x20);
        o2 = Avx.Permute2x128(u2, u6, 0x20); o3 = Avx.Permute2x128(u3, u7, 0x20);
        o4 = Avx.Permute2x128(u0, u4, 0x31); o5 = Avx.Permute2x128(u1, u5, 0x31);
        o6 = Avx.Permute2x128(u2, u6, 0x31); o7 = Avx.Permute2x128(u3, u7, 0x31);
    }

    // ---- micro-kernels ---------------------------------------------------------------------------
    // tile (MR,NR) = panel (kc,MR)ᵀ · sliver (kc,NR)  [+ tile]: the accumulators start from the tile (or zero when
    // overwriting) and each element takes kc FMAs in order; tile rows are ldc floats apart.

    // The rows come from feeds: a packed panel or sliver, or (its block's first use) the operand in place, each row
    // copied into the packed panel as the kernel reads it (PackingRows), so that copy costs no pass of its own.

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MicroKernel(GemmPath path, int kc, float* panel, float* sliver, float* tile, long ldc, bool overwrite) =>
        MicroKernel(path, kc, new PackedRows(panel, TileOf(path).Mr), new PackedRows(sliver, TileOf(path).Nr), tile, ldc, overwrite);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MicroKernel<TA, TB>(GemmPath path, int kc, TA a, TB b, float* tile, long ldc, bool overwrite)
        where TA : struct, IRowFeed where TB : struct, IRowFeed
    {
        switch (path)
        {
            case GemmPath.Vector512: Kernel14x32(kc, a, b, tile, ldc, overwrite); break;
            case GemmPath.Vector256: Kernel6x16(kc, a, b, tile, ldc, overwrite); break;
            case GemmPath.Vector128: Kernel6x8(kc, a, b, tile, ldc, overwrite); break;
            default: KernelScalar4x8(kc, a, b, tile, ldc, overwrite); break;
        }
    }

    /// <summary>
    /// Rows of the shortest kernel of the path that covers a panel of <paramref name="rows"/> ≤ MR rows. The model's M
    /// (512, 2048, 2560) is never a multiple of 14 or 6, and the full kernel run on the 8 live rows of M 512's last
    /// panel costs a whole tile (Zen 4, one thread, fused dWin 512×4736×2048: 105.5–105.9 GFLOP/s, M 504 107.2; with
    /// the 8-row kernel 106.4–108.5; in one process, two threads, cold, the model's shapes +1–1.5%; the AVX2 path's
    /// 4-row kernel on M 512's 2 last rows: dWqkv 104.1–104.6 → 106.3–106.4).
    /// </summary>
    internal static int EdgeRows(GemmPath path, int rows) => path switch
    {
        GemmPath.Vector512 => rows <= 4 ? 4 : rows <= 8 ? 8 : 14,
        GemmPath.Vector256 => rows <= 4 ? 4 : 6,
        _ => TileOf(path).Mr,
    };

    /// <summary>
    /// The micro-kernel for a panel of rows ≤ MR live rows (packed MR wide, zero past them): it updates the first
    /// EdgeRows(path, rows) rows of the tile, with the same FMAs in the same order as the full kernel's on those rows.
    /// </summary>
    private static void EdgeKernel(GemmPath path, int rows, int kc, float* panel, float* sliver, float* tile, long ldc, bool overwrite)
    {
        var (mr, nr) = TileOf(path);
        var a = new PackedRows(panel, mr);
        var b = new PackedRows(sliver, nr);
        switch ((path, EdgeRows(path, rows)))
        {
            case (GemmPath.Vector512, 4): Kernel4x32(kc, a, b, tile, ldc, overwrite); break;
            case (GemmPath.Vector512, 8): Kernel8x32(kc, a, b, tile, ldc, overwrite); break;
            case (GemmPath.Vector256, 4): Kernel4x16(kc, a, b, tile, ldc, overwrite); break;
            default: MicroKernel(path, kc, a, b, tile, ldc, overwrite); break;
        }
    }

    /// <summary>Where a micro-kernel reads each k step's row: MR floats of A to broadcast, or NR floats of B.</summary>
    internal interface IRowFeed
    {
        /// <summary>This step's row; the next call gives the next step's.</summary>
        float* Next();
    }

    /// <summary>The rows of a packed panel or sliver, `width` floats each, one after another.</summary>
    internal struct PackedRows(float* rows, int width) : IRowFeed
    {
        float* _rows = rows;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public float* Next()
        {
            float* row = _rows;
            _rows += width;
            return row;
        }
    }

    /// <summary>
    /// The rows of an operand stored along t, read in place (ld apart) and each copied, times scale, into the packed
    /// panel or sliver as it is read, for the kernels that use the block after this one. The kernel reads the scaled
    /// copy (scale is alpha for B, 1 for A), so it multiplies exactly what a separate pack would have given it.
    /// </summary>
    internal struct PackingRows(float* source, long ld, float* packed, int width, float scale) : IRowFeed
    {
        /// <summary>Rows ahead asked into L2: a DRAM miss's worth of k steps (in L2 rather than L1: rows ld apart share L1 sets).</summary>
        const int Ahead = 16;
        float* _source = source, _packed = packed;

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public float* Next()
        {
            float* row = _source, copy = _packed;
            if (Sse.IsSupported)
            {
                Sse.Prefetch1(row + Ahead * ld);
                Sse.Prefetch1(row + Ahead * ld + width - 1);
            }
            if (scale == 1f) CopyRun(row, copy, width);
            else CpuSimd.ScaleCopy(copy, row, width, scale);
            _source += ld;
            _packed += width;
            return scale == 1f ? row : copy;
        }
    }

    /// <summary>Copies rows × cols floats between an edge tile of C and the scratch tile (either way round).</summary>
    internal static void CopyEdge(float* src, long ldSrc, float* dst, long ldDst, int rows, int cols)
    {
        for (int r = 0; r < rows; r++, src += ldSrc, dst += ldDst)
            for (int j = 0; j < cols; j++) dst[j] = src[j];
    }

    /// <summary>
    /// Asks for a C tile's lines into L2 (every 16 floats of a row and its last, as rows need not be line-aligned). A
    /// kernel loads its tile before its first FMA, and the tile's rows lie a whole row of C apart and miss every cache, so
    /// the driver asks for each tile one kernel ahead (without it, measured on Zen 3 for the 6×16 kernel when the tile
    /// was read at the end: +18–35% per GEMM).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void PrefetchTile(float* c, long ldc, int rows, int cols)
    {
        if (!Sse.IsSupported) return;
        for (int r = 0; r < rows; r++, c += ldc)
        {
            for (int f = 0; f < cols; f += 16) Sse.Prefetch1(c + f);
            Sse.Prefetch1(c + cols - 1);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Load512(float* row, out Vector512<float> x0, out Vector512<float> x1)
    {
        x0 = Vector512.Load(row);
        x1 = Vector512.Load(row + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store512(float* row, Vector512<float> x0, Vector512<float> x1)
    {
        Vector512.Store(x0, row);
        Vector512.Store(x1, row + 16);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Load256(float* row, out Vector256<float> x0, out Vector256<float> x1)
    {
        x0 = Vector256.Load(row);
        x1 = Vector256.Load(row + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store256(float* row, Vector256<float> x0, Vector256<float> x1)
    {
        Vector256.Store(x0, row);
        Vector256.Store(x1, row + 8);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Load128(float* row, out Vector128<float> x0, out Vector128<float> x1)
    {
        x0 = Vector128.Load(row);
        x1 = Vector128.Load(row + 4);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store128(float* row, Vector128<float> x0, Vector128<float> x1)
    {
        Vector128.Store(x0, row);
        Vector128.Store(x1, row + 4);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel14x32<TA, TB>(int kc, TA feedA, TB feedB, float* c, long ldc, bool overwrite)
        where TA : struct, IRowFeed where TB : struct, IRowFeed
    {
        // 28 accumulators + 2 rows of B + 1 broadcast = 31 of the 32 zmm registers.
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default,
                         c40 = default, c41 = default, c50 = default, c51 = default, c60 = default, c61 = default, c70 = default, c71 = default,
                         c80 = default, c81 = default, c90 = default, c91 = default, cA0 = default, cA1 = default, cB0 = default, cB1 = default,
                         cC0 = default, cC1 = default, cD0 = default, cD1 = default;
        if (!overwrite)
        {
            Load512(c + 0 * ldc, out c00, out c01); Load512(c + 1 * ldc, out c10, out c11); Load512(c + 2 * ldc, out c20, out c21);
            Load512(c + 3 * ldc, out c30, out c31); Load512(c + 4 * ldc, out c40, out c41); Load512(c + 5 * ldc, out c50, out c51);
            Load512(c + 6 * ldc, out c60, out c61); Load512(c + 7 * ldc, out c70, out c71); Load512(c + 8 * ldc, out c80, out c81);
            Load512(c + 9 * ldc, out c90, out c91); Load512(c + 10 * ldc, out cA0, out cA1); Load512(c + 11 * ldc, out cB0, out cB1);
            Load512(c + 12 * ldc, out cC0, out cC1); Load512(c + 13 * ldc, out cD0, out cD1);
        }
        for (int p = 0; p < kc; p++)
        {
            float* a = feedA.Next(), b = feedB.Next();
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            Vector512<float> s;
            s = Vector512.Create(a[0]); c00 = Vector512.FusedMultiplyAdd(s, b0, c00); c01 = Vector512.FusedMultiplyAdd(s, b1, c01);
            s = Vector512.Create(a[1]); c10 = Vector512.FusedMultiplyAdd(s, b0, c10); c11 = Vector512.FusedMultiplyAdd(s, b1, c11);
            s = Vector512.Create(a[2]); c20 = Vector512.FusedMultiplyAdd(s, b0, c20); c21 = Vector512.FusedMultiplyAdd(s, b1, c21);
            s = Vector512.Create(a[3]); c30 = Vector512.FusedMultiplyAdd(s, b0, c30); c31 = Vector512.FusedMultiplyAdd(s, b1, c31);
            s = Vector512.Create(a[4]); c40 = Vector512.FusedMultiplyAdd(s, b0, c40); c41 = Vector512.FusedMultiplyAdd(s, b1, c41);
            s = Vector512.Create(a[5]); c50 = Vector512.FusedMultiplyAdd(s, b0, c50); c51 = Vector512.FusedMultiplyAdd(s, b1, c51);
            s = Vector512.Create(a[6]); c60 = Vector512.FusedMultiplyAdd(s, b0, c60); c61 = Vector512.FusedMultiplyAdd(s, b1, c61);
            s = Vector512.Create(a[7]); c70 = Vector512.FusedMultiplyAdd(s, b0, c70); c71 = Vector512.FusedMultiplyAdd(s, b1, c71);
            s = Vector512.Create(a[8]); c80 = Vector512.FusedMultiplyAdd(s, b0, c80); c81 = Vector512.FusedMultiplyAdd(s, b1, c81);
            s = Vector512.Create(a[9]); c90 = Vector512.FusedMultiplyAdd(s, b0, c90); c91 = Vector512.FusedMultiplyAdd(s, b1, c91);
            s = Vector512.Create(a[10]); cA0 = Vector512.FusedMultiplyAdd(s, b0, cA0); cA1 = Vector512.FusedMultiplyAdd(s, b1, cA1);
            s = Vector512.Create(a[11]); cB0 = Vector512.FusedMultiplyAdd(s, b0, cB0); cB1 = Vector512.FusedMultiplyAdd(s, b1, cB1);
            s = Vector512.Create(a[12]); cC0 = Vector512.FusedMultiplyAdd(s, b0, cC0); cC1 = Vector512.FusedMultiplyAdd(s, b1, cC1);
            s = Vector512.Create(a[13]); cD0 = Vector512.FusedMultiplyAdd(s, b0, cD0); cD1 = Vector512.FusedMultiplyAdd(s, b1, cD1);
        }
        Store512(c + 0 * ldc, c00, c01); Store512(c + 1 * ldc, c10, c11); Store512(c + 2 * ldc, c20, c21);
        Store512(c + 3 * ldc, c30, c31); Store512(c + 4 * ldc, c40, c41); Store512(c + 5 * ldc, c50, c51);
        Store512(c + 6 * ldc, c60, c61); Store512(c + 7 * ldc, c70, c71); Store512(c + 8 * ldc, c80, c81);
        Store512(c + 9 * ldc, c90, c91); Store512(c + 10 * ldc, cA0, cA1); Store512(c + 11 * ldc, cB0, cB1);
        Store512(c + 12 * ldc, cC0, cC1); Store512(c + 13 * ldc, cD0, cD1);
    }

    // Short kernels for the ragged last panel of A (see EdgeKernel): the first rows of the full kernel, no more.

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel8x32<TA, TB>(int kc, TA feedA, TB feedB, float* c, long ldc, bool overwrite)
        where TA : struct, IRowFeed where TB : struct, IRowFeed
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default,
                         c40 = default, c41 = default, c50 = default, c51 = default, c60 = default, c61 = default, c70 = default, c71 = default;
        if (!overwrite)
        {
            Load512(c + 0 * ldc, out c00, out c01); Load512(c + 1 * ldc, out c10, out c11); Load512(c + 2 * ldc, out c20, out c21);
            Load512(c + 3 * ldc, out c30, out c31); Load512(c + 4 * ldc, out c40, out c41); Load512(c + 5 * ldc, out c50, out c51);
            Load512(c + 6 * ldc, out c60, out c61); Load512(c + 7 * ldc, out c70, out c71);
        }
        for (int p = 0; p < kc; p++)
        {
            float* a = feedA.Next(), b = feedB.Next();
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            Vector512<float> s;
            s = Vector512.Create(a[0]); c00 = Vector512.FusedMultiplyAdd(s, b0, c00); c01 = Vector512.FusedMultiplyAdd(s, b1, c01);
            s = Vector512.Create(a[1]); c10 = Vector512.FusedMultiplyAdd(s, b0, c10); c11 = Vector512.FusedMultiplyAdd(s, b1, c11);
            s = Vector512.Create(a[2]); c20 = Vector512.FusedMultiplyAdd(s, b0, c20); c21 = Vector512.FusedMultiplyAdd(s, b1, c21);
            s = Vector512.Create(a[3]); c30 = Vector512.FusedMultiplyAdd(s, b0, c30); c31 = Vector512.FusedMultiplyAdd(s, b1, c31);
            s = Vector512.Create(a[4]); c40 = Vector512.FusedMultiplyAdd(s, b0, c40); c41 = Vector512.FusedMultiplyAdd(s, b1, c41);
            s = Vector512.Create(a[5]); c50 = Vector512.FusedMultiplyAdd(s, b0, c50); c51 = Vector512.FusedMultiplyAdd(s, b1, c51);
            s = Vector512.Create(a[6]); c60 = Vector512.FusedMultiplyAdd(s, b0, c60); c61 = Vector512.FusedMultiplyAdd(s, b1, c61);
            s = Vector512.Create(a[7]); c70 = Vector512.FusedMultiplyAdd(s, b0, c70); c71 = Vector512.FusedMultiplyAdd(s, b1, c71);
        }
        Store512(c + 0 * ldc, c00, c01); Store512(c + 1 * ldc, c10, c11); Store512(c + 2 * ldc, c20, c21);
        Store512(c + 3 * ldc, c30, c31); Store512(c + 4 * ldc, c40, c41); Store512(c + 5 * ldc, c50, c51);
        Store512(c + 6 * ldc, c60, c61); Store512(c + 7 * ldc, c70, c71);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4x32<TA, TB>(int kc, TA feedA, TB feedB, float* c, long ldc, bool overwrite)
        where TA : struct, IRowFeed where TB : struct, IRowFeed
    {
        Vector512<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        if (!overwrite)
        {
            Load512(c + 0 * ldc, out c00, out c01); Load512(c + 1 * ldc, out c10, out c11);
            Load512(c + 2 * ldc, out c20, out c21); Load512(c + 3 * ldc, out c30, out c31);
        }
        for (int p = 0; p < kc; p++)
        {
            float* a = feedA.Next(), b = feedB.Next();
            var b0 = Vector512.Load(b);
            var b1 = Vector512.Load(b + 16);
            Vector512<float> s;
            s = Vector512.Create(a[0]); c00 = Vector512.FusedMultiplyAdd(s, b0, c00); c01 = Vector512.FusedMultiplyAdd(s, b1, c01);
            s = Vector512.Create(a[1]); c10 = Vector512.FusedMultiplyAdd(s, b0, c10); c11 = Vector512.FusedMultiplyAdd(s, b1, c11);
            s = Vector512.Create(a[2]); c20 = Vector512.FusedMultiplyAdd(s, b0, c20); c21 = Vector512.FusedMultiplyAdd(s, b1, c21);
            s = Vector512.Create(a[3]); c30 = Vector512.FusedMultiplyAdd(s, b0, c30); c31 = Vector512.FusedMultiplyAdd(s, b1, c31);
        }
        Store512(c + 0 * ldc, c00, c01); Store512(c + 1 * ldc, c10, c11);
        Store512(c + 2 * ldc, c20, c21); Store512(c + 3 * ldc, c30, c31);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel4x16<TA, TB>(int kc, TA feedA, TB feedB, float* c, long ldc, bool overwrite)
        where TA : struct, IRowFeed where TB : struct, IRowFeed
    {
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default, c30 = default, c31 = default;
        if (!overwrite)
        {
            Load256(c + 0 * ldc, out c00, out c01); Load256(c + 1 * ldc, out c10, out c11);
            Load256(c + 2 * ldc, out c20, out c21); Load256(c + 3 * ldc, out c30, out c31);
        }
        for (int p = 0; p < kc; p++)
        {
            float* a = feedA.Next(), b = feedB.Next();
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            Vector256<float> s;
            s = Vector256.Create(a[0]); c00 = Vector256.FusedMultiplyAdd(s, b0, c00); c01 = Vector256.FusedMultiplyAdd(s, b1, c01);
            s = Vector256.Create(a[1]); c10 = Vector256.FusedMultiplyAdd(s, b0, c10); c11 = Vector256.FusedMultiplyAdd(s, b1, c11);
            s = Vector256.Create(a[2]); c20 = Vector256.FusedMultiplyAdd(s, b0, c20); c21 = Vector256.FusedMultiplyAdd(s, b1, c21);
            s = Vector256.Create(a[3]); c30 = Vector256.FusedMultiplyAdd(s, b0, c30); c31 = Vector256.FusedMultiplyAdd(s, b1, c31);
        }
        Store256(c + 0 * ldc, c00, c01); Store256(c + 1 * ldc, c10, c11);
        Store256(c + 2 * ldc, c20, c21); Store256(c + 3 * ldc, c30, c31);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x16<TA, TB>(int kc, TA feedA, TB feedB, float* c, long ldc, bool overwrite)
        where TA : struct, IRowFeed where TB : struct, IRowFeed
    {
        // 12 accumulators + 2 rows of B + 1 broadcast = 15 of the 16 ymm registers.
        Vector256<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default,
                         c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        if (!overwrite)
        {
            Load256(c + 0 * ldc, out c00, out c01); Load256(c + 1 * ldc, out c10, out c11); Load256(c + 2 * ldc, out c20, out c21);
            Load256(c + 3 * ldc, out c30, out c31); Load256(c + 4 * ldc, out c40, out c41); Load256(c + 5 * ldc, out c50, out c51);
        }
        for (int p = 0; p < kc; p++)
        {
            float* a = feedA.Next(), b = feedB.Next();
            var b0 = Vector256.Load(b);
            var b1 = Vector256.Load(b + 8);
            Vector256<float> s;
            s = Vector256.Create(a[0]); c00 = Vector256.FusedMultiplyAdd(s, b0, c00); c01 = Vector256.FusedMultiplyAdd(s, b1, c01);
            s = Vector256.Create(a[1]); c10 = Vector256.FusedMultiplyAdd(s, b0, c10); c11 = Vector256.FusedMultiplyAdd(s, b1, c11);
            s = Vector256.Create(a[2]); c20 = Vector256.FusedMultiplyAdd(s, b0, c20); c21 = Vector256.FusedMultiplyAdd(s, b1, c21);
            s = Vector256.Create(a[3]); c30 = Vector256.FusedMultiplyAdd(s, b0, c30); c31 = Vector256.FusedMultiplyAdd(s, b1, c31);
            s = Vector256.Create(a[4]); c40 = Vector256.FusedMultiplyAdd(s, b0, c40); c41 = Vector256.FusedMultiplyAdd(s, b1, c41);
            s = Vector256.Create(a[5]); c50 = Vector256.FusedMultiplyAdd(s, b0, c50); c51 = Vector256.FusedMultiplyAdd(s, b1, c51);
        }
        Store256(c + 0 * ldc, c00, c01); Store256(c + 1 * ldc, c10, c11); Store256(c + 2 * ldc, c20, c21);
        Store256(c + 3 * ldc, c30, c31); Store256(c + 4 * ldc, c40, c41); Store256(c + 5 * ldc, c50, c51);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6x8<TA, TB>(int kc, TA feedA, TB feedB, float* c, long ldc, bool overwrite)
        where TA : struct, IRowFeed where TB : struct, IRowFeed
    {
        // 12 accumulators + 2 rows of B + 1 broadcast = 15 registers: fits SSE's 16 and NEON's 32.
        Vector128<float> c00 = default, c01 = default, c10 = default, c11 = default, c20 = default, c21 = default,
                         c30 = default, c31 = default, c40 = default, c41 = default, c50 = default, c51 = default;
        if (!overwrite)
        {
            Load128(c + 0 * ldc, out c00, out c01); Load128(c + 1 * ldc, out c10, out c11); Load128(c + 2 * ldc, out c20, out c21);
            Load128(c + 3 * ldc, out c30, out c31); Load128(c + 4 * ldc, out c40, out c41); Load128(c + 5 * ldc, out c50, out c51);
        }
        for (int p = 0; p < kc; p++)
        {
            float* a = feedA.Next(), b = feedB.Next();
            var b0 = Vector128.Load(b);
            var b1 = Vector128.Load(b + 4);
            Vector128<float> s;
            s = Vector128.Create(a[0]); c00 = Vector128.FusedMultiplyAdd(s, b0, c00); c01 = Vector128.FusedMultiplyAdd(s, b1, c01);
            s = Vector128.Create(a[1]); c10 = Vector128.FusedMultiplyAdd(s, b0, c10); c11 = Vector128.FusedMultiplyAdd(s, b1, c11);
            s = Vector128.Create(a[2]); c20 = Vector128.FusedMultiplyAdd(s, b0, c20); c21 = Vector128.FusedMultiplyAdd(s, b1, c21);
            s = Vector128.Create(a[3]); c30 = Vector128.FusedMultiplyAdd(s, b0, c30); c31 = Vector128.FusedMultiplyAdd(s, b1, c31);
            s = Vector128.Create(a[4]); c40 = Vector128.FusedMultiplyAdd(s, b0, c40); c41 = Vector128.FusedMultiplyAdd(s, b1, c41);
            s = Vector128.Create(a[5]); c50 = Vector128.FusedMultiplyAdd(s, b0, c50); c51 = Vector128.FusedMultiplyAdd(s, b1, c51);
        }
        Store128(c + 0 * ldc, c00, c01); Store128(c + 1 * ldc, c10, c11); Store128(c + 2 * ldc, c20, c21);
        Store128(c + 3 * ldc, c30, c31); Store128(c + 4 * ldc, c40, c41); Store128(c + 5 * ldc, c50, c51);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void KernelScalar4x8<TA, TB>(int kc, TA feedA, TB feedB, float* c, long ldc, bool overwrite)
        where TA : struct, IRowFeed where TB : struct, IRowFeed
    {
        float* acc = stackalloc float[4 * 8];
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 8; j++) acc[r * 8 + j] = overwrite ? 0f : c[r * ldc + j];
        for (int p = 0; p < kc; p++)
        {
            float* a = feedA.Next(), b = feedB.Next();
            for (int r = 0; r < 4; r++)
            {
                float s = a[r];
                for (int j = 0; j < 8; j++) acc[r * 8 + j] = MulAdd(s, b[j], acc[r * 8 + j]);
            }
        }
        for (int r = 0; r < 4; r++)
            for (int j = 0; j < 8; j++) c[r * ldc + j] = acc[r * 8 + j];
    }

    // ---- pack buffers ----------------------------------------------------------------------------

    /// <summary>
    /// A 64-byte aligned native buffer per thread, grown on demand and kept for the next call: the A block of the items
    /// a thread computes, and the shared B panel of the calls it makes. Freed when its thread ends.
    /// </summary>
    private sealed class PackBuffer
    {
        [ThreadStatic] private static PackBuffer? t_a;
        [ThreadStatic] private static PackBuffer? t_b;

        private float* _data;
        private long _capacity;

        public static float* ForA(long floats) => (t_a ??= new PackBuffer()).Get(floats);
        public static float* ForB(long floats) => (t_b ??= new PackBuffer()).Get(floats);

        private float* Get(long floats)
        {
            if (floats > _capacity)
            {
                if (_data != null) NativeMemory.AlignedFree(_data);
                _data = null;
                // A little slack past the end so whole-vector copies never need a tail case.
                _data = (float*)NativeMemory.AlignedAlloc((nuint)((floats + 16) * sizeof(float)), 64);
                _capacity = floats;
            }
            return _data;
        }

        ~PackBuffer()
        {
            if (_data != null) NativeMemory.AlignedFree(_data);
        }
    }
}
