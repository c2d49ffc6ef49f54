// A second translation unit that includes the CUDA layer and instantiates it, linked into
// test_cuda_host: the header-only kernels must not collide at link time.
#include <moe/cuda/moe_layer.cuh>

template class moe::cuda::DeviceMoELayer<float>;
template class moe::cuda::DeviceMoELayer<Eigen::bfloat16>;

namespace cudatest {
bool second_unit_linked() { return true; }
}  // namespace cudatest
