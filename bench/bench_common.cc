#include "bench/bench_common.h"

#include <cblas.h>
#include <malloc.h>
#include <omp.h>
#include <openblas_config.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <limits>
#include <map>
#include <memory>
#include <sstream>

#include "kernels/openblas_core.h"
#include "testing/problem_data.h"

#ifndef ATTNLAB_BUILD_TYPE
#define ATTNLAB_BUILD_TYPE "unknown"
#endif

namespace attn::bench {

const char* ScenarioName(Scenario s) {
  switch (s) {
    case Scenario::kSweep:
      return "sweep";
    case Scenario::kDecode:
      return "decode";
    case Scenario::kGqa:
      return "gqa";
    case Scenario::kWindow:
      return "window";
    case Scenario::kCross:
      return "cross";
    case Scenario::kSoftcap:
      return "softcap";
    case Scenario::kAlibi:
      return "alibi";
    case Scenario::kSinks:
      return "sinks";
    case Scenario::kVarlen:
      return "varlen";
    case Scenario::kPadded:
      return "padded";
    case Scenario::kPaddedMask:
      return "padded_mask";
    case Scenario::kPaged:
      return "paged";
  }
  return "?";
}

const std::vector<int32_t>& PackedLengths(int64_t longest) {
  static std::map<int64_t, std::vector<int32_t>> cache;
  std::vector<int32_t>& lengths = cache[longest];
  if (lengths.empty()) {
    for (int64_t divisor : {1, 4, 4, 8, 8, 8, 16, 16}) {
      lengths.push_back(static_cast<int32_t>(std::max<int64_t>(1, longest / divisor)));
    }
  }
  return lengths;
}

const std::vector<int32_t>& PackedOffsets(int64_t longest) {
  static std::map<int64_t, std::vector<int32_t>> cache;
  std::vector<int32_t>& offsets = cache[longest];
  if (offsets.empty()) {
    offsets.push_back(0);
    for (int32_t n : PackedLengths(longest)) offsets.push_back(offsets.back() + n);
  }
  return offsets;
}

void ApplyMask(const Case& c, int64_t longest, Problem& p, std::vector<float>* additive) {
  p.mask.kind = c.mask_kind();
  p.mask.window_left = c.window;
  p.mask.window_right = 0;
  if (c.scenario == Scenario::kVarlen) {
    p.mask.sequences = PackedSequences{PackedOffsets(longest), PackedOffsets(longest)};
  } else if (c.scenario == Scenario::kPadded) {
    p.mask.key_lengths = PackedLengths(longest);
  } else if (c.scenario == Scenario::kPaddedMask) {
    const std::vector<int32_t>& lengths = PackedLengths(longest);
    const int64_t B = int64_t(lengths.size()), L = longest;
    p.mask.additive_shape = {B, 1, L, L};
    if (additive == nullptr) {  // Prepare reads the size, never the values
      p.mask.additive = {reinterpret_cast<const float*>(uintptr_t{1} << 46), size_t(B * L * L)};
      return;
    }
    // Row i of sequence b sees key j < length (and j <= i when causal).
    additive->assign(B * L * L, -std::numeric_limits<float>::infinity());
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t i = 0; i < L; ++i) {
        const int64_t end = c.causal ? std::min<int64_t>(lengths[b], i + 1) : lengths[b];
        std::fill_n(additive->data() + (b * L + i) * L, end, 0.0f);
      }
    }
    p.mask.additive = *additive;
  }
}

uint8_t ScenarioModifiers(Scenario s) {
  return s == Scenario::kSoftcap ? kSoftcap
         : s == Scenario::kAlibi ? kAlibi
         : s == Scenario::kSinks ? kSinks
                                 : 0;
}

bool AllF32(const DTypes& t) {
  return t.q == DType::kF32 && t.k == DType::kF32 && t.v == DType::kF32 && t.o == DType::kF32;
}

std::string DTypeToken(const DTypes& t) {
  if (AllF32(t)) return "";
  if (t.k == t.q && t.v == t.q && t.o == t.q) return std::string("dtype:") + DTypeName(t.q);
  return std::string("dtype:") + DTypeName(t.q) + "-" + DTypeName(t.k) + "-" + DTypeName(t.v) +
         "-" + DTypeName(t.o);
}

const std::vector<DTypes>& PrecisionDTypes() {
  constexpr DType kF32 = DType::kF32, kBF16 = DType::kBF16, kF16 = DType::kF16, kI8 = DType::kI8;
  static const std::vector<DTypes> list = {
      {kF32, kF32, kF32, kF32},   {kBF16, kBF16, kBF16, kBF16}, {kF16, kF16, kF16, kF16},
      {kF32, kBF16, kBF16, kF32}, {kF32, kI8, kI8, kF32},       {kBF16, kI8, kI8, kBF16},
  };
  return list;
}

std::string Case::ValuesKey() const {
  const std::string d = "d:" + std::to_string(dim);
  switch (scenario) {
    case Scenario::kSweep:
      return "N:" + std::to_string(q_len) + "/" + d + "/causal:" + (causal ? "1" : "0");
    case Scenario::kDecode:
      return "decode/Lk:" + std::to_string(kv_len) + "/" + d +
             (heads_token ? "/H:" + std::to_string(heads) : "") +
             "/Hkv:" + std::to_string(kv_heads);
    case Scenario::kGqa:
      return "gqa/N:" + std::to_string(q_len) + "/" + d + "/causal:" + (causal ? "1" : "0");
    case Scenario::kWindow:
      return "window/N:" + std::to_string(q_len) + "/" + d + "/w:" + std::to_string(window);
    case Scenario::kCross:
      return "cross/Lq:" + std::to_string(q_len) + "/Lk:" + std::to_string(kv_len) + "/" + d;
    case Scenario::kSoftcap:
    case Scenario::kAlibi:
    case Scenario::kSinks:
      return std::string(ScenarioName(scenario)) + "/N:" + std::to_string(q_len) + "/" + d +
             "/causal:" + (causal ? "1" : "0");
    case Scenario::kPaged:
      return "paged/Lk:" + std::to_string(kv_len) + "/" + d + "/Hkv:" + std::to_string(kv_heads) +
             "/bs:" + std::to_string(block_size);
    case Scenario::kVarlen:
    case Scenario::kPadded:
    case Scenario::kPaddedMask:
      return std::string(ScenarioName(scenario)) + "/Lmax:" + std::to_string(q_len) + "/" + d +
             "/causal:" + (causal ? "1" : "0");
  }
  return "?";
}

std::string Case::DataKey() const {
  const std::string token = DTypeToken(dtypes);
  return token.empty() ? ValuesKey() : ValuesKey() + "/" + token;
}

std::string Case::Tokens() const { return DataKey() + "/threads:" + std::to_string(threads); }

std::string Case::CheckKey() const {
  const std::string token = DTypeToken(dtypes);
  return std::string(ScenarioName(scenario)) + "/d:" + std::to_string(dim) + "/" +
         MaskKindName(mask_kind()) + "/group:" + std::to_string(heads / kv_heads) +
         (token.empty() ? "" : "/" + token);
}

TensorBytes BytesOf(const Case& c) {
  const Shape s = c.shape();
  const double q_elems = double(s.batch) * s.heads * s.q_len * s.head_dim;
  const double o_elems = double(s.batch) * s.heads * s.q_len * s.value_dim;
  const double kv_rows = double(s.batch) * s.kv_heads * s.kv_len;
  auto kv = [&](DType dtype, int64_t dim) {
    return kv_rows * (double(dim) * DTypeBytes(dtype) + (dtype == DType::kI8 ? 4.0 : 0.0));
  };
  return {q_elems * DTypeBytes(c.dtypes.q), kv(c.dtypes.k, s.head_dim), kv(c.dtypes.v, s.value_dim),
          o_elems * DTypeBytes(c.dtypes.o)};
}

double AttentionFlops(double pairs, int64_t dk, int64_t dv) {
  return 2.0 * pairs * static_cast<double>(dk + dv);
}

double GradFlops(double pairs, int64_t dk, int64_t dv) {
  return 2.0 * pairs * double(3 * dk + 2 * dv);
}

double DensePairs(const Case& c) {
  return static_cast<double>(c.batch) * c.heads * c.q_len * c.kv_len;
}

uint64_t SeedFrom(const std::string& text) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

void FillRandom(float* data, size_t n, uint64_t seed) {
  // splitmix64: fast enough for gigabytes of inputs, and every value is a
  // nonzero-probability uniform in [-1, 1) (24 random mantissa bits).
  uint64_t state = seed;
  for (size_t i = 0; i < n; ++i) {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    data[i] = static_cast<float>(z >> 40) * (2.0f / 16777216.0f) - 1.0f;
  }
}

namespace {
std::unique_ptr<CaseData> g_data;
std::string g_data_key;
}  // namespace

CaseData& DataFor(const Case& c) {
  const std::string key = c.DataKey();
  if (g_data && g_data_key == key) return *g_data;
  ReleaseData();
  auto data = std::make_unique<CaseData>();
  const Shape s = c.shape();
  // A modifier scenario times the sweep case's own inputs.
  Case values_of = c;
  if (ScenarioModifiers(c.scenario)) values_of.scenario = Scenario::kSweep;
  if (c.scenario == Scenario::kPaged) values_of.scenario = Scenario::kDecode;  // its K/V, paged
  const uint64_t seed = SeedFrom(values_of.ValuesKey());
  // An input of `heads` x `len` rows of `dim`: fp32 values from the seed, kept
  // when the tensor is f32, else stored in its type (the fp32 copy freed).
  auto input = [&](DType dtype, auto& values, auto& typed, std::vector<float>* scales,
                   int64_t heads, int64_t len, int64_t dim, uint64_t tensor_seed) -> const void* {
    values.resize(s.batch * heads * len * dim);
    FillRandom(values.data(), values.size(), tensor_seed);
    if (dtype == DType::kF32) return values.data();
    std::vector<char> bytes;  // StoreInDType's type; copied into `typed`'s pages
    testing::StoreInDType(dtype, values, 0, s.batch, heads, len, dim,
                          Strides::BHLD(heads, len, dim), bytes, scales);
    std::remove_reference_t<decltype(values)>().swap(values);  // before the copy: no third buffer
    typed.assign(bytes.begin(), bytes.end());
    return typed.data();
  };
  const void* q =
      input(c.dtypes.q, data->q, data->q_typed, nullptr, s.heads, s.q_len, s.head_dim, seed);
  const void* k = input(c.dtypes.k, data->k, data->k_typed, &data->k_scales, s.kv_heads, s.kv_len,
                        s.head_dim, seed + 1);
  const void* v = input(c.dtypes.v, data->v, data->v_typed, &data->v_scales, s.kv_heads, s.kv_len,
                        s.value_dim, seed + 2);
  const size_t o_elems = s.batch * s.heads * s.q_len * s.value_dim;
  void* o = nullptr;
  if (c.dtypes.o == DType::kF32) {
    data->o.assign(o_elems, 0.0f);
    o = data->o.data();
  } else {
    data->o_typed.assign(o_elems * DTypeBytes(c.dtypes.o), 0);
    o = data->o_typed.data();
  }
  data->problem = MakeProblem(s, q, k, v, o, Layout::kBHLD, c.dtypes);
  const Strides row_scales = Strides::BHLD(s.kv_heads, s.kv_len, 1);
  if (c.dtypes.k == DType::kI8) data->problem.k_scales = {data->k_scales.data(), row_scales};
  if (c.dtypes.v == DType::kI8) data->problem.v_scales = {data->v_scales.data(), row_scales};
  ApplyMask(c, c.q_len, data->problem, &data->additive);
  if (c.scenario == Scenario::kPaged) {
    PageKv(c.block_size, data->problem, data->pools);
    HugePageVector<float>().swap(data->k);  // the contiguous copies
    HugePageVector<float>().swap(data->v);
  }
  const uint8_t modifiers = ScenarioModifiers(c.scenario);
  if (modifiers & kSoftcap) data->problem.modifiers.softcap = 50.0f;  // Gemma 2's attention cap
  for (int64_t h = 0; h < s.heads; ++h) {
    data->alibi_slopes.push_back(std::exp2(-8.0f * float(h + 1) / float(s.heads)));
    data->sinks.push_back(1.0f + 0.25f * float(h));
  }
  if (modifiers & kAlibi) data->problem.modifiers.alibi_slopes = data->alibi_slopes;
  if (modifiers & kSinks) data->problem.modifiers.sinks = data->sinks;
  g_data = std::move(data);
  g_data_key = key;
  return *g_data;
}

void ReleaseData() {
  g_data.reset();
  g_data_key.clear();
  TrimMalloc();
}

int64_t ProcStatusBytes(const char* field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  const size_t len = std::strlen(field);
  while (std::getline(in, line)) {
    if (line.compare(0, len, field) == 0 && line.size() > len && line[len] == ':') {
      long long kib = -1;
      if (std::sscanf(line.c_str() + len + 1, "%lld", &kib) == 1) return kib * 1024;
    }
  }
  return -1;
}

void PeakRss::Start() {
  TrimMalloc();
  std::ofstream clear("/proc/self/clear_refs");
  clear << "5";
  clear.close();
  start_rss_ = clear ? ProcStatusBytes("VmRSS") : -1;
}

double PeakRss::DeltaBytes() const {
  if (start_rss_ < 0) return -1;
  const int64_t hwm = ProcStatusBytes("VmHWM");
  return hwm < 0 ? -1 : static_cast<double>(hwm - start_rss_);
}

void ConfigureMallocForMeasurement() {
  // A fixed threshold (setting it turns off glibc's dynamic adjustment):
  // every buffer of 1 MiB or more is its own mmap and is unmapped on free.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 20);
}

void TrimMalloc() { malloc_trim(0); }

std::string UtcNow() {
  char buf[64];
  const std::time_t t = std::time(nullptr);
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S+00:00", std::gmtime(&t));
  return buf;
}

namespace {

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) {
        size_t start = line.find_first_not_of(' ', colon + 1);
        return start == std::string::npos ? "" : line.substr(start);
      }
    }
  }
  return "unknown";
}

std::string Trim(std::string s) {
  const size_t a = s.find_first_not_of(' ');
  const size_t b = s.find_last_not_of(' ');
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

}  // namespace

std::map<std::string, std::string> ContextStrings(const std::string& threads,
                                                  const std::string& suite, size_t memory_budget) {
  std::map<std::string, std::string> ctx;
  ctx["attnlab_git_commit"] = GitCommit();
  ctx["attnlab_hwy_target"] = DispatchedHighwayTarget();
  ctx["attnlab_openblas_config"] = Trim(openblas_get_config());
  ctx["attnlab_openblas_version"] = Trim(OPENBLAS_VERSION);
  const OpenBlasCore& core = UseOpenBlasCoreForThisCpu();
  ctx["attnlab_openblas_core"] = core.name;
  ctx["attnlab_openblas_core_detected"] = core.detected.empty() ? "-" : core.detected;
  ctx["attnlab_openblas_core_chosen_by"] = core.chosen_by;
  ctx["attnlab_threads"] = threads;
#if defined(__clang__)
  ctx["attnlab_compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  ctx["attnlab_compiler"] = std::string("gcc ") + __VERSION__;
#else
  ctx["attnlab_compiler"] = __VERSION__;
#endif
  ctx["attnlab_build_type"] = ATTNLAB_BUILD_TYPE;
  ctx["attnlab_suite"] = suite;
  ctx["attnlab_memory_budget_bytes"] = std::to_string(memory_budget);
  ctx["attnlab_cpu_model"] = CpuModel();
  return ctx;
}

}  // namespace attn::bench
