#include "kernels/tuning.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kernels/internal/flash_plan.h"
#include "kernels/registry.h"

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

namespace attn {
namespace {

using nlohmann::json;

std::string Trim(std::string s) {
  const size_t b = s.find_first_not_of(" \t\n");
  const size_t e = s.find_last_not_of(" \t\n");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

// A field of `j` of JSON type `type`, or an error naming it.
Status Field(const json& j, const char* key, json::value_t type, const char* type_name,
             std::string_view where, const json** out) {
  const auto it = j.find(key);
  if (it == j.end()) return InvalidArgument(std::string(where) + key + " is missing");
  const bool ok = it->type() == type || (type == json::value_t::number_integer &&
                                         it->type() == json::value_t::number_unsigned);
  if (!ok) {
    return InvalidArgument(std::string(where) + key + " must be " + type_name + ", not " +
                           it->dump());
  }
  *out = &*it;
  return Status::Ok();
}

Status ParseAutoPoint(const json& j, size_t index, AutoPoint* point) {
  const std::string where = "auto.points[" + std::to_string(index) + "].";
  if (!j.is_object()) return InvalidArgument(where + " must be an object");
  const json* f;
  ATTN_RETURN_IF_ERROR(
      Field(j, "head_dim", json::value_t::number_integer, "an integer", where, &f));
  point->head_dim = f->get<int64_t>();
  ATTN_RETURN_IF_ERROR(Field(j, "causal", json::value_t::boolean, "true or false", where, &f));
  point->causal = f->get<bool>();
  ATTN_RETURN_IF_ERROR(Field(j, "threads", json::value_t::number_integer, "an integer", where, &f));
  point->threads = f->get<int>();
  ATTN_RETURN_IF_ERROR(Field(j, "n", json::value_t::number_integer, "an integer", where, &f));
  point->n = f->get<int64_t>();
  ATTN_RETURN_IF_ERROR(Field(j, "variant", json::value_t::string, "a string", where, &f));
  point->variant = f->get<std::string>();
  if (point->head_dim < 1 || point->threads < 1 || point->threads > kMaxThreads || point->n < 1) {
    return InvalidArgument(where + " head_dim, n and threads must be positive (threads <= " +
                           std::to_string(kMaxThreads) + "): " + j.dump());
  }
  const Variant* v = FindVariant(point->variant);
  if (v == nullptr || point->variant == "auto") {
    return InvalidArgument(where + "variant '" + point->variant +
                           "' is not a variant auto can run; known: " + VariantNames());
  }
  return Status::Ok();
}

const Tuning* g_override = nullptr;

}  // namespace

std::pair<int, int> CpuFamilyModel() {
  int family = 0, model = 0;
#if defined(__x86_64__) || defined(__i386__)
  unsigned eax, ebx, ecx, edx;
  if (__get_cpuid(1, &eax, &ebx, &ecx, &edx)) {
    family = int((eax >> 8) & 0xf);
    model = int((eax >> 4) & 0xf);
    if (family == 0xf) family += int((eax >> 20) & 0xff);
    if (family == 0x6 || family >= 0xf) model += int((eax >> 16) & 0xf) << 4;
  }
#endif
  return {family, model};
}

bool IsZen4(int family, int model) {
  // Family 19h: Zen 3 at models 00-0F, 20-2F, 40-5F; Zen 4 at 10-1F (Genoa),
  // 60-7F (Raphael, Phoenix), A0-AF (Bergamo, Siena).
  return family == 0x19 && ((model >= 0x10 && model <= 0x1f) || (model >= 0x60 && model <= 0x7f) ||
                            (model >= 0xa0 && model <= 0xaf));
}

bool IsEmeraldRapids(int family, int model) { return family == 6 && model == 0xcf; }

bool VdpBf16psAtHalfFmaRate(int family, int model) {
  return family == 6 && (model == 0x8f || model == 0xa7 || model == 0xcf);
}

bool CpuIsZen4() {
  const auto [family, model] = CpuFamilyModel();
  return IsZen4(family, model);
}

std::string CpuModel() {
#if defined(__x86_64__) || defined(__i386__)
  unsigned regs[12] = {};
  unsigned eax, ebx, ecx, edx;
  std::string brand;
  if (__get_cpuid(0x80000000u, &eax, &ebx, &ecx, &edx) && eax >= 0x80000004u) {
    for (unsigned leaf = 0; leaf < 3; ++leaf) {
      __get_cpuid(0x80000002u + leaf, &regs[4 * leaf], &regs[4 * leaf + 1], &regs[4 * leaf + 2],
                  &regs[4 * leaf + 3]);
    }
    brand.assign(reinterpret_cast<const char*>(regs), sizeof(regs));
    brand = Trim(brand.substr(0, brand.find('\0')));
  }
  const auto [family, model] = CpuFamilyModel();
  return (brand.empty() ? "unknown x86" : brand) + " (family " + std::to_string(family) +
         ", model " + std::to_string(model) + ")";
#else
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0 || line.rfind("Model", 0) == 0) {
      return Trim(line.substr(line.find(':') + 1));
    }
  }
  return "unknown";
#endif
}

int64_t L3CacheBytes() {
  static const int64_t bytes = [] {
    for (int index = 0; index < 8; ++index) {
      const std::string dir =
          "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
      std::ifstream level(dir + "level"), size(dir + "size");
      int l = 0;
      std::string text;
      if (!(level >> l) || !(size >> text) || l != 3) continue;
      // "32768K" (the kernel writes KiB with a K suffix).
      const int64_t kib = std::atoll(text.c_str());
      if (kib > 0) return kib * 1024;
    }
    return int64_t{0};
  }();
  return bytes;
}

int64_t DefaultMhaDecodePrefetchBytes() { return CpuIsZen4() ? 0 : kDefaultDecodePrefetchBytes; }

bool DefaultTilePrefetch() {
  const auto [family, model] = CpuFamilyModel();
  return !IsEmeraldRapids(family, model);
}

bool DefaultVdpbf16ps() {
  const auto [family, model] = CpuFamilyModel();
  return !VdpBf16psAtHalfFmaRate(family, model);
}

int64_t DefaultDecodePrefetchMinKvBytes() {
  const int64_t l3 = L3CacheBytes();
  return l3 > 0 ? std::min(l3 / 2, kMaxDefaultDecodePrefetchMinKvBytes) : int64_t{16} << 20;
}

Tuning DefaultTuning(std::string why) {
  Tuning t;
  t.cpu = CpuModel();
  t.target = DispatchedHighwayTarget();
  t.flash_mha_decode_prefetch_bytes = DefaultMhaDecodePrefetchBytes();
  t.flash_tile_prefetch = DefaultTilePrefetch();
  t.flash_vdpbf16ps = DefaultVdpbf16ps();
  t.source = "built-in defaults (" + why + ")";
  return t;
}

namespace {

// flash.<name>, when the file has it, into *out: an integer in [0, max].
Status OptionalBytes(const json& flash, const char* name, int64_t max, int64_t* out) {
  if (!flash.contains(name)) return Status();
  const json* f;
  ATTN_RETURN_IF_ERROR(
      Field(flash, name, json::value_t::number_integer, "an integer", "tuning: flash.", &f));
  *out = f->get<int64_t>();
  if (*out < 0 || *out > max) {
    return InvalidArgument("tuning: flash." + std::string(name) + "=" + std::to_string(*out) +
                           " must be in [0, " + std::to_string(max) + "]");
  }
  return Status();
}

// flash.<name>, when the file has it, into *out: true or false.
Status OptionalBool(const json& flash, const char* name, bool* out) {
  if (!flash.contains(name)) return Status();
  const json* f;
  ATTN_RETURN_IF_ERROR(
      Field(flash, name, json::value_t::boolean, "true or false", "tuning: flash.", &f));
  *out = f->get<bool>();
  return Status();
}

}  // namespace

StatusOr<Tuning> ParseTuning(std::string_view text) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument("tuning: not valid JSON");
  if (!j.is_object()) return InvalidArgument("tuning: want a JSON object, got " + j.dump());
  Tuning t;
  const json* f;
  ATTN_RETURN_IF_ERROR(
      Field(j, "format", json::value_t::number_integer, "an integer", "tuning: ", &f));
  t.format = f->get<int>();
  ATTN_RETURN_IF_ERROR(Field(j, "cpu", json::value_t::string, "a string", "tuning: ", &f));
  t.cpu = f->get<std::string>();
  ATTN_RETURN_IF_ERROR(Field(j, "target", json::value_t::string, "a string", "tuning: ", &f));
  t.target = f->get<std::string>();
  const json* flash;
  ATTN_RETURN_IF_ERROR(Field(j, "flash", json::value_t::object, "an object", "tuning: ", &flash));
  ATTN_RETURN_IF_ERROR(
      Field(*flash, "key_tile", json::value_t::number_integer, "an integer", "tuning: flash.", &f));
  t.flash_key_tile = f->get<int64_t>();
  if (t.flash_key_tile < flash::kPad || t.flash_key_tile > flash::kMaxBc ||
      t.flash_key_tile % flash::kPad != 0) {
    return InvalidArgument("tuning: flash.key_tile=" + std::to_string(t.flash_key_tile) +
                           " must be a multiple of " + std::to_string(flash::kPad) + " in [" +
                           std::to_string(flash::kPad) + ", " + std::to_string(flash::kMaxBc) +
                           "]");
  }
  // Optional: files written before they existed take the defaults.
  ATTN_RETURN_IF_ERROR(OptionalBytes(*flash, "decode_prefetch_bytes", kMaxDecodePrefetchBytes,
                                     &t.flash_decode_prefetch_bytes));
  ATTN_RETURN_IF_ERROR(OptionalBytes(*flash, "mha_decode_prefetch_bytes", kMaxDecodePrefetchBytes,
                                     &t.flash_mha_decode_prefetch_bytes));
  ATTN_RETURN_IF_ERROR(OptionalBytes(*flash, "paged_prefetch_bytes", kMaxDecodePrefetchBytes,
                                     &t.flash_paged_prefetch_bytes));
  ATTN_RETURN_IF_ERROR(OptionalBytes(*flash, "decode_prefetch_min_kv_bytes",
                                     kMaxDecodePrefetchMinKvBytes,
                                     &t.flash_decode_prefetch_min_kv_bytes));
  ATTN_RETURN_IF_ERROR(OptionalBool(*flash, "tile_prefetch", &t.flash_tile_prefetch));
  ATTN_RETURN_IF_ERROR(OptionalBool(*flash, "vdpbf16ps", &t.flash_vdpbf16ps));
  const json* autos;
  ATTN_RETURN_IF_ERROR(Field(j, "auto", json::value_t::object, "an object", "tuning: ", &autos));
  const json* points;
  ATTN_RETURN_IF_ERROR(
      Field(*autos, "points", json::value_t::array, "an array", "tuning: auto.", &points));
  for (size_t i = 0; i < points->size(); ++i) {
    AutoPoint p;
    ATTN_RETURN_IF_ERROR(ParseAutoPoint((*points)[i], i, &p));
    t.auto_points.push_back(std::move(p));
  }
  return t;
}

std::string SerializeTuning(const Tuning& t) {
  nlohmann::ordered_json points = nlohmann::ordered_json::array();
  for (const AutoPoint& p : t.auto_points) {
    points.push_back({{"head_dim", p.head_dim},
                      {"causal", p.causal},
                      {"threads", p.threads},
                      {"n", p.n},
                      {"variant", p.variant}});
  }
  const nlohmann::ordered_json j = {
      {"format", t.format},
      {"cpu", t.cpu},
      {"target", t.target},
      {"flash",
       {{"key_tile", t.flash_key_tile},
        {"decode_prefetch_bytes", t.flash_decode_prefetch_bytes},
        {"mha_decode_prefetch_bytes", t.flash_mha_decode_prefetch_bytes},
        {"paged_prefetch_bytes", t.flash_paged_prefetch_bytes},
        {"decode_prefetch_min_kv_bytes", t.flash_decode_prefetch_min_kv_bytes},
        {"tile_prefetch", t.flash_tile_prefetch},
        {"vdpbf16ps", t.flash_vdpbf16ps}}},
      {"auto", {{"points", points}}}};
  return j.dump(2) + "\n";
}

StatusOr<Tuning> LoadTuningFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return NotFound("tuning file " + path + " does not exist or cannot be read");
  std::ostringstream text;
  text << in.rdbuf();
  StatusOr<Tuning> t = ParseTuning(text.str());
  if (!t.ok()) return InvalidArgument(path + ": " + t.status().message());
  t.value().source = path;
  return t;
}

std::string Stale(const Tuning& t) {
  if (t.format != kTuningFormat) {
    return "format " + std::to_string(t.format) + ", this attnlab reads format " +
           std::to_string(kTuningFormat);
  }
  if (const std::string cpu = CpuModel(); t.cpu != cpu) {
    return "made on CPU '" + t.cpu + "', this is '" + cpu + "'";
  }
  if (const std::string target = DispatchedHighwayTarget(); t.target != target) {
    return "made for Highway target " + t.target + ", this process dispatches " + target;
  }
  return "";
}

std::string TuningPath() {
  if (const char* env = std::getenv("ATTNLAB_TUNING")) {
    const std::string_view v(env);
    return v == "none" ? "" : std::string(v);
  }
  if (const char* xdg = std::getenv("XDG_CONFIG_HOME"); xdg != nullptr && *xdg != '\0') {
    return std::string(xdg) + "/attnlab/tuning.json";
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home != '\0') {
    return std::string(home) + "/.config/attnlab/tuning.json";
  }
  return "";
}

namespace {

Tuning LoadActiveTuning() {
  const std::string path = TuningPath();
  if (path.empty()) return DefaultTuning("no tuning file: ATTNLAB_TUNING=none");
  StatusOr<Tuning> t = LoadTuningFile(path);
  if (!t.ok() && t.status().code() == StatusCode::kNotFound) {
    return DefaultTuning("no tuning file at " + path);
  }
  std::string why = t.ok() ? Stale(*t) : t.status().message();
  if (why.rfind(path + ": ", 0) == 0) why.erase(0, path.size() + 2);  // named once below
  if (why.empty()) return t.value();
  std::fprintf(stderr,
               "attnlab: ignoring tuning file %s: %s; using built-in defaults (rerun `attnlab "
               "tune` on this machine)\n",
               path.c_str(), why.c_str());
  return DefaultTuning("ignored " + path + ": " + why);
}

}  // namespace

const Tuning& ActiveTuning() {
  if (g_override != nullptr) return *g_override;
  static const Tuning loaded = LoadActiveTuning();
  return loaded;
}

ScopedTuning::ScopedTuning(Tuning tuning) : tuning_(std::move(tuning)), previous_(g_override) {
  g_override = &tuning_;
}

ScopedTuning::~ScopedTuning() { g_override = previous_; }

}  // namespace attn
