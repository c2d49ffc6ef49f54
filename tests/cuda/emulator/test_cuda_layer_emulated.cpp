// test_cuda_layer (the CUDA layer against the CPU layer) built by the host compiler against the
// CPU emulator of CUDA (emulator.hpp), so the CUDA kernels run, under the sanitizers too, on
// machines without a GPU.
#include "test_cuda_layer.cu"
