// Every micro-kernel on the list (kernels/ukernels/ukernels.inc), on every
// Highway target compiled into the library that this CPU has, against a plain
// scalar version in double, over edge sizes: 1, around the vector width and
// the register tile (tile - 1, tile, tile + 1), odd primes, head dims that are
// not multiples of the vector width, past a key-sum block (kKeySumBlock),
// misaligned and strided inputs. Outputs are poisoned first, and what a
// kernel must not write (columns past its width, rows past its count) is
// checked to still hold the poison. Entries the target cannot run (Isa) and
// targets the CPU lacks are skipped with a message naming them.
//
// Tolerances come from the error of the computation, not a constant: a sum
// of n products is within (n + 2)·u·Σ|terms| of the exact value (u = 2^-24);
// FastExp2 is within kFastExp2MaxUlp ulp, FastTanh within kTanhMaxAbsU·u (absolute);
// ALiBi's bias is one fused or unfused multiply-add of exact distances.
//
// ctest label `ukernel` (ctest -L ukernel).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "hwy/targets.h"
#include "kernels/problem.h"
#include "kernels/ukernels/bf16_avx512.h"
#include "kernels/ukernels/i8_decode.h"
#include "kernels/ukernels/ukernels.h"

namespace attn::ukernels {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr double kU = 1.0 / (1 << 24);
constexpr int64_t kTileCols = 64;  // Qᵀ / Sᵀ row stride of the score tile

// 64-byte aligned floats, poisoned with NaN, with `offset` floats skipped at
// the front (misaligned views).
class Buffer {
 public:
  explicit Buffer(int64_t n, int64_t offset = 0) : offset_(offset) {
    data_ = static_cast<float*>(std::aligned_alloc(64, ((n + offset) * 4 + 63) / 64 * 64));
    std::fill(data_, data_ + n + offset, kNaN);
    n_ = n;
  }
  ~Buffer() { std::free(data_); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  float* data() { return data_ + offset_; }
  float& operator[](int64_t i) { return data()[i]; }
  int64_t size() const { return n_; }
  void Fill(std::mt19937& rng, float scale = 1.0f) {
    std::uniform_real_distribution<float> u(-scale, scale);
    for (int64_t i = 0; i < n_; ++i) data()[i] = u(rng);
  }

 private:
  float* data_;
  int64_t n_;
  int64_t offset_;
};

// Every target in HWY_TARGETS, best first.
std::vector<int64_t> CompiledTargets() {
  std::vector<int64_t> targets;
  for (int64_t bits = HWY_TARGETS; bits != 0; bits &= bits - 1) {
    targets.push_back(bits & ~(bits - 1));
  }
  return targets;
}

// Collects mismatches; reports the first few.
struct Checker {
  std::string where;
  int failures = 0;
  void Near(double got, double want, double tol, const std::string& what) {
    const bool ok = std::isnan(want)   ? std::isnan(got)
                    : std::isinf(want) ? got == want
                                       : std::fabs(got - want) <= tol;
    if (!ok && ++failures <= 5) {
      ADD_FAILURE() << where << ": " << what << " got " << got << " want " << want << " (tol "
                    << tol << ")";
    }
  }
  // got = Σ_i a[i·sa]·b[i·sb] (i < n) within (n + 2)·u·Σ|a·b|.
  void Dot(double got, const float* a, int64_t sa, const float* b, int64_t sb, int64_t n,
           const std::string& what) {
    double want = 0, mag = 0;
    for (int64_t i = 0; i < n; ++i) {
      want += double(a[i * sa]) * b[i * sb];
      mag += std::fabs(double(a[i * sa]) * b[i * sb]);
    }
    Near(got, want, (n + 2) * kU * mag, what);
  }
  // got has want's bits (a NaN's payload and a zero's sign included).
  void SameBits(float got, float want, const std::string& what) {
    if (std::memcmp(&got, &want, sizeof(float)) != 0 && ++failures <= 5) {
      ADD_FAILURE() << where << ": " << what << " got " << got << " want " << want
                    << " (bit for bit)";
    }
  }
  void Poisoned(float x, const std::string& what) {
    if (!std::isnan(x) && ++failures <= 5) {
      ADD_FAILURE() << where << ": " << what << " was written (" << x << ")";
    }
  }
};

// Row counts a family's entry accepts: exactly `rows`, or a sweep up to max.
std::vector<int64_t> RowCounts(const Ukernel& u, std::vector<int64_t> sweep) {
  if (u.rows > 0) return {u.rows};
  return sweep;
}

// d values: exactly width_vectors·lanes, or the sweep.
std::vector<int64_t> Widths(const Ukernel& u, int64_t lanes, std::vector<int64_t> sweep) {
  if (u.width_vectors > 0) return {u.width_vectors * lanes};
  return sweep;
}

// --- Families ---------------------------------------------------------------

double SoftcapTol(double x, double cap);  // below, with the softcap family
void CheckAlibi(Checker& c, float got, float s, float slope, double dist,
                const std::string& what);  // below, with the ALiBi families

// A score tile's col_max against its stored Sᵀ (nkeys rows): the maximum of
// each of the first `cols` columns bit for bit, the columns past them not
// written.
void CheckColMax(Checker& c, const float* col_max, const float* st, int64_t nkeys, int64_t cols,
                 const std::string& where) {
  for (int64_t x = 0; x < kTileCols; ++x) {
    const std::string at = "col_max[" + std::to_string(x) + "]" + where;
    if (x >= cols) {
      c.Poisoned(col_max[x], at);
      continue;
    }
    float want = -kInf;
    for (int64_t j = 0; j < nkeys; ++j) want = std::max(want, st[j * kTileCols + x]);
    c.SameBits(col_max[x], want, at);
  }
}

// The call `plain` again with the ALiBi bias (alibi_tile.h): each score is
// the plain one (softcapped, if so) plus the bias as AlibiColumns adds it,
// and col_max is the maximum of the biased scores, bit for bit. Slopes and
// positions as TestAlibiColumns draws them (keys far from 0, distances of
// both signs).
void TestScoreTileAlibi(const Ukernel& u, int64_t lanes, ScoreTileArgs plain, const float* st0,
                        Checker& c) {
  std::mt19937 rng(static_cast<unsigned>(plain.nkeys * 131 + plain.dk));
  std::uniform_real_distribution<float> uslope(-1.0f, 1.0f);
  std::uniform_int_distribution<int> upos(0, 1000);
  const int64_t cols = plain.nvec * lanes;
  const float key0 = 1000000.0f;
  Buffer slopes(kTileCols), positions(kTileCols), st((plain.nkeys + 1) * kTileCols);
  Buffer col_max(kTileCols);
  for (int64_t x = 0; x < kTileCols; ++x) {
    slopes[x] = x % 3 == 0 ? 1.0f / float(1 << (x % 9)) : uslope(rng);
    positions[x] = key0 + float(upos(rng) - 300);
  }
  std::fill(col_max.data(), col_max.data() + cols, -kInf);
  ScoreTileArgs a = plain;
  a.st = st.data();
  a.col_max = col_max.data();
  a.alibi = {slopes.data(), positions.data(), key0};
  ASSERT_TRUE(u.run(&a));
  const std::string where = " dk=" + std::to_string(a.dk) + " keys=" + std::to_string(a.nkeys) +
                            " nvec=" + std::to_string(a.nvec) +
                            " softcap=" + std::to_string(a.softcap) + " alibi";
  CheckColMax(c, col_max.data(), st.data(), a.nkeys, cols, where);
  for (int64_t j = 0; j <= a.nkeys; ++j) {
    for (int64_t x = 0; x < kTileCols; ++x) {
      const std::string at = "S[" + std::to_string(j) + "][" + std::to_string(x) + "]" + where;
      if (j == a.nkeys || x >= cols) {
        c.Poisoned(st[j * kTileCols + x], at);
        continue;
      }
      CheckAlibi(c, st[j * kTileCols + x], st0[j * kTileCols + x], slopes[x],
                 (double(key0) + double(j)) - double(positions[x]), at);
    }
  }
}

// Plain scores, and softcapped ones (cap·tanh(s/cap) applied as they are
// stored): the dot's own error passes through tanh at most unchanged (slope
// <= 1), then the softcap's (SoftcapTol). cap = 1.5 puts most scores of
// these uniform inputs past |s/cap| = 1, where FastTanh takes its exp form.
void TestScoreTile(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(11);
  for (float cap : {0.0f, 1.5f, 40.0f}) {
    for (int64_t dk : {1, 3, 16, 17, 64, 67, 128}) {
      for (int64_t nkeys : {1, 2, 5, 6, 7, 13, 64}) {
        for (int64_t nvec : {int64_t{1}, int64_t{3}, kTileCols / lanes}) {
          if (nvec * lanes > kTileCols) continue;
          const int64_t k_stride = dk + 3;
          Buffer qt(dk * kTileCols), k(nkeys * k_stride, 1), st((nkeys + 1) * kTileCols);
          qt.Fill(rng);
          k.Fill(rng);
          // col_max starts at -inf below nvec vectors, poisoned past them.
          Buffer col_max(kTileCols);
          std::fill(col_max.data(), col_max.data() + nvec * lanes, -kInf);
          ScoreTileArgs a{qt.data(), k.data(),  k_stride, nkeys,         dk,
                          nvec,      st.data(), cap,      col_max.data()};
          ASSERT_TRUE(u.run(&a));
          CheckColMax(c, col_max.data(), st.data(), nkeys, nvec * lanes,
                      " dk=" + std::to_string(dk) + " keys=" + std::to_string(nkeys) +
                          " softcap=" + std::to_string(cap));
          for (int64_t j = 0; j <= nkeys; ++j) {
            for (int64_t x = 0; x < kTileCols; ++x) {
              const std::string at = "S[" + std::to_string(j) + "][" + std::to_string(x) +
                                     "] dk=" + std::to_string(dk) +
                                     " nvec=" + std::to_string(nvec) +
                                     " softcap=" + std::to_string(cap);
              const float got = st[j * kTileCols + x];
              if (j == nkeys || x >= nvec * lanes) {
                c.Poisoned(got, at);
                continue;
              }
              if (cap == 0.0f) {
                c.Dot(got, &k[j * k_stride], 1, &qt[x], kTileCols, dk, at);
                continue;
              }
              double want = 0, mag = 0;
              for (int64_t i = 0; i < dk; ++i) {
                want += double(k[j * k_stride + i]) * qt[i * kTileCols + x];
                mag += std::fabs(double(k[j * k_stride + i]) * qt[i * kTileCols + x]);
              }
              c.Near(got, cap * std::tanh(want / cap), (dk + 2) * kU * mag + SoftcapTol(want, cap),
                     at);
            }
          }
          TestScoreTileAlibi(u, lanes, a, st.data(), c);
        }
      }
    }
  }
}

void TestScoreRows(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(12);
  for (int64_t dk : Widths(u, lanes, {1, 3, 16, 17, 64, 128})) {
    const int64_t dkp = (dk + lanes - 1) / lanes * lanes;
    for (int64_t nrows : RowCounts(u, {1, 2, 3, 4, 5, 8})) {
      for (int64_t nkeys : {1, 3, 4, 5, 9, 13, 64, 515}) {
        const int64_t k_stride = dk + 1, lds = nkeys + 7;
        Buffer qs(nrows * dkp), k(nkeys * k_stride, 1), st(nrows * lds);
        qs.Fill(rng);
        for (int64_t r = 0; r < nrows; ++r) std::fill(&qs[r * dkp + dk], &qs[(r + 1) * dkp], 0.0f);
        k.Fill(rng);
        ScoreRowsArgs a{qs.data(), dkp, nrows, k.data(), k_stride, nkeys, dk, st.data(), lds};
        ASSERT_TRUE(u.run(&a));
        for (int64_t r = 0; r < nrows; ++r) {
          for (int64_t j = 0; j < lds; ++j) {
            const std::string at = "S[" + std::to_string(r) + "][" + std::to_string(j) +
                                   "] dk=" + std::to_string(dk) + " keys=" + std::to_string(nkeys);
            if (j >= nkeys) {
              c.Poisoned(st[r * lds + j], at);
              continue;
            }
            c.Dot(st[r * lds + j], &qs[r * dkp], 1, &k[j * k_stride], 1, dk, at);
          }
        }
      }
    }
  }
}

// Rows of `width` floats, `stride` apart, in runs of the given lengths laid
// out in reverse order with gaps (a paged cache's blocks, anywhere), each
// run prefetching the next one's rows (as flash's decode does), and the
// same rows gathered in run order (`gathered`, stride `stride`) to check
// against.
struct ScatteredRuns {
  ScatteredRuns(const std::vector<int64_t>& lengths, int64_t stride, std::mt19937& rng)
      : rows(Total(lengths) * stride + 3 * stride * int64_t(lengths.size()), 1),
        gathered(std::max<int64_t>(Total(lengths), 1) * stride) {
    rows.Fill(rng);
    int64_t end = rows.size(), key = 0;
    for (int64_t n : lengths) {
      end -= (n + 3) * stride;  // 3 rows of gap before the next run (behind it)
      runs.push_back({rows.data() + end, n, {}});
      std::copy(rows.data() + end, rows.data() + end + n * stride, &gathered[key * stride]);
      key += n;
    }
    for (size_t i = 0; i + 1 < runs.size(); ++i) {
      runs[i].ahead = {.k = static_cast<const char*>(runs[i + 1].rows),
                       .k_stride = stride * 4,
                       .k_bytes = stride * 4,
                       .rows = std::min(runs[i].keys, runs[i + 1].keys)};
    }
  }
  static int64_t Total(const std::vector<int64_t>& lengths) {
    int64_t n = 0;
    for (int64_t x : lengths) n += x;
    return n;
  }
  Buffer rows, gathered;
  std::vector<KeyRun> runs;
};

// Run layouts: one key, a 64-key tile in blocks of 16, runs that are not
// multiples of 4, one long run, 32 runs of 4, and (P·V) more than
// kKeySumBlock keys.
std::vector<std::vector<int64_t>> RunLayouts() {
  return {{1}, {16, 16, 16, 16}, {5, 3, 8, 1, 12}, {515}, std::vector<int64_t>(32, 4), {600, 600}};
}

void TestScoreRowsRuns(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(21);
  for (int64_t dk : Widths(u, lanes, {1, 3, 16, 17, 64, 128})) {
    const int64_t dkp = (dk + lanes - 1) / lanes * lanes, k_stride = dk + 1;
    for (int64_t nrows : RowCounts(u, {1, 2, 3, 4, 5, 8})) {
      for (const std::vector<int64_t>& lengths : RunLayouts()) {
        ScatteredRuns k(lengths, k_stride, rng);
        const int64_t nkeys = ScatteredRuns::Total(lengths), lds = nkeys + 7;
        Buffer qs(nrows * dkp), st(nrows * lds);
        qs.Fill(rng);
        for (int64_t r = 0; r < nrows; ++r) std::fill(&qs[r * dkp + dk], &qs[(r + 1) * dkp], 0.0f);
        ScoreRowsRunsArgs a{qs.data(), dkp, nrows, k.runs, k_stride, dk, st.data(), lds};
        ASSERT_TRUE(u.run(&a));
        for (int64_t r = 0; r < nrows; ++r) {
          for (int64_t j = 0; j < lds; ++j) {
            const std::string at =
                "S[" + std::to_string(r) + "][" + std::to_string(j) + "] dk=" + std::to_string(dk) +
                " runs=" + std::to_string(lengths.size()) + " keys=" + std::to_string(nkeys);
            if (j >= nkeys) {
              c.Poisoned(st[r * lds + j], at);
              continue;
            }
            c.Dot(st[r * lds + j], &qs[r * dkp], 1, &k.gathered[j * k_stride], 1, dk, at);
          }
        }
      }
    }
  }
}

void TestQkPacked(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(13);
  const int64_t tile = 2 * lanes;
  const int64_t max_rows = lanes >= 16 ? 8 : 4;  // kQkPackedRows
  for (int64_t dk : {1, 5, 16, 64, 67}) {
    for (int64_t nrows : {int64_t{1}, int64_t{2}, max_rows}) {
      Buffer q(nrows * (dk + 2), 1), packed(dk * tile), out(nrows * (tile + 3));
      q.Fill(rng);
      packed.Fill(rng);
      std::vector<const float*> rows(nrows);
      for (int64_t r = 0; r < nrows; ++r) rows[r] = &q[r * (dk + 2)];
      QkPackedArgs a{rows.data(), nrows, packed.data(), dk, out.data(), tile + 3};
      ASSERT_TRUE(u.run(&a));
      for (int64_t r = 0; r < nrows; ++r) {
        for (int64_t jj = 0; jj < tile + 3; ++jj) {
          const std::string at = "S[" + std::to_string(r) + "][" + std::to_string(jj) + "]";
          if (jj >= tile) {
            c.Poisoned(out[r * (tile + 3) + jj], at);
            continue;
          }
          c.Dot(out[r * (tile + 3) + jj], rows[r], 1, &packed[jj], tile, dk, at);
        }
      }
    }
  }
}

// O (+)= P·V in the family's layout; `o0` is O before (accumulate).
void CheckPv(Checker& c, const float* p, int64_t pj, int64_t pm, const float* v, int64_t vs,
             int64_t nkeys, int64_t nrows, int64_t width, const float* o0, const float* o,
             int64_t ldo, int64_t written, const std::string& what) {
  for (int64_t m = 0; m < nrows; ++m) {
    for (int64_t x = 0; x < ldo; ++x) {
      const std::string at = what + " O[" + std::to_string(m) + "][" + std::to_string(x) + "]";
      if (x >= written) {
        c.Poisoned(o[m * ldo + x], at);
        continue;
      }
      double want = o0 ? o0[m * ldo + x] : 0.0, mag = std::fabs(want);
      for (int64_t j = 0; j < nkeys; ++j) {
        want += double(p[j * pj + m * pm]) * v[j * vs + x];
        mag += std::fabs(double(p[j * pj + m * pm]) * v[j * vs + x]);
      }
      // Blocked sums (kKeySumBlock): at most block + blocks + 2 roundings.
      const double n = std::min<double>(nkeys, kKeySumBlock + 2.0 * (nkeys / kKeySumBlock + 1));
      c.Near(o[m * ldo + x], want, (n + 3) * kU * mag, at);
    }
  }
  (void)width;
}

void TestPvTile(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(14);
  const std::vector<int64_t> widths = u.width_vectors > 0 ? std::vector<int64_t>{u.width_vectors}
                                                          : std::vector<int64_t>{1, 2, 3, 4, 5, 8};
  for (int64_t nvec : widths) {
    for (int64_t nrows : RowCounts(u, {1, 2, 3, 4, 5, 6, 7, 12, 13})) {
      for (int64_t nkeys : {1, 2, 5, 16, 513, 1025}) {
        if (u.rows == 4 && nkeys > kKeySumBlock) continue;  // one tile (contract)
        for (bool key_major : {true, false}) {
          for (bool accumulate : {false, true}) {
            const int64_t width = nvec * lanes, ldo = width + lanes, vs = width + 5;
            // Sᵀ (key-major, flash's tile) or S (row-major, few rows).
            const int64_t pj = key_major ? nrows + 1 : 1, pm = key_major ? 1 : nkeys + 3;
            Buffer p(nkeys * pj + nrows * pm), v(nkeys * vs, 1), o(nrows * ldo), o0(nrows * ldo);
            p.Fill(rng);
            v.Fill(rng);
            for (int64_t m = 0; m < nrows; ++m) {
              for (int64_t x = 0; x < width; ++x)
                o0[m * ldo + x] = o[m * ldo + x] = 0.5f - float(x % 3);
            }
            PvTileArgs a{p.data(), pj,   pm,         v.data(), vs, nkeys,
                         nrows,    nvec, accumulate, o.data(), ldo};
            ASSERT_TRUE(u.run(&a));
            CheckPv(c, p.data(), pj, pm, v.data(), vs, nkeys, nrows, width,
                    accumulate ? o0.data() : nullptr, o.data(), ldo, width,
                    "keys=" + std::to_string(nkeys) + " nvec=" + std::to_string(nvec) +
                        (accumulate ? " +=" : " ="));
          }
        }
      }
    }
  }
}

void TestPvRowsRuns(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(22);
  for (int64_t nvec : {1, 2, 4, 8, 16}) {
    for (int64_t nrows : RowCounts(u, {1, 2, 3, 4, 5, 8})) {
      for (const std::vector<int64_t>& lengths : RunLayouts()) {
        for (bool key_major : {false, true}) {
          for (bool accumulate : {false, true}) {
            const int64_t width = nvec * lanes, ldo = width + lanes, vs = width + 5;
            ScatteredRuns v(lengths, vs, rng);
            const int64_t nkeys = ScatteredRuns::Total(lengths);
            const int64_t pj = key_major ? nrows + 1 : 1, pm = key_major ? 1 : nkeys + 3;
            Buffer p(nkeys * pj + nrows * pm), o(nrows * ldo), o0(nrows * ldo);
            p.Fill(rng);
            for (int64_t m = 0; m < nrows; ++m) {
              for (int64_t x = 0; x < width; ++x)
                o0[m * ldo + x] = o[m * ldo + x] = 0.5f - float(x % 3);
            }
            PvRowsRunsArgs a{p.data(), pj, pm, v.runs, vs, nrows, nvec, accumulate, o.data(), ldo};
            ASSERT_TRUE(u.run(&a));
            CheckPv(c, p.data(), pj, pm, v.gathered.data(), vs, nkeys, nrows, width,
                    accumulate ? o0.data() : nullptr, o.data(), ldo, width,
                    "runs=" + std::to_string(lengths.size()) + " keys=" + std::to_string(nkeys) +
                        " rows=" + std::to_string(nrows) + " nvec=" + std::to_string(nvec) +
                        (key_major ? " key-major" : "") + (accumulate ? " +=" : " ="));
          }
        }
      }
    }
  }
}

void TestPvRows(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(15);
  for (int64_t dv : {int64_t{1}, int64_t{3}, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, 4 * lanes,
                     4 * lanes + 5, int64_t{128}}) {
    if (dv < 1) continue;
    for (int64_t nrows : {1, 2, 3, 4, 5, 9}) {
      for (int64_t nkeys : {1, 7, 64, 1025}) {
        const int64_t ldp = nkeys + 2, ldv = dv + 3, ldo = dv + 4;
        Buffer p(nrows * ldp), v(nkeys * ldv, 1), o(nrows * ldo);
        p.Fill(rng);
        v.Fill(rng);
        PvRowsArgs a{p.data(), ldp, nrows, v.data(), ldv, nkeys, dv, o.data(), ldo};
        ASSERT_TRUE(u.run(&a));
        CheckPv(c, p.data(), 1, ldp, v.data(), ldv, nkeys, nrows, dv, nullptr, o.data(), ldo, dv,
                "dv=" + std::to_string(dv) + " keys=" + std::to_string(nkeys));
      }
    }
  }
}

// The scalar online softmax step for one row: scores s[j·step] (j < nkeys).
// The online step of one row against fp64: `weight(j)` the weight the
// kernel left for key j, rounded with a relative `p_rounding` (0: fp32,
// 2^-8: bf16) after the exponential. With a rounded P the weights' (and
// so l's) exponential may be the cheaper one kernels/problem.h allows
// ("Element types"): relative kReducedExpMaxRel, its exponent formed as
// x·(scale·log2 e) - mu·log2 e (the two products rounded: (|x| + |mu|)·u).
template <class Weight>
void CheckOnlineRow(Checker& c, const float* before, int64_t step, int64_t nkeys, float m0,
                    float l0, float m1, float l1, float alpha, const std::string& at, Weight weight,
                    double p_rounding = 0) {
  double mx = m0;
  bool nan = false;
  for (int64_t j = 0; j < nkeys; ++j) {
    nan |= std::isnan(before[j * step]);
    mx = std::max<double>(mx, before[j * step]);
  }
  if (nan) {
    c.Near(l1, kNaN, 0, at + " l (NaN score)");
    return;
  }
  const double mu = mx == -kInf ? 0.0 : mx;
  double sum = 0;
  // e^(x - mu) within the exp's ulps plus the rounding of its argument
  // ((x - mu)·log2 e, relative u each): a relative (4 + 2|x - mu|)·u.
  auto exp_tol = [](double arg, double e) {
    return e == 0 ? 0.0 : (4 + 2 * std::fabs(arg)) * kU * e + 1e-45;
  };
  double sum_tol = 0;  // the reduced exponential's, over l's terms
  for (int64_t j = 0; j < nkeys; ++j) {
    const double x = before[j * step], arg = x - mu;
    const double e = std::exp(arg);
    const double reduced_exp = p_rounding > 0 && e > 0
                                   ? (kReducedExpMaxRel + (std::fabs(x) + std::fabs(mu)) * kU) * e
                                   : 0.0;
    sum += e;
    sum_tol += reduced_exp;
    c.Near(weight(j), e, exp_tol(arg, e) + reduced_exp + p_rounding * e,
           at + " p[" + std::to_string(j) + "]");
  }
  const double a = std::exp(double(m0) - mu);
  c.Near(m1, mx, 0, at + " m");
  c.Near(alpha, a, exp_tol(double(m0) - mu, a), at + " alpha");
  const double want_l = a * l0 + sum;
  c.Near(l1, want_l, (nkeys + 8) * kU * want_l + sum_tol, at + " l");
}
void CheckOnlineRow(Checker& c, const float* before, const float* after, int64_t step,
                    int64_t nkeys, float m0, float l0, float m1, float l1, float alpha,
                    const std::string& at) {
  CheckOnlineRow(c, before, step, nkeys, m0, l0, m1, l1, alpha, at,
                 [&](int64_t j) { return after[j * step]; });
}

// Scores with a previous state: fresh rows (m = -inf), rows whose maximum
// moves and rows whose does not, an all -inf row, a NaN score.
void FillOnline(std::mt19937& rng, float* s, int64_t step, int64_t nkeys, int64_t row, float* m,
                float* l) {
  std::uniform_real_distribution<float> u(-8.0f, 8.0f);
  for (int64_t j = 0; j < nkeys; ++j) s[j * step] = u(rng);
  switch (row % 5) {
    case 0:
      *m = -kInf, *l = 0.0f;
      break;
    case 1:
      *m = 20.0f, *l = 3.0f;  // above every score: alpha = 1
      break;
    case 2:
      *m = -3.0f, *l = 2.5f;
      break;
    case 3:
      *m = -kInf, *l = 0.0f;
      for (int64_t j = 0; j < nkeys; ++j) s[j * step] = -kInf;
      break;
    default:
      *m = 1.0f, *l = 1.0f;
      s[(nkeys / 2) * step] = kNaN;
  }
}

void TestOnlineSoftmaxColumns(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(16);
  for (int64_t rows : {lanes, 2 * lanes, kTileCols}) {
    if (rows > kTileCols) continue;
    for (int64_t nkeys : {1, 5, 64, 512}) {
      Buffer st(nkeys * kTileCols), before(nkeys * kTileCols), m(kTileCols), l(kTileCols),
          alpha(kTileCols);
      std::vector<float> m0(rows), l0(rows);
      for (int64_t x = 0; x < rows; ++x) {
        FillOnline(rng, &st[x], kTileCols, nkeys, x, &m[x], &l[x]);
        m0[x] = m[x], l0[x] = l[x];
      }
      std::memcpy(before.data(), st.data(), sizeof(float) * nkeys * kTileCols);
      OnlineSoftmaxColumnsArgs a;
      static_cast<OnlineSoftmaxArgs&>(a) = {st.data(), kTileCols, nkeys,       rows,
                                            m.data(),  l.data(),  alpha.data()};
      ASSERT_TRUE(u.run(&a));
      for (int64_t x = 0; x < rows; ++x) {
        CheckOnlineRow(c, &before[x], &st[x], kTileCols, nkeys, m0[x], l0[x], m[x], l[x], alpha[x],
                       "row " + std::to_string(x) + " keys=" + std::to_string(nkeys));
      }
      // Handed the tile's maxima (as the score tile computes them), the same
      // bits in the tile and in m, l, alpha.
      Buffer st2(nkeys * kTileCols), m2(kTileCols), l2(kTileCols), alpha2(kTileCols),
          tile_max(kTileCols);
      std::memcpy(st2.data(), before.data(), sizeof(float) * nkeys * kTileCols);
      for (int64_t x = 0; x < rows; ++x) {
        m2[x] = m0[x], l2[x] = l0[x], tile_max[x] = -kInf;
        for (int64_t j = 0; j < nkeys; ++j) {
          tile_max[x] = std::max(tile_max[x], before[j * kTileCols + x]);
        }
      }
      OnlineSoftmaxColumnsArgs given = a;
      given.st = st2.data(), given.m = m2.data(), given.l = l2.data(), given.alpha = alpha2.data();
      given.tile_max = tile_max.data();
      ASSERT_TRUE(u.run(&given));
      const std::string keys = " keys=" + std::to_string(nkeys) + ", given the tile maximum";
      for (int64_t x = 0; x < rows; ++x) {
        const std::string at = " of row " + std::to_string(x) + keys;
        if (x % 5 == 4) {
          // A NaN score (FillOnline): the maximum depends on the order it is
          // taken in, so the weights may differ; l is NaN either way.
          c.Near(l2[x], kNaN, 0, "l with a NaN score" + at);
          continue;
        }
        for (int64_t j = 0; j < nkeys; ++j) {
          c.SameBits(st2[j * kTileCols + x], st[j * kTileCols + x],
                     "weight " + std::to_string(j) + at);
        }
        c.SameBits(m2[x], m[x], "m" + at);
        c.SameBits(l2[x], l[x], "l" + at);
        c.SameBits(alpha2[x], alpha[x], "alpha" + at);
      }
    }
  }
}

void TestOnlineSoftmaxRows(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(17);
  for (int64_t nrows : {1, 2, 5, 8}) {
    for (int64_t nkeys : {int64_t{1}, lanes - 1, lanes, lanes + 1, int64_t{33}, int64_t{512}}) {
      if (nkeys < 1) continue;
      const int64_t ld = (nkeys + lanes - 1) / lanes * lanes + lanes;
      Buffer st(nrows * ld), before(nrows * ld), m(8), l(8), alpha(8);
      std::vector<float> m0(nrows), l0(nrows);
      for (int64_t x = 0; x < nrows; ++x) {
        FillOnline(rng, &st[x * ld], 1, nkeys, x, &m[x], &l[x]);
        m0[x] = m[x], l0[x] = l[x];
      }
      std::memcpy(before.data(), st.data(), sizeof(float) * nrows * ld);
      OnlineSoftmaxArgs a{st.data(), ld, nkeys, nrows, m.data(), l.data(), alpha.data()};
      ASSERT_TRUE(u.run(&a));
      for (int64_t x = 0; x < nrows; ++x) {
        CheckOnlineRow(c, &before[x * ld], &st[x * ld], 1, nkeys, m0[x], l0[x], m[x], l[x],
                       alpha[x], "row " + std::to_string(x) + " keys=" + std::to_string(nkeys));
      }
    }
  }
}

void TestSoftmaxRow(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(18);
  for (int64_t n : {int64_t{1}, lanes - 1, lanes, 2 * lanes, 2 * lanes + 1, int64_t{1000},
                    int64_t{1025}, int64_t{3000}}) {
    if (n < 1) continue;
    for (int special = 0; special < 4; ++special) {  // none, NaN, +inf, all -inf
      for (bool with_add : {false, true}) {
        Buffer s(n + 1, 1), add(n), raw(n);
        s.Fill(rng, 4.0f);
        s[n] = kNaN;  // must not be written
        add.Fill(rng, 2.0f);
        if (special == 1) s[n / 2] = kNaN;
        if (special == 2) add[n / 3] = kInf;
        if (special == 3) std::fill(add.data(), add.data() + n, -kInf);
        std::memcpy(raw.data(), s.data(), sizeof(float) * n);
        const float scale = 0.37f;
        SoftmaxRowArgs a{s.data(), n, scale, with_add ? add.data() : nullptr, 0, 0};
        ASSERT_TRUE(u.run(&a));
        const std::string at = "n=" + std::to_string(n) + " special=" + std::to_string(special);
        c.Poisoned(s[n], at + " past the row");
        const bool nan_row = special == 1 || (special == 2 && with_add);
        if (nan_row) {
          c.Near(a.max, kNaN, 0, at + " max");
          continue;
        }
        // x = raw·scale (+ add) in fp32 has an absolute error up to
        // dx = 2u·(|raw·scale| + |add|); e^(x - max) then a relative error
        // dx_j + dx_max plus the exponential's (4 + 2|x - max|)·u.
        double mx = -kInf, dx_max = 0;
        std::vector<double> x(n), dx(n);
        for (int64_t j = 0; j < n; ++j) {
          const double add_j = with_add ? double(add[j]) : 0.0;
          x[j] = double(raw[j]) * scale + add_j;
          dx[j] = 2 * kU * (std::fabs(double(raw[j]) * scale) + std::fabs(add_j));
          mx = std::max(mx, x[j]);
          dx_max = std::max(dx_max, dx[j]);
        }
        if (mx == -kInf) {
          c.Near(a.max, -kInf, 0, at + " max");
          c.Near(a.sum, 0, 0, at + " sum");
          for (int64_t j = 0; j < n; ++j) c.Near(s[j], 0, 0, at + " p");
          continue;
        }
        double sum = 0, sum_tol = 0;
        for (int64_t j = 0; j < n; ++j) {
          const double e = std::exp(x[j] - mx);
          const double tol = (dx[j] + dx_max + (4 + 2 * std::fabs(x[j] - mx)) * kU) * e + 1e-45;
          sum += e;
          sum_tol += tol;
          c.Near(s[j], e, tol, at + " p");
        }
        c.Near(a.max, mx, dx_max, at + " max");
        const double len = std::min<double>(n, kKeySumBlock + 2.0 * (n / kKeySumBlock + 1));
        c.Near(a.sum, sum, (len + 2) * kU * sum + sum_tol, at + " sum");
      }
    }
  }
}

// Every 61st float in [-126, 127.5), plus points around 0 and the ends.
std::vector<float> Exp2Sweep() {
  std::vector<float> x;
  for (float v = -126.0f; v < 127.5f;) {
    x.push_back(v);
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    bits = v < 0 ? bits - 61 : bits + 61;
    if (v < 0 && bits < 0x80000000u) bits = 0;  // crossed zero
    std::memcpy(&v, &bits, 4);
    if (v == 0.0f) {
      x.push_back(0.0f);
      v = 1e-30f;
    }
  }
  for (float v : {-0.5f, 0.5f, -1.0f, -125.99f, 0.0f, -0.0f}) x.push_back(v);
  return x;
}

void TestExp2(const Ukernel& u, int64_t lanes, Checker& c) {
  (void)lanes;
  const std::vector<float> x = Exp2Sweep();
  std::vector<float> out(x.size() + 1, kNaN);
  Exp2Args a{x.data(), out.data(), int64_t(x.size())};
  ASSERT_TRUE(u.run(&a));
  double worst = 0;
  float worst_x = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::exp2(double(x[i]));
    const double ulp = std::ldexp(1.0, std::ilogb(want) - 23);
    const double err = std::fabs(double(out[i]) - want) / ulp;
    if (!(err <= worst)) worst = err, worst_x = x[i];
  }
  c.Poisoned(out[x.size()], "past the row");
  if (worst > kFastExp2MaxUlp) {
    ++c.failures;
    ADD_FAILURE() << c.where << ": " << worst << " ulp at x=" << worst_x << " (bound "
                  << kFastExp2MaxUlp << ")";
  }
  ::testing::Test::RecordProperty("max_ulp", std::to_string(worst));
  const float special[] = {-kInf, -1000.0f, -126.5f, kNaN, 0.0f, 3.0f, -2.0f};
  float got[7];
  Exp2Args s{special, got, 7};
  ASSERT_TRUE(u.run(&s));
  c.Near(got[0], 0, 0, "2^-inf");
  c.Near(got[1], 0, 0, "2^-1000");
  c.Near(got[2], 0, 0, "2^-126.5 (flushed)");
  c.Near(got[3], kNaN, 0, "2^NaN");
  c.Near(got[4], 1.0, 0, "2^0 exactly (an unmoved max is not rescaled)");
  c.Near(got[5], 8.0, 0, "2^3");
  c.Near(got[6], 0.25, 0, "2^-2");
}

void TestTranspose(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(19);
  for (int64_t n : {int64_t{1}, lanes - 1, lanes, lanes + 1, 2 * lanes + 1}) {
    if (n < 1) continue;
    const int64_t n_padded = (n + lanes - 1) / lanes * lanes;
    for (int64_t cols : {int64_t{1}, lanes - 1, lanes, lanes + 3, 2 * lanes}) {
      if (cols < 1) continue;
      const int64_t ld = n_padded + lanes;
      Buffer src(n * (cols + 1), 1), dst(cols * ld);
      src.Fill(rng);
      std::vector<const float*> rows(n);
      for (int64_t r = 0; r < n; ++r) rows[r] = &src[r * (cols + 1)];
      TransposeArgs a{rows.data(), n, n_padded, cols, 0.5f, dst.data(), ld};
      ASSERT_TRUE(u.run(&a));
      for (int64_t col = 0; col < cols; ++col) {
        for (int64_t r = 0; r < ld; ++r) {
          const std::string at = "dst[" + std::to_string(col) + "][" + std::to_string(r) + "]";
          if (r >= n_padded) {
            c.Poisoned(dst[col * ld + r], at);
          } else {
            c.Near(dst[col * ld + r], r < n ? 0.5 * rows[r][col] : 0.0, 0, at);
          }
        }
      }
    }
  }
}

void TestDot(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(20);
  for (int64_t n : {int64_t{1}, lanes - 1, lanes, lanes + 1, 4 * lanes - 1, 4 * lanes,
                    4 * lanes + 1, int64_t{67}, int64_t{1000}}) {
    if (n < 1) continue;
    Buffer x(n, 1), y(n, 3);
    x.Fill(rng);
    y.Fill(rng);
    DotArgs a{x.data(), y.data(), n, 0};
    ASSERT_TRUE(u.run(&a));
    c.Dot(a.result, x.data(), 1, y.data(), 1, n, "n=" + std::to_string(n));
  }
}

void TestFinishRow(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(21);
  for (int64_t dv : {int64_t{1}, lanes - 1, lanes + 1, int64_t{64}}) {
    if (dv < 1) continue;
    struct Case {
      float m, l;
      bool lse;
    } cases[] = {{1.5f, 3.0f, true},
                 {-2.0f, 0.25f, false},
                 {-kInf, 0.0f, true},
                 {kNaN, 0.0f, true},
                 {0.5f, kNaN, true}};
    for (const Case& k : cases) {
      Buffer acc(dv), out(dv + 1, 1);
      acc.Fill(rng);
      float lse = 123.0f;
      FinishRowArgs a{acc.data(), k.m, k.l, dv, out.data(), k.lse ? &lse : nullptr};
      ASSERT_TRUE(u.run(&a));
      const std::string at = "m=" + std::to_string(k.m) + " l=" + std::to_string(k.l);
      c.Poisoned(out[dv], at + " past the row");
      const bool masked = k.m == -kInf && k.l == 0.0f;
      for (int64_t y = 0; y < dv; ++y) {
        const double want = masked ? 0.0 : double(acc[y]) / k.l;
        c.Near(out[y], want, 2 * kU * std::fabs(want), at + " O");
      }
      if (k.lse) {
        const double want = masked ? -kInf : double(k.m) + std::log(double(k.l));
        c.Near(lse, want, 4 * kU * (std::fabs(want) + 1), at + " lse");
      } else {
        c.Near(lse, 123.0, 0, at + " lse untouched");
      }
    }
  }
}

// Bit-exact against LoadElement for every input type, lengths around the
// vector width, misaligned rows, and special values (bf16/f16 inf, NaN,
// subnormals; int8 -127..127); nothing written past n.
void TestToF32(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(22);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16, DType::kI8}) {
    const int64_t size = int64_t(DTypeBytes(dtype));
    for (int64_t n : {int64_t{1}, lanes - 1, lanes, lanes + 1, 3 * lanes + 5, int64_t{128}}) {
      if (n < 1) continue;
      std::vector<uint8_t> bytes((n + 1) * size + 64);
      uint8_t* src = bytes.data() + size;  // aligned to the element only
      for (uint8_t& b : bytes) b = static_cast<uint8_t>(rng());
      if (dtype == DType::kF16 || dtype == DType::kBF16) {
        const uint16_t specials[] = {0x7C00, 0xFC00, 0x7E00, 0x0001,
                                     0x8000, 0x7F80, 0xFF80, 0x7FC0};
        for (int64_t k = 0; k < std::min<int64_t>(n, 8); ++k)
          std::memcpy(src + k * 2, &specials[(k + rng()) % 8], 2);
      }
      if (dtype == DType::kI8) src[0] = 0x81;  // -127
      const float scale = dtype == DType::kI8 ? 0.0371f : 1.0f;
      Buffer dst(n + 1, 1);
      ToF32Args a{dtype, src, n, scale, dst.data()};
      ASSERT_TRUE(u.run(&a));
      const std::string at = std::string(DTypeName(dtype)) + " n=" + std::to_string(n);
      for (int64_t k = 0; k < n; ++k) {
        const float want = LoadElement(dtype, src + k * size, scale);
        c.Near(dst[k], want, 0, at + " element " + std::to_string(k));
      }
      c.Poisoned(dst[n], at + " past the row");
    }
  }
}

// --- AVX512_BF16 pair kernels (bf16_avx512.h) --------------------------------

// Random bf16 bits of values uniform in [-scale, scale).
std::vector<uint16_t> RandomBf16(std::mt19937& rng, size_t n, float scale = 1.0f) {
  std::uniform_real_distribution<float> u(-scale, scale);
  std::vector<uint16_t> out(n);
  for (uint16_t& x : out) x = BF16BitsFromF32(u(rng));
  return out;
}
double Bf16(uint32_t pair, int half) { return F32FromBF16Bits(uint16_t(pair >> (16 * half))); }
// Σ a[d]·b[d] over n bf16 elements, exactly (in double); *mag = Σ|a[d]·b[d]|.
double Bf16Dot(const uint16_t* a, const uint16_t* b, int64_t n, double* mag) {
  double sum = 0;
  *mag = 0;
  for (int64_t d = 0; d < n; ++d) {
    const double prod = double(F32FromBF16Bits(a[d])) * F32FromBF16Bits(b[d]);
    sum += prod;
    *mag += std::fabs(prod);
  }
  return sum;
}

// Query x's maximum over keys of st[j·64 + x] as the kernels take it:
// VMAXPS from -inf key by key, which returns its second operand when either
// is NaN.
float ColumnMax(Buffer& st, int64_t nkeys, int64_t x) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < nkeys; ++j)
    max = max > st[j * kTileCols + x] ? max : st[j * kTileCols + x];
  return max;
}

void TestBf16ScoreTile(const Ukernel& u, Checker& c) {
  std::mt19937 rng(23);
  // dk 32, 64, 96, 128: whole AMX steps; keys 17 and 35: whole AMX tiles
  // and a tail.
  for (int64_t dk : {1, 2, 3, 15, 16, 32, 64, 96, 127, 128}) {
    for (int64_t nkeys : {1, 5, 6, 7, 13, 17, 35, 64}) {
      for (int64_t nvec : {1, 2, 3, 4}) {
        const int64_t k_stride = dk + 3;
        const std::vector<uint16_t> q = RandomBf16(rng, 64 * dk);
        const std::vector<uint16_t> k = RandomBf16(rng, nkeys * k_stride);
        std::vector<const uint16_t*> rows(64);
        for (int64_t x = 0; x < 64; ++x) rows[x] = q.data() + x * dk;
        Buffer qp((dk + 1) / 2 * kTileCols), st((nkeys + 1) * kTileCols), col_max(kTileCols);
        PackQueryPairs(rows.data(), 16 * nvec, dk, reinterpret_cast<uint32_t*>(qp.data()));
        // Powers of two (exact); 1 (flash's call on AMX: no scaling pass) at 64 keys.
        const float scale = nkeys == 64 ? 1.0f : 0.125f * float(1 + nkeys % 3);
        // The column maximum asked for but at 5 keys (flash asks on whole tiles).
        const bool want_max = nkeys != 5;
        Bf16ScoreTileArgs a{reinterpret_cast<uint32_t*>(qp.data()),
                            k.data(),
                            k_stride,
                            nkeys,
                            dk,
                            nvec,
                            scale,
                            st.data(),
                            want_max ? col_max.data() : nullptr};
        ASSERT_TRUE(u.run(&a));
        const std::string at = "dk=" + std::to_string(dk) + " keys=" + std::to_string(nkeys) +
                               " nvec=" + std::to_string(nvec);
        for (int64_t j = 0; j < nkeys; ++j) {
          for (int64_t x = 0; x < 16 * nvec; ++x) {
            double mag;
            const double want = Bf16Dot(&k[j * k_stride], &q[x * dk], dk, &mag);
            c.Near(st[j * kTileCols + x], scale * want, (dk + 2) * kU * scale * mag,
                   at + " key " + std::to_string(j) + " row " + std::to_string(x));
          }
          if (nvec < 4) c.Poisoned(st[j * kTileCols + 16 * nvec], at + " past the vectors");
        }
        c.Poisoned(st[nkeys * kTileCols], at + " past the keys");
        // col_max: exactly the maximum of what st holds.
        for (int64_t x = 0; x < kTileCols; ++x) {
          if (want_max && x < 16 * nvec) {
            c.SameBits(col_max[x], ColumnMax(st, nkeys, x), at + " col_max " + std::to_string(x));
          } else {
            c.Poisoned(col_max[x], at + " col_max past the vectors or not asked for");
          }
        }
      }
    }
  }
}

// Against the plain version (PackQueryPairs): odd and even dk, partial
// 16-pair steps, rows short of 64 (zero rows after them).
void TestBf16PackQueries(const Ukernel& u, Checker& c) {
  std::mt19937 rng(28);
  for (int64_t dk : {1, 2, 3, 31, 32, 33, 64, 100, 127, 128, 256}) {
    for (int64_t nrows : {1, 15, 17, 64}) {
      const int64_t stride = dk + 5;
      const std::vector<uint16_t> q = RandomBf16(rng, nrows * stride);
      std::vector<const uint16_t*> rows(nrows);
      for (int64_t x = 0; x < nrows; ++x) rows[x] = q.data() + x * stride;
      const int64_t pairs = (dk + 1) / 2;
      Buffer got(pairs * kTileCols + 16), want(pairs * kTileCols);
      PackQueryPairs(rows.data(), nrows, dk, reinterpret_cast<uint32_t*>(want.data()));
      Bf16PackQueriesArgs a{rows.data(), nrows, dk, reinterpret_cast<uint32_t*>(got.data())};
      ASSERT_TRUE(u.run(&a));
      const auto* g = reinterpret_cast<const uint32_t*>(got.data());
      const auto* w = reinterpret_cast<const uint32_t*>(want.data());
      const std::string at = "dk=" + std::to_string(dk) + " rows=" + std::to_string(nrows);
      for (int64_t i = 0; i < pairs * kTileCols; ++i) {
        if (g[i] != w[i]) {
          c.Near(double(g[i]), double(w[i]), 0,
                 at + " pair " + std::to_string(i / kTileCols) + " row " +
                     std::to_string(i % kTileCols));
        }
      }
      c.Poisoned(got[pairs * kTileCols], at + " past the pairs");
    }
  }
}

// The softmax given the score tile's maximum of st (tile_max) writes the
// bits it wrote when it took the maximum itself (m, l, alpha, P rows).
void CheckTileMaxGivesTheSameBits(const Ukernel& u, Checker& c, Buffer& st, int64_t nkeys,
                                  int64_t nvec, float scale, const std::vector<float>& m0,
                                  const std::vector<float>& l0, Buffer& m, Buffer& l, Buffer& alpha,
                                  Buffer& pr, int64_t ldp, const std::string& at) {
  const int64_t rows = 16 * nvec;
  Buffer tile_max(kTileCols), m2(kTileCols), l2(kTileCols), alpha2(kTileCols), pr2(pr.size());
  for (int64_t x = 0; x < rows; ++x) {
    tile_max[x] = ColumnMax(st, nkeys, x);
    m2[x] = m0[x], l2[x] = l0[x];
  }
  Bf16SoftmaxToRowsArgs a{
      st.data(), nkeys,          nvec,          scale,
      m2.data(), l2.data(),      alpha2.data(), reinterpret_cast<uint32_t*>(pr2.data()),
      ldp,       tile_max.data()};
  ASSERT_TRUE(u.run(&a));
  const std::string with = at + " with tile_max: ";
  for (int64_t x = 0; x < rows; ++x) {
    c.SameBits(m2[x], m[x], with + "m");
    c.SameBits(l2[x], l[x], with + "l");
    c.SameBits(alpha2[x], alpha[x], with + "alpha");
  }
  for (int64_t i = 0; i < pr.size(); ++i) c.SameBits(pr2[i], pr[i], with + "P rows");
}

// Raw scores that the kernel scales: FillOnline's logits / scale (a power
// of two: exact), so that CheckOnlineRow checks the scaled step; P rows
// checked as bf16 (2^-8), zero past the keys to the written width, and
// nothing written past that width or the rows.
void TestBf16SoftmaxToRows(const Ukernel& u, Checker& c) {
  std::mt19937 rng(27);
  for (float scale : {1.0f, 0.125f}) {
    for (int64_t nvec : {1, 2, 4}) {
      for (int64_t nkeys : {1, 2, 5, 31, 32, 33, 64, 511, 512}) {
        const int64_t rows = 16 * nvec, written = (nkeys + 31) / 32 * 16, ldp = written + 16;
        Buffer st(nkeys * kTileCols), logits(nkeys * kTileCols), m(kTileCols), l(kTileCols),
            alpha(kTileCols), pr(kTileCols * ldp);
        std::vector<float> m0(rows), l0(rows);
        for (int64_t x = 0; x < rows; ++x) {
          FillOnline(rng, &logits[x], kTileCols, nkeys, x, &m[x], &l[x]);
          m0[x] = m[x], l0[x] = l[x];
          for (int64_t j = 0; j < nkeys; ++j)
            st[j * kTileCols + x] = logits[j * kTileCols + x] / scale;
        }
        const auto* words = reinterpret_cast<uint32_t*>(pr.data());
        Bf16SoftmaxToRowsArgs a{
            st.data(), nkeys,    nvec,         scale,
            m.data(),  l.data(), alpha.data(), reinterpret_cast<uint32_t*>(pr.data()),
            ldp};
        ASSERT_TRUE(u.run(&a));
        const std::string at = "scale=" + std::to_string(scale) + " keys=" + std::to_string(nkeys) +
                               " nvec=" + std::to_string(nvec);
        CheckTileMaxGivesTheSameBits(u, c, st, nkeys, nvec, scale, m0, l0, m, l, alpha, pr, ldp,
                                     at);
        for (int64_t x = 0; x < rows; ++x) {
          const std::string row = at + " row " + std::to_string(x);
          CheckOnlineRow(
              c, &logits[x], kTileCols, nkeys, m0[x], l0[x], m[x], l[x], alpha[x], row,
              [&](int64_t j) { return Bf16(words[x * ldp + j / 2], int(j % 2)); }, 0x1p-8);
          for (int64_t j = nkeys; j < 2 * written; ++j) {
            c.Near(Bf16(words[x * ldp + j / 2], int(j % 2)), 0, 0, row + " past the keys");
          }
          c.Poisoned(pr[x * ldp + written], row + " past the written pairs");
        }
        if (rows < kTileCols) c.Poisoned(pr[rows * ldp], at + " past the rows");
      }
    }
  }
  // The exponential on a dense sweep (16 384 arguments), through alpha =
  // e^(m_old - m_new): one key of score 0 (the new maximum) and old maxima
  // from -100 to 0.
  Buffer st(kTileCols), m(kTileCols), l(kTileCols), alpha(kTileCols), pr(kTileCols * 16);
  for (int64_t call = 0; call < 256; ++call) {
    for (int64_t x = 0; x < kTileCols; ++x) {
      st[x] = 0.0f;
      m[x] = -100.0f * float(call * kTileCols + x) / (256 * kTileCols);
      l[x] = 1.0f;
    }
    const std::vector<float> m0(m.data(), m.data() + kTileCols);
    Bf16SoftmaxToRowsArgs a{st.data(),
                            1,
                            4,
                            1.0f,
                            m.data(),
                            l.data(),
                            alpha.data(),
                            reinterpret_cast<uint32_t*>(pr.data()),
                            16};
    ASSERT_TRUE(u.run(&a));
    for (int64_t x = 0; x < kTileCols; ++x) {
      const double want = std::exp(double(m0[x]));
      // Below 2^-126 (m_old < -87.3) the exponential gives 0.
      c.Near(alpha[x], want, (4 + 2 * std::fabs(m0[x])) * kU * want + 0x1p-126,
             "alpha sweep, m_old=" + std::to_string(m0[x]));
    }
  }
}

// P·V from P rows (pr[x·ldp + p]), against the pair products in double.
void TestBf16PvRows(const Ukernel& u, Checker& c) {
  std::mt19937 rng(24);
  // 31 pairs and 35 rows: whole AMX tiles and tails; 300 pairs: more
  // than a 512-key tile has.
  for (int64_t npairs : {1, 2, 31, 256, 300}) {
    for (int64_t nrows : {1, 5, 6, 7, 13, 35, 64}) {
      for (int64_t nvec : {1, 3, 4, 8}) {
        for (bool accumulate : {false, true}) {
          const int64_t vps = 16 * nvec, ldo = vps + 16;
          std::vector<uint16_t> p = RandomBf16(rng, 2 * npairs * kTileCols);
          for (uint16_t& x : p) x &= 0x7FFF;  // weights >= 0
          const std::vector<uint16_t> v = RandomBf16(rng, 2 * npairs * vps);
          Buffer pp(npairs * kTileCols), vp(npairs * vps), o((nrows + 1) * ldo);
          std::memcpy(pp.data(), p.data(), 4 * npairs * kTileCols);
          std::memcpy(vp.data(), v.data(), 4 * npairs * vps);
          std::vector<float> init(nrows * ldo);
          for (int64_t m = 0; m < nrows; ++m)
            for (int64_t col = 0; col < vps; ++col) {
              init[m * ldo + col] =
                  accumulate ? std::uniform_real_distribution<float>(-1, 1)(rng) : 0;
              if (accumulate) o[m * ldo + col] = init[m * ldo + col];
            }
          const uint32_t* pw = reinterpret_cast<const uint32_t*>(pp.data());
          const uint32_t* vw = reinterpret_cast<const uint32_t*>(vp.data());
          const int64_t ldp = (npairs + 15) / 16 * 16 + 16;
          Buffer pr(nrows * ldp);
          auto* rows = reinterpret_cast<uint32_t*>(pr.data());
          for (int64_t m = 0; m < nrows; ++m)
            for (int64_t q = 0; q < npairs; ++q) rows[m * ldp + q] = pw[q * kTileCols + m];
          Bf16PvRowsArgs a{rows, ldp, vw, vps, npairs, nrows, nvec, accumulate, o.data(), ldo};
          ASSERT_TRUE(u.run(&a));
          const std::string at =
              "pairs=" + std::to_string(npairs) + " rows=" + std::to_string(nrows) +
              " nvec=" + std::to_string(nvec) + (accumulate ? " accumulate" : "");
          for (int64_t m = 0; m < nrows; ++m) {
            for (int64_t col = 0; col < vps; ++col) {
              double want = init[m * ldo + col], mag = std::fabs(want);
              for (int64_t q = 0; q < npairs; ++q) {
                for (int half : {0, 1}) {
                  const double term =
                      Bf16(pw[q * kTileCols + m], half) * Bf16(vw[q * vps + col], half);
                  want += term;
                  mag += std::fabs(term);
                }
              }
              c.Near(o[m * ldo + col], want, (2 * npairs + 2) * kU * mag,
                     at + " O[" + std::to_string(m) + "][" + std::to_string(col) + "]");
            }
            c.Poisoned(o[m * ldo + vps], at + " past the vectors");
          }
          c.Poisoned(o[nrows * ldo], at + " past the rows");
        }
      }
    }
  }
}

void TestBf16PackValues(const Ukernel& u, Checker& c) {
  std::mt19937 rng(26);
  for (int64_t nkeys : {1, 2, 3, 7, 64}) {
    for (int64_t dv : {1, 15, 16, 17, 40, 128}) {
      const int64_t v_stride = dv + 5, vps = (dv + 15) / 16 * 16;
      const std::vector<uint16_t> v = RandomBf16(rng, nkeys * v_stride);
      const int64_t pairs = (nkeys + 1) / 2;
      Buffer vp(pairs * vps + 1);
      uint32_t* out = reinterpret_cast<uint32_t*>(vp.data());
      Bf16PackValuesArgs a{v.data(), v_stride, nkeys, dv, out, vps};
      ASSERT_TRUE(u.run(&a));
      const std::string at = "keys=" + std::to_string(nkeys) + " dv=" + std::to_string(dv);
      for (int64_t p = 0; p < pairs; ++p) {
        for (int64_t col = 0; col < vps; ++col) {
          uint32_t want = 0;
          if (col < dv) {
            want = v[2 * p * v_stride + col];
            if (2 * p + 1 < nkeys) want |= uint32_t{v[(2 * p + 1) * v_stride + col]} << 16;
          }
          if (out[p * vps + col] != want && ++c.failures <= 5) {
            ADD_FAILURE() << c.where << ": " << at << " pair " << p << " column " << col << " got "
                          << out[p * vps + col] << " want " << want;
          }
        }
      }
      c.Poisoned(vp[pairs * vps], at + " past the tile");
    }
  }
}

// --- AVX512_BF16 decode kernels (bf16_decode.h) -----------------------------

// Decode scores from bf16 Q words and K rows (strided), against the exact
// products in double: per lane dk/16 VDPBF16PS steps, 4 levels of the
// transpose-reduce and the scale, so within (dk + 4)·u of scale·Σ|q·k|.
// 1-4 rows, dk = 1-4 vectors of 32, key counts around the kernels' 4-key
// groups; nothing written past the keys.
void TestBf16DecodeScores(const Ukernel& u, Checker& c) {
  std::mt19937 rng(31);
  const float scale = 0.08838835f;  // 1/sqrt(128), not a power of two
  for (int64_t dk : {32, 64, 96, 128}) {
    for (int64_t nrows : {1, 2, 3, 4}) {
      for (int64_t nkeys : {1, 3, 4, 5, 8, 33, 512}) {
        const int64_t k_stride = dk + 8, lds = nkeys + 7;
        const std::vector<uint16_t> q = RandomBf16(rng, nrows * dk);
        const std::vector<uint16_t> k = RandomBf16(rng, nkeys * k_stride);
        Buffer qw(nrows * dk / 2), st(nrows * lds);
        std::memcpy(qw.data(), q.data(), 2 * q.size());
        Bf16DecodeScoresArgs a{reinterpret_cast<const uint16_t*>(qw.data()),
                               nrows,
                               k.data(),
                               k_stride,
                               nkeys,
                               dk,
                               scale,
                               st.data(),
                               lds};
        ASSERT_TRUE(u.run(&a));
        const std::string at = "dk=" + std::to_string(dk) + " rows=" + std::to_string(nrows) +
                               " keys=" + std::to_string(nkeys);
        for (int64_t r = 0; r < nrows; ++r) {
          for (int64_t j = 0; j < nkeys; ++j) {
            double mag;
            const double want = Bf16Dot(&q[r * dk], &k[j * k_stride], dk, &mag);
            c.Near(st[r * lds + j], scale * want, (dk + 4) * kU * scale * mag,
                   at + " S[" + std::to_string(r) + "][" + std::to_string(j) + "]");
          }
          for (int64_t j = nkeys; j < lds; ++j) c.Poisoned(st[r * lds + j], at + " past the keys");
        }
      }
    }
  }
}

// Decode P·V from fp32 weights (rounded to bf16 by the kernel, to nearest
// even) and strided bf16 V rows, against those products in double: nkeys
// VDPBF16PS additions per lane, the tile's sum added to O once, so within
// (nkeys + 2)·u of Σ|terms| (and O). 1-4 rows, dv from one 32-column piece
// to several 128-column blocks (chunks of 64 keys), odd key counts (a last
// key without a pair), past 512 keys; nothing written past dv.
void TestBf16DecodePv(const Ukernel& u, Checker& c) {
  std::mt19937 rng(32);
  std::uniform_real_distribution<float> weight(0.0f, 1.0f), init(-1.0f, 1.0f);
  for (int64_t dv : {32, 96, 128, 160, 512}) {
    for (int64_t nrows : {1, 2, 3, 4}) {
      for (int64_t nkeys : {1, 2, 3, 63, 64, 65, 130, 1024}) {
        for (bool accumulate : {false, true}) {
          const int64_t ldp = nkeys + 5, v_stride = dv + 16, ldo = dv + 16;
          Buffer p(nrows * ldp), o(nrows * ldo);
          for (int64_t i = 0; i < nrows * ldp; ++i) p[i] = weight(rng);
          const std::vector<uint16_t> v = RandomBf16(rng, nkeys * v_stride);
          std::vector<float> o0(nrows * dv, 0.0f);
          if (accumulate) {
            for (int64_t r = 0; r < nrows; ++r)
              for (int64_t col = 0; col < dv; ++col)
                o[r * ldo + col] = o0[r * dv + col] = init(rng);
          }
          Bf16DecodePvArgs a{p.data(), ldp, v.data(),   v_stride, nkeys,
                             nrows,    dv,  accumulate, o.data(), ldo};
          ASSERT_TRUE(u.run(&a));
          const std::string at = "dv=" + std::to_string(dv) + " rows=" + std::to_string(nrows) +
                                 " keys=" + std::to_string(nkeys) +
                                 (accumulate ? " accumulate" : "");
          for (int64_t r = 0; r < nrows; ++r) {
            for (int64_t col = 0; col < dv; ++col) {
              double want = o0[r * dv + col], mag = std::fabs(want);
              for (int64_t j = 0; j < nkeys; ++j) {
                const double term = double(F32FromBF16Bits(BF16BitsFromF32(p[r * ldp + j]))) *
                                    F32FromBF16Bits(v[j * v_stride + col]);
                want += term;
                mag += std::fabs(term);
              }
              c.Near(o[r * ldo + col], want, (nkeys + 2) * kU * mag,
                     at + " O[" + std::to_string(r) + "][" + std::to_string(col) + "]");
            }
            c.Poisoned(o[r * ldo + dv], at + " past dv");
          }
        }
      }
    }
  }
}

// --- AVX512_VNNI decode kernels (i8_decode.h) ------------------------------

// Decode scores from int16 Q words and strided int8 K rows: the integer sums
// are exact, so the result is within 2u (one conversion, one multiply) of
// row_scale·Σ q·k, whatever the values (full-range words and bytes here).
// 1-4 rows, dk = 1-4 vectors of 32, key counts around the 4-key groups;
// nothing written past the keys. QuantizeQueryRow is checked beside it.
void TestI8DecodeScores(const Ukernel& u, Checker& c) {
  std::mt19937 rng(33);
  std::uniform_int_distribution<int> word(-32767, 32767), byte(-128, 127);
  for (int64_t dk : {32, 64, 96, 128}) {
    for (int64_t nrows : {1, 2, 3, 4}) {
      for (int64_t nkeys : {1, 3, 4, 5, 8, 33, 512}) {
        const int64_t k_stride = dk + 8, lds = nkeys + 7;
        Buffer qbuf(nrows * dk / 2), st(nrows * lds);
        auto* qw = reinterpret_cast<int16_t*>(qbuf.data());
        for (int64_t i = 0; i < nrows * dk; ++i) qw[i] = int16_t(word(rng));
        std::vector<int8_t> k(nkeys * k_stride);
        for (int8_t& x : k) x = int8_t(byte(rng));
        const float row_scale[4] = {0.01f, -3.0e-5f, 7.5f, 1.0f / 3};
        I8DecodeScoresArgs a{qw, nrows, k.data(), k_stride, nkeys, dk, row_scale, st.data(), lds};
        ASSERT_TRUE(u.run(&a));
        const std::string at = "dk=" + std::to_string(dk) + " rows=" + std::to_string(nrows) +
                               " keys=" + std::to_string(nkeys);
        for (int64_t r = 0; r < nrows; ++r) {
          for (int64_t j = 0; j < nkeys; ++j) {
            int64_t sum = 0;
            for (int64_t d = 0; d < dk; ++d) sum += int64_t(qw[r * dk + d]) * k[j * k_stride + d];
            const double want = double(row_scale[r]) * double(sum);
            c.Near(st[r * lds + j], want, 2 * kU * std::fabs(want),
                   at + " S[" + std::to_string(r) + "][" + std::to_string(j) + "]");
          }
          for (int64_t j = nkeys; j < lds; ++j) c.Poisoned(st[r * lds + j], at + " past the keys");
        }
      }
    }
  }
  // The quantization the scores assume: within a step of q, |words| <=
  // 32767 with the largest element at ±32767; zeros for a zero row, NaN
  // (the caller's fallback) for a non-finite one.
  std::uniform_real_distribution<float> value(-3.0f, 3.0f);
  std::vector<float> q(128);
  std::vector<int16_t> words(128);
  for (float& x : q) x = value(rng);
  q[17] = -4.0f;
  const float step = ukernels::QuantizeQueryRow(q.data(), 128, words.data());
  c.Near(step, 4.0 / 32767, 1e-6 * 4.0 / 32767, "QuantizeQueryRow step");
  c.Near(words[17], -32767, 0, "QuantizeQueryRow largest word");
  for (int64_t d = 0; d < 128; ++d) {
    c.Near(double(step) * words[d], q[d], 0.51 * step,
           "QuantizeQueryRow q[" + std::to_string(d) + "]");
  }
  std::fill(q.begin(), q.end(), 0.0f);
  c.Near(ukernels::QuantizeQueryRow(q.data(), 128, words.data()), 0, 0, "zero row step");
  c.Near(words[5], 0, 0, "zero row word");
  q[7] = 1e-40f;  // subnormal: a zero row (max / 32767 would underflow to a step of 0)
  c.Near(ukernels::QuantizeQueryRow(q.data(), 128, words.data()), 0, 0, "subnormal row step");
  c.Near(words[7], 0, 0, "subnormal row word");
  q[3] = std::numeric_limits<float>::infinity();
  c.Near(ukernels::QuantizeQueryRow(q.data(), 128, words.data()), kNaN, 0, "inf row step");
}

// Decode P·V from fp32 weights (quantized by the kernel to int16, one step
// per row and 64-key chunk: the chunk's max |p| / 32767) and strided int8 V
// rows, against the unquantized products in double: each weight moves by
// at most a step, so O within Σ_j step·|v_j| plus (nkeys + 2)·u of Σ|terms|
// (the chunk sums' conversions and additions). A dropped or doubled key
// moves O by p·|v|, thousands of steps. Weights spanning 8 decades in one
// chunk (the small ones quantize to 0, within their step), 1-4 rows, dv
// from one 32-column piece to 512, odd key counts, past 512 keys; nothing
// written past dv; a non-finite weight returns false with O untouched.
void TestI8DecodePv(const Ukernel& u, Checker& c) {
  std::mt19937 rng(34);
  std::uniform_real_distribution<float> weight(0.0f, 1.0f), init(-1.0f, 1.0f);
  std::uniform_int_distribution<int> byte(-128, 127);
  for (int64_t dv : {32, 96, 128, 160, 512}) {
    for (int64_t nrows : {1, 2, 3, 4}) {
      for (int64_t nkeys : {1, 2, 3, 63, 64, 65, 130, 1024}) {
        for (bool accumulate : {false, true}) {
          const int64_t ldp = nkeys + 5, v_stride = dv + 16, ldo = dv + 16;
          Buffer p(nrows * ldp), o(nrows * ldo);
          for (int64_t r = 0; r < nrows; ++r) {
            for (int64_t j = 0; j < nkeys; ++j) {
              p[r * ldp + j] = r == 1 ? std::pow(10.0f, -float(j % 9)) : weight(rng);
            }
          }
          std::vector<int8_t> v(nkeys * v_stride);
          for (int8_t& x : v) x = int8_t(byte(rng));
          std::vector<float> o0(nrows * dv, 0.0f);
          if (accumulate) {
            for (int64_t r = 0; r < nrows; ++r)
              for (int64_t col = 0; col < dv; ++col)
                o[r * ldo + col] = o0[r * dv + col] = init(rng);
          }
          I8DecodePvArgs a{p.data(), ldp, v.data(),   v_stride, nkeys,
                           nrows,    dv,  accumulate, o.data(), ldo};
          ASSERT_TRUE(u.run(&a));
          const std::string at = "dv=" + std::to_string(dv) + " rows=" + std::to_string(nrows) +
                                 " keys=" + std::to_string(nkeys) +
                                 (accumulate ? " accumulate" : "");
          for (int64_t r = 0; r < nrows; ++r) {
            std::vector<double> step((nkeys + 63) / 64, 0.0);
            for (int64_t j = 0; j < nkeys; ++j) {
              step[j / 64] = std::max(step[j / 64], std::fabs(double(p[r * ldp + j])) / 32767);
            }
            for (int64_t col = 0; col < dv; ++col) {
              double want = o0[r * dv + col], mag = std::fabs(want), quantized = 0;
              for (int64_t j = 0; j < nkeys; ++j) {
                const double x = v[j * v_stride + col];
                want += double(p[r * ldp + j]) * x;
                mag += std::fabs(double(p[r * ldp + j]) * x);
                quantized += step[j / 64] * std::fabs(x);
              }
              c.Near(o[r * ldo + col], want, quantized + (nkeys + 2) * kU * mag,
                     at + " O[" + std::to_string(r) + "][" + std::to_string(col) + "]");
            }
            c.Poisoned(o[r * ldo + dv], at + " past dv");
          }
        }
      }
    }
  }
  Buffer p(130), o(2 * 128);
  std::vector<int8_t> v(130 * 128, 1);
  for (int64_t j = 0; j < 130; ++j) p[j] = weight(rng);
  p[100] = std::numeric_limits<float>::infinity();
  if (ukernels::I8DecodePvRows(p.data(), 65, v.data(), 128, 65, 2, 128, false, o.data(), 128)) {
    ADD_FAILURE() << c.where << ": an infinite weight was taken";
  }
  for (int64_t i = 0; i < 2 * 128; ++i) c.Poisoned(o[i], "O after an infinite weight");
}

// P = e^(S - lse) within the exponential's bound (kFastExp2MaxUlp + 2 ulp
// for the difference, relative to |S - lse| + 1), dS = scale·P·(dP - D)
// within 4 roundings of P's error; fully masked rows (lse = -inf) all 0,
// NaN lse rows NaN; columns past ncols and rows past nrows untouched.
void TestGradScores(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(27);
  constexpr int64_t kLd = 64;
  for (int64_t nrows : {1, 3, 7, 64}) {
    for (int64_t ncols : {lanes, 2 * lanes, int64_t{64}}) {
      if (ncols > kLd) continue;
      Buffer s(nrows * kLd + 1), dp(nrows * kLd + 1), lse(nrows), dsum(nrows);
      s.Fill(rng, 8.0f);
      dp.Fill(rng, 2.0f);
      dsum.Fill(rng, 1.0f);
      for (int64_t x = 0; x < nrows; ++x) {
        lse[x] = 8.0f + float(x % 3);
        for (int64_t col = ncols; col < kLd; ++col) s[x * kLd + col] = dp[x * kLd + col] = kNaN;
      }
      if (nrows > 1) lse[1] = -kInf;
      if (nrows > 2) lse[2] = kNaN;
      s[0] = -kInf;  // a masked score: P = 0
      s[nrows * kLd] = dp[nrows * kLd] = kNaN;
      std::vector<float> s0(s.data(), s.data() + nrows * kLd);
      std::vector<float> dp0(dp.data(), dp.data() + nrows * kLd);
      const float scale = 0.125f;
      GradScoresArgs a{s.data(), dp.data(), kLd, nrows, ncols, lse.data(), dsum.data(), scale};
      ASSERT_TRUE(u.run(&a));
      const std::string at = "rows=" + std::to_string(nrows) + " cols=" + std::to_string(ncols);
      c.Poisoned(s[nrows * kLd], at + " S past the tile");
      c.Poisoned(dp[nrows * kLd], at + " dP past the tile");
      for (int64_t x = 0; x < nrows; ++x) {
        for (int64_t col = 0; col < kLd; ++col) {
          const int64_t e = x * kLd + col;
          const std::string where = at + " (" + std::to_string(x) + "," + std::to_string(col) + ")";
          if (col >= ncols) {
            c.Poisoned(s[e], where + " P past ncols");
            continue;
          }
          if (lse[x] == -kInf) {
            c.Near(s[e], 0.0, 0.0, where + " P of a masked row");
            c.Near(dp[e], 0.0, 0.0, where + " dS of a masked row");
            continue;
          }
          const double diff = double(s0[e]) - double(lse[x]);
          const double p = std::exp(diff);
          // A -inf score: P = 0 and dS = 0 exactly.
          const double rel = p == 0 ? 0.0 : (kFastExp2MaxUlp + 2.0 * (std::fabs(diff) + 1.0)) * kU;
          c.Near(s[e], p, rel * p, where + " P");
          const double ds = double(scale) * p * (double(dp0[e]) - double(dsum[x]));
          c.Near(dp[e], ds, p == 0 ? 0.0 : (rel + 4 * kU) * std::fabs(ds), where + " dS");
        }
      }
    }
  }
}

// --- Score modifiers (score_mods-inl.h) ---------------------------------------

// The NaN poison cannot catch an in-place kernel writing past its rows (it
// turns NaN into NaN: NaN + slope·dist, cap·tanh(NaN)), so there the cells
// past the rows hold this finite value, which any such write changes.
constexpr float kSentinel = 3.0f;
void Kept(Checker& c, float got, const std::string& what) {
  c.Near(got, kSentinel, 0, what + " (not to be written)");
}

// Softcap against cap·tanh(x/cap) in double. The kernel forms t = x·fl(1/cap)
// (relative error <= 2u), takes FastTanh (within kTanhMaxAbsU·u of tanh,
// absolutely) and multiplies by cap (one rounding). tanh's slope is
// sech²(t), so the argument's error moves tanh by <= 2u·|t|·sech²(t):
//   |got - want| <= cap·(kTanhMaxAbsU·u + 2u·|t|·sech² t) + u·|want|.
// In units of u·cap that is below kTanhMaxAbsU + 2 (|t|·sech² t < 0.45):
// what reference/error_bound.cc charges, (kTanhUlps + 2)·u·cap.
double SoftcapTol(double x, double cap) {
  const double t = x / cap, th = std::tanh(t), sech = 1.0 / std::cosh(t);
  return cap * (kTanhMaxAbsU * kU + 2 * kU * std::fabs(t) * sech * sech) + kU * cap * std::fabs(th);
}

// FastTanh on its own: SoftcapRow with cap = 1 (x·1 and 1·tanh are exact)
// over every kStep-th positive float in [2^-126, 20] (past where tanh rounds
// to 1) and the negatives of every 8th of those (the sign is put back),
// against std::tanh in double, as an absolute error in units of u = 2^-24,
// in rows of 2^16 (the last one ragged: the tail too). Records the worst as
// the property max_abs_u.
void CheckTanhError(const Ukernel& u, Checker& c) {
  constexpr uint32_t kStep = 61, kFirst = 0x00800000u, kLast = 0x41A00000u;  // 2^-126, 20
  constexpr size_t kRow = size_t{1} << 16;
  std::vector<float> x, out;
  double worst = 0;
  float worst_x = 0;
  for (uint32_t bits = kFirst; bits <= kLast;) {
    x.clear();
    for (; bits <= kLast && x.size() + 1 < kRow; bits += kStep) {
      float v;
      std::memcpy(&v, &bits, 4);
      x.push_back(v);
      if ((bits / kStep) % 8 == 0) x.push_back(-v);
    }
    out.assign(x.size() + 1, kNaN);
    SoftcapArgs a{x.data(), out.data(), int64_t(x.size()), 1.0f};
    ASSERT_TRUE(u.run(&a));
    c.Poisoned(out[x.size()], "tanh sweep: past the row");
    for (size_t i = 0; i < x.size(); ++i) {
      const double err = std::fabs(double(out[i]) - std::tanh(double(x[i]))) / kU;
      if (!(err <= worst)) worst = err, worst_x = x[i];
    }
  }
  if (worst > kTanhMaxAbsU) {
    ++c.failures;
    ADD_FAILURE() << c.where << ": tanh off by " << worst << " u at x=" << worst_x << " (bound "
                  << kTanhMaxAbsU << " u)";
  }
  ::testing::Test::RecordProperty("max_abs_u", std::to_string(worst));
  ::testing::Test::RecordProperty("max_abs_u_at", std::to_string(worst_x));
}

void TestSoftcap(const Ukernel& u, int64_t lanes, Checker& c) {
  CheckTanhError(u, c);
  std::mt19937 rng(28);
  for (float cap : {1.0f, 30.0f, 50.0f, 0.37f}) {
    for (int64_t n :
         {int64_t{0}, int64_t{1}, lanes - 1, lanes, lanes + 1, 2 * lanes + 3, int64_t{100}}) {
      if (n < 0) continue;
      const std::string at = "cap=" + std::to_string(cap) + " n=" + std::to_string(n);
      Buffer x(n + 1, 1), out(n + 1, 3), inplace(n + 1, 2);
      x.Fill(rng, 200.0f);
      std::memcpy(inplace.data(), x.data(), sizeof(float) * n);
      inplace[n] = kSentinel;
      SoftcapArgs a{x.data(), out.data(), n, cap};
      ASSERT_TRUE(u.run(&a));
      SoftcapArgs b{inplace.data(), inplace.data(), n, cap};
      ASSERT_TRUE(u.run(&b));
      c.Poisoned(out[n], at + " past the row");
      Kept(c, inplace[n], at + " in place, past the row");
      for (int64_t i = 0; i < n; ++i) {
        const double want = double(cap) * std::tanh(double(x[i]) / cap);
        const std::string el = at + " x=" + std::to_string(x[i]) + " [" + std::to_string(i) + "]";
        c.Near(out[i], want, SoftcapTol(x[i], cap), el);
        // In place gives the same bits; and one element alone (the one-lane
        // tail) the same arithmetic as in a whole vector.
        c.Near(inplace[i], out[i], 0, el + " in place");
        float alone;
        SoftcapArgs one{&x[i], &alone, 1, cap};
        ASSERT_TRUE(u.run(&one));
        c.Near(alone, out[i], 0, el + " alone (tail) vs in a vector");
      }
    }
    // Special values, in a row long enough for both the vectors and the tail:
    // ±inf -> ±cap, NaN -> NaN, ±0 -> ±0 (sign kept), huge -> ±cap, tiny -> x.
    const float special[] = {
        kInf,   -kInf,  kNaN,    0.0f,        -0.0f,      std::numeric_limits<float>::max(),
        -1e30f, 1e-30f, -1e-30f, 20.0f * cap, -9.0f * cap};
    const int64_t ns = sizeof(special) / sizeof(special[0]);
    const int64_t n = std::max<int64_t>(ns, 2 * lanes + 3);
    Buffer x(n), out(n + 1);
    for (int64_t i = 0; i < n; ++i) x[i] = special[(i + n / 2) % ns];
    for (bool in_place : {false, true}) {
      float* dst = in_place ? x.data() : out.data();
      std::vector<float> in(x.data(), x.data() + n);
      SoftcapArgs a{x.data(), dst, n, cap};
      ASSERT_TRUE(u.run(&a));
      c.Poisoned(out[n], "specials past the row");
      for (int64_t i = 0; i < n; ++i) {
        const std::string el = "cap=" + std::to_string(cap) + (in_place ? " in place" : "") +
                               " special x=" + std::to_string(in[i]);
        if (std::isinf(in[i]) || std::fabs(in[i]) >= 20.0f * cap) {
          c.Near(dst[i], std::copysign(double(cap), in[i]), 0, el);
        } else if (in[i] == 0.0f) {
          c.Near(dst[i], 0.0, 0, el);
          if (std::signbit(dst[i]) != std::signbit(in[i]) && ++c.failures <= 5) {
            ADD_FAILURE() << c.where << ": " << el << " lost the sign of zero";
          }
        } else {
          c.Near(dst[i], std::isnan(in[i]) ? double(kNaN) : cap * std::tanh(double(in[i]) / cap),
                 std::isnan(in[i]) ? 0.0 : SoftcapTol(in[i], cap), el);
        }
      }
    }
  }
}

// ALiBi: distances are whole numbers (exact in fp32 below 2^24), so the one
// rounding is the multiply-add's: s + slope·dist is exactly fmaf(slope, dist,
// s) where MulAdd fuses (FMA targets) and fl(s + fl(slope·dist)) where it
// does not; either is within one ulp of |slope·dist| + |s| of the exact sum.
// Anything else fails. NaN stays NaN, -inf stays -inf.
void CheckAlibi(Checker& c, float got, float s, float slope, double dist, const std::string& what) {
  const float fd = static_cast<float>(dist);
  if (double(fd) != dist) {
    ++c.failures;
    ADD_FAILURE() << c.where << ": " << what << " distance " << dist << " is not exact in fp32";
    return;
  }
  const float fused = std::fma(slope, fd, s);
  volatile float product = slope * fd;  // rounded on its own
  const float unfused = s + product;
  const bool ok = got == fused || got == unfused || (std::isnan(got) && std::isnan(fused));
  if (!ok && ++c.failures <= 5) {
    ADD_FAILURE() << c.where << ": " << what << " got " << got << " want fmaf " << fused
                  << " or unfused " << unfused << " (s=" << s << " slope=" << slope
                  << " dist=" << dist << ")";
  }
}

void TestAlibiRow(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(29);
  std::uniform_real_distribution<float> uslope(-1.0f, 1.0f);
  for (int64_t n : {int64_t{0}, int64_t{1}, lanes - 1, lanes, lanes + 1, 2 * lanes + 3,
                    int64_t{100}, int64_t{515}}) {
    if (n < 0) continue;
    // d0 = key0 - i - off: keys all before the query (negative), across the
    // diagonal, all after it, and far from 0 (distances up to ~2^20).
    for (double d0 : {0.0, -5.0, -double(n) - 7.0, 3.0, -1048576.0, 1000000.0}) {
      for (float slope : {0.0625f, uslope(rng), 0.0f}) {
        const std::string at = "n=" + std::to_string(n) + " d0=" + std::to_string(d0) +
                               " slope=" + std::to_string(slope);
        Buffer s(n + 1, 1);
        s.Fill(rng, 8.0f);
        if (n > 0) s[0] = -kInf;  // a masked score stays masked
        if (n > 2) s[n / 2] = kNaN;
        s[n] = kSentinel;
        std::vector<float> s0(s.data(), s.data() + n);
        AlibiRowArgs a{s.data(), n, slope, static_cast<float>(d0)};
        ASSERT_TRUE(u.run(&a));
        Kept(c, s[n], at + " past the row");
        for (int64_t j = 0; j < n; ++j) {
          CheckAlibi(c, s[j], s0[j], slope, d0 + double(j), at + " j=" + std::to_string(j));
        }
      }
    }
  }
}

// Flash's key-major tile: rows a multiple of the lane count, the last rows
// padding (slope 0, position 0: unchanged), query positions before, among
// and after the keys (negative distances), ld the tile's 64 or an odd stride.
void TestAlibiColumns(const Ukernel& u, int64_t lanes, Checker& c) {
  std::mt19937 rng(30);
  std::uniform_real_distribution<float> uslope(-1.0f, 1.0f);
  for (int64_t rows : {lanes, 2 * lanes, kTileCols}) {
    if (rows > kTileCols) continue;
    for (int64_t ld : {kTileCols, rows + 3}) {
      for (int64_t nkeys : {int64_t{0}, int64_t{1}, lanes - 1, lanes, lanes + 1, int64_t{7},
                            int64_t{64}, int64_t{513}}) {
        if (nkeys < 0) continue;
        for (double key0 : {0.0, 300.0, 1000000.0}) {
          const std::string at = "rows=" + std::to_string(rows) + " ld=" + std::to_string(ld) +
                                 " keys=" + std::to_string(nkeys) + " key0=" + std::to_string(key0);
          Buffer st((nkeys + 1) * ld, ld == kTileCols ? 0 : 1), slopes(rows), positions(rows);
          std::fill(st.data(), st.data() + (nkeys + 1) * ld, kSentinel);
          const int64_t real = rows - rows / 4;  // the rest: padding
          std::uniform_int_distribution<int> upos(0, 1000);
          for (int64_t x = 0; x < rows; ++x) {
            slopes[x] = x >= real ? 0.0f : x % 3 == 0 ? 1.0f / float(1 << (x % 9)) : uslope(rng);
            positions[x] = x >= real ? 0.0f : float(key0 + upos(rng) - 300);
          }
          std::uniform_real_distribution<float> us(-8.0f, 8.0f);
          for (int64_t j = 0; j < nkeys; ++j) {
            for (int64_t x = 0; x < rows; ++x) st[j * ld + x] = us(rng);
          }
          if (nkeys > 0) st[(nkeys - 1) * ld] = -kInf;
          if (nkeys > 1) st[ld + rows - 1] = kNaN;
          std::vector<float> st0(st.data(), st.data() + (nkeys + 1) * ld);
          AlibiColumnsArgs a{st.data(),        ld,         nkeys, rows, slopes.data(),
                             positions.data(), float(key0)};
          ASSERT_TRUE(u.run(&a));
          for (int64_t j = 0; j <= nkeys; ++j) {
            for (int64_t x = 0; x < ld; ++x) {
              const std::string el =
                  at + " S[" + std::to_string(j) + "][" + std::to_string(x) + "]";
              if (j == nkeys || x >= rows) {
                Kept(c, st[j * ld + x], el);
                continue;
              }
              CheckAlibi(c, st[j * ld + x], st0[j * ld + x], slopes[x],
                         (key0 + double(j)) - double(positions[x]), el);
            }
          }
        }
      }
    }
  }
}

void TestFamily(const Ukernel& u, int64_t lanes, Checker& c) {
  switch (u.family) {
    case Family::kScoreTile:
      return TestScoreTile(u, lanes, c);
    case Family::kScoreRows:
      return TestScoreRows(u, lanes, c);
    case Family::kQkPacked:
      return TestQkPacked(u, lanes, c);
    case Family::kPvTile:
      return TestPvTile(u, lanes, c);
    case Family::kPvRows:
      return TestPvRows(u, lanes, c);
    case Family::kScoreRowsRuns:
      return TestScoreRowsRuns(u, lanes, c);
    case Family::kPvRowsRuns:
      return TestPvRowsRuns(u, lanes, c);
    case Family::kOnlineSoftmaxColumns:
      return TestOnlineSoftmaxColumns(u, lanes, c);
    case Family::kOnlineSoftmaxRows:
      return TestOnlineSoftmaxRows(u, lanes, c);
    case Family::kSoftmaxRow:
      return TestSoftmaxRow(u, lanes, c);
    case Family::kExp2:
      return TestExp2(u, lanes, c);
    case Family::kTranspose:
      return TestTranspose(u, lanes, c);
    case Family::kDot:
      return TestDot(u, lanes, c);
    case Family::kFinishRow:
      return TestFinishRow(u, lanes, c);
    case Family::kToF32:
      return TestToF32(u, lanes, c);
    case Family::kBf16ScoreTile:
      return TestBf16ScoreTile(u, c);
    case Family::kBf16PvRows:
      return TestBf16PvRows(u, c);
    case Family::kBf16SoftmaxToRows:
      return TestBf16SoftmaxToRows(u, c);
    case Family::kBf16PackQueries:
      return TestBf16PackQueries(u, c);
    case Family::kBf16PackValues:
      return TestBf16PackValues(u, c);
    case Family::kBf16DecodeScores:
      return TestBf16DecodeScores(u, c);
    case Family::kBf16DecodePv:
      return TestBf16DecodePv(u, c);
    case Family::kI8DecodeScores:
      return TestI8DecodeScores(u, c);
    case Family::kI8DecodePv:
      return TestI8DecodePv(u, c);
    case Family::kGradScores:
      return TestGradScores(u, lanes, c);
    case Family::kSoftcap:
      return TestSoftcap(u, lanes, c);
    case Family::kAlibiRow:
      return TestAlibiRow(u, lanes, c);
    case Family::kAlibiColumns:
      return TestAlibiColumns(u, lanes, c);
  }
  ADD_FAILURE() << u.name << ": no test for family " << FamilyName(u.family);
}

// --- One test per (entry, compiled target) ----------------------------------

struct Param {
  const Ukernel* ukernel;
  int64_t target;  // 0 for an ISA entry (Isa::kAvx512Bf16): CPUID decides
};

class UkernelTest : public ::testing::TestWithParam<Param> {
 protected:
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

TEST_P(UkernelTest, MatchesScalarVersion) {
  const Param& param = GetParam();
  const Ukernel& u = *param.ukernel;
  if (param.target == 0) {
    if (!CpuHasIsa(u.isa)) GTEST_SKIP() << IsaMissing(u.isa);
    Checker c{std::string(u.name) + " on " + IsaName(u.isa)};
    TestFamily(u, 16, c);
    EXPECT_EQ(c.failures, 0) << c.where;
    return;
  }
  hwy::SetSupportedTargetsForTest(0);
  if ((hwy::SupportedTargets() & param.target) == 0) {
    GTEST_SKIP() << "this CPU lacks " << hwy::TargetName(param.target);
  }
  hwy::SetSupportedTargetsForTest(param.target);
  ASSERT_EQ(hwy::SupportedTargets(), param.target);
  const int64_t lanes = DispatchedLanes();
  if (u.isa == Isa::kVectorTargets && lanes == 1) {
    GTEST_SKIP() << u.name << " needs vectors; " << hwy::TargetName(param.target)
                 << " is the scalar fallback";
  }
  Checker c{std::string(u.name) + " on " + hwy::TargetName(param.target)};
  TestFamily(u, lanes, c);
  EXPECT_EQ(c.failures, 0) << c.where;
}

std::vector<Param> Params() {
  std::vector<Param> params;
  for (const Ukernel& u : Ukernels()) {
    if (*IsaName(u.isa) != '\0') {  // one ISA, not a Highway target: tested once
      params.push_back({&u, 0});
      continue;
    }
    for (int64_t target : CompiledTargets()) params.push_back({&u, target});
  }
  return params;
}

// FastExp2 takes f = x - round(x) by VREDUCEPS and scales by VSCALEFPS on
// AVX-512, and by the magic number's add and the exponent bits on AVX2
// (kernels/ukernels/exp-inl.h): the same bits, over the sweep, the whole and
// half numbers (f = 0, and the ties, which round to even), the smallest
// results (n = -126) and the specials. (SSE4 and below have no FMA: their
// polynomial rounds twice per step, and their bits differ by an ulp.)
TEST(FastExp2Test, SameBitsOnAvx2AsOnAvx512) {
  hwy::SetSupportedTargetsForTest(0);
  const int64_t supported = hwy::SupportedTargets();
  if ((supported & HWY_AVX3) == 0 || (supported & HWY_AVX2) == 0) {
    GTEST_SKIP() << "this CPU lacks AVX2 or AVX3 (AVX-512)";
  }
  std::vector<float> x = Exp2Sweep();
  for (float k = -126.0f; k < 127.0f; k += 1.0f) x.insert(x.end(), {k, k + 0.5f});
  for (float v : {-125.5f, -125.75f, -126.0f, -kInf, -1000.0f, -126.5f, kNaN, 3.0f}) {
    x.push_back(v);
  }
  const Ukernel& exp2 = *FindUkernel("f32_exp2");
  std::vector<uint32_t> bits[2];
  const int64_t targets[2] = {HWY_AVX3, HWY_AVX2};
  for (int t = 0; t < 2; ++t) {
    hwy::SetSupportedTargetsForTest(targets[t]);
    std::vector<float> out(x.size(), 0.0f);
    Exp2Args a{x.data(), out.data(), int64_t(x.size())};
    const bool ran = exp2.run(&a);
    hwy::SetSupportedTargetsForTest(0);
    ASSERT_TRUE(ran) << hwy::TargetName(targets[t]);
    bits[t].resize(x.size());
    std::memcpy(bits[t].data(), out.data(), x.size() * 4);
  }
  for (size_t i = 0; i < x.size(); ++i) {
    ASSERT_EQ(bits[1][i], bits[0][i]) << "AVX2 against AVX3 at x=" << x[i];
  }
}

INSTANTIATE_TEST_SUITE_P(List, UkernelTest, ::testing::ValuesIn(Params()),
                         [](const ::testing::TestParamInfo<Param>& info) {
                           const Ukernel& u = *info.param.ukernel;
                           return std::string(u.name) + "_" +
                                  (info.param.target == 0 ? IsaName(u.isa)
                                                          : hwy::TargetName(info.param.target));
                         });

// The list itself: unique identifier names, a family test for each.
TEST(UkernelList, NamesAreUniqueIdentifiers) {
  std::vector<std::string> names;
  for (const Ukernel& u : Ukernels()) {
    const std::string name = u.name;
    EXPECT_EQ(name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_"), std::string::npos)
        << name;
    EXPECT_EQ(std::count(names.begin(), names.end(), name), 0) << name;
    EXPECT_EQ(FindUkernel(name), &u);
    names.push_back(name);
  }
  EXPECT_GE(names.size(), 12u);
  EXPECT_EQ(FindUkernel("no_such_kernel"), nullptr);
}

// The bench's reduced-precision peak loops (ceiling_vdpbf16ps,
// ceiling_vpdpwssd) count 12 instructions of 64 operations a round where the
// CPU has the ISA, and do nothing (0) where it does not.
TEST(PeakLoops, CountTheirInstructions) {
  struct Loop {
    Isa isa;
    double (*run)(int64_t);
  };
  for (const Loop& loop :
       {Loop{Isa::kAvx512Bf16, Bf16DotPeakLoop}, Loop{Isa::kAvx512Vnni, I8DotPeakLoop}}) {
    if (!CpuHasIsa(loop.isa)) {
      EXPECT_EQ(loop.run(1000), 0.0) << IsaName(loop.isa);
      continue;
    }
    EXPECT_EQ(loop.run(1000), 12.0 * 64 * 1000) << IsaName(loop.isa);
    EXPECT_EQ(loop.run(0), 0.0) << IsaName(loop.isa);
  }
}

}  // namespace
}  // namespace attn::ukernels
