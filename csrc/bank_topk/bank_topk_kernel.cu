// bank_topk CUDA kernels: the B×N score matrix is never written; extra memory is O(B·k·S) for S bank splits.
//
// Keys. Each candidate (score, bank row n) is packed into one int64 whose integer order is score descending,
// then index ascending (bigger key = better):
//     key = (ordered_int32(score) << 32) | (2^32 − 1 − n),   an excluded row or an empty slot: INT64_MIN
// where ordered_int32 maps the float bits to an int32 with the same order (−0.0 is first made +0.0). Keys of
// one query are distinct (n is), so merging by ranks needs no tie rule.
//
// topk_splits_kernel, grid (ceil(B / kBQ), S), kThreads threads. A block owns kBQ queries and the contiguous
// bank split [s·split_rows, (s+1)·split_rows). Per tile of kBN bank rows it
//   1. computes the [kBQ, kBN] fp32 scores with a shared-memory FMA GEMM over kBD-wide column slices (every
//      operand converted to float on load; fp32 accumulation),
//   2. lets one warp per query turn its row into keys (camera penalty, label / self exclusion, finiteness
//      check) and append the keys above the query's threshold to a per-query staging buffer in shared memory;
//      a full buffer is flushed first: bitonic sort, then a merge by ranks into the query's sorted top-k list
//      for this split, which lives in global memory as two ping-pong buffers. The threshold is the k-th key
//      of the list once it holds k keys (INT64_MIN before), so a key that does not beat it can never enter.
// At the end every list is flushed, moved to buffer 0 and padded with INT64_MIN to k.
//
// The api then takes the top k of the S·k keys of each query (at::topk on int64) and decode_keys_kernel turns
// them into (score, index), INT64_MIN into (−inf, −1).

// Only c10/cuda headers (not ATen/cuda/CUDAContext.h, which needs the cuBLAS/cuSPARSE/cuSOLVER headers that a
// minimal toolkit lacks): c10::cuda::getCurrentCUDAStream is at::cuda::getCurrentCUDAStream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "bank_topk.h"

namespace reidscale {
namespace bank_topk {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kBQ = 32;      // queries per block
constexpr int kBN = 64;      // bank rows per tile
constexpr int kBD = 32;      // feature columns per GEMM step
constexpr int kStage = 128;  // staging slots per query (>= kBN: one tile always fits after a flush)
constexpr int kKeysPerLane = kBN / 32;
constexpr long long kNoKey = INT64_MIN;
constexpr unsigned kFullMask = 0xffffffffu;

static_assert(kBQ == 2 * (kThreads / 16) && kBN == 4 * 16, "GEMM thread map: 2 queries x 4 rows a thread");
static_assert(kStage >= kBN && (kStage & (kStage - 1)) == 0, "staging: a power of two holding one tile");
static_assert(kBN % 32 == 0, "a warp scans a tile row in whole 32-key steps");

struct Params {
  const float* queries;  // [B, D] contiguous
  const void* bank;      // [N, D], element (n, d) at n * bank_s0 + d * bank_s1
  int64_t bank_s0, bank_s1;
  const int64_t* query_labels;  // [B] or nullptr
  const void* bank_labels;      // [N] int32 / int64 (bank_labels_64) or nullptr
  bool bank_labels_64;
  const int64_t* self_index;  // [B] or nullptr
  const int64_t* query_cams;  // [B] or nullptr
  const void* bank_cams;      // [N] int32 / int64 (bank_cams_64) or nullptr
  bool bank_cams_64;
  float penalty;
  int64_t batch, rows, dim, k, splits, split_rows;
  long long* lists;  // [2, B, S, k]: ping-pong top-k lists per (query, split)
  int* nonfinite;    // [1]
};

struct GemmTiles {
  float q[kBD][kBQ + 1];  // +1: conflict-free transposed stores
  float m[kBD][kBN + 1];
};

struct SharedState {
  union {
    GemmTiles gemm;           // during the GEMM
    float scores[kBQ][kBN];   // after it (the GEMM tiles are dead by then)
  } tile;
  long long stage[kBQ][kStage];
  long long bank_label[kBN];
  long long bank_cam[kBN];
  long long threshold[kBQ];  // per query: a key must be > threshold to be staged
  int fill[kBQ];             // staged keys
  int len[kBQ];              // keys in the current list
  int parity[kBQ];           // which ping-pong buffer holds the current list
};

__device__ __forceinline__ long long pack_key(float score, int64_t n) {
  if (score == 0.0f) score = 0.0f;  // −0.0 ties with +0.0
  const int bits = __float_as_int(score);
  const int ordered = bits < 0 ? bits ^ 0x7fffffff : bits;
  const unsigned long long high = static_cast<unsigned long long>(static_cast<long long>(ordered)) << 32;
  const unsigned long long low = 0xffffffffull - static_cast<unsigned long long>(n);
  return static_cast<long long>(high | low);
}

__device__ __forceinline__ long long load_index(const void* ptr, bool is64, int64_t i) {
  return is64 ? static_cast<const int64_t*>(ptr)[i] : static_cast<const int32_t*>(ptr)[i];
}

// Number of entries of a[0..n) (sorted descending, distinct) that are greater than x.
__device__ __forceinline__ int count_greater(const long long* a, int n, long long x) {
  int lo = 0, hi = n;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (a[mid] > x) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Sorts a[0..kStage) descending; called by all 32 lanes of one warp.
__device__ void warp_bitonic_sort_desc(long long* a, int lane) {
  for (int size = 2; size <= kStage; size <<= 1) {
    for (int stride = size / 2; stride > 0; stride /= 2) {
      for (int i = lane; i < kStage; i += 32) {
        const int j = i ^ stride;
        if (j > i) {
          const bool descending = (i & size) == 0;
          const long long x = a[i], y = a[j];
          if (descending ? x < y : x > y) {
            a[i] = y;
            a[j] = x;
          }
        }
      }
      __syncwarp();
    }
  }
}

__device__ __forceinline__ long long* list_ptr(const Params& p, int parity, int64_t b, int64_t split) {
  return p.lists + ((parity * p.batch + b) * p.splits + split) * p.k;
}

// Merges the staged keys of local query qi (global b) into its list and raises its threshold. One warp.
__device__ void flush_stage(const Params& p, SharedState& sh, int qi, int64_t b, int64_t split, int lane) {
  const int fill = sh.fill[qi];
  long long* stage = sh.stage[qi];
  for (int i = fill + lane; i < kStage; i += 32) stage[i] = kNoKey;
  __syncwarp();
  warp_bitonic_sort_desc(stage, lane);
  const int len = sh.len[qi];
  const int parity = sh.parity[qi];
  const long long* src = list_ptr(p, parity, b, split);
  long long* dst = list_ptr(p, parity ^ 1, b, split);
  // Rank merge: an entry's merged position is its own position plus the count of larger entries of the other
  // list; keys are distinct, so the positions 0..len+fill-1 are each written once. Positions >= k drop out.
  for (int i = lane; i < len; i += 32) {
    const long long key = src[i];
    const int pos = i + count_greater(stage, fill, key);
    if (pos < p.k) dst[pos] = key;
  }
  for (int j = lane; j < fill; j += 32) {
    const long long key = stage[j];
    const int pos = j + count_greater(src, len, key);
    if (pos < p.k) dst[pos] = key;
  }
  __threadfence_block();
  __syncwarp();  // every lane's writes to dst are visible to the whole warp from here
  const int new_len = static_cast<int>(len + fill < p.k ? len + fill : p.k);
  const long long threshold = new_len == p.k ? dst[p.k - 1] : kNoKey;
  __syncwarp();
  if (lane == 0) {
    sh.len[qi] = new_len;
    sh.parity[qi] = parity ^ 1;
    sh.fill[qi] = 0;
    sh.threshold[qi] = threshold;
  }
  __syncwarp();
}

// [kBQ, kBN] scores of queries q0.. against bank rows n0..(< n_end) into sh.tile.scores. Whole block.
template <typename scalar_t>
__device__ void tile_scores(const Params& p, SharedState& sh, int64_t q0, int64_t n0, int64_t n_end) {
  const scalar_t* bank = static_cast<const scalar_t*>(p.bank);
  const int tq = threadIdx.x / 16;  // queries 2·tq, 2·tq + 1
  const int tn = threadIdx.x % 16;  // rows tn + 16·j, j < 4
  float acc[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
  for (int64_t d0 = 0; d0 < p.dim; d0 += kBD) {
    for (int e = threadIdx.x; e < kBQ * kBD; e += kThreads) {
      const int qi = e / kBD, dd = e % kBD;
      const int64_t b = q0 + qi, d = d0 + dd;
      sh.tile.gemm.q[dd][qi] = (b < p.batch && d < p.dim) ? p.queries[b * p.dim + d] : 0.f;
    }
    for (int e = threadIdx.x; e < kBN * kBD; e += kThreads) {
      const int ni = e / kBD, dd = e % kBD;
      const int64_t n = n0 + ni, d = d0 + dd;
      sh.tile.gemm.m[dd][ni] =
          (n < n_end && d < p.dim) ? static_cast<float>(bank[n * p.bank_s0 + d * p.bank_s1]) : 0.f;
    }
    __syncthreads();
#pragma unroll 4
    for (int dd = 0; dd < kBD; ++dd) {
      const float a0 = sh.tile.gemm.q[dd][2 * tq], a1 = sh.tile.gemm.q[dd][2 * tq + 1];
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float m = sh.tile.gemm.m[dd][tn + 16 * j];
        acc[0][j] = fmaf(a0, m, acc[0][j]);
        acc[1][j] = fmaf(a1, m, acc[1][j]);
      }
    }
    __syncthreads();  // the tiles are reloaded (or become sh.tile.scores) next
  }
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    sh.tile.scores[2 * tq][tn + 16 * j] = acc[0][j];
    sh.tile.scores[2 * tq + 1][tn + 16 * j] = acc[1][j];
  }
}

// Keys of one query row of the tile (lane's columns lane + 32·t), the finiteness check included.
__device__ void row_keys(const Params& p, const SharedState& sh, int qi, int64_t b, int64_t n0, int64_t n_end,
                         int lane, long long (&keys)[kKeysPerLane]) {
  const long long label = p.query_labels ? p.query_labels[b] : 0;
  const long long cam = p.query_cams ? p.query_cams[b] : 0;
  const long long self = p.self_index ? p.self_index[b] : -1;
#pragma unroll
  for (int t = 0; t < kKeysPerLane; ++t) {
    const int c = lane + 32 * t;
    const int64_t n = n0 + c;
    keys[t] = kNoKey;
    if (n >= n_end) continue;
    float score = sh.tile.scores[qi][c];
    if (p.query_cams && sh.bank_cam[c] == cam) score -= p.penalty;
    if (!isfinite(score)) atomicOr(p.nonfinite, 1);
    const bool excluded = (p.query_labels && sh.bank_label[c] == label) || n == self;
    if (!excluded) keys[t] = pack_key(score, n);
  }
}

// Stages the keys of one query row above its threshold, flushing first when they might not fit. One warp.
__device__ void stage_row(const Params& p, SharedState& sh, int qi, int64_t b, int64_t split, int lane,
                          const long long (&keys)[kKeysPerLane]) {
  long long threshold = sh.threshold[qi];
  int count = 0;
#pragma unroll
  for (int t = 0; t < kKeysPerLane; ++t) count += __popc(__ballot_sync(kFullMask, keys[t] > threshold));
  if (count == 0) return;
  if (sh.fill[qi] + count > kStage) {
    flush_stage(p, sh, qi, b, split, lane);
    threshold = sh.threshold[qi];
  }
  int fill = sh.fill[qi];
  const unsigned lanes_below = (1u << lane) - 1u;
#pragma unroll
  for (int t = 0; t < kKeysPerLane; ++t) {
    const bool keep = keys[t] > threshold;
    const unsigned mask = __ballot_sync(kFullMask, keep);
    if (keep) sh.stage[qi][fill + __popc(mask & lanes_below)] = keys[t];
    fill += __popc(mask);
  }
  __syncwarp();
  if (lane == 0) sh.fill[qi] = fill;
  __syncwarp();
}

// Final flush of query qi, then its list goes to buffer 0, padded with INT64_MIN to k. One warp.
__device__ void finish_query(const Params& p, SharedState& sh, int qi, int64_t b, int64_t split, int lane) {
  if (sh.fill[qi] > 0) flush_stage(p, sh, qi, b, split, lane);
  const int len = sh.len[qi];
  long long* out = list_ptr(p, 0, b, split);
  if (sh.parity[qi] == 1) {
    const long long* cur = list_ptr(p, 1, b, split);
    for (int i = lane; i < len; i += 32) out[i] = cur[i];
  }
  for (int64_t i = len + lane; i < p.k; i += 32) out[i] = kNoKey;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) topk_splits_kernel(Params p) {
  __shared__ SharedState sh;
  const int64_t q0 = static_cast<int64_t>(blockIdx.x) * kBQ;
  const int64_t split = blockIdx.y;
  const int64_t n_begin = split * p.split_rows;
  const int64_t n_end = n_begin + p.split_rows < p.rows ? n_begin + p.split_rows : p.rows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int qi = threadIdx.x; qi < kBQ; qi += kThreads) {
    sh.threshold[qi] = kNoKey;
    sh.fill[qi] = 0;
    sh.len[qi] = 0;
    sh.parity[qi] = 0;
  }
  __syncthreads();
  for (int64_t n0 = n_begin; n0 < n_end; n0 += kBN) {
    tile_scores<scalar_t>(p, sh, q0, n0, n_end);
    for (int c = threadIdx.x; c < kBN; c += kThreads) {
      const int64_t n = n0 + c;
      if (n >= n_end) continue;
      if (p.bank_labels) sh.bank_label[c] = load_index(p.bank_labels, p.bank_labels_64, n);
      if (p.bank_cams) sh.bank_cam[c] = load_index(p.bank_cams, p.bank_cams_64, n);
    }
    __syncthreads();
    for (int qi = warp; qi < kBQ && q0 + qi < p.batch; qi += kWarps) {
      long long keys[kKeysPerLane];
      row_keys(p, sh, qi, q0 + qi, n0, n_end, lane, keys);
      stage_row(p, sh, qi, q0 + qi, split, lane, keys);
    }
    __syncthreads();  // sh.tile and the tile's labels are overwritten next
  }
  for (int qi = warp; qi < kBQ && q0 + qi < p.batch; qi += kWarps) {
    finish_query(p, sh, qi, q0 + qi, split, lane);
  }
}

__global__ void decode_keys_kernel(const long long* keys, int64_t count, float* scores, int64_t* indices) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  const long long key = keys[i];
  if (key == kNoKey) {
    scores[i] = -INFINITY;
    indices[i] = -1;
    return;
  }
  const int high = static_cast<int>(key >> 32);
  scores[i] = __int_as_float(high < 0 ? high ^ 0x7fffffff : high);
  indices[i] = static_cast<int64_t>(0xffffffffll - (key & 0xffffffffll));
}

Params make_params(const Inputs& in, int64_t splits, at::Tensor& lists, at::Tensor& nonfinite) {
  Params p{};
  p.queries = in.queries.data_ptr<float>();
  p.bank = in.bank.data_ptr();
  p.bank_s0 = in.bank.stride(0);
  p.bank_s1 = in.bank.stride(1);
  if (in.query_labels.defined()) {
    p.query_labels = in.query_labels.data_ptr<int64_t>();
    p.bank_labels = in.bank_labels.data_ptr();
    p.bank_labels_64 = in.bank_labels.scalar_type() == at::kLong;
  }
  p.self_index = in.self_index.defined() ? in.self_index.data_ptr<int64_t>() : nullptr;
  if (in.query_cams.defined()) {
    p.query_cams = in.query_cams.data_ptr<int64_t>();
    p.bank_cams = in.bank_cams.data_ptr();
    p.bank_cams_64 = in.bank_cams.scalar_type() == at::kLong;
  }
  p.penalty = static_cast<float>(in.cam_penalty);
  p.batch = in.queries.size(0);
  p.rows = in.bank.size(0);
  p.dim = in.queries.size(1);
  p.k = in.k;
  p.splits = splits;
  p.split_rows = (p.rows + p.splits - 1) / p.splits;
  p.lists = reinterpret_cast<long long*>(lists.data_ptr<int64_t>());
  p.nonfinite = nonfinite.data_ptr<int>();
  return p;
}

// Bank splits: the caller's number (at most one per bank row), else enough blocks for two per SM, with at
// least four tiles per split and the ping-pong lists (16·B·S·k bytes) within kListBudget.
int64_t resolve_splits(int64_t requested, int64_t batch, int64_t rows, int64_t k) {
  constexpr int64_t kMaxSplits = 65535;  // grid.y limit
  constexpr int64_t kListBudget = int64_t{256} << 20;
  if (requested > 0) return std::min({requested, rows, kMaxSplits});
  int sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, c10::cuda::current_device()));
  const int64_t query_blocks = (batch + kBQ - 1) / kBQ;
  const int64_t wanted = (2 * int64_t{sms} + query_blocks - 1) / query_blocks;
  const int64_t by_rows = std::max<int64_t>(1, rows / (4 * kBN));
  const int64_t by_memory = std::max<int64_t>(1, kListBudget / (16 * batch * k));
  return std::max<int64_t>(1, std::min({wanted, by_rows, by_memory, kMaxSplits}));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> launch_bank_topk(const Inputs& in) {
  const c10::cuda::CUDAGuard guard(in.queries.device());
  const int64_t batch = in.queries.size(0);
  const auto long_opts = in.queries.options().dtype(at::kLong);
  at::Tensor nonfinite = at::zeros({1}, in.queries.options().dtype(at::kInt));
  at::Tensor scores = at::full({batch, in.k}, -INFINITY, in.queries.options().dtype(at::kFloat));
  at::Tensor indices = at::full({batch, in.k}, -1, long_opts);
  if (batch == 0 || in.bank.size(0) == 0) return {scores, indices, nonfinite};

  const int64_t splits = resolve_splits(in.splits, batch, in.bank.size(0), in.k);
  at::Tensor lists = at::empty({2, batch, splits, in.k}, long_opts);
  Params p = make_params(in, splits, lists, nonfinite);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>((batch + kBQ - 1) / kBQ), static_cast<unsigned>(splits));
  switch (in.bank.scalar_type()) {
    case at::kFloat:
      topk_splits_kernel<float><<<grid, kThreads, 0, stream>>>(p);
      break;
    case at::kHalf:
      topk_splits_kernel<at::Half><<<grid, kThreads, 0, stream>>>(p);
      break;
    case at::kBFloat16:
      topk_splits_kernel<at::BFloat16><<<grid, kThreads, 0, stream>>>(p);
      break;
    default:
      TORCH_CHECK_VALUE(false, "bank_topk: bank must be float32/float16/bfloat16, got ",
                        in.bank.scalar_type());
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();

  at::Tensor keys = lists[0].view({batch, splits * in.k});
  if (splits > 1) keys = std::get<0>(at::topk(keys, in.k, /*dim=*/1, /*largest=*/true, /*sorted=*/true));
  keys = keys.contiguous();
  const int64_t count = batch * in.k;
  constexpr int kDecodeThreads = 256;
  const auto blocks = static_cast<unsigned>((count + kDecodeThreads - 1) / kDecodeThreads);
  const auto* key_data = reinterpret_cast<const long long*>(keys.data_ptr<int64_t>());
  decode_keys_kernel<<<blocks, kDecodeThreads, 0, stream>>>(key_data, count, scores.data_ptr<float>(),
                                                            indices.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {scores, indices, nonfinite};
}

}  // namespace bank_topk
}  // namespace reidscale
