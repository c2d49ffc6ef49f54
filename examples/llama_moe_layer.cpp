// llama_moe_layer — the LLaMA-MoE NumPy reference's demo, in C++ with moe.
//
// Build a dense SwiGLU FFN (d = 512, d_h = 2048) with random weights, split its neurons into N = 4
// experts with IndependentRandom (formula 3), route a batch of 2 x 128 tokens to the top k = 2
// experts by random gate logits (softmax over all N, weights not renormalised, as the reference
// does), run the sparse MoE layer (formulas 2, 4) and rescale by N/k (formula 6). Finally compare
// with the dense FFN the experts came from: with k < N each token sees only half of the neurons,
// and the N/k rescale is only a first-order correction, so the two differ — which is why LLaMA-MoE
// continues pre-training after the split.
#include <cstdio>
#include <moe/moe.hpp>

using namespace moe;

int main() {
  const Index d = 512, dh = 2048, batch = 2, seq = 128, tokens = batch * seq;
  const int n = 4, k = 2;
  std::printf("LLaMA-MoE layer demo\n");
  std::printf("config: d = %ld, d_h = %ld, N = %d experts, top-k = %d, batch %ld x %ld tokens\n",
              static_cast<long>(d), static_cast<long>(dh), n, k, static_cast<long>(batch),
              static_cast<long>(seq));

  // Dense weights ~ N(0, 0.01²), as the reference's demo; a real model would load them (hf_llama.hpp).
  detail::SplitMix64 rng(42);
  auto gaussian = [&](Index rows, Index cols, double sd) {
    ColMatrix<float> m(rows, cols);
    for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<float>(sd * rng.normal());
    return m;
  };
  const ColMatrix<float> w_up = gaussian(d, dh, 0.01), w_gate = gaussian(d, dh, 0.01),
                         w_down = gaussian(dh, d, 0.01);
  const FfnWeightsView<float> dense(w_gate.data(), w_up.data(), w_down.data(), d, dh);

  // Expert construction: IndependentRandom partition, then formula (3).
  const ExpertPartition partition = ExpertPartition::independent_random(dh, n, /*seed=*/42);
  const MoELayer<float> layer(slice_experts(dense, partition), ColMatrix<float>(), {k});
  std::printf("built %d experts of %ld neurons each\n", n, static_cast<long>(partition.expert_size(0)));

  // Input and random gate logits, as the reference's forward() draws them.
  const RowMatrix<float> x = RowMatrix<float>(gaussian(tokens, d, 1.0));
  const RowMatrix<float> logits = RowMatrix<float>(gaussian(tokens, n, 1.0));
  std::printf("input shape: %ld x %ld x %ld\n", static_cast<long>(batch), static_cast<long>(seq),
              static_cast<long>(d));

  const TopKRouting<float> routing = route_top_k<float>(logits, k, TopKWeights::kSoftmax);
  ThreadPool pool;
  MoEWorkspace<float> ws;
  RoutingRecord<float> record;
  RowMatrix<float> y(tokens, d);
  layer.forward_routed(x, routing.ids, routing.weights, y, ws, &pool, &record);
  std::printf("output shape: %ld x %ld x %ld\n", static_cast<long>(batch), static_cast<long>(seq),
              static_cast<long>(d));
  std::printf("scale factor: %.2f\n", layer.scale());

  std::printf("first token, top-%d experts:", k);
  for (int s = 0; s < k; ++s)
    std::printf("  expert %d (weight %.4f)", record.expert_ids(0, s), record.weights(0, s));
  std::printf("\ntokens per expert:");
  for (Index c : record.tokens_per_expert) std::printf(" %ld", static_cast<long>(c));
  std::printf("  (T*k = %ld rows computed, of %ld for running every expert)\n",
              static_cast<long>(ws.dispatch().offsets.back()), static_cast<long>(tokens * n));

  FfnWorkspace<float> fws;
  RowMatrix<float> y_dense(tokens, d);
  ffn_forward<float>(dense, x, y_dense, fws, &pool);
  std::printf("relative difference |y_moe - y_dense| / |y_dense| = %.4f\n",
              (y - y_dense).norm() / y_dense.norm());
  return 0;
}
