// Explicit instantiation of every public class template for float and double: compiles every
// member function, including those no test happens to call.
#include <moe/moe.hpp>

namespace moe {
template struct FfnWeightsView<float>;
template struct FfnWeightsView<double>;
template struct FfnWeights<float>;
template struct FfnWeights<double>;
template class FfnWorkspace<float>;
template class FfnWorkspace<double>;
template struct TopKRouting<float>;
template struct TopKRouting<double>;
template struct RoutingRecord<float>;
template struct RoutingRecord<double>;
template class MoELayer<float>;
template class MoELayer<double>;
template class MoEWorkspace<float>;
template class MoEWorkspace<double>;
template void ffn_forward<float>(const FfnWeightsView<float>&, const ConstRowRef<float>&, RowRef<float>,
                                 FfnWorkspace<float>&, ThreadPool*);
template void ffn_forward<double>(const FfnWeightsView<double>&, const ConstRowRef<double>&, RowRef<double>,
                                  FfnWorkspace<double>&, ThreadPool*);
}  // namespace moe
