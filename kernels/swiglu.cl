// SwiGLU activation of the PaLM MLP: out = swish(gate) ⊙ up, swish(g) = g·sigmoid(g).
// Elementwise, one work-item per element; gate and up are the two halves of the input projection.
// Backward: d/dg [g·σ(g)] = σ(g)·(1 + g·(1 − σ(g))).
//
// Dimensions: N rows, F MLP width; count = N·F.
//
// swiglu_forward:  gate (N,F), up (N,F) -> out (N,F)
// swiglu_backward: dout (N,F), gate, up -> dgate (N,F), dup (N,F)   (both overwritten)

inline float sigmoid(const float x) { return 1.0f / (1.0f + exp(-x)); }

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
    const float swish = g * s;
    dgate[i] = d * u * (s + swish * (1.0f - s));
    dup[i] = d * swish;
}
