// .npy files: the NumPy array format (numpy.lib.format), read and written.
//
// Reads header versions 1.0, 2.0 and 3.0 (version 3 only changes the header
// encoding to UTF-8; attnlab's fields are ASCII either way), C order,
// little-endian '<f4', '<f2' (float16) and '<f8' for floating arrays, '<i4'
// and '<i8' for integer arrays. A floating array is read either as float32
// values (FloatArray, for masks and scales: '<f2' widened exactly, '<f8'
// rounded to nearest) or, for Q, K and V, in the element type the file holds
// (TypedArray: '<f4' as f32, '<f8' rounded to f32, '<f2' as f16 bits, and
// two types NumPy can store but not compute with: '<u2' as bfloat16 bits —
// NumPy has no bfloat16, and uint16 is how its bits travel — and '|i1' as
// int8, whose row scales come in a file of their own). Anything else is
// refused with a Status that names the file and what was found: bad magic,
// unknown version, an absurd or truncated header, a header that is not the
// expected dict, fortran_order True, another dtype ('>f4', '<i2', '|u1',
// structured...), a shape whose element count overflows, or data shorter (or
// longer) than the shape says. Every size is checked against the file's size
// before anything is allocated, so a malformed file can neither crash the
// reader nor make it allocate more than the file holds.
//
// Writes version 1.0 (2.0 when the header would not fit in 64 KiB),
// '<f4', '<f2', '<u2' (bfloat16 bits), '|i1' or '<i4', C order, header padded to a multiple of 64
// bytes, and writes atomically (WriteFileAtomically): a failed write leaves the previous file as it
// was.
//
// This lives with the command-line tool (library attnlab_npy), not in
// libattnlab: the kernels take pointers and strides, and file formats are a
// front-end concern. Tests and the fuzz harness link attnlab_npy.
#ifndef ATTNLAB_CLI_NPY_H_
#define ATTNLAB_CLI_NPY_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/dtype.h"
#include "kernels/status.h"

namespace attn::npy {

// Headers longer than this are refused as absurd (NumPy itself refuses
// headers over 10000 bytes unless told otherwise).
inline constexpr uint64_t kMaxHeaderBytes = 1 << 20;

// What a header says.
struct Header {
  int major = 1;
  int minor = 0;
  std::string descr;  // as found, e.g. "<f4"
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t elements = 1;    // product of shape (checked for overflow)
  size_t data_offset = 0;  // bytes before the data
  size_t item_size = 0;    // bytes per element
};

struct FloatArray {
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order
  std::string descr;        // dtype found in the file, "<f4", "<f2" or "<f8"
};

// Q, K or V in the element type its file holds (kernels/dtype.h): '<f4' as
// f32, '<f8' rounded to f32, '<f2' as f16 and '<u2' as bf16 (the 16-bit
// patterns as stored), '|i1' as int8 (the scales are another file's).
struct TypedArray {
  std::vector<int64_t> shape;
  std::string descr;          // dtype found in the file
  DType dtype = DType::kF32;  // which one vector below holds the data, C order:
  std::vector<float> f32;     // kF32
  std::vector<uint16_t> u16;  // kF16, kBF16: the bits
  std::vector<int8_t> i8;     // kI8
};

struct IntArray {
  std::vector<int64_t> shape;
  std::vector<int64_t> data;  // C order
  std::string descr;          // "<i4" or "<i8"
};

// Parses the header at the start of `bytes` (which may be only a prefix of
// the file) and checks it against `file_size`. `what` names the file in
// error messages.
StatusOr<Header> ParseHeader(std::string_view bytes, uint64_t file_size, std::string_view what);

// From memory (the whole file's bytes).
StatusOr<FloatArray> ParseFloat(std::string_view bytes, std::string_view what = "buffer");
StatusOr<TypedArray> ParseTyped(std::string_view bytes, std::string_view what = "buffer");
StatusOr<IntArray> ParseInt(std::string_view bytes, std::string_view what = "buffer");

// From a file.
StatusOr<FloatArray> ReadFloat(const std::string& path);
StatusOr<TypedArray> ReadTyped(const std::string& path);
StatusOr<IntArray> ReadInt(const std::string& path);

// The bytes of a .npy file holding `data` with `shape`: '<f4'; '<f2' from
// binary16 bits; '<u2' from bfloat16 bits; '|i1'; '<i4'.
std::string SerializeFloat(std::span<const int64_t> shape, std::span<const float> data);
std::string SerializeFloat16(std::span<const int64_t> shape, std::span<const uint16_t> bits);
std::string SerializeBFloat16(std::span<const int64_t> shape, std::span<const uint16_t> bits);
std::string SerializeInt8(std::span<const int64_t> shape, std::span<const int8_t> data);
std::string SerializeInt32(std::span<const int64_t> shape, std::span<const int32_t> data);

// Writes `bytes` to `path` through a uniquely named temporary file in the
// same directory, renamed over `path` once every byte is written and closed
// (fwrite, fflush and fclose checked; no fsync). On any failure the temporary
// file is removed and `path` is left as it was. A symlink at `path` is
// replaced, not followed: resolve it first to write through it. Errors are
// I/O errors (the Status code says InvalidArgument, the library's only code
// for bad input; callers treat any failure here as "could not write"):
// "PATH: cannot write: File too large".
Status WriteFileAtomically(const std::string& path, std::string_view bytes);
// A .npy file written with WriteFileAtomically.
Status WriteFloat(const std::string& path, std::span<const int64_t> shape,
                  std::span<const float> data);
Status WriteInt32(const std::string& path, std::span<const int64_t> shape,
                  std::span<const int32_t> data);

// "(2, 3, 4)": a shape the way NumPy prints it.
std::string ShapeString(std::span<const int64_t> shape);

}  // namespace attn::npy

#endif  // ATTNLAB_CLI_NPY_H_
