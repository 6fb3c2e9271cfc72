// bank_topk: op schema, input checks and the CUDA-key registration. The kernels are in bank_topk_kernel.cu.
//
// reidscale::bank_topk(queries [B, D], bank [N, D], k, query_labels [B]?, bank_labels [N]?, self_index [B]?,
//                      query_cams [B]?, bank_cams [N]?, cam_penalty, splits)
//   -> (scores [B, k] float32, indices [B, k] int64, nonfinite [1] int32)
// Semantics: reidscale/kernels/reference_topk.py for one bank tensor. `nonfinite` is non-zero when a score
// was not finite (the Python wrapper raises then); `splits` (0: automatic) does not change the result.
// Malformed arguments raise c10::ValueError (Python ValueError) naming the argument.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "bank_topk.h"

namespace reidscale {
namespace bank_topk {
namespace {

using OptTensor = std::optional<at::Tensor>;

bool is_feature_dtype(at::ScalarType t) { return t == at::kFloat || t == at::kHalf || t == at::kBFloat16; }

void check_features(const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2 && is_feature_dtype(t.scalar_type()), "bank_topk: ", name,
                    " must be a 2-D float32/float16/bfloat16 tensor, got ", t.scalar_type(), " of shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.is_cuda(), "bank_topk: ", name, " must be a CUDA tensor, got one on ", t.device());
}

// A [length] integer vector on `device`: as int64, or (keep_int32) int32/int64; contiguous.
at::Tensor check_index_vector(const char* name, const at::Tensor& t, int64_t length, const at::Device& device,
                              bool keep_int32) {
  const bool integer = at::isIntegralType(t.scalar_type(), /*includeBool=*/false);
  TORCH_CHECK_VALUE(integer && t.dim() == 1 && t.size(0) == length, "bank_topk: ", name,
                    " must be a 1-D integer tensor of length ", length, ", got ", t.scalar_type(),
                    " of shape ", t.sizes());
  TORCH_CHECK_VALUE(t.device() == device, "bank_topk: ", name, " must be on ", device,
                    " (the queries' device), got ", t.device());
  const bool as_is = t.scalar_type() == at::kLong || (keep_int32 && t.scalar_type() == at::kInt);
  return (as_is ? t : t.to(at::kLong)).contiguous();
}

// A per-query / per-row pair (labels or cameras): both given or neither.
std::tuple<at::Tensor, at::Tensor> check_pair(const char* q_name, const OptTensor& q, const char* b_name,
                                              const OptTensor& b, const at::Tensor& queries, int64_t rows) {
  TORCH_CHECK_VALUE(q.has_value() == b.has_value(), "bank_topk: ", q_name, " and ", b_name,
                    " must be given together (got only one of them)");
  if (!q.has_value()) return {at::Tensor(), at::Tensor()};
  return {check_index_vector(q_name, *q, queries.size(0), queries.device(), false),
          check_index_vector(b_name, *b, rows, queries.device(), true)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bank_topk_cuda(
    const at::Tensor& queries, const at::Tensor& bank, int64_t k, const OptTensor& query_labels,
    const OptTensor& bank_labels, const OptTensor& self_index, const OptTensor& query_cams,
    const OptTensor& bank_cams, double cam_penalty, int64_t splits) {
  check_features("queries", queries);
  check_features("bank", bank);
  TORCH_CHECK_VALUE(bank.device() == queries.device(), "bank_topk: bank must be on ", queries.device(),
                    " (the queries' device), got ", bank.device());
  TORCH_CHECK_VALUE(bank.size(1) == queries.size(1), "bank_topk: bank must have D = ", queries.size(1),
                    " columns (the queries' D), got ", bank.size(1));
  TORCH_CHECK_VALUE(k >= 1 && k <= kMaxK, "bank_topk: k must be in [1, ", kMaxK, "], got ", k);
  const int64_t rows = bank.size(0);
  TORCH_CHECK_VALUE(rows < (int64_t{1} << 32) - 1,
                    "bank_topk: bank must have fewer than 2**32 - 1 rows, got ", rows);
  TORCH_CHECK_VALUE(std::isfinite(cam_penalty), "bank_topk: cam_penalty must be finite, got ", cam_penalty);
  TORCH_CHECK_VALUE(splits >= 0, "bank_topk: splits must be >= 0 (0: automatic), got ", splits);

  Inputs in;
  in.queries = queries.to(at::kFloat).contiguous();  // [B, D]: exact for fp16/bf16; the bank is never copied
  in.bank = bank;
  in.k = k;
  std::tie(in.query_labels, in.bank_labels) =
      check_pair("query_labels", query_labels, "bank_labels", bank_labels, queries, rows);
  std::tie(in.query_cams, in.bank_cams) =
      check_pair("query_cams", query_cams, "bank_cams", bank_cams, queries, rows);
  if (self_index.has_value()) {
    in.self_index = check_index_vector("self_index", *self_index, queries.size(0), queries.device(), false);
  }
  TORCH_CHECK_VALUE(cam_penalty == 0.0 || in.query_cams.defined(),
                    "bank_topk: cam_penalty != 0 needs query_cams and bank_cams");
  in.cam_penalty = cam_penalty;
  in.splits = splits;
  return launch_bank_topk(in);
}

}  // namespace
}  // namespace bank_topk
}  // namespace reidscale

// FRAGMENT: every csrc/<op>/ folder adds its own schemas to the one `reidscale` namespace.
TORCH_LIBRARY_FRAGMENT(reidscale, m) {
  m.def(
      "bank_topk(Tensor queries, Tensor bank, int k, Tensor? query_labels=None, Tensor? bank_labels=None, "
      "Tensor? self_index=None, Tensor? query_cams=None, Tensor? bank_cams=None, float cam_penalty=0.0, "
      "int splits=0) -> (Tensor scores, Tensor indices, Tensor nonfinite)");
}

TORCH_LIBRARY_IMPL(reidscale, CUDA, m) { m.impl("bank_topk", &reidscale::bank_topk::bank_topk_cuda); }
