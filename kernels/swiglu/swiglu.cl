// SwiGLU activation of the PaLM MLP: out = swish(gate) ⊙ up, swish(g) = g·sigmoid(g).
// Elementwise, one work-item per element; gate and up are the two halves of the input projection.
// Backward: d/dg [g·σ(g)] = σ(g)·(1 + g·(1 − σ(g))).
// σ(x) is evaluated from e = exp(−|x|) ∈ (0,1]: 1/(1+e) for x ≥ 0, e/(1+e) otherwise, as the CPU backend
// does: exp never overflows and σ keeps its relative accuracy in the negative tail.
//
// Dimensions: N rows, F MLP width; count = N·F.
//
// swiglu_forward:  gate (N,F), up (N,F) -> out (N,F)
// swiglu_backward: dout (N,F), gate, up -> dgate (N,F), dup (N,F)   (both overwritten)
// Every element is read before it is written, so outputs may alias inputs.

inline float sigmoid(const float x)
{
    const float e = exp(-fabs(x));
    const float r = 1.0f / (1.0f + e);
    return x >= 0.0f ? r : e * r;
}

__kernel void swiglu_forward(__global float* out, __global const float* gate, __global const float* up, const long count)
{
    const long i = get_global_id(0);
    if (i >= count) return;
    const float g = gate[i];
    out[i] = g * sigmoid(g) * up[i];
}

__kernel void swiglu_backward(__global float* dgate, __global float* dup, __global const float* dout,
                              __global const float* gate, __global const float* up, const long count)
{
    const long i = get_global_id(0);
    if (i >= count) return;
    const float g = gate[i], u = up[i], d = dout[i];
    const float s = sigmoid(g);
    dgate[i] = d * u * s * (1.0f + g * (1.0f - s));
    dup[i] = d * g * s;
}
