// ToF32Row: one row of a reduced-precision K or V (bf16, f16, or int8 times
// the row's scale) as fp32, for the variants that read such tensors through
// an fp32 tile (flash converts each K/V tile into its scratch once per row
// block; the conversion is exact, so the fp32 kernels see exactly the stored
// values and only their own rounding is added).
//
// Contract: dst[c] = LoadElement(dtype, src + c·bytes, scale) for c < n
// (kernels/dtype.h), bit for bit, NaN and ±inf included; nothing past
// dst[n - 1] is written and nothing past the row is read. src needs only its
// element's alignment; dst any.
//
// Per target: bf16 widens its 16 bits into the top of a float (exact on every
// target); f16 uses the hardware conversion (VCVTPH2PS, F16C) on AVX2 and
// AVX-512 and the scalar one elsewhere (Highway 1.0.3's emulation on
// SSE4/scalar turns f16 inf/NaN into finite numbers); int8 widens to int32,
// converts (exact) and multiplies by the scale (one rounding, as
// LoadElement). Tails go element by element. One pass, n loads and n stores:
// memory-bound, a few cycles per vector.
#if defined(ATTNLAB_KERNELS_UKERNELS_CONVERT_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef ATTNLAB_KERNELS_UKERNELS_CONVERT_INL_H_
#undef ATTNLAB_KERNELS_UKERNELS_CONVERT_INL_H_
#else
#define ATTNLAB_KERNELS_UKERNELS_CONVERT_INL_H_
#endif

#include <cstdint>
#include <type_traits>

#include "hwy/highway.h"
#include "kernels/dtype.h"
#include "kernels/ukernels/common-inl.h"

HWY_BEFORE_NAMESPACE();
namespace attn {
namespace HWY_NAMESPACE {

// Whether this target converts f16 in hardware (see the file comment).
inline constexpr bool kHardwareF16 = HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX2;

HWY_INLINE void ToF32Row(DType dtype, const void* HWY_RESTRICT src, int64_t n, float scale,
                         float* HWY_RESTRICT dst) {
  const DF d;
  const int64_t lanes = static_cast<int64_t>(hn::Lanes(d));
  int64_t c = 0;
  switch (dtype) {
    case DType::kF32: {
      const float* s = static_cast<const float*>(src);
      for (; c + lanes <= n; c += lanes) hn::StoreU(hn::LoadU(d, s + c), d, dst + c);
      break;
    }
    case DType::kBF16: {
      const hn::Rebind<uint16_t, DF> d16;
      const hn::Rebind<uint32_t, DF> d32;
      const uint16_t* s = static_cast<const uint16_t*>(src);
      for (; c + lanes <= n; c += lanes) {
        const auto bits = hn::ShiftLeft<16>(hn::PromoteTo(d32, hn::LoadU(d16, s + c)));
        hn::StoreU(hn::BitCast(d, bits), d, dst + c);
      }
      break;
    }
    case DType::kF16: {
      if constexpr (kHardwareF16) {
        const hn::Rebind<hwy::float16_t, DF> dh;
        const hwy::float16_t* s = static_cast<const hwy::float16_t*>(src);
        for (; c + lanes <= n; c += lanes)
          hn::StoreU(hn::PromoteTo(d, hn::LoadU(dh, s + c)), d, dst + c);
      }
      break;
    }
    case DType::kI8: {
      const hn::Rebind<int8_t, DF> d8;
      const hn::Rebind<int32_t, DF> d32;
      const int8_t* s = static_cast<const int8_t*>(src);
      const VF vscale = hn::Set(d, scale);
      for (; c + lanes <= n; c += lanes) {
        const VF x = hn::ConvertTo(d, hn::PromoteTo(d32, hn::LoadU(d8, s + c)));
        hn::StoreU(hn::Mul(vscale, x), d, dst + c);
      }
      break;
    }
  }
  const size_t bytes = DTypeBytes(dtype);
  for (; c < n; ++c) dst[c] = LoadElement(dtype, static_cast<const char*>(src) + c * bytes, scale);
}

// One vector of elements of type T at p (any alignment) as fp32 lanes, for
// the decode kernels that read reduced K and V in place (score_rows-inl.h,
// pv_tile-inl.h): float; hwy::bfloat16_t (widened, exact);
// hwy::float16_t (exact where kHardwareF16; callers use it only there);
// int8_t (converted exactly, *unscaled*: the caller applies the row's scale
// once per key, to a score or a weight, instead of once per element).
template <class T>
HWY_INLINE VF LoadVecAsF32(const T* HWY_RESTRICT p) {
  const DF d;
  if constexpr (std::is_same_v<T, float>) {
    return hn::LoadU(d, p);
  } else if constexpr (std::is_same_v<T, hwy::bfloat16_t>) {
    const hn::Rebind<uint16_t, DF> d16;
    const hn::Rebind<uint32_t, DF> d32;
    const auto bits = hn::PromoteTo(d32, hn::LoadU(d16, reinterpret_cast<const uint16_t*>(p)));
    return hn::BitCast(d, hn::ShiftLeft<16>(bits));
  } else if constexpr (std::is_same_v<T, hwy::float16_t>) {
    return hn::PromoteTo(d, hn::LoadU(hn::Rebind<hwy::float16_t, DF>(), p));
  } else {
    static_assert(std::is_same_v<T, int8_t>, "float, bf16, f16 or int8");
    return hn::ConvertTo(
        d, hn::PromoteTo(hn::Rebind<int32_t, DF>(), hn::LoadU(hn::Rebind<int8_t, DF>(), p)));
  }
}

// NOLINTNEXTLINE(google-readability-namespace-comments)
}  // namespace HWY_NAMESPACE
}  // namespace attn
HWY_AFTER_NAMESPACE();

#endif  // ATTNLAB_KERNELS_UKERNELS_CONVERT_INL_H_
