// moe — umbrella header: LLaMA-MoE layer primitives (Zhu et al. 2024, arXiv 2406.16554).
#pragma once

#include "moe/activation.hpp"            // SwiGLU, GeGLU, ReGLU, clamped SwiGLU
#include "moe/aggregate.hpp"             // formula (2) aggregation, formula (6) rescale
#include "moe/config.hpp"                // MOE_CHECK, moe::Error
#include "moe/dispatch.hpp"              // stable counting sort of (token, slot) pairs by expert
#include "moe/expert_construction.hpp"   // clustering, co-activation, sharing, gradient splits
#include "moe/ffn.hpp"                   // formulas (1), (4): SwiGLU FFN
#include "moe/hf_checkpoint.hpp"         // a HF checkpoint directory (single file or shards)
#include "moe/hf_llama.hpp"              // Hugging Face LLaMA FFN weights, zero-copy
#include "moe/hf_moe_block.hpp"          // one Hugging Face MoE block (Mixtral, Qwen, DeepSeek, Llama 4, ...)
#include "moe/importance.hpp"            // formula (5) and dL/dh = dL/dy W_down^T
#include "moe/kmeans.hpp"                // balanced and plain k-means
#include "moe/llama_model.hpp"           // LLaMA / LLaMA-MoE decoder forward with a KV cache
#include "moe/llama_moe_checkpoint.hpp"  // LLaMA-MoE checkpoints: write, config, load a layer
#include "moe/math.hpp"                  // sigmoid, SiLU, softmax, top-k over N values
#include "moe/moe_layer.hpp"             // MoELayer: route, dispatch, experts, combine, rescale
#include "moe/partition.hpp"             // ExpertPartition, IndependentRandom
#include "moe/presets.hpp"               // MoEConfig of each real MoE family
#include "moe/router.hpp"                // formula (2): RouterOptions, route(), route_top_k
#include "moe/router_gate.hpp"           // router weights and logits (linear, LLaMA-MoE MLP gate, noise)
#include "moe/router_init.hpp"           // random / centroid / fitted routers, oracle recall
#include "moe/routing_stats.hpp"         // load, importance, CV², aux loss, z-loss, entropy
#include "moe/safetensors.hpp"           // safetensors reader
#include "moe/safetensors_writer.hpp"    // safetensors writer
#include "moe/slicing.hpp"               // formula (3): expert slicing
#include "moe/thread_pool.hpp"           // caller-owned thread pool
#include "moe/types.hpp"                 // RowMatrix, ColMatrix
