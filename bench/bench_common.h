// Shared pieces of attnlab_bench: the benchmark case description and its
// name, the FLOP count (written down once), deterministic inputs, thread
// control for OpenMP + OpenBLAS, measured peak RSS and the JSON context.
//
// Names follow docs/bench-json.md (tokens separated by '/', the first
// one the registry variant, `ceiling_sgemm`, `ceiling_stream` or `layer`).
#ifndef ATTNLAB_BENCH_BENCH_COMMON_H_
#define ATTNLAB_BENCH_BENCH_COMMON_H_

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "kernels/problem.h"
#include "kernels/registry.h"
#include "testing/paged_kv.h"

namespace attn::bench {

// kSoftcap, kAlibi, kSinks: the sweep's shape (Lq = Lk = N) with one score
// modifier (kernels/problem.h) on the sweep case's own inputs, so that the
// cost of each is its time over the plain sweep case's (softcap 50 as in
// Gemma 2; ALiBi's standard slopes; sinks 1 + h/4).
// kVarlen, kPadded: one batch of kPackedSequences causal or dense
// self-attention sequences whose lengths average a quarter of the longest
// (PackedLengths), packed (Mask::sequences, B = 1, Lq = Lk = the total) or
// padded to the longest (B = 8, Lq = Lk = the longest, key_lengths: what a
// framework without varlen runs), so their time ratio is what packing saves.
// kPaddedMask pads the same way but hides the padding (and the causal
// triangle) with an additive mask [B, 1, Lmax, Lmax], as PyTorch's attn_mask
// does: no key is skipped, every padded (query, key) pair is computed.
// Case::q_len is the longest; the name token is "Lmax".
// kPaged: the decode case (one query per head, Hkv heads of Lk keys) with K
// and V in a paged cache of Case::block_size-key blocks (Problem::kv_pages),
// the blocks in a shuffled order through the pool (PageKv): the same bytes
// as the contiguous decode case, read block by block.
enum class Scenario {
  kSweep,
  kDecode,
  kGqa,
  kWindow,
  kCross,
  kSoftcap,
  kAlibi,
  kSinks,
  kVarlen,
  kPadded,
  kPaddedMask,
  kPaged
};
const char* ScenarioName(Scenario s);  // "sweep", "decode", ..., "softcap"
// The modifier a scenario applies (kSoftcap, kAlibi, kSinks of problem.h; 0
// for the others).
uint8_t ScenarioModifiers(Scenario s);

// The sequences of kVarlen and kPadded: lengths longest·{1, 1/4, 1/4, 1/8,
// 1/8, 1/8, 1/16, 1/16} (mean longest/4), and their cu_seqlens (0, then
// running sums). References stay valid for the whole run.
struct Case;
inline constexpr int64_t kPackedSequences = 8;
const std::vector<int32_t>& PackedLengths(int64_t longest);
const std::vector<int32_t>& PackedOffsets(int64_t longest);
// Sets the case's mask on a problem of its shape: kind and window, and for
// kVarlen the sequences, for kPadded the key lengths, for kPaddedMask the
// additive padding mask (written into *additive; without it, a span of the
// right size at a placeholder address, for Prepare), of a batch whose
// longest sequence is `longest` (the case's own, or a check problem's).
void ApplyMask(const Case& c, int64_t longest, Problem& p, std::vector<float>* additive = nullptr);

// kPaged's pools, their table and the 2 MiB pages of every big buffer
// (testing/paged_kv.h).
using testing::HugePageVector;
using testing::PagedKv;
using testing::PagedTable;
using testing::PageKv;

// The name token of element types (docs/bench-json.md): "" when Q, K, V and
// O are all f32 (fp32 names carry no token), "dtype:bf16" when the four share
// one type, else "dtype:<q>-<k>-<v>-<o>", e.g. "dtype:f32-i8-i8-f32".
std::string DTypeToken(const DTypes& dtypes);
bool AllF32(const DTypes& dtypes);
// The element types the precision scenario times and the accuracy run
// checks, f32 first: f32, bf16, f16 (one type throughout), then the K/V
// cache formats under an f32 or bf16 model: f32-bf16-bf16-f32,
// f32-i8-i8-f32, bf16-i8-i8-bf16.
const std::vector<DTypes>& PrecisionDTypes();

// One attention problem the suite times (without the variant).
struct Case {
  Scenario scenario = Scenario::kSweep;
  int64_t batch = 1;
  int64_t heads = 8;
  int64_t kv_heads = 8;
  int64_t q_len = 0;
  int64_t kv_len = 0;
  int64_t dim = 64;  // dk = dv
  bool causal = false;
  int64_t window = 0;  // left window (right = 0) for kWindow
  int threads = 1;
  DTypes dtypes = {};  // element types of Q, K, V, O (all f32 by default)
  // kDecode: the name carries `H:<heads>` before `Hkv` (a decode case whose
  // query heads are not the run's --heads, e.g. the precision scenario's GQA
  // decode with H = 32, Hkv = 8, which would otherwise have the name of the
  // MHA decode case with Hkv = 8).
  bool heads_token = false;
  int64_t block_size = 0;  // kPaged: keys per block

  Shape shape() const {
    if (scenario == Scenario::kVarlen) {
      const int64_t total = PackedOffsets(q_len).back();
      return {1, heads, kv_heads, total, total, dim, dim};
    }
    return {batch, heads, kv_heads, q_len, kv_len, dim, dim};
  }
  MaskKind mask_kind() const {
    if (scenario == Scenario::kWindow) return MaskKind::kSlidingWindow;
    if (scenario == Scenario::kPaddedMask) return MaskKind::kAdditive;
    return causal ? MaskKind::kCausal : MaskKind::kNone;
  }
  // The name without the variant, e.g. "N:4096/d:64/causal:1/threads:2",
  // "decode/Lk:4096/d:64/Hkv:8/threads:2",
  // "decode/Lk:4096/d:128/H:32/Hkv:8/dtype:f32-i8-i8-f32/threads:1": the
  // shape's tokens, the dtype token (if any), the thread count.
  std::string Tokens() const;
  // Tokens() without the thread count: the key of the inputs, so every
  // variant and thread count times the same data.
  std::string DataKey() const;
  // DataKey() without the dtype token: seeds the random fp32 values, so every
  // element type of a shape stores the same values (rounded or quantized).
  std::string ValuesKey() const;
  // The key of the correctness verdict: scenario, d, mask, GQA group, dtypes.
  std::string CheckKey() const;
};

// Bytes of a case's tensors at their element sizes (DTypeBytes: 4, 2, 2, 1),
// plus the fp32 row scales of an int8 K or V (4 bytes per row of d elements).
// The `bytes_min` counter is total(); decode's `GBps` counts kv() per second.
struct TensorBytes {
  double q = 0, k = 0, v = 0, o = 0;  // k, v include their scales
  double kv() const { return k + v; }
  double total() const { return q + k + v + o; }
};
TensorBytes BytesOf(const Case& c);

// FLOPs of attention, the one formula every GFLOPS counter uses:
//   Q·Kᵀ costs 2·dk FLOPs (a multiply and an add per element) per visible
//   (query, key) pair and P·V costs 2·dv per pair, so
//     FLOPs = 2·pairs·(dk + dv)   ( = 4·B·H·Lq·Lk·d when dense and dk = dv = d).
//   `pairs` counts only the (query, key) pairs that are not structurally
//   masked (attn::VisiblePairs): causal counts ~half, a window ~Lq·w. Softmax
//   (exp, max, sum, divide) is not counted, as is customary.
double AttentionFlops(double pairs, int64_t dk, int64_t dv);
// FLOPs of the backward pass, the one formula every backward GFLOPS counter
// uses: FlashAttention-2's five products per (query, key) pair, S = Q·Kᵀ
// recomputed (2·dk), dP = dO·Vᵀ (2·dv), dV += Pᵀ·dO (2·dv), dK += dSᵀ·Q
// (2·dk) and dQ += dS·K (2·dk):
//     FLOPs = 2·pairs·(3·dk + 2·dv)   ( = 2.5 x the forward's at dk = dv).
// `pairs` counts the visible pairs, as AttentionFlops: work a variant does on
// masked pairs (naive's and blas's whole rows and panels, flash's diagonal
// tiles) is not counted. The materializing variants do the same five
// products (naive and blas form D as Σ P·dP, flash as Σ dO·O: 2·dv per pair
// against 2·dv per row, not counted either).
double GradFlops(double pairs, int64_t dk, int64_t dv);
// Dense pairs: B·H·Lq·Lk.
double DensePairs(const Case& c);

// Q, K, V (random in [-1, 1), never all zero) and O for a case, in [B,H,L,d]
// layout, filled by a generator seeded from the case's ValuesKey(), then
// stored in the case's element types (testing::StoreInDType: bf16 and f16
// rounded to nearest even, int8 quantized per row with one fp32 scale per
// row), so every type of a shape holds the same values up to its rounding.
struct CaseData {
  // The f32 tensors (a tensor of another type: empty) and the others in
  // their type; K and V on 2 MiB pages (HugePageAllocator).
  std::vector<float> q, o;
  HugePageVector<float> k, v;
  std::vector<char> q_typed, o_typed;
  HugePageVector<char> k_typed, v_typed;
  std::vector<float> k_scales, v_scales;   // [B, Hkv, Lk]: int8 K, V
  std::vector<float> alibi_slopes, sinks;  // [H]: the modifier scenarios
  std::vector<float> additive;             // kPaddedMask's mask
  PagedKv pools;                           // kPaged: K and V pools
  Problem problem;                         // points into the vectors
};
// The inputs for `c`, cached: consecutive cases with the same DataKey reuse
// them (generating 1 GiB of inputs per call would dominate the suite); a new
// key frees the old data first.
CaseData& DataFor(const Case& c);
void ReleaseData();
uint64_t SeedFrom(const std::string& text);             // FNV-1a
void FillRandom(float* data, size_t n, uint64_t seed);  // uniform [-1, 1)

// Peak resident memory growth, measured: Start() resets the kernel's VmHWM
// high-water mark (echo 5 > /proc/self/clear_refs) and records VmRSS;
// DeltaBytes() is VmHWM now minus that. Returns -1 where /proc cannot do it.
class PeakRss {
 public:
  void Start();
  double DeltaBytes() const;

 private:
  int64_t start_rss_ = -1;
};
// "VmRSS" / "VmHWM" from /proc/self/status, in bytes; -1 if unavailable.
int64_t ProcStatusBytes(const char* field);
// Makes freed memory go back to the OS so RSS growth is measurable: glibc
// otherwise keeps freed chunks below its (dynamic) mmap threshold resident.
void ConfigureMallocForMeasurement();
void TrimMalloc();

// attnlab_* context keys (docs/bench-json.md), also used by the accuracy JSON.
std::map<std::string, std::string> ContextStrings(const std::string& threads,
                                                  const std::string& suite, size_t memory_budget);
std::string GitCommit();  // generated at build time (bench/git_commit.cmake)
std::string UtcNow();     // "2026-11-21T09:14:03+00:00"

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_BENCH_COMMON_H_
