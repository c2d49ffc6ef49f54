// bench/moe_bench_cuda.cu built by the host compiler against the CPU emulator of CUDA
// (emulator.hpp): a smoke test of the benchmark's own code where there is no GPU.
#include "../../../bench/moe_bench_cuda.cu"
