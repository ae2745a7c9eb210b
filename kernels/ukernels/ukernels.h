// The micro-kernel list, as data: one Ukernel per line of ukernels.inc, with
// an entry point that runs it on the best Highway target the CPU has (or the
// one a test selects with hwy::SetSupportedTargetsForTest).
//
// The variants call the micro-kernels directly (kernels/ukernels/*-inl.h,
// inlined into each Highway target's copy of the variant). This table is for
// the tests (tests/ukernel_test.cc: every entry on every compiled target
// against a scalar version, over edge sizes) and the benchmarks
// (bench/ukernel_bench.cc: every entry on L1-resident data against the
// machine's FMA peak), which iterate over it: adding a micro-kernel is its
// -inl.h code plus one ATTN_UKERNEL line.
//
// Each family has one argument struct; an entry of that family computes what
// the family's comment says, for the sizes its constraints allow (rows,
// width_vectors). Several entries of a family are alternative kernels for
// the same job (the general one a variant calls, and the specialized ones it
// dispatches to), each tested and benchmarked on its own.
#ifndef ATTNLAB_KERNELS_UKERNELS_UKERNELS_H_
#define ATTNLAB_KERNELS_UKERNELS_UKERNELS_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "kernels/dtype.h"
#include "kernels/ukernels/alibi_tile.h"
#include "kernels/ukernels/key_runs.h"

namespace attn::ukernels {

// Relative error bound of FastExp2 (exp-inl.h), in ulp (measured: 0.84).
inline constexpr double kFastExp2MaxUlp = 2.0;
// Absolute error bound of FastTanh (score_mods-inl.h, behind SoftcapRow), in
// units of u = 2^-24 (tanh is in [-1, 1]; the error does not shrink with
// |tanh| near 0, where 1 - e^(-2|y|) cancels). Measured by tests/
// ukernel_test.cc on every 61st float in [2^-126, 20] on Zen 4: 1.74 on
// every target, at |y| = 1.14 (the exp form; the polynomial that takes
// |y| <= 1 stays within 1.14 in numpy's fp32 check).
// The fp64 reference's bound (reference/error_bound.cc) assumes 8.
inline constexpr double kTanhMaxAbsU = 3.0;

enum class Family {
  // st[j·64 + x] = Σ_d k[j·k_stride + d]·qt[d·64 + x] for j < nkeys, x <
  // 16·nvec: Qᵀ and Sᵀ with rows of 64 floats (flash's many-row tile).
  kScoreTile,
  // st[r·lds + j] = Σ_d qs[r·dkp + d]·k[j·k_stride + d] for r < nrows <= 8
  // (flash's few-row tile; qs zero past dk).
  kScoreRows,
  // out[r·ld + jj] = Σ_d q[r][d]·tile[d·T + jj] for r < nrows, jj < T =
  // 2 vectors (simd's packed-K tile).
  kQkPacked,
  // o[m·ldo + c] (+)= Σ_j p[j·pj + m·pm]·v[j·vs + c] for m < nrows, c <
  // lanes·nvec; overwrite unless `accumulate`.
  kPvTile,
  // o[r·ldo + c] = Σ_j p[r·ldp + j]·v[j·ldv + c] for r < nrows, c < dv.
  kPvRows,
  // kScoreRows with the keys as runs of rows (key_runs.h: a paged cache's
  // blocks), key j of S counting through the runs.
  kScoreRowsRuns,
  // kPvTile with the V rows as runs (flash's few-row S: pj = 1).
  kPvRowsRuns,
  // Online softmax over a key-major tile st[j·ld + x] (x < rows, a multiple
  // of the lane count), updating m, l and writing alpha.
  kOnlineSoftmaxColumns,
  // The same over a row-major tile st[x·ld + j] (x < nrows <= 8).
  kOnlineSoftmaxRows,
  // A materialized row: x = s·scale (+ add); max; s = e^(x - max); sum.
  kSoftmaxRow,
  // out[i] = 2^x[i].
  kExp2,
  // dst[c·ld + r] = scale·rows[r][c] (r < n), 0 for n <= r < n_padded.
  kTranspose,
  // Σ x[i]·y[i].
  kDot,
  // out = acc / l, lse = m + ln l; (m, l) = (-inf, 0) gives 0 and -inf.
  kFinishRow,
  // dst[c] = LoadElement(dtype, src element c, scale) for c < n, exactly.
  kToF32,
  // bf16 pairs (bf16_avx512.h): st[j·64 + x] = Σ_d k[j][d]·q[x][d] from
  // Q pairs and bf16 K rows.
  kBf16ScoreTile,
  // bf16 V rows into pairs along keys.
  kBf16PackValues,
  // bf16 Q rows into pairs along d, transposed (qp[p·64 + x]).
  kBf16PackQueries,
  // The online softmax step over raw Sᵀ, scaled as read, P out as bf16
  // rows pr[x·ldp + p] (pairs along keys: AMX's A layout, and what the
  // VDPBF16PS P·V broadcasts).
  kBf16SoftmaxToRows,
  // o[x·ldo + c] (+)= Σ_p pr[x·ldp + p]·vp[p·vps + c] from those rows.
  kBf16PvRows,
  // Decode on VDPBF16PS (bf16_decode.h), <= 4 rows: st[r·lds + j] =
  // scale·Σ_d qw[r·dk + d]·k[j·k_stride + d] from bf16 Q words and K rows.
  kBf16DecodeScores,
  // o[r·ldo + c] (+)= Σ_j bf16(p[r·ldp + j])·v[j·v_stride + c], bf16 V rows.
  kBf16DecodePv,
  // Decode on VPDPWSSD (i8_decode.h), <= 4 rows: st[r·lds + j] =
  // row_scale[r]·Σ_d qw[r·dk + d]·k[j·k_stride + d] from int16 Q words and
  // int8 K rows, exact in int32.
  kI8DecodeScores,
  // o[r·ldo + c] (+)= Σ_j p[r·ldp + j]·v[j·v_stride + c], the weights
  // quantized to int16 per row and 64-key chunk, int8 V rows.
  kI8DecodePv,
  // Backward: P = e^(S - lse), dS = scale·P·(dP - D) over a row-major tile,
  // in place (rows with lse = -inf: 0).
  kGradScores,
  // Score modifiers (score_mods-inl.h). Three families, not a kAlibi with
  // two entries: AlibiRow (one slope, the first key's distance) and
  // AlibiColumns (a slope and a query position per row, the first key) take
  // different arguments, and one struct would have fields each ignores.
  // out[i] = cap·tanh(x[i]/cap) for i < n, out == x allowed.
  kSoftcap,
  // s[j] += slope·(d0 + j) for j < n: ALiBi on one row of a row-major tile.
  kAlibiRow,
  // st[j·ld + x] += slopes[x]·((key0 + j) - positions[x]) for j < nkeys, x <
  // rows (a multiple of the lane count): ALiBi on a key-major tile (Sᵀ).
  kAlibiColumns,
};

// What a machine needs to run an entry, beyond the Highway target.
enum class Isa {
  kAnyTarget,      // every compiled Highway target, the scalar fallback too
  kVectorTargets,  // every target with vectors (not HWY_SCALAR)
  // Intrinsics for one ISA, outside Highway (bf16_avx512.h): run when CPUID
  // says the CPU has it, whatever the Highway target.
  kAvx512Bf16,
  kAmxBf16,     // bf16_amx.h: AMX-BF16 tiles, granted by Linux
  kAvx512Vnni,  // i8_decode.h: VPDPWSSD
};
// "AVX512_BF16" for kAvx512Bf16, "AMX_BF16" for kAmxBf16, "AVX512_VNNI"
// for kAvx512Vnni (what a skip names), else "".
const char* IsaName(Isa isa);
// Whether this CPU can run entries of `isa` (the Highway ones: always; the
// target decides).
bool CpuHasIsa(Isa isa);
// Why not, when !CpuHasIsa(isa): "this CPU lacks AVX512_BF16", or for AMX
// what CPUID or Linux said (bf16_amx.h, AmxBf16Unavailable).
std::string IsaMissing(Isa isa);

struct ScoreTileArgs {
  const float* qt;
  const float* k;
  int64_t k_stride, nkeys, dk, nvec;
  float* st;
  float softcap = 0.0f;      // > 0: cap·tanh(s/cap) of every score
  float* col_max = nullptr;  // raised to each query's maximum (score_tile-inl.h)
  AlibiTile alibi = {};      // active: + the ALiBi bias (alibi_tile.h)
};
struct ScoreRowsArgs {
  const float* qs;
  int64_t dkp, nrows;
  const float* k;
  int64_t k_stride, nkeys, dk;
  float* st;
  int64_t lds;
};
struct ScoreRowsRunsArgs {
  const float* qs;
  int64_t dkp, nrows;
  KeyRuns runs;
  int64_t k_stride, dk;
  float* st;
  int64_t lds;
};
struct QkPackedArgs {
  const float* const* q;
  int64_t nrows;
  const float* tile;
  int64_t dk;
  float* out;
  int64_t ld;
};
struct PvTileArgs {
  const float* p;
  int64_t pj, pm;
  const float* v;
  int64_t vs, nkeys, nrows, nvec;
  bool accumulate;
  float* o;
  int64_t ldo;
};
struct PvRowsRunsArgs {
  const float* p;
  int64_t pj, pm;
  KeyRuns runs;
  int64_t vs, nrows, nvec;
  bool accumulate;
  float* o;
  int64_t ldo;
};
struct PvRowsArgs {
  const float* p;
  int64_t ldp, nrows;
  const float* v;
  int64_t ldv, nkeys, dv;
  float* o;
  int64_t ldo;
};
struct OnlineSoftmaxArgs {
  float* st;
  int64_t ld, nkeys, rows;
  float *m, *l, *alpha;
};
// The columns form may be handed the tile's maxima (softmax-inl.h).
struct OnlineSoftmaxColumnsArgs : OnlineSoftmaxArgs {
  const float* tile_max = nullptr;
};
struct SoftmaxRowArgs {
  float* s;
  int64_t n;
  float scale;
  const float* add;  // may be null
  float max, sum;    // out; max NaN when a logit is NaN or +inf
};
struct Exp2Args {
  const float* x;
  float* out;
  int64_t n;
};
struct TransposeArgs {
  const float* const* rows;
  int64_t n, n_padded, cols;
  float scale;
  float* dst;
  int64_t ld;
};
struct DotArgs {
  const float* x;
  const float* y;
  int64_t n;
  float result;  // out
};
struct FinishRowArgs {
  const float* acc;
  float m, l;
  int64_t dv;
  float* out;
  float* lse;  // may be null
};

struct ToF32Args {
  DType dtype;
  const void* src;
  int64_t n;
  float scale;  // int8 only
  float* dst;
};

struct Bf16ScoreTileArgs {
  const uint32_t* qp;
  const uint16_t* k;
  int64_t k_stride, nkeys, dk, nvec;
  float scale;
  float* st;
  float* col_max = nullptr;
};
struct Bf16PackValuesArgs {
  const uint16_t* v;
  int64_t v_stride, nkeys, dv;
  uint32_t* vp;
  int64_t vps;
};

struct Bf16PackQueriesArgs {
  const uint16_t* const* rows;
  int64_t nrows, dk;
  uint32_t* qp;
};
struct Bf16SoftmaxToRowsArgs {
  const float* st;
  int64_t nkeys, nvec;
  float scale;
  float *m, *l, *alpha;
  uint32_t* pr;
  int64_t ldp;
  const float* tile_max = nullptr;
};
struct Bf16PvRowsArgs {
  const uint32_t* pr;
  int64_t ldp;
  const uint32_t* vp;
  int64_t vps, npairs, nrows, nvec;
  bool accumulate;
  float* o;
  int64_t ldo;
};

struct Bf16DecodeScoresArgs {
  const uint16_t* qw;
  int64_t nrows;
  const uint16_t* k;
  int64_t k_stride, nkeys, dk;
  float scale;
  float* st;
  int64_t lds;
};
struct Bf16DecodePvArgs {
  const float* p;
  int64_t ldp;
  const uint16_t* v;
  int64_t v_stride, nkeys, nrows, dv;
  bool accumulate;
  float* o;
  int64_t ldo;
};

struct I8DecodeScoresArgs {
  const int16_t* qw;
  int64_t nrows;
  const int8_t* k;
  int64_t k_stride, nkeys, dk;
  const float* row_scale;
  float* st;
  int64_t lds;
};
struct I8DecodePvArgs {
  const float* p;
  int64_t ldp;
  const int8_t* v;
  int64_t v_stride, nkeys, nrows, dv;
  bool accumulate;
  float* o;
  int64_t ldo;
};

struct GradScoresArgs {
  float* s;   // S in, P out
  float* dp;  // dP in, dS out
  int64_t ld, nrows, ncols;
  const float* lse;
  const float* dsum;
  float scale;
};

struct SoftcapArgs {
  const float* x;
  float* out;  // may be x (in place)
  int64_t n;
  float cap;  // > 0, finite
};
struct AlibiRowArgs {
  float* s;  // in place
  int64_t n;
  float slope, d0;  // d0: the first key's distance, a whole number
};
struct AlibiColumnsArgs {
  float* st;  // in place
  int64_t ld, nkeys, rows;
  const float* slopes;     // rows of them
  const float* positions;  // rows whole numbers (query positions)
  float key0;              // the first key's position, a whole number
};

struct Ukernel {
  const char* name;  // test name and benchmark prefix: ukernel/<name>/...
  Family family;
  const char* types;  // element types in -> out
  Isa isa;
  const char* tile;     // register block, e.g. "6 keys x 4 vectors"
  int rows;             // 0: any row count the family allows; else exactly
  int width_vectors;    // 0: any d; else the d it works along (dk for scores,
                        // dv for P·V) is exactly this many vectors
  const char* summary;  // one line
  // Runs the entry on `args` (the family's struct) on the current Highway
  // target; false when that target lacks it (Isa).
  bool (*run)(void* args);
};

// Every entry, in ukernels.inc order.
std::span<const Ukernel> Ukernels();
const Ukernel* FindUkernel(std::string_view name);
const char* FamilyName(Family family);
// Lanes of a float vector on the Highway target dispatch picks now.
int64_t DispatchedLanes();
// The Highway target dispatch picks now (HWY_AVX3, HWY_AVX2, ...): the
// choice HWY_DYNAMIC_DISPATCH caches, which follows hwy::DisableTargets and
// hwy::SetSupportedTargetsForTest. Not hwy::SupportedTargets(): Highway 1.0.3
// runs CPUID on every call of it, 30 us in the KVM VMs here (CPUID traps to
// the hypervisor), and every Run names its target (RunStats::path).
int64_t DispatchedTarget();

}  // namespace attn::ukernels

#endif  // ATTNLAB_KERNELS_UKERNELS_UKERNELS_H_
