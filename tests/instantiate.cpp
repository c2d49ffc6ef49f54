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
template class MoELayer<float, Eigen::bfloat16>;
template class MoELayer<float, Eigen::half>;
template class MoEWorkspace<float>;
template class MoEWorkspace<double>;
template class CpuBackend<float>;
template void CpuBackend<float>::forward(const MoELayer<float, Eigen::bfloat16>&, const ConstRowRef<float>&,
                                         RowRef<float>);
template struct RouterGate<float>;
template struct RouterGate<double>;
template struct RouterScratch<float>;
template struct RouterScratch<double>;
template void route<float>(const RouterOptions&, const ConstRowRef<float>&, const float*, int,
                           Eigen::Ref<IdMatrix>, RowRef<float>, RouterScratch<float>&, RoutingStats*);
template void route<double>(const RouterOptions&, const ConstRowRef<double>&, const double*, int,
                            Eigen::Ref<IdMatrix>, RowRef<double>, RouterScratch<double>&, RoutingStats*);
template void gate_logits<float>(const RouterGate<float>&, const RouterOptions&, const ConstRowRef<float>&,
                                 RowRef<float>, GateScratch<float>&);
template void ffn_forward<float>(const FfnWeightsView<float>&, const ConstRowRef<float>&, RowRef<float>,
                                 FfnWorkspace<float>&, ThreadPool*, const GluActivation&);
template void ffn_forward<double>(const FfnWeightsView<double>&, const ConstRowRef<double>&, RowRef<double>,
                                  FfnWorkspace<double>&, ThreadPool*, const GluActivation&);
template void ffn_forward<float>(const FfnWeightsView<Eigen::bfloat16>&, const ConstRowRef<float>&,
                                 RowRef<float>, FfnWorkspace<float>&, ThreadPool*, const GluActivation&);
template FfnWeights<Eigen::half> convert_weights<Eigen::half>(const FfnWeightsView<float>&);
template ConstructedPartition independent_clustering<float>(const Eigen::Ref<const ColMatrix<float>>&, int,
                                                            std::uint64_t, int);
template ConstructedPartition coactivation_partition<float>(const ConstRowRef<float>&, int, std::uint64_t,
                                                            int);
template Eigen::MatrixXd cluster_importance<float>(const ConstRowRef<float>&, const ConstRowRef<float>&,
                                                   const std::vector<int>&, int);
template Eigen::MatrixXd split_importance_by_activation<float>(const Eigen::Ref<const Eigen::VectorXd>&,
                                                               const ConstRowRef<float>&,
                                                               const std::vector<int>&, int);
template RowMatrix<double> expert_activation_mass<float>(const ConstRowRef<float>&, const ExpertPartition&);
template ColMatrix<float> centroid_router<float>(const Eigen::Ref<const ColMatrix<float>>&,
                                                 const ExpertPartition&);
template ColMatrix<float> fit_router<float>(const ConstRowRef<float>&,
                                            const Eigen::Ref<const RowMatrix<double>>&, double);
}  // namespace moe
