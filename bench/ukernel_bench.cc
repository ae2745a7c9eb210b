#include "bench/ukernel_bench.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <random>

#include "bench/bench_common.h"
#include "bench/core_clock.h"
#include "kernels/registry.h"
#include "kernels/tuning.h"
#include "kernels/ukernels/ukernels.h"

namespace attn::bench {
namespace {

using ukernels::Family;
using ukernels::Ukernel;

// 64-byte aligned, random floats in [-1, 1).
struct Floats {
  explicit Floats(int64_t n)
      : data(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64))) {
    std::mt19937 rng(42);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    for (int64_t i = 0; i < n; ++i) data.get()[i] = u(rng);
  }
  float* get() const { return data.get(); }
  struct Free {
    void operator()(float* p) const { std::free(p); }
  };
  std::unique_ptr<float, Free> data;
};

// What one call of an entry computes at one shape: its argument struct
// (built with the buffers it needs), its name tokens, and its work.
struct Shape {
  std::string tokens;
  double flops = 0;     // FMA families: 2 per multiply-add; else 0
  double elements = 0;  // outputs written per call
  // Per-score entries (the score modifiers): elements are scores, also
  // reported as scores_per_s and ns_per_score (one thread).
  bool per_score = false;
  // from:memory shapes: bytes of K or V read per call (GB_per_s).
  double bytes = 0;
};

// Runs `args` through `u` for the benchmark's iterations and sets counters;
// `next_call` runs between calls (TimeFromMemory moves the tile).
template <class Args, class Next = void (*)()>
void Time(
    benchmark::State& state, const Ukernel& u, Args& args, const Shape& shape, double peak_gflops,
    Next next_call = [] {}) {
  if (!u.run(&args)) {
    state.SkipWithError(*ukernels::IsaName(u.isa)
                            ? ("not run: " + ukernels::IsaMissing(u.isa)).c_str()
                            : "not run: this Highway target lacks the entry");
    return;
  }
  ItemClocks clocks;  // a reading right after a call, at most once per 5 ms
  for (auto _ : state) {
    next_call();
    u.run(&args);
    benchmark::ClobberMemory();
    clocks.AfterItem();
  }
  CoreClockSampler core_clock;
  core_clock.Add(clocks.Take());
  core_clock.SetCounter(state);
  using benchmark::Counter;
  if (shape.bytes > 0) {
    state.counters["GB_per_s"] = Counter(shape.bytes / 1e9, Counter::kIsIterationInvariantRate);
  }
  if (shape.flops > 0) {
    state.counters["GFLOPS"] = Counter(shape.flops / 1e9, Counter::kIsIterationInvariantRate);
    state.counters["peak_fraction"] =
        Counter(shape.flops / 1e9 / peak_gflops, Counter::kIsIterationInvariantRate);
  }
  state.counters["Gelems_per_s"] =
      Counter(shape.elements / 1e9, Counter::kIsIterationInvariantRate);
  if (shape.per_score) {
    state.counters["scores_per_s"] = Counter(shape.elements, Counter::kIsIterationInvariantRate);
    // Inverted rate: seconds per 1e-9 scores, i.e. ns per score (the console
    // prints it with an "s").
    state.counters["ns_per_score"] =
        Counter(shape.elements * 1e-9, Counter::kIsIterationInvariantRate | Counter::kInvert);
  }
  state.counters["fma_peak_gflops"] = peak_gflops;
  state.counters["threads"] = 1;
  // The ISA an intrinsics entry runs on (its peak: ceiling_vdpbf16ps,
  // ceiling_amx, ceiling_vpdpwssd), else the Highway target.
  state.SetLabel(std::string("path=") + (*ukernels::IsaName(u.isa) ? ukernels::IsaName(u.isa)
                                                                   : DispatchedHighwayTarget()));
}

// The bytes a from:memory shape streams over: twice the L3 (sysfs; on a VM
// what the hypervisor claims), at least 256 MiB.
int64_t MemoryStreamBytes() { return std::max<int64_t>(int64_t{256} << 20, 2 * L3CacheBytes()); }

// Time, with the K or V tile at `*tile` (an argument of `args`, `tile_bytes`
// long) copied tile after tile into a buffer of MemoryStreamBytes on 2 MiB
// pages, as the bench's decode cases' K and V are, and each call taking the
// next tile: the kernel reads its operand once from memory, in address
// order, as decode does from a cache larger than the L3, with nothing but
// the hardware prefetchers ahead of it (flash adds its software prefetch
// where the tuning asks for one: kernels/tuning.h; kernels/DESIGN.md, "Per
// rows per kv head, and paged on its own").
template <class Args, class T>
void TimeFromMemory(benchmark::State& state, const Ukernel& u, Args& args, const T** tile,
                    int64_t tile_bytes, const Shape& shape, double peak_gflops) {
  const int64_t tiles = std::max<int64_t>(2, MemoryStreamBytes() / tile_bytes);
  HugePageVector<char> stream(static_cast<size_t>(tiles * tile_bytes));
  for (int64_t t = 0; t < tiles; ++t) std::memcpy(&stream[t * tile_bytes], *tile, tile_bytes);
  int64_t t = 0;
  Time(state, u, args, shape, peak_gflops, [&] {
    *tile = reinterpret_cast<const T*>(&stream[t * tile_bytes]);
    t = t + 1 == tiles ? 0 : t + 1;
  });
}

// Time, or TimeFromMemory for a shape that streams its tile (shape.bytes > 0:
// the tile's bytes).
template <class Args, class T>
void TimeShape(benchmark::State& state, const Ukernel& u, Args& args, const T** tile,
               const Shape& shape, double peak_gflops) {
  if (shape.bytes > 0) {
    return TimeFromMemory(state, u, args, tile, static_cast<int64_t>(shape.bytes), shape,
                          peak_gflops);
  }
  Time(state, u, args, shape, peak_gflops);
}

using Runner = std::function<void(benchmark::State&)>;

// A few-row (decode) entry's shape: `rows` x `keys` x `d` multiply-adds
// (scores or P·V), `elements` written, in L2 or from memory (then its K or V
// tile, keys x d of `element_bytes` each, streams: TimeShape).
Shape FewRowShape(int64_t rows, int64_t keys, int64_t d, int64_t elements, double element_bytes,
                  bool from_memory) {
  Shape s{"rows:" + std::to_string(rows) + "/keys:" + std::to_string(keys) +
              "/d:" + std::to_string(d) + (from_memory ? "/from:memory" : ""),
          2.0 * rows * keys * d, double(elements)};
  s.bytes = from_memory ? element_bytes * keys * d : 0;
  return s;
}

// The decode kernels' shape: GQA-4's 4 rows x 512 keys at d = 128.
Shape DecodeShape(bool from_memory, int64_t elements, double element_bytes) {
  return FewRowShape(4, 512, 128, elements, element_bytes, from_memory);
}

// The shapes each family is benchmarked at: those the variants call it with
// (flash's 64-row block and 512-key tile at d = 64 and 128; decode's few
// rows; simd's 64-row panel).
std::vector<std::pair<Shape, Runner>> Shapes(const Ukernel& u, int64_t lanes, double peak) {
  std::vector<std::pair<Shape, Runner>> out;
  const Ukernel* up = &u;
  switch (u.family) {
    case Family::kScoreTile:
      for (int64_t dk : {64, 128}) {
        const int64_t keys = 512, nvec = 64 / lanes;
        Shape s{"rows:64/keys:512/d:" + std::to_string(dk), 2.0 * keys * dk * 64, keys * 64.0};
        out.push_back({s, [=](benchmark::State& st) {
                         Floats qt(dk * 64), k(keys * dk), sc(keys * 64);
                         ukernels::ScoreTileArgs a{qt.get(), k.get(), dk, keys, dk, nvec, sc.get()};
                         Time(st, *up, a, s, peak);
                       }});
      }
      break;
    case Family::kScoreRows: {
      const int64_t dk = u.width_vectors > 0 ? u.width_vectors * lanes : 128;
      std::vector<int64_t> rows = {u.rows > 0 ? int64_t{u.rows} : 4};
      if (u.rows == 0) rows.push_back(1);
      for (int64_t nrows : rows) {
        for (bool from_memory : {false, true}) {
          const int64_t keys = 512, lds = 512, dkp = dk;
          const Shape s = FewRowShape(nrows, keys, dk, nrows * keys, 4.0, from_memory);
          out.push_back({s, [=](benchmark::State& st) {
                           Floats q(nrows * dkp), k(keys * dk), sc(nrows * lds);
                           ukernels::ScoreRowsArgs a{q.get(), dkp, nrows,    k.get(), dk,
                                                     keys,    dk,  sc.get(), lds};
                           TimeShape(st, *up, a, &a.k, s, peak);
                         }});
        }
      }
      break;
    }
    case Family::kQkPacked: {
      const int64_t rows = lanes >= 16 ? 8 : 4, dk = 64, tile = 2 * lanes;
      Shape s{"rows:" + std::to_string(rows) + "/keys:" + std::to_string(tile) + "/d:64",
              2.0 * rows * tile * dk, double(rows * tile)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats q(rows * dk), packed(dk * tile), sc(rows * tile);
                       std::vector<const float*> rp(rows);
                       for (int64_t r = 0; r < rows; ++r) rp[r] = q.get() + r * dk;
                       ukernels::QkPackedArgs a{rp.data(), rows, packed.get(), dk, sc.get(), tile};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kPvTile: {
      // flash's block (64 rows, Sᵀ key-major) at its 512-key tile, and at 64
      // keys (the per-call cost of its 24 accumulators' loads and stores,
      // amortized over fewer keys: why the tile is long); decode rows.
      struct P {
        int64_t rows, dv, keys;
        bool key_major;
      };
      std::vector<P> ps;
      if (u.rows > 0) {
        ps.push_back({u.rows, u.width_vectors * lanes, 512, false});
      } else {
        ps = {{64, 64, 512, true}, {64, 128, 512, true}, {64, 128, 64, true}, {1, 128, 512, false}};
      }
      for (const P& pp : ps) {
        // Decode's few rows also from memory (TimeFromMemory).
        for (bool from_memory : {false, true}) {
          if (from_memory && pp.key_major) continue;
          const int64_t keys = pp.keys, nvec = pp.dv / lanes;
          const int64_t pj = pp.key_major ? 64 : 1, pm = pp.key_major ? 1 : keys;
          const Shape s = FewRowShape(pp.rows, keys, pp.dv, pp.rows * pp.dv, 4.0, from_memory);
          out.push_back({s, [=](benchmark::State& st) {
                           Floats p(keys * 64 + pp.rows * keys), v(keys * pp.dv),
                               o(pp.rows * pp.dv);
                           ukernels::PvTileArgs a{p.get(), pj,   pm,   v.get(), pp.dv, keys,
                                                  pp.rows, nvec, true, o.get(), pp.dv};
                           TimeShape(st, *up, a, &a.v, s, peak);
                         }});
        }
      }
      break;
    }
    case Family::kScoreRowsRuns:
    case Family::kPvRowsRuns: {
      // Paged decode's tile: 4 rows (GQA-4), d = 128, 512 keys as one run
      // (contiguous) and as 32 runs of 16 (vLLM's default block size), each
      // run somewhere else: the run kernels' cost per run.
      const bool scores = u.family == Family::kScoreRowsRuns;
      const int64_t nrows = 4, keys = 512, d = 128;
      for (int64_t block : {int64_t{512}, int64_t{16}}) {
        Shape s{"rows:4/keys:512/runs:" + std::to_string(keys / block) + "/d:128",
                2.0 * nrows * keys * d, double(nrows * keys)};
        out.push_back(
            {s, [=](benchmark::State& st) {
               const int64_t runs = keys / block, gap = 4 * d;  // 2 KiB apart
               Floats q(nrows * d), kv(keys * d + runs * gap), sc(nrows * keys), o(nrows * d);
               std::vector<KeyRun> list;
               for (int64_t r = 0; r < runs; ++r) {
                 // Reverse order: no run follows the one before.
                 list.push_back({kv.get() + (runs - 1 - r) * (block * d + gap), block, {}});
               }
               if (scores) {
                 ukernels::ScoreRowsRunsArgs a{q.get(), d, nrows, list, d, d, sc.get(), keys};
                 Time(st, *up, a, s, peak);
               } else {
                 ukernels::PvRowsRunsArgs a{sc.get(), 1,         keys, list,    d,
                                            nrows,    d / lanes, true, o.get(), d};
                 Time(st, *up, a, s, peak);
               }
             }});
      }
      break;
    }
    case Family::kPvRows: {
      const int64_t rows = 64, keys = 256, dv = 64;
      Shape s{"rows:64/keys:256/d:64", 2.0 * rows * keys * dv, double(rows * dv)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats p(rows * keys), v(keys * dv), o(rows * dv);
                       ukernels::PvRowsArgs a{p.get(), keys, rows,    v.get(), dv,
                                              keys,    dv,   o.get(), dv};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kOnlineSoftmaxColumns:
    case Family::kOnlineSoftmaxRows: {
      const bool columns = u.family == Family::kOnlineSoftmaxColumns;
      const int64_t rows = columns ? 64 : 4, keys = 512, ld = columns ? 64 : 512;
      Shape s{"rows:" + std::to_string(rows) + "/keys:512", 0, double(rows * keys)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats sc(keys * 64), m(64), l(64), alpha(64);
                       for (int64_t x = 0; x < 64; ++x) m.get()[x] = 2.0f, l.get()[x] = 1.0f;
                       // The columns form's arguments (tile_max null: it
                       // finds the maximum itself); the rows form reads the
                       // base part.
                       ukernels::OnlineSoftmaxColumnsArgs a;
                       static_cast<ukernels::OnlineSoftmaxArgs&>(a) = {
                           sc.get(), ld, keys, rows, m.get(), l.get(), alpha.get()};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kSoftmaxRow: {
      const int64_t n = 4096;
      Shape s{"keys:4096", 0, double(n)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats row(n), add(n);
                       ukernels::SoftmaxRowArgs a{row.get(), n, 0.125f, add.get(), 0, 0};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kExp2: {
      const int64_t n = 4096;
      Shape s{"n:4096", 0, double(n)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats x(n), y(n);
                       ukernels::Exp2Args a{x.get(), y.get(), n};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kTranspose: {
      const int64_t n = 64, cols = 128;
      Shape s{"rows:64/d:128", 0, double(n * cols)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats src(n * cols), dst(cols * n);
                       std::vector<const float*> rows(n);
                       for (int64_t r = 0; r < n; ++r) rows[r] = src.get() + r * cols;
                       ukernels::TransposeArgs a{rows.data(), n, n, cols, 0.125f, dst.get(), n};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kDot: {
      const int64_t n = 4096;
      Shape s{"n:4096", 2.0 * n, 1};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats x(n), y(n);
                       ukernels::DotArgs a{x.get(), y.get(), n, 0};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kToF32: {
      // One K/V tile row block's worth: 512 rows of d = 128, from L2.
      const int64_t n = 512 * 128;
      for (DType dtype : {DType::kBF16, DType::kF16, DType::kI8}) {
        Shape s{std::string("dtype:") + DTypeName(dtype) + "/n:65536", 0, double(n)};
        out.push_back({s, [=](benchmark::State& st) {
                         Floats src(n), dst(n);
                         ukernels::ToF32Args a{dtype, src.get(), n, 0.5f, dst.get()};
                         Time(st, *up, a, s, peak);
                       }});
      }
      break;
    }
    // The bf16 pair kernels at flash's shapes. Their FLOPs count 2 per
    // multiply-add as the fp32 ones do, so peak_fraction is against the
    // fp32 FMA peak: VDPBF16PS does two multiply-adds per lane, up to 2.0.
    case Family::kBf16ScoreTile:
      for (int64_t dk : {64, 128}) {
        const int64_t keys = 512;
        Shape s{"rows:64/keys:512/d:" + std::to_string(dk), 2.0 * 64 * keys * dk,
                double(64 * keys)};
        out.push_back({s, [=](benchmark::State& st) {
                         Floats qp(dk / 2 * 64), k(keys * dk / 2), sc(keys * 64), col_max(64);
                         ukernels::Bf16ScoreTileArgs a{reinterpret_cast<uint32_t*>(qp.get()),
                                                       reinterpret_cast<uint16_t*>(k.get()),
                                                       dk,
                                                       keys,
                                                       dk,
                                                       4,
                                                       1.0f,  // as flash calls it on AMX
                                                       sc.get(),
                                                       col_max.get()};
                         Time(st, *up, a, s, peak);
                       }});
      }
      break;
    case Family::kBf16PvRows:
      for (int64_t dv : {64, 128}) {
        const int64_t keys = 512, pairs = keys / 2;
        Shape s{"rows:64/keys:512/d:" + std::to_string(dv), 2.0 * 64 * keys * dv, double(64 * dv)};
        out.push_back({s, [=](benchmark::State& st) {
                         Floats p(pairs * 64), v(pairs * dv), o(64 * dv);
                         const auto* pw = reinterpret_cast<uint32_t*>(p.get());
                         const auto* vw = reinterpret_cast<uint32_t*>(v.get());
                         ukernels::Bf16PvRowsArgs a{pw, pairs,   vw,   dv,      pairs,
                                                    64, dv / 16, true, o.get(), dv};
                         Time(st, *up, a, s, peak);
                       }});
      }
      break;
    // The decode kernels at GQA-4's shape (4 rows, d = 128) over one tile of
    // 512 keys in L2 (the instruction bound) and from memory (flash streams
    // them: TimeFromMemory). FLOPs as the pair kernels above.
    case Family::kBf16DecodeScores:
      for (bool from_memory : {false, true}) {
        const int64_t rows = 4, keys = 512, dk = 128;
        const Shape s = DecodeShape(from_memory, rows * keys, 2.0);
        out.push_back({s, [=](benchmark::State& st) {
                         Floats qw(rows * dk / 2), k(keys * dk / 2), sc(rows * keys);
                         ukernels::Bf16DecodeScoresArgs a{reinterpret_cast<uint16_t*>(qw.get()),
                                                          rows,
                                                          reinterpret_cast<uint16_t*>(k.get()),
                                                          dk,
                                                          keys,
                                                          dk,
                                                          0.0884f,
                                                          sc.get(),
                                                          keys};
                         TimeShape(st, *up, a, &a.k, s, peak);
                       }});
      }
      break;
    case Family::kBf16DecodePv:
      for (bool from_memory : {false, true}) {
        const int64_t rows = 4, keys = 512, dv = 128;
        const Shape s = DecodeShape(from_memory, rows * dv, 2.0);
        out.push_back(
            {s, [=](benchmark::State& st) {
               Floats p(rows * keys), v(keys * dv / 2), o(rows * dv);
               ukernels::Bf16DecodePvArgs a{
                   p.get(), keys, reinterpret_cast<uint16_t*>(v.get()), dv, keys, rows, dv, true,
                   o.get(), dv};
               TimeShape(st, *up, a, &a.v, s, peak);
             }});
      }
      break;
    // The int8 decode kernels at the same shapes (int16 Q words and weights,
    // int8 K/V rows; random bits, which the integer products take as they are).
    case Family::kI8DecodeScores:
      for (bool from_memory : {false, true}) {
        const int64_t rows = 4, keys = 512, dk = 128;
        const Shape s = DecodeShape(from_memory, rows * keys, 1.0);
        out.push_back({s, [=](benchmark::State& st) {
                         Floats qw(rows * dk / 2), k(keys * dk / 4), sc(rows * keys);
                         const float row_scale[4] = {0.01f, 0.01f, 0.01f, 0.01f};
                         ukernels::I8DecodeScoresArgs a{reinterpret_cast<int16_t*>(qw.get()),
                                                        rows,
                                                        reinterpret_cast<int8_t*>(k.get()),
                                                        dk,
                                                        keys,
                                                        dk,
                                                        row_scale,
                                                        sc.get(),
                                                        keys};
                         TimeShape(st, *up, a, &a.k, s, peak);
                       }});
      }
      break;
    case Family::kI8DecodePv:
      for (bool from_memory : {false, true}) {
        const int64_t rows = 4, keys = 512, dv = 128;
        const Shape s = DecodeShape(from_memory, rows * dv, 1.0);
        out.push_back(
            {s, [=](benchmark::State& st) {
               Floats p(rows * keys), v(keys * dv / 4), o(rows * dv);
               ukernels::I8DecodePvArgs a{
                   p.get(), keys, reinterpret_cast<int8_t*>(v.get()), dv, keys, rows, dv, true,
                   o.get(), dv};
               TimeShape(st, *up, a, &a.v, s, peak);
             }});
      }
      break;
    case Family::kBf16PackQueries: {
      const int64_t rows = 64, dk = 128;
      Shape s{"rows:64/d:128", 0, double(rows * dk)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats q(rows * dk / 2), qp(dk / 2 * 64);
                       std::vector<const uint16_t*> rp(rows);
                       for (int64_t x = 0; x < rows; ++x)
                         rp[x] = reinterpret_cast<const uint16_t*>(q.get()) + x * dk;
                       ukernels::Bf16PackQueriesArgs a{rp.data(), rows, dk,
                                                       reinterpret_cast<uint32_t*>(qp.get())};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    // The pair paths' softmax (scores per second, as the fp32 columns kernel):
    // with the score tile's maximum, as flash calls it on whole tiles, and
    // with its own maximum pass (partial tiles, modified scores).
    case Family::kBf16SoftmaxToRows: {
      const int64_t keys = 512;
      for (bool given_max : {true, false}) {
        Shape s{std::string("rows:64/keys:512/given_max:") + (given_max ? "1" : "0"), 0,
                double(64 * keys)};
        out.push_back(
            {s, [=](benchmark::State& st) {
               Floats sc(keys * 64), m(64), l(64), alpha(64), pr(64 * keys / 2), tile_max(64);
               for (int64_t x = 0; x < 64; ++x) {
                 m.get()[x] = 2.0f, l.get()[x] = 1.0f, tile_max.get()[x] = 1.0f;
               }
               ukernels::Bf16SoftmaxToRowsArgs a{sc.get(),    keys,
                                                 4,           0.125f,
                                                 m.get(),     l.get(),
                                                 alpha.get(), reinterpret_cast<uint32_t*>(pr.get()),
                                                 keys / 2,    given_max ? tile_max.get() : nullptr};
               Time(st, *up, a, s, peak);
             }});
      }
      break;
    }
    case Family::kBf16PackValues: {
      const int64_t keys = 512, dv = 128;
      Shape s{"keys:512/d:128", 0, double(keys * dv)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats v(keys * dv / 2), vp(keys / 2 * dv);
                       ukernels::Bf16PackValuesArgs a{
                           reinterpret_cast<uint16_t*>(v.get()),  dv, keys, dv,
                           reinterpret_cast<uint32_t*>(vp.get()), dv};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kGradScores: {
      // flash backward's tile: 64 rows x 64 keys.
      constexpr int64_t kTile = 64;
      Shape s{"rows:64/keys:64", 0, double(kTile * kTile)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats sc(kTile * kTile), dp(kTile * kTile), lse(kTile), dsum(kTile);
                       for (int64_t x = 0; x < kTile; ++x) lse.get()[x] = 1.0f;
                       ukernels::GradScoresArgs a{sc.get(), dp.get(),  kTile,      kTile,
                                                  kTile,    lse.get(), dsum.get(), 0.125f};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    // The score modifiers as flash calls them, in place on a tile: softcap on
    // one key of a 64-row block (Sᵀ) and on a 512-key row (few rows), cap 50
    // (Gemma 2); ALiBi on a 512-key row and on a 64-row x 512-key Sᵀ tile,
    // counted as one multiply-add per score (2 FLOPs; the distance is not).
    case Family::kSoftcap:
      for (int64_t n : {64, 512}) {
        Shape s{"n:" + std::to_string(n), 0, double(n), true};
        out.push_back({s, [=](benchmark::State& st) {
                         Floats x(n);
                         ukernels::SoftcapArgs a{x.get(), x.get(), n, 50.0f};
                         Time(st, *up, a, s, peak);
                       }});
      }
      break;
    case Family::kAlibiRow: {
      const int64_t n = 512;
      Shape s{"n:512", 2.0 * n, double(n), true};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats row(n);
                       ukernels::AlibiRowArgs a{row.get(), n, 1.0f / 256, -511.0f};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kAlibiColumns: {
      const int64_t rows = 64, keys = 512;
      Shape s{"rows:64/keys:512", 2.0 * rows * keys, double(rows * keys), true};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats tile(keys * rows), slopes(rows), positions(rows);
                       for (int64_t x = 0; x < rows; ++x) {
                         slopes.get()[x] = 1.0f / float(1 << (1 + x % 8));
                         positions.get()[x] = float(1000 + x);
                       }
                       ukernels::AlibiColumnsArgs a{
                           tile.get(), rows, keys, rows, slopes.get(), positions.get(), 512.0f};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
    case Family::kFinishRow: {
      const int64_t dv = 128;
      Shape s{"d:128", 0, double(dv)};
      out.push_back({s, [=](benchmark::State& st) {
                       Floats acc(dv), o(dv);
                       float lse = 0;
                       ukernels::FinishRowArgs a{acc.get(), 1.0f, 3.0f, dv, o.get(), &lse};
                       Time(st, *up, a, s, peak);
                     }});
      break;
    }
  }
  return out;
}

}  // namespace

std::vector<UkernelCase> UkernelCases(double peak_gflops) {
  std::vector<UkernelCase> cases;
  const int64_t lanes = ukernels::DispatchedLanes();
  for (const Ukernel& u : ukernels::Ukernels()) {
    if (!ukernels::CpuHasIsa(u.isa)) continue;  // UkernelsNotRun names it
    for (auto& [shape, run] : Shapes(u, lanes, peak_gflops)) {
      cases.push_back({"ukernel/" + std::string(u.name) + "/" + shape.tokens + "/threads:1", run});
    }
  }
  return cases;
}

std::string UkernelsNotRun() {
  std::map<std::string, std::string> by_reason;  // why not -> the entries
  for (const Ukernel& u : ukernels::Ukernels()) {
    if (ukernels::CpuHasIsa(u.isa)) continue;
    std::string& names = by_reason[ukernels::IsaMissing(u.isa)];
    names += (names.empty() ? "" : ", ") + std::string(u.name);
  }
  std::string out;
  for (const auto& [why, names] : by_reason) {
    out += (out.empty() ? "" : "; ") + names + ": " + why;
  }
  return out;
}

}  // namespace attn::bench
