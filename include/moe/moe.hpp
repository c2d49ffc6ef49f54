// moe — umbrella header: LLaMA-MoE layer primitives (Zhu et al. 2024, arXiv 2406.16554).
// The folders are layers; each includes only the ones listed before it.
#pragma once

// core: errors, matrix types, scalar math, the thread pool.
#include "moe/core/config.hpp"       // MOE_CHECK, moe::Error
#include "moe/core/math.hpp"         // sigmoid, SiLU, softmax, top-k over N values
#include "moe/core/thread_pool.hpp"  // caller-owned thread pool
#include "moe/core/types.hpp"        // RowMatrix, ColMatrix

// layer: the MoE FFN layer and its pieces.
#include "moe/layer/activation.hpp"     // SwiGLU, GeGLU, ReGLU, clamped SwiGLU
#include "moe/layer/aggregate.hpp"      // formula (2) aggregation, formula (6) rescale
#include "moe/layer/dispatch.hpp"       // stable counting sort of (token, slot) pairs by expert
#include "moe/layer/ffn.hpp"            // formulas (1), (4): SwiGLU FFN
#include "moe/layer/moe_layer.hpp"      // MoELayer: route, dispatch, experts, combine, rescale
#include "moe/layer/presets.hpp"        // MoEConfig of each real MoE family
#include "moe/layer/router.hpp"         // formula (2): RouterOptions, route(), route_top_k
#include "moe/layer/router_gate.hpp"    // router weights and logits (linear, LLaMA-MoE MLP gate, noise)
#include "moe/layer/routing_stats.hpp"  // load, importance, CV², aux loss, z-loss, entropy

// construction: turning a dense FFN into experts (LLaMA-MoE).
#include "moe/construction/expert_construction.hpp"  // clustering, co-activation, sharing, gradient splits
#include "moe/construction/importance.hpp"           // formula (5) and dL/dh = dL/dy W_down^T
#include "moe/construction/kmeans.hpp"               // balanced and plain k-means
#include "moe/construction/partition.hpp"            // ExpertPartition, IndependentRandom
#include "moe/construction/router_init.hpp"          // random / centroid / fitted routers, oracle recall
#include "moe/construction/slicing.hpp"              // formula (3): expert slicing

// io: checkpoint files (needs nlohmann_json).
#include "moe/io/hf_checkpoint.hpp"         // a HF checkpoint directory (single file or shards)
#include "moe/io/hf_llama.hpp"              // Hugging Face LLaMA FFN weights, zero-copy
#include "moe/io/hf_moe_block.hpp"          // one Hugging Face MoE block (Mixtral, Qwen, DeepSeek, ...)
#include "moe/io/llama_moe_checkpoint.hpp"  // LLaMA-MoE checkpoints: write, config, load a layer
#include "moe/io/safetensors.hpp"           // safetensors reader
#include "moe/io/safetensors_writer.hpp"    // safetensors writer

// model: a whole decoder.
#include "moe/model/llama_model.hpp"  // LLaMA / LLaMA-MoE decoder forward with a KV cache
