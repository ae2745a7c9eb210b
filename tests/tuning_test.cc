// The tuning file (kernels/tuning.h) and the `auto` variant that reads it:
// parsing names every bad field, a file from another machine is stale, the
// kernels follow the active tuning, and auto runs the point it is told to,
// correctly, or flash where the table does not apply.
#include "kernels/tuning.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "kernels/internal/flash_plan.h"
#include "kernels/registry.h"
#include "kernels/ukernels/bf16_avx512.h"
#include "reference/reference.h"
#include "testing/compare.h"
#include "testing/flash_hooks.h"
#include "testing/problem_data.h"
#include "testing/scoped_env.h"

namespace attn {
namespace {

using testing::CompareToReference;
using testing::ProblemData;
using testing::ProblemSpec;

Tuning ThisMachine() {
  Tuning t = DefaultTuning("test");
  t.source = "test";
  return t;
}

// simd measured fastest for small dense problems at d = 64 on 1 thread, flash
// from N = 512; naive at causal d = 128 (a pick no real tuning makes, so the
// test can tell it apart).
Tuning Table() {
  Tuning t = ThisMachine();
  t.flash_decode_prefetch_bytes = 8192;  // not the defaults: the round trip reads them
  t.flash_mha_decode_prefetch_bytes = 2048;
  t.flash_paged_prefetch_bytes = 4096;
  t.flash_decode_prefetch_min_kv_bytes = 48 << 20;
  t.flash_tile_prefetch = false;  // a file without the field reads true
  t.flash_vdpbf16ps = false;      // the same
  t.auto_points = {{64, false, 1, 128, "simd"},
                   {64, false, 1, 256, "simd"},
                   {64, false, 1, 512, "flash"},
                   {128, true, 2, 128, "naive"},
                   {128, true, 2, 256, "chunked"}};
  return t;
}

ProblemSpec Self(int64_t n, int64_t d, MaskKind mask = MaskKind::kNone) {
  ProblemSpec spec;
  spec.shape = Shape{1, 2, 2, n, n, d, d};
  spec.mask = mask;
  return spec;
}

std::string Pick(const ProblemSpec& spec, int threads, const Tuning& t) {
  ProblemData data(spec);
  StatusOr<ValidProblem> valid = Validate(data.problem());
  EXPECT_TRUE(valid.ok()) << valid.status().message();
  return AutoChoice(*valid, threads, t).name;
}

TEST(TuningFile, RoundTrips) {
  const Tuning t = Table();
  StatusOr<Tuning> back = ParseTuning(SerializeTuning(t));
  ASSERT_TRUE(back.ok()) << back.status().message();
  EXPECT_EQ(back->cpu, t.cpu);
  EXPECT_EQ(back->target, t.target);
  EXPECT_EQ(back->flash_key_tile, t.flash_key_tile);
  EXPECT_EQ(back->flash_decode_prefetch_bytes, 8192);
  EXPECT_EQ(back->flash_mha_decode_prefetch_bytes, 2048);
  EXPECT_EQ(back->flash_paged_prefetch_bytes, 4096);
  EXPECT_EQ(back->flash_decode_prefetch_min_kv_bytes, 48 << 20);
  EXPECT_FALSE(back->flash_tile_prefetch);
  EXPECT_FALSE(back->flash_vdpbf16ps);
  EXPECT_EQ(back->auto_points, t.auto_points);
  EXPECT_EQ(Stale(*back), "");
}

TEST(TuningFile, BadFieldsAreNamed) {
  const std::string good = SerializeTuning(Table());
  auto with = [&](const std::string& from, const std::string& to) {
    std::string s = good;
    const size_t at = s.find(from);
    EXPECT_NE(at, std::string::npos) << from;
    return s.replace(at, from.size(), to);
  };
  const std::pair<std::string, std::string> cases[] = {
      {"{ not json", "not valid JSON"},
      {"[1, 2]", "want a JSON object"},
      {with("\"key_tile\": 512", "\"key_tile\": 100"),
       "flash.key_tile=100 must be a multiple of 16"},
      {with("\"key_tile\": 512", "\"key_tile\": 1024"), "flash.key_tile=1024"},
      {with("\"key_tile\": 512", "\"key_tile\": \"big\""), "flash.key_tile must be an integer"},
      {with("\"decode_prefetch_bytes\": 8192", "\"decode_prefetch_bytes\": -1"),
       "flash.decode_prefetch_bytes=-1 must be in [0, 1048576]"},
      {with("\"decode_prefetch_bytes\": 8192", "\"decode_prefetch_bytes\": 2000000"),
       "flash.decode_prefetch_bytes=2000000"},
      {with("\"decode_prefetch_bytes\": 8192", "\"decode_prefetch_bytes\": 1.5"),
       "flash.decode_prefetch_bytes must be an integer"},
      {with("\"mha_decode_prefetch_bytes\": 2048", "\"mha_decode_prefetch_bytes\": -2"),
       "flash.mha_decode_prefetch_bytes=-2 must be in [0, 1048576]"},
      {with("\"paged_prefetch_bytes\": 4096", "\"paged_prefetch_bytes\": 1048577"),
       "flash.paged_prefetch_bytes=1048577 must be in [0, 1048576]"},
      {with("\"paged_prefetch_bytes\": 4096", "\"paged_prefetch_bytes\": null"),
       "flash.paged_prefetch_bytes must be an integer"},
      {with("\"decode_prefetch_min_kv_bytes\": 50331648", "\"decode_prefetch_min_kv_bytes\": -5"),
       "flash.decode_prefetch_min_kv_bytes=-5 must be in [0, 1099511627776]"},
      {with("\"decode_prefetch_min_kv_bytes\": 50331648",
            "\"decode_prefetch_min_kv_bytes\": \"big\""),
       "flash.decode_prefetch_min_kv_bytes must be an integer"},
      {with("\"tile_prefetch\": false", "\"tile_prefetch\": 0"),
       "flash.tile_prefetch must be true or false"},
      {with("\"vdpbf16ps\": false", "\"vdpbf16ps\": \"no\""),
       "flash.vdpbf16ps must be true or false"},
      {with("\"format\": 1,", ""), "format is missing"},
      {with("\"variant\": \"naive\"", "\"variant\": \"fastest\""),
       "auto.points[3].variant 'fastest' is not a variant auto can run"},
      {with("\"variant\": \"naive\"", "\"variant\": \"auto\""), "auto.points[3].variant 'auto'"},
      {with("\"threads\": 2", "\"threads\": 0"), "auto.points[3]. head_dim, n and threads"},
      {with("\"causal\": false", "\"causal\": 0"), "auto.points[0].causal must be true or false"},
  };
  for (const auto& [text, want] : cases) {
    StatusOr<Tuning> t = ParseTuning(text);
    ASSERT_FALSE(t.ok()) << text;
    EXPECT_NE(t.status().message().find(want), std::string::npos)
        << "got: " << t.status().message() << "\nwant: " << want;
  }
}

// Files written before flash.decode_prefetch_bytes,
// flash.mha_decode_prefetch_bytes, flash.paged_prefetch_bytes,
// flash.decode_prefetch_min_kv_bytes, flash.tile_prefetch or
// flash.vdpbf16ps existed stay valid and take the defaults
// (kDefaultDecodePrefetchBytes for the distances, true for the switches, what
// flash did before the field: a file is made on one CPU, whose tuning it
// holds).
TEST(TuningFile, WithoutDecodePrefetchTakesTheDefault) {
  for (const std::string field :
       {",\n    \"decode_prefetch_bytes\": 8192", ",\n    \"mha_decode_prefetch_bytes\": 2048",
        ",\n    \"paged_prefetch_bytes\": 4096",
        ",\n    \"decode_prefetch_min_kv_bytes\": 50331648", ",\n    \"tile_prefetch\": false",
        ",\n    \"vdpbf16ps\": false"}) {
    std::string text = SerializeTuning(Table());
    const size_t at = text.find(field);
    ASSERT_NE(at, std::string::npos) << text;
    text.erase(at, field.size());
    StatusOr<Tuning> t = ParseTuning(text);
    ASSERT_TRUE(t.ok()) << t.status().message() << "\n" << text;
    const bool distance = field.find("\"decode_prefetch_bytes") != std::string::npos;
    const bool mha = field.find("mha") != std::string::npos;
    const bool paged = field.find("paged") != std::string::npos;
    const bool min_kv = field.find("min_kv") != std::string::npos;
    const bool tile = field.find("tile_prefetch") != std::string::npos;
    const bool pairs = field.find("vdpbf16ps") != std::string::npos;
    EXPECT_EQ(t->flash_decode_prefetch_bytes, distance ? kDefaultDecodePrefetchBytes : 8192);
    EXPECT_EQ(t->flash_mha_decode_prefetch_bytes, mha ? kDefaultDecodePrefetchBytes : 2048);
    EXPECT_EQ(t->flash_paged_prefetch_bytes, paged ? kDefaultDecodePrefetchBytes : 4096);
    EXPECT_EQ(t->flash_decode_prefetch_min_kv_bytes,
              min_kv ? DefaultDecodePrefetchMinKvBytes() : 48 << 20);
    EXPECT_EQ(t->flash_tile_prefetch, tile);
    EXPECT_EQ(t->flash_vdpbf16ps, pairs);
    EXPECT_EQ(t->flash_key_tile, Table().flash_key_tile);
  }
}

// The built-in defaults by CPU: MHA decode of a contiguous cache prefetches
// nothing on Zen 4 and kDefaultDecodePrefetchBytes ahead elsewhere; GQA
// decode and a paged cache kDefaultDecodePrefetchBytes everywhere. (The
// defaults part reads the CPU it runs on.)
TEST(TuningDefaults, DecodePrefetchByCpu) {
  // Zen 4: Genoa (the Zen 4 VM: family 25, model 17), Raphael, Phoenix,
  // Bergamo; not Zen 3 (Milan, Vermeer), Zen 5 (family 26) or Sapphire Rapids.
  for (const auto& [family, model] : {std::pair{25, 0x11}, {25, 0x61}, {25, 0x74}, {25, 0xa0}}) {
    EXPECT_TRUE(IsZen4(family, model)) << family << ", " << model;
  }
  for (const auto& [family, model] :
       {std::pair{25, 0x01}, {25, 0x21}, {25, 0x50}, {26, 0x11}, {6, 0x8f}, {23, 0x31}}) {
    EXPECT_FALSE(IsZen4(family, model)) << family << ", " << model;
  }
  const Tuning t = DefaultTuning("test");
  SCOPED_TRACE(CpuModel());
  EXPECT_EQ(CpuIsZen4(), IsZen4(CpuFamilyModel().first, CpuFamilyModel().second));
  EXPECT_EQ(t.flash_mha_decode_prefetch_bytes, CpuIsZen4() ? 0 : kDefaultDecodePrefetchBytes);
  EXPECT_EQ(DefaultMhaDecodePrefetchBytes(), t.flash_mha_decode_prefetch_bytes);
  EXPECT_EQ(t.flash_decode_prefetch_bytes, kDefaultDecodePrefetchBytes);
  EXPECT_EQ(t.flash_paged_prefetch_bytes, kDefaultDecodePrefetchBytes);
  // The tile prefetch: off on Emerald Rapids only.
  EXPECT_TRUE(IsEmeraldRapids(6, 0xcf));
  for (const auto& [family, model] : {std::pair{6, 0x8f}, {6, 0xad}, {25, 0x11}, {26, 0xcf}}) {
    EXPECT_FALSE(IsEmeraldRapids(family, model)) << family << ", " << model;
  }
  EXPECT_EQ(t.flash_tile_prefetch,
            !IsEmeraldRapids(CpuFamilyModel().first, CpuFamilyModel().second));
  EXPECT_EQ(DefaultTilePrefetch(), t.flash_tile_prefetch);
  // bf16 prefill on VDPBF16PS: not on the Intel cores measured to issue it
  // at half the FMA rate (Sapphire and Emerald Rapids).
  for (const auto& [family, model] : {std::pair{6, 0x8f}, {6, 0xa7}, {6, 0xcf}}) {
    EXPECT_TRUE(VdpBf16psAtHalfFmaRate(family, model)) << family << ", " << model;
  }
  for (const auto& [family, model] : {std::pair{25, 0x11}, {25, 0x61}, {26, 0x11}, {6, 0x55}}) {
    EXPECT_FALSE(VdpBf16psAtHalfFmaRate(family, model)) << family << ", " << model;
  }
  EXPECT_EQ(t.flash_vdpbf16ps,
            !VdpBf16psAtHalfFmaRate(CpuFamilyModel().first, CpuFamilyModel().second));
  EXPECT_EQ(DefaultVdpbf16ps(), t.flash_vdpbf16ps);
  // The field each block takes above the threshold, none at or under it.
  Tuning u = t;
  u.flash_decode_prefetch_bytes = 100, u.flash_mha_decode_prefetch_bytes = 200;
  u.flash_paged_prefetch_bytes = 300;
  const int64_t above = u.flash_decode_prefetch_min_kv_bytes + 1;
  EXPECT_EQ(DecodePrefetchBytes(u, above, /*paged=*/false, /*rows=*/4), 100);
  EXPECT_EQ(DecodePrefetchBytes(u, above, /*paged=*/false, /*rows=*/1), 200);
  EXPECT_EQ(DecodePrefetchBytes(u, above, /*paged=*/true, /*rows=*/1), 300);
  EXPECT_EQ(DecodePrefetchBytes(u, above, /*paged=*/true, /*rows=*/4), 300);
  EXPECT_EQ(DecodePrefetchBytes(u, above - 1, /*paged=*/true, /*rows=*/4), kNoDecodePrefetch);
  // And flash's plan asks for it: MHA and GQA-4 decode above the threshold.
  u.flash_decode_prefetch_min_kv_bytes = 0;
  ScopedTuning scope(u);
  for (const auto& [kv_heads, want] : {std::pair{int64_t{8}, 200}, {int64_t{2}, 100}}) {
    ProblemSpec spec;
    spec.shape = Shape{1, 8, kv_heads, 1, 1024, 128, 128};
    ProblemData data(spec);
    EXPECT_EQ(flash::MakePlan(*Validate(data.problem())).decode_prefetch_bytes, want)
        << "Hkv " << kv_heads;
  }
  // And the tile prefetch of prefill, both ways.
  for (const bool on : {false, true}) {
    Tuning v = u;
    v.flash_tile_prefetch = on;
    ScopedTuning with(v);
    ProblemData data(Self(1024, 128));
    EXPECT_EQ(flash::MakePlan(*Validate(data.problem())).tile_prefetch, on);
  }
}

// flash.vdpbf16ps chooses where bf16 products run, with AMX off
// (ATTNLAB_NO_AMX=1): on VDPBF16PS when on (a CPU with AVX512_BF16 and the
// 16-lane target the kernels are laid out for), prefill's pair kernels and
// GQA-4 decode's; through fp32 when off (converted tiles, or bf16 widened in
// registers); all match the reference: prefill dense and causal (a short
// causal block and its diagonal tiles) and decode.
TEST(TuningDefaults, Vdpbf16psChoosesTheBf16Path) {
  // The kernels are laid out for 16 fp32 lanes: the AVX-512 targets (AVX3,
  // and AVX3_DL where the build dispatches it, as the sanitizer builds do).
  const bool can_pair =
      ukernels::CpuHasAvx512Bf16() && DispatchedHighwayTarget().rfind("AVX3", 0) == 0;
  const testing::ScopedEnv no_amx("ATTNLAB_NO_AMX", "1");
  ProblemSpec gqa_decode;
  gqa_decode.shape = Shape{1, 8, 2, 1, 1500, 128, 128};
  std::vector<ProblemSpec> specs = {Self(700, 64), Self(700, 64, MaskKind::kCausal), gqa_decode};
  for (const bool on : {false, true}) {
    Tuning t = ActiveTuning();
    t.flash_vdpbf16ps = on;
    ScopedTuning with(t);
    for (ProblemSpec spec : specs) {
      spec.dtypes = {DType::kBF16, DType::kBF16, DType::kBF16, DType::kBF16};
      spec.want_weights = false;
      ProblemData data(spec);
      RunStats stats;
      ASSERT_TRUE(attn::Run(*FindVariant("flash"), data.problem(), {}, &stats).ok());
      SCOPED_TRACE(std::string(on ? "on" : "off") + ", " + spec.Name() + ", path " + stats.path);
      EXPECT_EQ(flash::MakePlan(*Validate(data.problem())).vdpbf16ps, on);
      EXPECT_EQ(stats.path.find("AVX512_BF16") != std::string::npos, on && can_pair);
      const testing::Comparison c =
          CompareToReference(data, *reference::Attention(data.problem(), false));
      EXPECT_TRUE(c.ok) << c.first_failure;
    }
  }
}

// The default threshold: half the L3 as sysfs gives it, at most 32 MiB (a
// VM's sysfs claims what the hypervisor says), 16 MiB when it gives none.
TEST(TuningFile, DefaultDecodePrefetchThresholdIsHalfTheL3Capped) {
  const int64_t l3 = L3CacheBytes();
  EXPECT_EQ(DefaultDecodePrefetchMinKvBytes(),
            l3 > 0 ? std::min(l3 / 2, kMaxDefaultDecodePrefetchMinKvBytes) : int64_t{16} << 20)
      << "L3 " << l3;
  EXPECT_EQ(Tuning{}.flash_decode_prefetch_min_kv_bytes, DefaultDecodePrefetchMinKvBytes());
}

// The plan prefetches above the tuning's threshold and not at or below it.
TEST(ActiveTuning, DecodePrefetchFollowsTheThreshold) {
  ProblemSpec spec;
  spec.shape = Shape{1, 8, 2, 1, 1024, 128, 128};  // K and V: 2 MiB
  ProblemData data(spec);
  const int64_t kv_bytes = 2 << 20;
  for (int64_t threshold : {int64_t{0}, kv_bytes - 1, kv_bytes, kv_bytes * 4}) {
    Tuning t = ThisMachine();
    t.flash_decode_prefetch_min_kv_bytes = threshold;
    ScopedTuning scope(t);
    EXPECT_EQ(flash::MakePlan(*Validate(data.problem())).decode_prefetch_bytes,
              threshold < kv_bytes ? t.flash_decode_prefetch_bytes : kNoDecodePrefetch)
        << "threshold " << threshold;
  }
}

TEST(TuningFile, FromAnotherMachineIsStale) {
  Tuning t = Table();
  EXPECT_EQ(Stale(t), "");
  t.cpu = "Some Other CPU (family 6, model 143)";
  EXPECT_NE(Stale(t).find("made on CPU 'Some Other CPU"), std::string::npos) << Stale(t);
  EXPECT_NE(Stale(t).find(CpuModel()), std::string::npos) << Stale(t);
  t = Table();
  t.target = "SSE4";
  if (DispatchedHighwayTarget() != "SSE4") {
    EXPECT_NE(Stale(t).find("Highway target SSE4"), std::string::npos);
  }
  t = Table();
  t.format = kTuningFormat + 1;
  EXPECT_NE(Stale(t).find("format"), std::string::npos);
}

TEST(TuningFile, LoadsFromDiskAndNamesAMissingOne) {
  const std::string path = ::testing::TempDir() + "attnlab_tuning_test.json";
  {
    std::ofstream out(path);
    out << SerializeTuning(Table());
  }
  StatusOr<Tuning> t = LoadTuningFile(path);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->source, path);
  EXPECT_EQ(t->auto_points.size(), 5u);
  {
    std::ofstream out(path);
    out << "{}";
  }
  t = LoadTuningFile(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(), path + ": tuning: format is missing");
  std::remove(path.c_str());
  t = LoadTuningFile(path);
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), StatusCode::kNotFound);
}

TEST(TuningFile, CpuModelNamesTheCpu) {
  const std::string cpu = CpuModel();
  EXPECT_FALSE(cpu.empty());
  EXPECT_EQ(cpu, CpuModel());  // stable: it is what a file is matched on
}

TEST(AutoChoice, NearestMeasuredPoint) {
  const Tuning t = Table();
  EXPECT_EQ(Pick(Self(128, 64), 1, t), "simd");
  EXPECT_EQ(Pick(Self(200, 64), 1, t), "simd");                       // nearest N (log scale): 256
  EXPECT_EQ(Pick(Self(400, 64), 1, t), "flash");                      // nearest: 512
  EXPECT_EQ(Pick(Self(128, 80), 1, t), "simd");                       // nearest head dim: 64
  EXPECT_EQ(Pick(Self(128, 64), 2, t), "simd");                       // nearest thread count: 1
  EXPECT_EQ(Pick(Self(128, 64, MaskKind::kAdditive), 1, t), "simd");  // additive is dense
  EXPECT_EQ(Pick(Self(128, 128, MaskKind::kCausal), 2, t), "naive");
  EXPECT_EQ(Pick(Self(256, 128, MaskKind::kSlidingWindow), 2, t), "chunked");
}

TEST(AutoChoice, FlashWhereTheTableDoesNotApply) {
  const Tuning t = Table();
  EXPECT_EQ(Pick(Self(1024, 64), 1, t), "flash");                     // beyond the measured N
  EXPECT_EQ(Pick(Self(384, 128, MaskKind::kCausal), 2, t), "flash");  // beyond 256
  EXPECT_EQ(Pick(Self(128, 64), 1, ThisMachine()), "flash");          // no points
  ProblemSpec decode = Self(128, 64);
  decode.shape.q_len = 1;  // Lq != Lk: decode and cross-attention
  EXPECT_EQ(Pick(decode, 1, t), "flash");
  ProblemSpec bf16 = Self(128, 64);
  bf16.dtypes = {DType::kBF16, DType::kBF16, DType::kBF16, DType::kF32};
  EXPECT_EQ(Pick(bf16, 1, t), "flash");
  // A pick whose workspace would exceed kAutoMaxWorkspaceBytes: simd's
  // Lq x Lk scores at N = 8192 (256 MiB of them per head).
  Tuning big = ThisMachine();
  big.auto_points = {{16, false, 1, 8192, "simd"}};
  ProblemSpec longer;
  longer.shape = Shape{1, 1, 1, 8192, 8192, 16, 16};
  longer.want_lse = false;
  ProblemData data(longer);
  StatusOr<ValidProblem> valid = Validate(data.problem());
  ASSERT_TRUE(valid.ok());
  ASSERT_GT(FindVariant("simd")->workspace_bytes(*valid, 1), kAutoMaxWorkspaceBytes);
  EXPECT_STREQ(AutoChoice(*valid, 1, big).name, "flash");
}

TEST(AutoVariant, RunsItsPickAndSaysSo) {
  const Variant& auto_variant = *FindVariant("auto");
  for (const char* pick : {"simd", "naive", "chunked", "blas", "flash"}) {
    Tuning t = ThisMachine();
    t.auto_points = {{64, true, 1, 256, pick}};
    ScopedTuning scope(t);
    ProblemSpec spec = Self(200, 64, MaskKind::kCausal);
    spec.shape.heads = 4;  // GQA: every pick takes it
    ProblemData data(spec);
    RunStats stats;
    const Status status = attn::Run(auto_variant, data.problem(), OnThreads(1), &stats);
    ASSERT_TRUE(status.ok()) << status.message();
    const std::string want_path =
        std::string(pick) + ", " +
        (FindVariant(pick)->uses_highway ? DispatchedHighwayTarget() : "portable C++");
    EXPECT_EQ(stats.path.substr(0, want_path.size()), want_path) << stats.path;
    EXPECT_EQ(stats.workspace_declared_bytes,
              FindVariant(pick)->workspace_bytes(*Validate(data.problem()), 1));
    const reference::Comparison c =
        CompareToReference(data, *reference::Attention(data.problem(), false));
    EXPECT_TRUE(c.ok) << pick << ": " << c.first_failure;
  }
}

TEST(ActiveTuning, FlashFollowsTheKeyTile) {
  ProblemSpec spec = Self(1000, 64, MaskKind::kCausal);
  ProblemData data(spec);
  StatusOr<ValidProblem> valid = Validate(data.problem());
  ASSERT_TRUE(valid.ok());
  const reference::Result want = *reference::Attention(data.problem(), false);
  for (int64_t tile : {128, 256, 512}) {
    Tuning t = ThisMachine();
    t.flash_key_tile = tile;
    ScopedTuning scope(t);
    EXPECT_EQ(&ActiveTuning(), &ActiveTuning());
    EXPECT_EQ(ActiveTuning().flash_key_tile, tile);
    EXPECT_EQ(flash::MakePlan(*valid).bc, tile);
    data.Poison();
    ASSERT_TRUE(attn::Run("flash", data.problem(), OnThreads(2)).ok());
    const reference::Comparison c = CompareToReference(data, want);
    EXPECT_TRUE(c.ok) << "key tile " << tile << ": " << c.first_failure;
  }
  // Shorter sequences take fewer keys per tile, whatever the tuning.
  spec.shape.q_len = spec.shape.kv_len = 40;
  ProblemData short_data(spec);
  EXPECT_EQ(flash::MakePlan(*Validate(short_data.problem())).bc, 48);
}

// The decode prefetch distance moves only prefetch instructions: flash's
// decode results are bitwise the same at every distance (none, a row ahead,
// the default, past the whole sequence), on fp32 and reduced K/V (read in
// place), with key lengths and a window that end a block's keys early.
// (Problems this small stay under the default threshold; the test hook
// makes flash prefetch anyway.)
TEST(ActiveTuning, DecodePrefetchChangesNoBits) {
  {
    // Without the hook, K and V of 1 MiB stay under the threshold: no prefetch.
    ProblemSpec small;
    small.shape = Shape{1, 8, 2, 1, 1024, 128, 128};
    ProblemData data(small);
    ASSERT_LT(int64_t{1} << 20, ActiveTuning().flash_decode_prefetch_min_kv_bytes);
    EXPECT_EQ(flash::MakePlan(*Validate(data.problem())).decode_prefetch_bytes, kNoDecodePrefetch);
  }
  const testing::DecodePrefetchScope always;
  struct Case {
    Shape shape;
    DTypes dtypes;
    MaskKind mask;
    std::vector<int32_t> key_lengths;
  };
  const DTypes f32, bf16{DType::kF32, DType::kBF16, DType::kBF16, DType::kF32};
  const Case cases[] = {
      {{1, 8, 8, 1, 4096, 128, 128}, f32, MaskKind::kNone, {}},         // MHA
      {{2, 8, 2, 1, 3000, 64, 64}, f32, MaskKind::kNone, {2999, 700}},  // GQA-4
      {{1, 4, 1, 2, 4096, 128, 128}, bf16, MaskKind::kNone, {}},        // MQA, bf16 K/V
      {{1, 2, 2, 1, 4096, 64, 64}, f32, MaskKind::kSlidingWindow, {}},  // window
  };
  for (const Case& c : cases) {
    ProblemSpec spec;
    spec.shape = c.shape;
    spec.dtypes = c.dtypes;
    spec.mask = c.mask;
    spec.window_left = 1000;
    spec.key_lengths = c.key_lengths;
    ProblemData data(spec);
    const reference::Result want = *reference::Attention(data.problem(), false);
    std::vector<float> first;
    for (int64_t bytes : {int64_t{0}, int64_t{64}, int64_t{32768}, kMaxDecodePrefetchBytes}) {
      Tuning t = ThisMachine();
      t.flash_decode_prefetch_bytes = t.flash_mha_decode_prefetch_bytes = bytes;  // GQA, MHA
      ScopedTuning scope(t);
      EXPECT_EQ(flash::MakePlan(*Validate(data.problem())).decode_prefetch_bytes, bytes);
      data.Poison();
      ASSERT_TRUE(attn::Run("flash", data.problem(), OnThreads(2)).ok());
      const reference::Comparison cmp = CompareToReference(data, want);
      EXPECT_TRUE(cmp.ok) << spec.Name() << ", prefetch " << bytes << ": " << cmp.first_failure;
      const std::vector<float> out = data.OutputContiguous();
      if (first.empty()) {
        first = out;
      } else {
        EXPECT_EQ(0, std::memcmp(first.data(), out.data(), out.size() * sizeof(float)))
            << spec.Name() << ": prefetch " << bytes << " changed the result";
      }
    }
  }
}

}  // namespace
}  // namespace attn
