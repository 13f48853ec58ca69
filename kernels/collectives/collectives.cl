// The arithmetic of the device-side collectives (src/Palm.Gpu/Parallel/OpenClCollectives.cs): devices of
// one OpenCL context all-reduce and reduce-scatter by copying data between their buffers with
// clEnqueueCopyBuffer, never through the host. A rank first gathers the P copies of the slice it is
// responsible for into a staging buffer, rank by rank; this kernel then combines the P copies. The point
// of doing it this way rather than summing into the destination as the copies arrive is determinism:
// every element is reduced by one work-item, always starting from rank 0 and adding ranks 1..P-1 in
// order, so the result never depends on which device finished first. Where the device has fp64
// (PALM_FP64) the sum is accumulated in double and rounded to float once, exactly as the host
// collectives (InProcessCollectives) do, so both transports give the same bits; without fp64 the sum is
// in float, still in rank order, so still bit-reproducible, but not equal to the host's. Max follows
// .NET's Math.Max (IEEE 754-2019 maximum: a NaN wins, +0 beats -0) for the same reason.
//
// Dimensions: P ranks of the group; n elements of the slice; stride >= n the distance between ranks'
// copies in the staging buffer.
//
// reduce_ranks: stage (P, stride) -> dst[dst_offset .. dst_offset + n) = op over p of stage[p·stride + i]

#ifndef RR_PER_ITEM
#define RR_PER_ITEM 4   // elements per work-item, strided by the global size so neighbours read neighbours
#endif

#define RR_SUM 0
#define RR_MAX 1

#ifdef PALM_FP64
typedef double ACC;
#else
typedef float ACC;
#endif

// Math.Max(a, b) of .NET: a != b (a NaN included) -> a if it is NaN, else the larger; equal -> b unless b is -0.
inline ACC max_like_dotnet(const ACC a, const ACC b)
{
    if (a != b) return isnan(a) ? a : (b < a ? a : b);
    return signbit(b) ? a : b;
}

__kernel void reduce_ranks(__global float* dst, const ulong dst_offset, __global const float* stage,
                           const uint ranks, const ulong count, const ulong stride, const uint op)
{
    const ulong items = get_global_size(0);
    for (int j = 0; j < RR_PER_ITEM; j++) {
        const ulong i = get_global_id(0) + (ulong)j * items;
        if (i >= count) return;
        ACC acc = (ACC)stage[i];
        if (op == RR_SUM)
            for (uint p = 1; p < ranks; p++) acc += (ACC)stage[p * stride + i];
        else
            for (uint p = 1; p < ranks; p++) acc = max_like_dotnet(acc, (ACC)stage[p * stride + i]);
        dst[dst_offset + i] = (float)acc;
    }
}
