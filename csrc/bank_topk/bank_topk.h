// bank_topk: fused memory-bank similarity + running top-k (CUDA). Shared declarations of the api .cpp and
// the kernel .cu. Semantics: reidscale/kernels/reference_topk.py (single bank).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <tuple>

namespace reidscale {
namespace bank_topk {

// Largest k the op supports (reference_topk.MAX_K).
constexpr int64_t kMaxK = 4096;

// Checked inputs of one launch. Shapes: queries [B, D] float32 contiguous; bank [N, D] float32/float16/
// bfloat16 with any strides; query_* / self_index [B] int64 contiguous or undefined; bank_labels /
// bank_cams [N] int32 or int64 contiguous, or undefined (labels and cams each come as a pair).
struct Inputs {
  at::Tensor queries;
  at::Tensor bank;
  int64_t k;
  at::Tensor query_labels;
  at::Tensor bank_labels;
  at::Tensor self_index;
  at::Tensor query_cams;
  at::Tensor bank_cams;
  double cam_penalty;
  int64_t splits;  // bank splits; 0: chosen from the device size, B, N and k
};

// Runs the kernels on the current stream. Returns (scores [B, k] float32, indices [B, k] int64,
// nonfinite [1] int32: non-zero when some score q·m − penalty was not finite).
std::tuple<at::Tensor, at::Tensor, at::Tensor> launch_bank_topk(const Inputs& in);

}  // namespace bank_topk
}  // namespace reidscale
