// Rotary position embedding, rotate-half form, base 10000, applied to all K dims of every head.
// For i < K/2 the pair (x_i, x_{i+K/2}) is rotated by the angle t·θ_i with θ_i = 10000^(−2i/K):
//   out_i       = x_i·cos − x_{i+K/2}·sin
//   out_{i+K/2} = x_{i+K/2}·cos + x_i·sin
// The backward is the inverse rotation (angle −t·θ_i), so one kernel serves both with a sign.
// cos and sin come from a table built once per (T, K) in double where the device has fp64: t·θ reaches
// ~T radians and a float angle would lose ~1e-4 at T = 2048; the same table the CPU backend builds.
// Each work-item owns one pair, so out may alias inp.
//
// Dimensions: B batch, T time, Hs heads of this tensor (H for queries, G for keys), K head dim (even).
//
// rope_table: -> table (T, K/2, 2) = (cos, sin) of t·θ_i
// rope:       inp (B,T,Hs,K), table -> out (B,T,Hs,K); sign +1 forward, −1 backward (dinp from dout)

__kernel void rope_table(__global float* table, const int T, const int K)
{
    const int half_k = K / 2;
    const long gid = get_global_id(0);           // t·K/2 + i
    if (gid >= (long)T * half_k) return;
    const int t = (int)(gid / half_k), i = (int)(gid - (long)t * half_k);
#ifdef PALM_FP64
    const double theta = pow(10000.0, -2.0 * (double)i / (double)K);
    const double angle = (double)t * theta;
    table[2 * gid] = (float)cos(angle);
    table[2 * gid + 1] = (float)sin(angle);
#else
    const float angle = (float)t * pow(10000.0f, -2.0f * (float)i / (float)K);
    table[2 * gid] = cos(angle);
    table[2 * gid + 1] = sin(angle);
#endif
}

__kernel void rope(__global float* out, __global const float* inp, __global const float* table,
                   const int B, const int T, const int Hs, const int K, const float sign)
{
    const int half_k = K / 2;
    const long gid = get_global_id(0);           // ((b·T + t)·Hs + head)·K/2 + i
    if (gid >= (long)B * T * Hs * half_k) return;
    const long row = gid / half_k;               // (b·T + t)·Hs + head
    const int i = (int)(gid - row * half_k);
    const int t = (int)((row / Hs) % T);
    const long entry = 2 * ((long)t * half_k + i);
    const float c = table[entry], s = sign * table[entry + 1];
    const long base = row * K;
    const float x1 = inp[base + i], x2 = inp[base + i + half_k];
    out[base + i] = x1 * c - x2 * s;
    out[base + i + half_k] = x2 * c + x1 * s;
}

// rope_at: inp (B,Hs,K), positions (B) -> out (B,Hs,K): one token per sequence (decoding), sequence b at
// position positions[b]; cos and sin computed as rope_table computes them, so the bits match rope at that t.
__kernel void rope_at(__global float* out, __global const float* inp, __global const int* positions,
                      const int B, const int Hs, const int K)
{
    const int half_k = K / 2;
    const long gid = get_global_id(0);           // (b·Hs + head)·K/2 + i
    if (gid >= (long)B * Hs * half_k) return;
    const long row = gid / half_k;               // b·Hs + head
    const int i = (int)(gid - row * half_k);
    const int t = positions[row / Hs];
#ifdef PALM_FP64
    const double angle = (double)t * pow(10000.0, -2.0 * (double)i / (double)K);
    const float c = (float)cos(angle), s = (float)sin(angle);
#else
    const float angle = (float)t * pow(10000.0f, -2.0f * (float)i / (float)K);
    const float c = cos(angle), s = sin(angle);
#endif
    const long base = row * K;
    const float x1 = inp[base + i], x2 = inp[base + i + half_k];
    out[base + i] = x1 * c - x2 * s;
    out[base + i + half_k] = x2 * c + x1 * s;
}
