// AMX-BF16 micro-kernels (bf16_amx.h): TDPBF16PS in functions compiled for
// AMX by target attribute, reached only after CPUID and Linux said yes.
#include "kernels/ukernels/bf16_amx.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

#include "kernels/ukernels/column_max_avx512.h"
#include "kernels/ukernels/transpose_avx512.h"

// As in bf16_avx512.cc: gcc 12's AVX-512 headers (their _mm512_undefined
// operands) trip -Wmaybe-uninitialized, and -Wuninitialized once inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"

#define ATTN_AMX_TARGET \
  __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))

namespace attn::ukernels {
namespace {

constexpr int64_t kCols = kBf16TileCols;  // queries per Q-pair / P-pair row
constexpr int kTileRows = 16;             // rows of a tile (keys, O rows, pairs)
constexpr int kTileBytes = 64;            // bytes of a tile row

// gcc's tile intrinsics are asm statements that take only addresses: the
// compiler does not know that they read or write memory. A barrier naming
// the buffer keeps ordinary stores before a tile load of it (and alive),
// and ordinary loads after a tile store.
inline void MemoryBarrier(const void* p) { asm volatile("" : : "r"(p) : "memory"); }

// LDTILECFG's 64-byte operand (palette 1: 8 tiles of up to 16 rows x 64 B).
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// LDTILECFG and TILERELEASE as volatile asm too: gcc's builtins for them
// are ordinary calls that it may schedule across the tile asm (a TILEZERO
// moved above the LDTILECFG that configures it faults), while volatile asm
// statements keep their order among themselves.
inline void LoadTileConfig(const TileConfig& cfg) { asm volatile("ldtilecfg %0" : : "m"(cfg)); }
inline void ReleaseTiles() { asm volatile("tilerelease" : : : "memory"); }

// The score tile's roles: tiles 0-3 C (c_rows x 16 fp32), 4 A (c_rows x
// k_bytes), 5-7 B (k_bytes / 4 rows x 16 pairs). LDTILECFG zeroes every
// tile.
ATTN_AMX_TARGET void ConfigureScores(int c_rows, int k_bytes) {
  TileConfig cfg;
  for (int t = 0; t < 4; ++t) {
    cfg.rows[t] = uint8_t(c_rows);
    cfg.colsb[t] = kTileBytes;
  }
  cfg.rows[4] = uint8_t(c_rows);
  cfg.colsb[4] = uint16_t(k_bytes);
  for (int t = 5; t < 8; ++t) {
    cfg.rows[t] = uint8_t(k_bytes / 4);
    cfg.colsb[t] = kTileBytes;
  }
  LoadTileConfig(cfg);
}

// C tiles 0..NC-1 += A (tile 4) · B, B loaded for each from b + c·16 at
// `b_stride` bytes, in tiles 5, 6, 7 in turn.
template <int NC>
ATTN_AMX_TARGET inline void MultiplyColumns(const uint32_t* b, int64_t b_stride) {
  _tile_loadd(5, b, b_stride);
  _tile_dpbf16ps(0, 4, 5);
  if constexpr (NC > 1) {
    _tile_loadd(6, b + 16, b_stride);
    _tile_dpbf16ps(1, 4, 6);
  }
  if constexpr (NC > 2) {
    _tile_loadd(7, b + 32, b_stride);
    _tile_dpbf16ps(2, 4, 7);
  }
  if constexpr (NC > 3) {
    _tile_loadd(5, b + 48, b_stride);
    _tile_dpbf16ps(3, 4, 5);
  }
}

template <int NC>
ATTN_AMX_TARGET inline void ZeroC() {
  _tile_zero(0);
  if constexpr (NC > 1) _tile_zero(1);
  if constexpr (NC > 2) _tile_zero(2);
  if constexpr (NC > 3) _tile_zero(3);
}

// C tile c -> c_out + c·16 (fp32), rows `stride` bytes apart.
template <int NC>
ATTN_AMX_TARGET inline void StoreC(float* c_out, int64_t stride) {
  _tile_stored(0, c_out, stride);
  if constexpr (NC > 1) _tile_stored(1, c_out + 16, stride);
  if constexpr (NC > 2) _tile_stored(2, c_out + 32, stride);
  if constexpr (NC > 3) _tile_stored(3, c_out + 48, stride);
  MemoryBarrier(c_out);
}

// --- Sᵀ = K·Qᵀ ----------------------------------------------------------------

// Sᵀ rows j0 .. j0 + (configured rows) for NC vectors of queries: A = K rows
// (32 bf16 of d per step), B = the Q pairs of those d.
template <int NC>
ATTN_AMX_TARGET void ScoreKeyBlock(const uint32_t* qp, const uint16_t* k, int64_t k_stride,
                                   int64_t dk, float* st) {
  ZeroC<NC>();
  for (int64_t d0 = 0; d0 < dk; d0 += 32) {
    _tile_loadd(4, k + d0, k_stride * 2);
    MultiplyColumns<NC>(qp + d0 / 2 * kCols, kCols * 4);
  }
  StoreC<NC>(st, kCols * 4);
}

ATTN_AMX_TARGET void ScoreKeys(int nc, const uint32_t* qp, const uint16_t* k, int64_t k_stride,
                               int64_t dk, float* st) {
  switch (nc) {
    case 1:
      return ScoreKeyBlock<1>(qp, k, k_stride, dk, st);
    case 2:
      return ScoreKeyBlock<2>(qp, k, k_stride, dk, st);
    case 3:
      return ScoreKeyBlock<3>(qp, k, k_stride, dk, st);
    default:
      return ScoreKeyBlock<4>(qp, k, k_stride, dk, st);
  }
}

// The scale on the rows just stored (in L1), rather than on Q (which would
// round Q twice).
ATTN_AMX_TARGET void ScaleRows(float* st, int64_t rows, int64_t nvec, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < nvec; ++v) {
      float* x = st + r * kCols + v * 16;
      _mm512_store_ps(x, _mm512_mul_ps(s, _mm512_load_ps(x)));
    }
}

// Sᵀ block by block; col_max, when asked for, from each block's rows just
// stored (in L1): the softmax's maximum pass read all of Sᵀ (128 KiB for 512
// keys, from L2) again for it.
ATTN_AMX_TARGET void ScoreTile(const uint32_t* qp, const uint16_t* k, int64_t k_stride,
                               int64_t nkeys, int64_t dk, int64_t nvec, float scale, float* st,
                               float* col_max) {
  if (!AmxScoresTakeDk(dk)) {
    return Bf16KernelsForCpu()->score_tile(qp, k, k_stride, nkeys, dk, nvec, scale, st, col_max);
  }
  MemoryBarrier(qp);
  const int nc = int(std::min<int64_t>(nvec, 4));
  __m512 mt[4];
  SetMinusInfinity(mt, nc);
  int configured = 0;
  for (int64_t j = 0; j < nkeys; j += kTileRows) {
    const int rows = int(std::min<int64_t>(kTileRows, nkeys - j));
    if (rows != configured) ConfigureScores(configured = rows, kTileBytes);
    ScoreKeys(nc, qp, k + j * k_stride, k_stride, dk, st + j * kCols);
    if (scale != 1.0f) ScaleRows(st + j * kCols, rows, nvec, scale);
    if (col_max != nullptr) MaxOverKeys(nc, st + j * kCols, rows, mt);
  }
  ReleaseTiles();
  if (col_max != nullptr) {
    for (int v = 0; v < nc; ++v) _mm512_store_ps(col_max + v * 16, mt[v]);
  }
}

// --- O (+)= P·V -----------------------------------------------------------------

// P·V works on 2 x 2 blocks of C: row tile r < 2 of O (16 rows) and column
// tile c < 2 (16 columns) in tile 2r + c, the P rows of row tile r in tile
// 4 + r and the V pairs of column tile c in tile 6 + c. Per 16-pair step
// two A and two B loads feed four TDPBF16PS: half the tile loads per
// multiply of one row tile against four column tiles (whose B, from V in
// L2, went with every TDPBF16PS: 780 GFLOP/s at d = 128 against ~1 TFLOP/s
// here).
ATTN_AMX_TARGET void ConfigurePv(int rows0, int rows1, int k_bytes) {
  TileConfig cfg;
  const int rows[2] = {rows0, rows1};
  for (int r = 0; r < 2; ++r) {
    const uint16_t used = rows[r] > 0 ? 1 : 0;  // an unused tile is all zero
    for (int c = 0; c < 2; ++c) {
      cfg.rows[2 * r + c] = uint8_t(rows[r]);
      cfg.colsb[2 * r + c] = uint16_t(used * kTileBytes);
    }
    cfg.rows[4 + r] = uint8_t(rows[r]);
    cfg.colsb[4 + r] = uint16_t(used * k_bytes);
  }
  for (int c = 0; c < 2; ++c) {
    cfg.rows[6 + c] = uint8_t(k_bytes / 4);
    cfg.colsb[6 + c] = kTileBytes;
  }
  LoadTileConfig(cfg);
}

// O's NR x NC tiles at o (16 rows apart per row tile) over pairs
// [p_begin, p_end) of the P rows in a (16 rows apart per row tile) and the
// V pairs vp, 16 pairs per step (the configured A width); C from O
// (`load`) or zero, then stored.
template <int NR, int NC>
ATTN_AMX_TARGET void PvBlock(const uint32_t* a, int64_t lda, const uint32_t* vp, int64_t vps,
                             int64_t p_begin, int64_t p_end, bool load, float* o, int64_t ldo) {
  float* o1 = o + kTileRows * ldo;
  if (load) {
    _tile_loadd(0, o, ldo * 4);
    if constexpr (NC > 1) _tile_loadd(1, o + 16, ldo * 4);
    if constexpr (NR > 1) _tile_loadd(2, o1, ldo * 4);
    if constexpr (NR > 1 && NC > 1) _tile_loadd(3, o1 + 16, ldo * 4);
  } else {
    _tile_zero(0);
    if constexpr (NC > 1) _tile_zero(1);
    if constexpr (NR > 1) _tile_zero(2);
    if constexpr (NR > 1 && NC > 1) _tile_zero(3);
  }
  for (int64_t p = p_begin; p < p_end; p += kTileRows) {
    _tile_loadd(4, a + p, lda * 4);
    if constexpr (NR > 1) _tile_loadd(5, a + kTileRows * lda + p, lda * 4);
    _tile_loadd(6, vp + p * vps, vps * 4);
    if constexpr (NC > 1) _tile_loadd(7, vp + p * vps + 16, vps * 4);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (NC > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (NR > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (NR > 1 && NC > 1) _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, o, ldo * 4);
  if constexpr (NC > 1) _tile_stored(1, o + 16, ldo * 4);
  if constexpr (NR > 1) _tile_stored(2, o1, ldo * 4);
  if constexpr (NR > 1 && NC > 1) _tile_stored(3, o1 + 16, ldo * 4);
  MemoryBarrier(o);
}

ATTN_AMX_TARGET void PvBlockOf(int nr, int nc, const uint32_t* a, int64_t lda, const uint32_t* vp,
                               int64_t vps, int64_t p_begin, int64_t p_end, bool load, float* o,
                               int64_t ldo) {
  if (nr > 1) {
    if (nc > 1) return PvBlock<2, 2>(a, lda, vp, vps, p_begin, p_end, load, o, ldo);
    return PvBlock<2, 1>(a, lda, vp, vps, p_begin, p_end, load, o, ldo);
  }
  if (nc > 1) return PvBlock<1, 2>(a, lda, vp, vps, p_begin, p_end, load, o, ldo);
  return PvBlock<1, 1>(a, lda, vp, vps, p_begin, p_end, load, o, ldo);
}

// Up to 32 rows of O (rows0 + rows1, in two row tiles) over `npairs` pairs,
// all columns: whole 16-pair steps in one configuration, then the rest in
// one of its own width (C stored and reloaded between: LDTILECFG clears
// the tiles).
ATTN_AMX_TARGET void PvRowTiles(const uint32_t* a, int64_t lda, const uint32_t* vp, int64_t vps,
                                int64_t npairs, int rows0, int rows1, int64_t nvec, bool accumulate,
                                float* o, int64_t ldo) {
  const int64_t whole = npairs / kTileRows * kTileRows;
  const int tail = int(npairs - whole);
  const int nr = rows1 > 0 ? 2 : 1;
  if (whole > 0) {
    ConfigurePv(rows0, rows1, kTileBytes);
    for (int64_t v = 0; v < nvec; v += 2) {
      PvBlockOf(nr, int(std::min<int64_t>(2, nvec - v)), a, lda, vp + v * 16, vps, 0, whole,
                accumulate, o + v * 16, ldo);
    }
  }
  if (tail > 0) {
    ConfigurePv(rows0, rows1, tail * 4);
    for (int64_t v = 0; v < nvec; v += 2) {
      PvBlockOf(nr, int(std::min<int64_t>(2, nvec - v)), a, lda, vp + v * 16, vps, whole, npairs,
                accumulate || whole > 0, o + v * 16, ldo);
    }
  }
}

// O rows in pairs of row tiles, all columns, from P rows in A's layout.
ATTN_AMX_TARGET void PvRows(const uint32_t* pr, int64_t ldp, const uint32_t* vp, int64_t vps,
                            int64_t npairs, int64_t nrows, int64_t nvec, bool accumulate, float* o,
                            int64_t ldo) {
  MemoryBarrier(pr);
  MemoryBarrier(vp);
  MemoryBarrier(o);
  for (int64_t m0 = 0; m0 < nrows; m0 += 2 * kTileRows) {
    const int rows0 = int(std::min<int64_t>(kTileRows, nrows - m0));
    const int rows1 = int(std::clamp<int64_t>(nrows - m0 - kTileRows, 0, kTileRows));
    PvRowTiles(pr + m0 * ldp, ldp, vp, vps, npairs, rows0, rows1, nvec, accumulate, o + m0 * ldo,
               ldo);
  }
  ReleaseTiles();
}

// --- The peak loop -------------------------------------------------------------

// A full 2 x 2 block, as P·V's (ConfigurePv), its operands never reloaded.
ATTN_AMX_TARGET double PeakLoop(int64_t rounds) {
  ConfigurePv(kTileRows, kTileRows, kTileBytes);
  // bf16 ~0.001 everywhere: not zeros (which a unit might skip), and
  // 32·10^-6 per step stays finite for any run length.
  alignas(64) uint16_t small[kTileRows * 32];
  for (uint16_t& x : small) x = 0x3A83;
  MemoryBarrier(small);
  _tile_loadd(4, small, kTileBytes);
  _tile_loadd(5, small, kTileBytes);
  _tile_loadd(6, small, kTileBytes);
  _tile_loadd(7, small, kTileBytes);
  ZeroC<4>();
  for (int64_t r = 0; r < rounds; ++r) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) float sink[kTileRows * 16];
  StoreC<1>(sink, kTileBytes);  // keeps the loop
  ReleaseTiles();
  return 4.0 * 2.0 * kTileRows * 16 * 32 * double(rounds);
}

// --- CPUID and Linux --------------------------------------------------------------

// XFEATURE_XTILEDATA, ARCH_REQ_XCOMP_PERM (linux/arch/x86/include/uapi/asm/prctl.h).
constexpr int kXfeatureTileData = 18;
constexpr int kArchReqXcompPerm = 0x1023;

std::string WhyNoAmx() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  const bool leaf7 = __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) != 0;
  const bool amx_bf16 = leaf7 && ((edx >> 22) & 1) != 0 && ((edx >> 24) & 1) != 0;  // BF16, TILE
  if (!amx_bf16) return "this CPU has no AMX-BF16";
  if (!CpuHasAvx512Bf16()) return "this CPU has AMX-BF16 but no AVX512_BF16 (its packing)";
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) != 0) {
    return std::string("Linux refused the AMX tile state (arch_prctl(ARCH_REQ_XCOMP_PERM): ") +
           std::strerror(errno) + ")";
  }
  return "";
}

const std::string& Unavailable() {
  static const std::string why = WhyNoAmx();  // asks Linux once per process
  return why;
}

}  // namespace

bool CpuHasAmxBf16() { return Unavailable().empty(); }

const char* AmxBf16Unavailable() { return Unavailable().c_str(); }

double AmxBf16PeakLoop(int64_t rounds) { return CpuHasAmxBf16() ? PeakLoop(rounds) : 0.0; }

const Bf16Kernels* AmxBf16KernelsForCpu() {
  if (!CpuHasAmxBf16()) return nullptr;
  // The VDPBF16PS set's V and Q pairing and softmax (P rows), the tile
  // kernels' products.
  const Bf16Kernels& pairs = *Bf16KernelsForCpu();
  static const Bf16Kernels kKernels = {ScoreTile, pairs.pack_value_pairs, pairs.pack_query_pairs,
                                       pairs.softmax_to_rows, PvRows};
  return &kKernels;
}

}  // namespace attn::ukernels

#else  // not x86-64 with GCC/Clang: no AMX kernels

namespace attn::ukernels {
bool CpuHasAmxBf16() { return false; }
const char* AmxBf16Unavailable() { return "AMX kernels are built for x86-64 only"; }
const Bf16Kernels* AmxBf16KernelsForCpu() { return nullptr; }
double AmxBf16PeakLoop(int64_t) { return 0.0; }
}  // namespace attn::ukernels

#endif
