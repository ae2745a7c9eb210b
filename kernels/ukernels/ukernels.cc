// The micro-kernel list (ukernels.inc) compiled for every Highway target and
// exported as a table (ukernels.h): one entry point per line, taking the
// family's argument struct. The variants do not go through here: they
// inline the same -inl.h code into their own per-target copies.
#include "kernels/ukernels/ukernels.h"

#include "kernels/ukernels/bf16_amx.h"
#include "kernels/ukernels/bf16_avx512.h"
#include "kernels/ukernels/bf16_decode.h"
#include "kernels/ukernels/i8_decode.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "kernels/ukernels/ukernels.cc"
#include "hwy/foreach_target.h"  // IWYU pragma: keep
#include "hwy/highway.h"
#include "kernels/ukernels/common-inl.h"
#include "kernels/ukernels/convert-inl.h"
#include "kernels/ukernels/exp-inl.h"
#include "kernels/ukernels/grad_scores-inl.h"
#include "kernels/ukernels/pv_tile-inl.h"
#include "kernels/ukernels/qk_packed-inl.h"
#include "kernels/ukernels/score_mods-inl.h"
#include "kernels/ukernels/score_rows-inl.h"
#include "kernels/ukernels/score_tile-inl.h"
#include "kernels/ukernels/softmax-inl.h"
#include "kernels/ukernels/transpose-inl.h"
#include "kernels/ukernels/vector_ops-inl.h"

#ifndef ATTNLAB_KERNELS_UKERNELS_UKERNELS_ONCE_
#define ATTNLAB_KERNELS_UKERNELS_UKERNELS_ONCE_
namespace attn::ukernels {
// The argument struct of each family.
template <Family>
struct ArgsOf;
template <>
struct ArgsOf<Family::kScoreTile> : std::type_identity<ScoreTileArgs> {};
template <>
struct ArgsOf<Family::kScoreRows> : std::type_identity<ScoreRowsArgs> {};
template <>
struct ArgsOf<Family::kQkPacked> : std::type_identity<QkPackedArgs> {};
template <>
struct ArgsOf<Family::kPvTile> : std::type_identity<PvTileArgs> {};
template <>
struct ArgsOf<Family::kPvRows> : std::type_identity<PvRowsArgs> {};
template <>
struct ArgsOf<Family::kScoreRowsRuns> : std::type_identity<ScoreRowsRunsArgs> {};
template <>
struct ArgsOf<Family::kPvRowsRuns> : std::type_identity<PvRowsRunsArgs> {};
template <>
struct ArgsOf<Family::kOnlineSoftmaxColumns> : std::type_identity<OnlineSoftmaxColumnsArgs> {};
template <>
struct ArgsOf<Family::kOnlineSoftmaxRows> : std::type_identity<OnlineSoftmaxArgs> {};
template <>
struct ArgsOf<Family::kSoftmaxRow> : std::type_identity<SoftmaxRowArgs> {};
template <>
struct ArgsOf<Family::kExp2> : std::type_identity<Exp2Args> {};
template <>
struct ArgsOf<Family::kTranspose> : std::type_identity<TransposeArgs> {};
template <>
struct ArgsOf<Family::kDot> : std::type_identity<DotArgs> {};
template <>
struct ArgsOf<Family::kFinishRow> : std::type_identity<FinishRowArgs> {};
template <>
struct ArgsOf<Family::kToF32> : std::type_identity<ToF32Args> {};
template <>
struct ArgsOf<Family::kBf16ScoreTile> : std::type_identity<Bf16ScoreTileArgs> {};
template <>
struct ArgsOf<Family::kBf16PackValues> : std::type_identity<Bf16PackValuesArgs> {};
template <>
struct ArgsOf<Family::kBf16PackQueries> : std::type_identity<Bf16PackQueriesArgs> {};
template <>
struct ArgsOf<Family::kBf16SoftmaxToRows> : std::type_identity<Bf16SoftmaxToRowsArgs> {};
template <>
struct ArgsOf<Family::kBf16PvRows> : std::type_identity<Bf16PvRowsArgs> {};
template <>
struct ArgsOf<Family::kBf16DecodeScores> : std::type_identity<Bf16DecodeScoresArgs> {};
template <>
struct ArgsOf<Family::kBf16DecodePv> : std::type_identity<Bf16DecodePvArgs> {};
template <>
struct ArgsOf<Family::kI8DecodeScores> : std::type_identity<I8DecodeScoresArgs> {};
template <>
struct ArgsOf<Family::kI8DecodePv> : std::type_identity<I8DecodePvArgs> {};
template <>
struct ArgsOf<Family::kGradScores> : std::type_identity<GradScoresArgs> {};
template <>
struct ArgsOf<Family::kSoftcap> : std::type_identity<SoftcapArgs> {};
template <>
struct ArgsOf<Family::kAlibiRow> : std::type_identity<AlibiRowArgs> {};
template <>
struct ArgsOf<Family::kAlibiColumns> : std::type_identity<AlibiColumnsArgs> {};

// Calls f with the struct's fields in order (outputs of value type by
// pointer, or assigned from f's result).
template <class F>
void Call(ScoreTileArgs& a, F f) {
  f(a.qt, a.k, a.k_stride, a.nkeys, a.dk, a.nvec, a.st, a.softcap, PrefetchRows{}, a.col_max,
    a.alibi);
}
template <class F>
void Call(ScoreRowsArgs& a, F f) {
  f(a.qs, a.dkp, a.nrows, a.k, a.k_stride, a.nkeys, a.dk, a.st, a.lds);
}
template <class F>
void Call(QkPackedArgs& a, F f) {
  f(a.q, a.nrows, a.tile, a.dk, a.out, a.ld);
}
template <class F>
void Call(PvTileArgs& a, F f) {
  f(a.p, a.pj, a.pm, a.v, a.vs, a.nkeys, a.nrows, a.nvec, a.accumulate, a.o, a.ldo);
}
template <class F>
void Call(PvRowsArgs& a, F f) {
  f(a.p, a.ldp, a.nrows, a.v, a.ldv, a.nkeys, a.dv, a.o, a.ldo);
}
template <class F>
void Call(ScoreRowsRunsArgs& a, F f) {
  f(a.qs, a.dkp, a.nrows, a.runs, a.k_stride, a.dk, a.st, a.lds);
}
template <class F>
void Call(PvRowsRunsArgs& a, F f) {
  f(a.p, a.pj, a.pm, a.runs, a.vs, a.nrows, a.nvec, a.accumulate, a.o, a.ldo);
}
template <class F>
void Call(OnlineSoftmaxArgs& a, F f) {
  f(a.st, a.ld, a.nkeys, a.rows, a.m, a.l, a.alpha);
}
template <class F>
void Call(OnlineSoftmaxColumnsArgs& a, F f) {
  f(a.st, a.ld, a.nkeys, a.rows, a.m, a.l, a.alpha, a.tile_max);
}
template <class F>
void Call(SoftmaxRowArgs& a, F f) {
  f(a.s, a.n, a.scale, a.add, &a.max, &a.sum);
}
template <class F>
void Call(Exp2Args& a, F f) {
  f(a.x, a.out, a.n);
}
template <class F>
void Call(TransposeArgs& a, F f) {
  f(a.rows, a.n, a.n_padded, a.cols, a.scale, a.dst, a.ld);
}
template <class F>
void Call(DotArgs& a, F f) {
  a.result = f(a.x, a.y, a.n);
}
template <class F>
void Call(FinishRowArgs& a, F f) {
  f(a.acc, a.m, a.l, a.dv, a.out, a.lse);
}
template <class F>
void Call(ToF32Args& a, F f) {
  f(a.dtype, a.src, a.n, a.scale, a.dst);
}
template <class F>
void Call(Bf16ScoreTileArgs& a, F f) {
  f(a.qp, a.k, a.k_stride, a.nkeys, a.dk, a.nvec, a.scale, a.st, a.col_max);
}
template <class F>
void Call(Bf16PackValuesArgs& a, F f) {
  f(a.v, a.v_stride, a.nkeys, a.dv, a.vp, a.vps);
}
template <class F>
void Call(Bf16PackQueriesArgs& a, F f) {
  f(a.rows, a.nrows, a.dk, a.qp);
}
template <class F>
void Call(Bf16SoftmaxToRowsArgs& a, F f) {
  f(a.st, a.nkeys, a.nvec, a.scale, a.m, a.l, a.alpha, a.pr, a.ldp, a.tile_max);
}
template <class F>
void Call(Bf16PvRowsArgs& a, F f) {
  f(a.pr, a.ldp, a.vp, a.vps, a.npairs, a.nrows, a.nvec, a.accumulate, a.o, a.ldo);
}
template <class F>
void Call(Bf16DecodeScoresArgs& a, F f) {
  f(a.qw, a.nrows, a.k, a.k_stride, a.nkeys, a.dk, a.scale, a.st, a.lds);
}
template <class F>
void Call(Bf16DecodePvArgs& a, F f) {
  f(a.p, a.ldp, a.v, a.v_stride, a.nkeys, a.nrows, a.dv, a.accumulate, a.o, a.ldo);
}
template <class F>
void Call(I8DecodeScoresArgs& a, F f) {
  f(a.qw, a.nrows, a.k, a.k_stride, a.nkeys, a.dk, a.row_scale, a.st, a.lds);
}
template <class F>
void Call(I8DecodePvArgs& a, F f) {
  f(a.p, a.ldp, a.v, a.v_stride, a.nkeys, a.nrows, a.dv, a.accumulate, a.o, a.ldo);
}
template <class F>
void Call(GradScoresArgs& a, F f) {
  f(a.s, a.dp, a.ld, a.nrows, a.ncols, a.lse, a.dsum, a.scale);
}
template <class F>
void Call(SoftcapArgs& a, F f) {
  f(a.x, a.out, a.n, a.cap);
}
template <class F>
void Call(AlibiRowArgs& a, F f) {
  f(a.s, a.n, a.slope, a.d0);
}
template <class F>
void Call(AlibiColumnsArgs& a, F f) {
  f(a.st, a.ld, a.nkeys, a.rows, a.slopes, a.positions, a.key0);
}
}  // namespace attn::ukernels
#endif

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

#define ATTN_UKERNEL(name, family, function, types, isa, tile, rows, width, summary)       \
  bool UkernelEntry_##name(void* args) {                                                   \
    if (ukernels::Isa::isa == ukernels::Isa::kVectorTargets && HWY_TARGET == HWY_SCALAR) { \
      return false;                                                                        \
    }                                                                                      \
    if (!ukernels::CpuHasIsa(ukernels::Isa::isa)) return false;                            \
    using Args = ukernels::ArgsOf<ukernels::Family::family>::type;                         \
    /* Highway entries are found in HWY_NAMESPACE, ISA ones in ukernels. */                \
    ukernels::Call(*static_cast<Args*>(args), [](auto... a) {                              \
      using namespace ::attn::ukernels; /* NOLINT */                                       \
      return function(a...);                                                               \
    });                                                                                    \
    return true;                                                                           \
  }
#include "kernels/ukernels/ukernels.inc"
#undef ATTN_UKERNEL

int64_t UkernelLanes() { return static_cast<int64_t>(hn::Lanes(DF())); }
int64_t UkernelTarget() { return HWY_TARGET; }

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace attn {
#define ATTN_UKERNEL(name, ...) HWY_EXPORT(UkernelEntry_##name);
#include "kernels/ukernels/ukernels.inc"
#undef ATTN_UKERNEL
HWY_EXPORT(UkernelLanes);
HWY_EXPORT(UkernelTarget);

namespace ukernels {

std::span<const Ukernel> Ukernels() {
  static const Ukernel kList[] = {
#define ATTN_UKERNEL(name, family, function, types, isa, tile, rows, width, summary)    \
  {#name, Family::family, types, Isa::isa, tile, rows, width, summary, [](void* args) { \
     return HWY_DYNAMIC_DISPATCH(UkernelEntry_##name)(args);                            \
   }},
#include "kernels/ukernels/ukernels.inc"
#undef ATTN_UKERNEL
  };
  return kList;
}

const Ukernel* FindUkernel(std::string_view name) {
  for (const Ukernel& u : Ukernels()) {
    if (name == u.name) return &u;
  }
  return nullptr;
}

const char* FamilyName(Family family) {
  switch (family) {
    case Family::kScoreTile:
      return "score_tile";
    case Family::kScoreRows:
      return "score_rows";
    case Family::kQkPacked:
      return "qk_packed";
    case Family::kPvTile:
      return "pv_tile";
    case Family::kPvRows:
      return "pv_rows";
    case Family::kScoreRowsRuns:
      return "score_rows_runs";
    case Family::kPvRowsRuns:
      return "pv_rows_runs";
    case Family::kOnlineSoftmaxColumns:
      return "online_softmax_columns";
    case Family::kOnlineSoftmaxRows:
      return "online_softmax_rows";
    case Family::kSoftmaxRow:
      return "softmax_row";
    case Family::kExp2:
      return "exp2";
    case Family::kTranspose:
      return "transpose";
    case Family::kDot:
      return "dot";
    case Family::kFinishRow:
      return "finish_row";
    case Family::kToF32:
      return "to_f32";
    case Family::kBf16ScoreTile:
      return "bf16_score_tile";
    case Family::kBf16PackValues:
      return "bf16_pack_values";
    case Family::kBf16PackQueries:
      return "bf16_pack_queries";
    case Family::kBf16SoftmaxToRows:
      return "bf16_softmax_to_rows";
    case Family::kBf16PvRows:
      return "bf16_pv_rows";
    case Family::kBf16DecodeScores:
      return "bf16_decode_scores";
    case Family::kBf16DecodePv:
      return "bf16_decode_pv";
    case Family::kI8DecodeScores:
      return "i8_decode_scores";
    case Family::kI8DecodePv:
      return "i8_decode_pv";
    case Family::kGradScores:
      return "grad_scores";
    case Family::kSoftcap:
      return "softcap";
    case Family::kAlibiRow:
      return "alibi_row";
    case Family::kAlibiColumns:
      return "alibi_columns";
  }
  return "unknown";
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16:
      return "AVX512_BF16";
    case Isa::kAmxBf16:
      return "AMX_BF16";
    case Isa::kAvx512Vnni:
      return "AVX512_VNNI";
    default:
      return "";
  }
}

bool CpuHasIsa(Isa isa) {
  switch (isa) {
    case Isa::kAvx512Bf16:
      return CpuHasAvx512Bf16();
    case Isa::kAmxBf16:
      return CpuHasAmxBf16();
    case Isa::kAvx512Vnni:
      return CpuHasAvx512Vnni();
    default:
      return true;
  }
}

std::string IsaMissing(Isa isa) {
  if (isa == Isa::kAmxBf16) return AmxBf16Unavailable();
  return std::string("this CPU lacks ") + IsaName(isa);
}

int64_t DispatchedLanes() { return HWY_DYNAMIC_DISPATCH(UkernelLanes)(); }

int64_t DispatchedTarget() { return HWY_DYNAMIC_DISPATCH(UkernelTarget)(); }

}  // namespace ukernels
}  // namespace attn
#endif  // HWY_ONCE
