// The .npy reader on bytes made in memory: round trips, every header
// version, and random damage. Whatever the bytes, the reader returns a value
// or an InvalidArgument naming the problem: it never crashes, hangs or
// allocates more than the input holds (the asan preset runs this too).
#include "cli/npy.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

namespace attn::npy {
namespace {

std::string WithVersion(std::string bytes, int major) {
  // Re-encode a version-1.0 file as 2.0 / 3.0 (4-byte header length).
  const size_t len = static_cast<unsigned char>(bytes[8]) | static_cast<unsigned char>(bytes[9])
                                                                << 8;
  std::string out = bytes.substr(0, 6);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  return out + bytes.substr(10);
}

TEST(Npy, RoundTripFloatAndInt) {
  const std::vector<int64_t> shape = {2, 3, 4};
  std::vector<float> data(24);
  for (size_t i = 0; i < data.size(); ++i) data[i] = 0.5f * float(i) - 3.0f;
  data[5] = std::numeric_limits<float>::quiet_NaN();
  data[6] = -std::numeric_limits<float>::infinity();
  const std::string bytes = SerializeFloat(shape, data);
  EXPECT_EQ(bytes.size() % 64, data.size() * 4 % 64);  // header padded to 64
  for (int major : {1, 2, 3}) {
    StatusOr<FloatArray> a = ParseFloat(major == 1 ? bytes : WithVersion(bytes, major));
    ASSERT_TRUE(a.ok()) << major << ": " << a.status().ToString();
    EXPECT_EQ(a->shape, shape);
    EXPECT_EQ(a->descr, "<f4");
    ASSERT_EQ(a->data.size(), data.size());
    EXPECT_EQ(std::memcmp(a->data.data(), data.data(), data.size() * 4), 0);
  }
  const std::vector<int32_t> ints = {0, 7, -1};
  const std::vector<int64_t> ishape = {3};
  StatusOr<IntArray> b = ParseInt(SerializeInt32(ishape, ints));
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->data, (std::vector<int64_t>{0, 7, -1}));
  EXPECT_EQ(ShapeString(ishape), "(3,)");
  // A scalar and an empty array.
  const std::vector<int64_t> scalar = {}, empty = {0, 5};
  const float one = 1.0f;
  ASSERT_TRUE(ParseFloat(SerializeFloat(scalar, {&one, 1})).ok());
  StatusOr<FloatArray> e = ParseFloat(SerializeFloat(empty, {}));
  ASSERT_TRUE(e.ok());
  EXPECT_TRUE(e->data.empty());
}

TEST(Npy, FloatFileIsNotAnIntFile) {
  const std::vector<int64_t> shape = {2};
  const float x[2] = {1, 2};
  StatusOr<IntArray> a = ParseInt(SerializeFloat(shape, x), "lens.npy");
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(),
            "lens.npy: dtype '<f4' is not supported; want little-endian int32 '<i4' or int64 "
            "'<i8'");
}

// float16 ('<f2'): every one of the 65536 bit patterns survives a write and
// a read as f16 (TypedArray keeps the bits), and reads as float32 (FloatArray,
// e.g. a mask) widened exactly, NaN payloads included.
TEST(Npy, Float16EveryBitPatternRoundTrips) {
  std::vector<uint16_t> bits(1 << 16);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint16_t>(i);
  const std::vector<int64_t> shape = {256, 256};
  const std::string bytes = SerializeFloat16(shape, bits);
  StatusOr<Header> h = ParseHeader(bytes, bytes.size(), "f16.npy");
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->descr, "<f2");
  EXPECT_EQ(h->item_size, 2u);
  EXPECT_EQ(h->data_offset % 64, 0u);
  StatusOr<TypedArray> t = ParseTyped(bytes);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->dtype, DType::kF16);
  EXPECT_EQ(t->shape, shape);
  EXPECT_TRUE(t->f32.empty());
  EXPECT_EQ(t->u16, bits);
  StatusOr<FloatArray> f = ParseFloat(bytes);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  EXPECT_EQ(f->descr, "<f2");
  ASSERT_EQ(f->data.size(), bits.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    const float want = F32FromF16Bits(bits[i]);
    ASSERT_EQ(std::memcmp(&f->data[i], &want, 4), 0) << "bits 0x" << std::hex << i;
  }
  // From a file, as the CLI reads Q, K and V.
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("npy_test-f16-" + std::to_string(getpid()));
  ASSERT_TRUE(WriteFileAtomically(path.string(), bytes).ok());
  StatusOr<TypedArray> r = ReadTyped(path.string());
  std::filesystem::remove(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->dtype, DType::kF16);
  EXPECT_EQ(r->u16, bits);
}

// '<f4' reads as f32 as it is; '<f8' rounds to f32 (to nearest).
TEST(Npy, TypedFloat32AndFloat64AreF32) {
  const std::vector<int64_t> shape = {3};
  const float x[3] = {1.5f, -0.0f, 3e38f};
  StatusOr<TypedArray> a = ParseTyped(SerializeFloat(shape, x));
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->dtype, DType::kF32);
  EXPECT_TRUE(a->u16.empty());
  EXPECT_EQ(std::memcmp(a->f32.data(), x, sizeof(x)), 0);
  // A '<f8' file made from the '<f4' one's header and data.
  const double d[3] = {1.0 + 0x1p-30, -2.0, 1e300};
  std::string f8 = SerializeFloat(shape, x);
  const size_t at = f8.find("<f4");
  f8[at + 2] = '8';
  f8.resize(f8.size() - sizeof(x));
  f8.append(reinterpret_cast<const char*>(d), sizeof(d));
  StatusOr<TypedArray> b = ParseTyped(f8);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->dtype, DType::kF32);
  EXPECT_EQ(b->f32, (std::vector<float>{1.0f, -2.0f, std::numeric_limits<float>::infinity()}));
}

// bfloat16 as '<u2' (NumPy has no bfloat16; docs/cli.md): every bit pattern
// survives a write and a read as bf16, untouched.
TEST(Npy, BFloat16BitsEveryPatternRoundTrips) {
  std::vector<uint16_t> bits(1 << 16);
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = static_cast<uint16_t>(i);
  const std::vector<int64_t> shape = {16, 4096};
  const std::string bytes = SerializeBFloat16(shape, bits);
  StatusOr<Header> h = ParseHeader(bytes, bytes.size(), "bf16.npy");
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->descr, "<u2");
  EXPECT_EQ(h->item_size, 2u);
  StatusOr<TypedArray> t = ParseTyped(bytes);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->dtype, DType::kBF16);
  EXPECT_EQ(t->shape, shape);
  EXPECT_TRUE(t->f32.empty());
  EXPECT_EQ(t->u16, bits);
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("npy_test-bf16-" + std::to_string(getpid()));
  ASSERT_TRUE(WriteFileAtomically(path.string(), bytes).ok());
  StatusOr<TypedArray> r = ReadTyped(path.string());
  std::filesystem::remove(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->dtype, DType::kBF16);
  EXPECT_EQ(r->u16, bits);
}

// int8 as '|i1': all 256 values, from memory and from a file.
TEST(Npy, Int8EveryValueRoundTrips) {
  std::vector<int8_t> values(256);
  for (int i = 0; i < 256; ++i) values[i] = static_cast<int8_t>(i - 128);
  const std::vector<int64_t> shape = {2, 4, 32};
  const std::string bytes = SerializeInt8(shape, values);
  StatusOr<Header> h = ParseHeader(bytes, bytes.size(), "i8.npy");
  ASSERT_TRUE(h.ok()) << h.status().ToString();
  EXPECT_EQ(h->descr, "|i1");
  EXPECT_EQ(h->item_size, 1u);
  EXPECT_EQ(h->data_offset % 64, 0u);
  StatusOr<TypedArray> t = ParseTyped(bytes);
  ASSERT_TRUE(t.ok()) << t.status().ToString();
  EXPECT_EQ(t->dtype, DType::kI8);
  EXPECT_EQ(t->shape, shape);
  EXPECT_TRUE(t->f32.empty() && t->u16.empty());
  EXPECT_EQ(t->i8, values);
  const std::filesystem::path path =
      std::filesystem::temp_directory_path() / ("npy_test-i8-" + std::to_string(getpid()));
  ASSERT_TRUE(WriteFileAtomically(path.string(), bytes).ok());
  StatusOr<TypedArray> r = ReadTyped(path.string());
  std::filesystem::remove(path);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->i8, values);
}

// '<u2' and '|i1' are element types of Q, K and V only: as float values (a
// mask, row scales) or as integers (key lengths) they are refused, and so is
// what np.save writes for an ml_dtypes bfloat16 array ('|V2'), with a hint.
TEST(Npy, TensorOnlyDTypesAreRefusedElsewhere) {
  const std::vector<int64_t> shape = {4};
  const std::string u2 = SerializeBFloat16(shape, std::vector<uint16_t>(4));
  const std::string i1 = SerializeInt8(shape, std::vector<int8_t>(4));
  const std::string float_want =
      "; want little-endian float32 '<f4', float16 '<f2' or float64 '<f8' (e.g. "
      "arr.astype('<f4'))";
  StatusOr<FloatArray> a = ParseFloat(u2, "m.npy");
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(), "m.npy: dtype '<u2' is not supported" + float_want);
  a = ParseFloat(i1, "s.npy");
  ASSERT_FALSE(a.ok());
  EXPECT_EQ(a.status().message(), "s.npy: dtype '|i1' is not supported" + float_want);
  StatusOr<IntArray> b = ParseInt(i1, "l.npy");
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().message(),
            "l.npy: dtype '|i1' is not supported; want little-endian int32 '<i4' or int64 '<i8'");
  const std::string tensor_want =
      "; want little-endian float32 '<f4', float16 '<f2', float64 '<f8', bfloat16 bits '<u2' "
      "or int8 '|i1'";
  std::string v2 = u2;
  v2.replace(v2.find("'<u2'"), 5, "'|V2'");
  StatusOr<TypedArray> c = ParseTyped(v2, "q.npy");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(), "q.npy: dtype '|V2' is not supported" + tensor_want +
                                      " (bfloat16? save its bits as uint16: arr.view('<u2'))");
  std::string be = u2;
  be.replace(be.find("'<u2'"), 5, "'>u2'");
  c = ParseTyped(be, "k.npy");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(),
            "k.npy: dtype '>u2' is big-endian" + tensor_want + " (e.g. arr.astype('<u2'))");
  std::string u1 = i1;
  u1.replace(u1.find("'|i1'"), 5, "'|u1'");
  c = ParseTyped(u1, "v.npy");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().message(),
            "v.npy: dtype '|u1' is not supported" + tensor_want + " (e.g. arr.astype('<f4'))");
}

// Every prefix of a valid file is refused (a truncated file), never read.
TEST(Npy, EveryTruncationIsRefused) {
  const std::vector<int64_t> shape = {3, 5};
  std::vector<float> data(15, 1.0f);
  const std::string bytes = SerializeFloat(shape, data);
  for (size_t n = 0; n < bytes.size(); ++n) {
    StatusOr<FloatArray> a = ParseFloat(std::string_view(bytes).substr(0, n));
    ASSERT_FALSE(a.ok()) << n;
    EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(a.status().message().find("buffer: "), std::string::npos) << a.status().message();
  }
  for (const std::string& typed : {SerializeFloat16(shape, std::vector<uint16_t>(15, 0x3C00)),
                                   SerializeBFloat16(shape, std::vector<uint16_t>(15, 0x3F80)),
                                   SerializeInt8(shape, std::vector<int8_t>(15, -7))}) {
    ASSERT_TRUE(ParseTyped(typed).ok());
    for (size_t n = 0; n < typed.size(); ++n) {
      StatusOr<TypedArray> a = ParseTyped(std::string_view(typed).substr(0, n));
      ASSERT_FALSE(a.ok()) << n;
      EXPECT_EQ(a.status().code(), StatusCode::kInvalidArgument);
    }
  }
}

// Random damage to the header: each result is a value whose size matches the
// bytes it came from, or an error. Seeded; the seed is in the failure message.
TEST(Npy, RandomHeaderDamageNeverCrashes) {
  const std::vector<int64_t> shape = {2, 3, 4};
  std::vector<float> data(24, 2.0f);
  const std::string good = SerializeFloat(shape, data);
  const uint64_t seed = 12345;
  std::mt19937_64 rng(seed);
  const char alphabet[] = "0123456789(),: '<>fi48TrueFals{}[]\"\n\x93NUMPY\xff\x00";
  int accepted = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string bytes = good;
    const int edits = 1 + int(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % 80;  // magic, version, length, header text
      bytes[pos] = alphabet[rng() % (sizeof(alphabet) - 1)];
    }
    if (rng() % 4 == 0) bytes.resize(rng() % bytes.size());
    StatusOr<FloatArray> a = ParseFloat(bytes);
    if (a.ok()) {
      ++accepted;
      int64_t n = 1;
      for (int64_t d : a->shape) n *= d;
      ASSERT_EQ(int64_t(a->data.size()), n) << "seed " << seed << " iter " << iter;
      ASSERT_LE(a->data.size() * 4, bytes.size()) << "seed " << seed << " iter " << iter;
    } else {
      ASSERT_EQ(a.status().code(), StatusCode::kInvalidArgument);
      ASSERT_FALSE(a.status().message().empty());
    }
  }
  // Harmless edits (padding spaces) keep some files valid; most are refused.
  EXPECT_LT(accepted, 20000);
}

std::string ReadAll(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

// Every name in `dir`, to find temporary files left behind.
std::vector<std::string> Names(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    names.push_back(e.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A write cut short (RLIMIT_FSIZE, as `ulimit -f`; a full disk fails the
// same way) is reported, and the previous file is left as it was, with no
// temporary file beside it. Writing in place used to truncate it.
TEST(Npy, FailedWriteLeavesThePreviousFile) {
  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("npy_test-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string path = (dir / "o.npy").string();
  const std::vector<int64_t> shape = {1000};
  const std::vector<float> data(1000, 1.0f);
  ASSERT_TRUE(WriteFloat(path, shape, data).ok());
  const std::string before = ReadAll(path);

  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit small = old;
  small.rlim_cur = 1000;  // bytes; the file is 4128
  // Ignored, SIGXFSZ no longer kills: write() fails with EFBIG instead.
  void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
  const std::vector<float> other(1000, 2.0f);
  const Status s = WriteFloat(path, shape, other);
  setrlimit(RLIMIT_FSIZE, &old);
  signal(SIGXFSZ, old_handler);

  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message(), path + ": cannot write: " + std::strerror(EFBIG));
  EXPECT_TRUE(ReadAll(path) == before) << "the previous file was changed";
  EXPECT_EQ(Names(dir), std::vector<std::string>{"o.npy"});
  // A missing directory: the reason, nothing created.
  const Status missing = WriteFloat((dir / "no" / "o.npy").string(), shape, data);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("cannot write"), std::string::npos) << missing.message();
  EXPECT_NE(missing.message().find(std::strerror(ENOENT)), std::string::npos) << missing.message();
  // A successful write replaces the file.
  ASSERT_TRUE(WriteFloat(path, shape, other).ok());
  StatusOr<FloatArray> back = ReadFloat(path);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(back->data, other);
  EXPECT_EQ(Names(dir), std::vector<std::string>{"o.npy"});
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace attn::npy
