// Rotary position embedding, rotate-half form, base 10000, applied to all K dims of every head.
// For i < K/2 the pair (x_i, x_{i+K/2}) is rotated by the angle t·θ_i with θ_i = 10000^(−2i/K):
//   out_i       = x_i·cos − x_{i+K/2}·sin
//   out_{i+K/2} = x_{i+K/2}·cos + x_i·sin
// The backward is the inverse rotation (angle −t·θ_i), so one kernel serves both with a sign.
// Angles are computed in double where the device has fp64: t·θ reaches ~T radians and a float
// angle would lose ~1e-4 of accuracy at T = 2048. Each work-item owns one pair, so out may alias inp.
//
// Dimensions: B batch, T time, Hs heads of this tensor (H for queries, G for keys), K head dim.
//
// rope: inp (B,T,Hs,K) -> out (B,T,Hs,K), sign +1 forward, −1 backward (dinp from dout)

__kernel void rope(__global float* out, __global const float* inp, const int B, const int T, const int Hs, const int K,
                   const float sign)
{
    const int half = K / 2;
    const long gid = get_global_id(0);           // ((b·T + t)·Hs + head)·K/2 + i
    if (gid >= (long)B * T * Hs * half) return;
    const long row = gid / half;                 // (b·T + t)·Hs + head
    const int i = (int)(gid - row * half);
    const int t = (int)((row / Hs) % T);
#ifdef PALM_FP64
    const double theta = pow(10000.0, -2.0 * (double)i / (double)K);
    const double angle = (double)t * theta;
    const float c = (float)cos(angle), s = sign * (float)sin(angle);
#else
    const float theta = pow(10000.0f, -2.0f * (float)i / (float)K);
    const float angle = (float)t * theta;
    const float c = cos(angle), s = sign * sin(angle);
#endif
    const long base = row * K;
    const float x1 = inp[base + i], x2 = inp[base + i + half];
    out[base + i] = x1 * c - x2 * s;
    out[base + i + half] = x2 * c + x1 * s;
}
