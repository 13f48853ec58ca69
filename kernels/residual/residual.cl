// Residual adds, elementwise over flat tensors. The backward of a residual add is routing
// dout to both inputs, which the model does with add_inplace.
// Each work-item handles one element: no reductions, so results are exact and order-free.
// out may alias a or b, and acc may alias x: every element is read before it is written.
//
// Dimensions: n elements (any shape flattened).
//
// add:         a (n), b (n) -> out (n) = a + b
// add_inplace: acc (n), x (n) -> acc (n) += x

__kernel void add(__global float* out, __global const float* a, __global const float* b, const long n)
{
    const long i = get_global_id(0);
    if (i < n) out[i] = a[i] + b[i];
}

__kernel void add_inplace(__global float* acc, __global const float* x, const long n)
{
    const long i = get_global_id(0);
    if (i < n) acc[i] = acc[i] + x[i];
}
