// Element types of attention tensors, and the scalar conversions every layer
// shares (the reference, the test data, the CLI's .npy files).
//
//   kF32   IEEE binary32.
//   kBF16  bfloat16: the top 16 bits of a binary32 (8-bit exponent, 7-bit
//          fraction), stored as uint16_t. Unit roundoff 2^-8.
//   kF16   IEEE binary16 (5-bit exponent, 10-bit fraction), stored as
//          uint16_t. Unit roundoff 2^-11; largest finite 65504.
//   kI8    int8 with a scale (K and V only): element x = scale·q, q in
//          [-127, 127], one fp32 scale per (batch, kv head, position), i.e.
//          per row of d values (Problem::k_scales / v_scales). Symmetric,
//          per-token-and-head like vLLM's and xFasterTransformer's int8 KV
//          caches; QuantizeRow below makes one (scale = max|x| / 127).
//
// Conversions to a narrower type round to nearest, ties to even (as
// hardware does); NaN stays NaN; fp16 overflows to ±inf past 65504 (and
// 65520 rounds up to inf).
#ifndef ATTNLAB_KERNELS_DTYPE_H_
#define ATTNLAB_KERNELS_DTYPE_H_

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace attn {

enum class DType : uint8_t { kF32, kBF16, kF16, kI8 };
inline constexpr int kNumDTypes = 4;

// "f32", "bf16", "f16", "i8".
inline constexpr const char* DTypeName(DType dtype) {
  return dtype == DType::kF32    ? "f32"
         : dtype == DType::kBF16 ? "bf16"
         : dtype == DType::kF16  ? "f16"
                                 : "i8";
}
// Sets of DTypes as bitmasks: what a variant takes for each tensor.
inline constexpr uint8_t DTypeMask(DType dtype) { return uint8_t(1u << static_cast<int>(dtype)); }
inline constexpr uint8_t kF32Only = DTypeMask(DType::kF32);
inline constexpr uint8_t kFloatDTypes =
    DTypeMask(DType::kF32) | DTypeMask(DType::kBF16) | DTypeMask(DType::kF16);
inline constexpr uint8_t kAllDTypes = kFloatDTypes | DTypeMask(DType::kI8);

// Bytes per element: 4, 2, 2, 1.
inline constexpr size_t DTypeBytes(DType dtype) {
  return dtype == DType::kF32 ? 4 : dtype == DType::kI8 ? 1 : 2;
}
// Unit roundoff of the type (2^-24, 2^-8, 2^-11; int8 rows: 2^-8, half a
// step of 1/127 relative to the row's largest element, rounded up).
inline constexpr double DTypeUnitRoundoff(DType dtype) {
  return dtype == DType::kF32    ? 1.0 / (1 << 24)
         : dtype == DType::kBF16 ? 1.0 / (1 << 8)
         : dtype == DType::kF16  ? 1.0 / (1 << 11)
                                 : 1.0 / 254;
}

inline float F32FromBF16Bits(uint16_t bits) {
  const uint32_t u = uint32_t{bits} << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t BF16BitsFromF32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);  // quiet NaN
  u += 0x7FFF + ((u >> 16) & 1);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

inline float F32FromF16Bits(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1F;
  const uint32_t frac = h & 0x3FF;
  uint32_t u;
  if (exp == 0x1F) {
    u = sign | 0x7F800000u | (frac << 13);  // inf, NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (frac << 13);  // normal: bias 15 -> 127
  } else if (frac == 0) {
    u = sign;  // ±0
  } else {     // subnormal: frac·2^-24, exact in binary32
    float f = std::ldexp(float(frac), -24);
    std::memcpy(&u, &f, 4);
    u |= sign;
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t F16BitsFromF32(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7E00);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7C00);  // rounds to inf
  if (a < 6.103515625e-05f) {  // below the smallest normal 2^-14: multiples of 2^-24
    const float q = std::nearbyint(a * 16777216.0f);  // ties to even (default mode)
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(q));
  }
  uint32_t m;
  std::memcpy(&m, &a, 4);
  m += 0xFFF + ((m >> 13) & 1);  // round the 23-bit fraction to 10, ties to even
  const uint32_t exp = (m >> 23) - 112;
  return static_cast<uint16_t>(sign | (exp << 10) | ((m >> 13) & 0x3FF));
}

// One element of `dtype` at `p` as float (kI8: times `scale`).
inline float LoadElement(DType dtype, const void* p, float scale = 1.0f) {
  switch (dtype) {
    case DType::kF32:
      return *static_cast<const float*>(p);
    case DType::kBF16:
      return F32FromBF16Bits(*static_cast<const uint16_t*>(p));
    case DType::kF16:
      return F32FromF16Bits(*static_cast<const uint16_t*>(p));
    case DType::kI8:
      return scale * float(*static_cast<const int8_t*>(p));
  }
  return 0.0f;
}

// Stores x as one element of `dtype` (a float type) at `p`.
inline void StoreElement(DType dtype, float x, void* p) {
  switch (dtype) {
    case DType::kF32:
      *static_cast<float*>(p) = x;
      return;
    case DType::kBF16:
      *static_cast<uint16_t*>(p) = BF16BitsFromF32(x);
      return;
    case DType::kF16:
      *static_cast<uint16_t*>(p) = F16BitsFromF32(x);
      return;
    case DType::kI8:
      return;  // int8 is an input type only (QuantizeRow makes it)
  }
}

// Stores n floats as a row of `dtype` (a float type) at `out`: StoreElement
// with the type chosen once per row, so the loops vectorize.
inline void StoreRow(DType dtype, const float* x, int64_t n, void* out) {
  switch (dtype) {
    case DType::kF32:
      std::memcpy(out, x, sizeof(float) * static_cast<size_t>(n));
      return;
    case DType::kBF16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(out)[i] = BF16BitsFromF32(x[i]);
      return;
    case DType::kF16:
      for (int64_t i = 0; i < n; ++i) static_cast<uint16_t*>(out)[i] = F16BitsFromF32(x[i]);
      return;
    case DType::kI8:
      return;
  }
}

// Quantizes n floats to int8 with one scale (max|x| / 127; 1 for a zero or
// non-finite row: a NaN or inf cannot be quantized and becomes 0 — keep such
// rows in a float type). Returns the scale.
inline float QuantizeRow(const float* x, int64_t n, int8_t* q) {
  float max = 0.0f;
  for (int64_t i = 0; i < n; ++i) max = std::fmax(max, std::fabs(x[i]));
  const float scale = (max > 0.0f && std::isfinite(max)) ? max / 127.0f : 1.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float r = std::isfinite(x[i]) ? std::nearbyint(x[i] / scale) : 0.0f;
    q[i] = static_cast<int8_t>(std::fmax(-127.0f, std::fmin(127.0f, r)));
  }
  return scale;
}

}  // namespace attn

#endif  // ATTNLAB_KERNELS_DTYPE_H_
