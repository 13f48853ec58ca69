// Preloaded (LD_PRELOAD) by benchmarks/torch-peer.sh for its "torch-fp32-mkl-intel" row, on AMD CPUs only.
//
// libtorch's CPU build links oneMKL statically and does its fp32 GEMMs with MKL's sgemm. MKL chooses its kernels by
// CPU vendor as well as instruction set: on an AMD CPU with AVX-512 it takes its AVX2 kernels (on a 2-core EPYC, a
// 1024³ sgemm at 37% of the fp32 FMA peak). libtorch_cpu.so exports MKL's vendor test and calls it through the PLT,
// so this definition replaces it: MKL then dispatches on the instruction set alone and takes its AVX-512 kernels
// (the same sgemm at 88% of the peak). The as-shipped row is always measured beside this one.
int mkl_serv_intel_cpu_true(void) { return 1; }
