#include "cli/npy.h"

#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <optional>
#include <type_traits>

namespace attn::npy {

static_assert(std::endian::native == std::endian::little,
              "attnlab's .npy reader copies little-endian data as is");

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;

std::string Quote(std::string_view s) {
  std::string out(1, '\'');  // (built up: gcc 12 warns falsely on "'" + s + "'")
  out.append(s);
  out.push_back('\'');
  return out;
}

Status Bad(std::string_view what, const std::string& message) {
  return InvalidArgument(std::string(what) + ": " + message);
}

// Length of magic + version + header-length field, and of the header, as
// read from the preamble. Fails on bad magic, version or header length.
struct Preamble {
  int major = 0;
  int minor = 0;
  size_t prefix = 0;  // 10 (v1) or 12 (v2, v3)
  uint64_t header_len = 0;
};

StatusOr<Preamble> ReadPreamble(std::string_view bytes, uint64_t file_size, std::string_view what) {
  if (file_size < kMagicLen + 2 || bytes.size() < kMagicLen + 2) {
    return Bad(what, "truncated: " + std::to_string(file_size) +
                         " bytes, too short to be a .npy file (no magic string and version)");
  }
  if (bytes.substr(0, kMagicLen) != std::string_view(kMagic, kMagicLen)) {
    std::string found;
    for (size_t i = 0; i < kMagicLen; ++i) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "%02x", static_cast<unsigned char>(bytes[i]));
      found += buf;
    }
    return Bad(what, "not a .npy file: bad magic (first bytes 0x" + found +
                         ", want 0x934e554d5059 = \\x93NUMPY)");
  }
  Preamble p;
  p.major = static_cast<unsigned char>(bytes[6]);
  p.minor = static_cast<unsigned char>(bytes[7]);
  if (p.major < 1 || p.major > 3 || p.minor != 0) {
    return Bad(what, "unsupported .npy format version " + std::to_string(p.major) + "." +
                         std::to_string(p.minor) + " (supported: 1.0, 2.0, 3.0)");
  }
  p.prefix = p.major == 1 ? 10 : 12;
  if (file_size < p.prefix || bytes.size() < p.prefix) {
    return Bad(what, "truncated: " + std::to_string(file_size) +
                         " bytes, the header length field is cut off");
  }
  const auto byte = [&](size_t i) { return uint64_t(static_cast<unsigned char>(bytes[i])); };
  p.header_len = p.major == 1 ? byte(8) | byte(9) << 8
                              : byte(8) | byte(9) << 8 | byte(10) << 16 | byte(11) << 24;
  if (p.header_len > kMaxHeaderBytes) {
    return Bad(what, "absurd header length " + std::to_string(p.header_len) + " bytes (limit " +
                         std::to_string(kMaxHeaderBytes) + ")");
  }
  if (p.prefix + p.header_len > file_size) {
    return Bad(what, "truncated: header length " + std::to_string(p.header_len) +
                         " runs past the end of the file (" + std::to_string(file_size) +
                         " bytes)");
  }
  return p;
}

// A tiny parser for the Python dict literal of a .npy header, e.g.
//   {'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }
class HeaderParser {
 public:
  HeaderParser(std::string_view text, std::string_view what) : text_(text), what_(what) {}

  Status Parse(Header& h) {
    bool have_descr = false, have_order = false, have_shape = false;
    SkipSpace();
    if (!Eat('{')) return Error("header is not a Python dict");
    while (true) {
      SkipSpace();
      if (Eat('}')) break;
      std::string key;
      if (!String(key)) return Error("expected a quoted key");
      SkipSpace();
      if (!Eat(':')) return Error("expected ':' after " + Quote(key));
      SkipSpace();
      if (key == "descr") {
        if (Peek() == '[') {
          return Bad(what_, "structured dtype (a list of fields) is not supported; want '<f4'");
        }
        if (!String(h.descr)) return Error("descr is not a string");
        have_descr = true;
      } else if (key == "fortran_order") {
        if (Word("True")) {
          h.fortran_order = true;
        } else if (Word("False")) {
          h.fortran_order = false;
        } else {
          return Error("fortran_order is not True or False");
        }
        have_order = true;
      } else if (key == "shape") {
        ATTN_RETURN_IF_ERROR(Tuple(h.shape));
        have_shape = true;
      } else {
        return Error("unexpected key " + Quote(key));
      }
      SkipSpace();
      if (Eat(',')) continue;
      SkipSpace();
      if (Eat('}')) break;
      return Error("expected ',' or '}'");
    }
    SkipSpace();
    if (pos_ != text_.size()) return Error("unexpected text after the dict");
    if (!have_descr || !have_order || !have_shape) {
      return Bad(what_, std::string("header lacks ") + (!have_descr   ? "'descr'"
                                                        : !have_order ? "'fortran_order'"
                                                                      : "'shape'"));
    }
    return Status::Ok();
  }

 private:
  Status Error(const std::string& m) {
    return Bad(what_, "malformed header at byte " + std::to_string(pos_) + ": " + m);
  }
  char Peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
  bool Eat(char c) {
    if (Peek() != c) return false;
    ++pos_;
    return true;
  }
  void SkipSpace() {
    while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\n' ||
                                   text_[pos_] == '\t' || text_[pos_] == '\r')) {
      ++pos_;
    }
  }
  bool Word(std::string_view w) {
    if (text_.substr(pos_, w.size()) != w) return false;
    pos_ += w.size();
    return true;
  }
  bool String(std::string& out) {
    const char quote = Peek();
    if (quote != '\'' && quote != '"') return false;
    const size_t end = text_.find(quote, pos_ + 1);
    if (end == std::string_view::npos || end - pos_ > 64) return false;
    out = std::string(text_.substr(pos_ + 1, end - pos_ - 1));
    pos_ = end + 1;
    return true;
  }
  Status Tuple(std::vector<int64_t>& shape) {
    if (!Eat('(')) return Error("shape is not a tuple");
    shape.clear();
    while (true) {
      SkipSpace();
      if (Eat(')')) return Status::Ok();
      if (Peek() == '-') return Error("negative dimension in shape");
      if (Peek() < '0' || Peek() > '9') return Error("shape holds something other than integers");
      int64_t value = 0;
      while (Peek() >= '0' && Peek() <= '9') {
        if (value > (std::numeric_limits<int64_t>::max() - 9) / 10) {
          return Bad(what_, "shape dimension does not fit in int64");
        }
        value = value * 10 + (text_[pos_++] - '0');
      }
      Eat('L');  // Python 2 longs
      if (shape.size() >= 32) return Error("shape has more than 32 dimensions");
      shape.push_back(value);
      SkipSpace();
      if (Eat(',')) continue;
      SkipSpace();
      if (Eat(')')) return Status::Ok();
      return Error("expected ',' or ')' in shape");
    }
  }

  std::string_view text_;
  std::string_view what_;
  size_t pos_ = 0;
};

// kFloat: values read as float32 (masks, scales). kTensor: Q, K or V in an
// element type of kernels/dtype.h: kFloat's dtypes, plus bfloat16 bits as
// '<u2' and int8 as '|i1' (NumPy has no bfloat16; docs/cli.md).
enum class Kind { kFloat, kTensor, kInt };

// The element type a kTensor file's descr holds (CheckDescr has accepted it).
DType TensorDType(const std::string& descr) {
  if (descr == "<f2") return DType::kF16;
  if (descr == "<u2") return DType::kBF16;
  if (descr == "|i1") return DType::kI8;
  return DType::kF32;  // '<f4', '<f8'
}

// Checks that descr is one we read for `kind`; returns its item size.
StatusOr<size_t> CheckDescr(const std::string& descr, Kind kind, std::string_view what) {
  const bool floating = kind != Kind::kInt;
  if (floating && (descr == "<f2" || descr == "<f4" || descr == "<f8")) {
    return size_t(descr[2] - '0');
  }
  if (kind == Kind::kTensor && descr == "<u2") return 2;
  if (kind == Kind::kTensor && descr == "|i1") return 1;
  if (kind == Kind::kInt && (descr == "<i4" || descr == "<i8")) return descr == "<i4" ? 4 : 8;
  const std::string want =
      kind == Kind::kFloat    ? "little-endian float32 '<f4', float16 '<f2' or float64 '<f8'"
      : kind == Kind::kTensor ? "little-endian float32 '<f4', float16 '<f2', float64 '<f8', "
                                "bfloat16 bits '<u2' or int8 '|i1'"
                              : "little-endian int32 '<i4' or int64 '<i8'";
  std::string found = "dtype " + Quote(descr);
  if (!descr.empty() && descr[0] == '>') {
    found += " is big-endian";
  } else {
    found += " is not supported";
  }
  std::string hint = floating ? " (e.g. arr.astype('<f4'))" : "";
  if (floating && descr.size() == 3 && descr[0] == '>' &&
      CheckDescr("<" + descr.substr(1), kind, what).ok()) {
    hint = " (e.g. arr.astype('<" + descr.substr(1) + "'))";  // the same type, little-endian
  }
  if (kind == Kind::kTensor && (descr == "|V2" || descr == "<V2" || descr == ">V2")) {
    // What np.save writes for an ml_dtypes bfloat16 array: NumPy has no
    // bfloat16, so the tool takes its bits as uint16 instead.
    hint = " (bfloat16? save its bits as uint16: arr.view('<u2'))";
  }
  return Bad(what, found + "; want " + want + hint);
}

StatusOr<Header> ParseHeaderFor(std::string_view bytes, uint64_t file_size, std::string_view what,
                                std::optional<Kind> kind) {
  StatusOr<Preamble> pre = ReadPreamble(bytes, file_size, what);
  if (!pre.ok()) return pre.status();
  if (bytes.size() < pre->prefix + pre->header_len) {
    return Bad(what, "truncated: the header is cut off");
  }
  Header h;
  h.major = pre->major;
  h.minor = pre->minor;
  h.data_offset = pre->prefix + pre->header_len;
  HeaderParser parser(bytes.substr(pre->prefix, pre->header_len), what);
  ATTN_RETURN_IF_ERROR(parser.Parse(h));
  if (kind.has_value()) {
    StatusOr<size_t> item = CheckDescr(h.descr, *kind, what);
    if (!item.ok()) return item.status();
    h.item_size = *item;
  } else if (h.descr.size() == 3 &&
             (h.descr[2] == '1' || h.descr[2] == '2' || h.descr[2] == '4' || h.descr[2] == '8')) {
    h.item_size = h.descr[2] - '0';
  } else {
    return Bad(what, "dtype " + Quote(h.descr) + " is not supported");
  }
  if (h.fortran_order) {
    return Bad(what,
               "fortran_order is True (column-major); want C order "
               "(write np.ascontiguousarray(arr))");
  }
  h.elements = 1;
  for (int64_t dim : h.shape) {
    if (dim != 0 && h.elements > std::numeric_limits<int64_t>::max() / dim) {
      return Bad(what, "shape " + ShapeString(h.shape) + " has more elements than int64 can count");
    }
    h.elements *= dim;
  }
  if (h.elements > std::numeric_limits<int64_t>::max() / int64_t(h.item_size)) {
    return Bad(what, "shape " + ShapeString(h.shape) + " of " + Quote(h.descr) +
                         " overflows the byte count");
  }
  const uint64_t need = uint64_t(h.elements) * h.item_size;
  const uint64_t have = file_size - h.data_offset;
  if (have < need) {
    return Bad(what, "truncated: shape " + ShapeString(h.shape) + " of " + Quote(h.descr) +
                         " needs " + std::to_string(need) + " data bytes, the file has " +
                         std::to_string(have));
  }
  if (have > need) {
    return Bad(what, std::to_string(have - need) + " unexpected bytes after the data of shape " +
                         ShapeString(h.shape) + " (" + std::to_string(need) + " data bytes)");
  }
  return h;
}

// Converts `count` items of the header's dtype from `src` into `dst`.
// T = uint16_t copies the bits of a '<f2' or '<u2' (bfloat16) file, T =
// int8_t those of a '|i1' file (TypedArray); T = float widens '<f2' exactly.
template <typename From, typename T>
void ConvertAs(const char* src, size_t count, T* dst) {
  for (size_t i = 0; i < count; ++i) {
    From x;
    std::memcpy(&x, src + i * sizeof(From), sizeof(From));
    dst[i] = static_cast<T>(x);
  }
}
template <typename T>
void Convert(const Header& h, const char* src, size_t count, T* dst) {
  if constexpr (std::is_same_v<T, uint16_t> || std::is_same_v<T, int8_t>) {
    ConvertAs<T>(src, count, dst);  // the bits as stored
  } else {
    if (h.descr == "<f2") {
      for (size_t i = 0; i < count; ++i) {
        uint16_t bits;
        std::memcpy(&bits, src + i * 2, 2);
        dst[i] = static_cast<T>(F32FromF16Bits(bits));
      }
    } else if (h.descr == "<f4") {
      ConvertAs<float>(src, count, dst);
    } else if (h.descr == "<f8") {
      ConvertAs<double>(src, count, dst);
    } else if (h.descr == "<i4") {
      ConvertAs<int32_t>(src, count, dst);
    } else {
      ConvertAs<int64_t>(src, count, dst);
    }
  }
}

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<FILE, FileCloser>;

// A .npy file whose header has been read and checked against its size.
struct OpenFile {
  File file;
  Header header;
};

StatusOr<OpenFile> Open(const std::string& path, Kind kind) {
  std::error_code ec;
  const std::filesystem::file_status st = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(st)) {
    return InvalidArgument(path + ": cannot open: no such file");
  }
  if (!std::filesystem::is_regular_file(st)) {
    return InvalidArgument(path + ": not a regular file");
  }
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) return InvalidArgument(path + ": cannot read its size: " + ec.message());
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) return InvalidArgument(path + ": cannot open: " + std::strerror(errno));
  // Preamble, then exactly the header it announces (bounded by
  // kMaxHeaderBytes and the file size, checked by ReadPreamble).
  std::string head(std::min<uint64_t>(size, 12), '\0');
  if (std::fread(head.data(), 1, head.size(), f.get()) != head.size()) {
    return InvalidArgument(path + ": read error");
  }
  StatusOr<Preamble> pre = ReadPreamble(head, size, path);
  if (!pre.ok()) return pre.status();
  const size_t header_end = pre->prefix + pre->header_len;
  if (header_end > head.size()) {
    const size_t old = head.size();
    head.resize(header_end);
    if (std::fread(head.data() + old, 1, header_end - old, f.get()) != header_end - old) {
      return InvalidArgument(path + ": read error in the header");
    }
  }
  StatusOr<Header> h = ParseHeaderFor(head, size, path, kind);
  if (!h.ok()) return h.status();
  return OpenFile{std::move(f), std::move(h.value())};
}

// The data of an opened file, converted into `out`. The sizes are known to
// match the file: the allocation is bounded by its size.
template <typename T>
Status ReadData(OpenFile& in, const std::string& path, std::vector<T>& out) {
  const Header& h = in.header;
  out.resize(h.elements);
  if (std::fseek(in.file.get(), long(h.data_offset), SEEK_SET) != 0) {
    return InvalidArgument(path + ": seek error");
  }
  constexpr size_t kChunk = 1 << 16;
  std::vector<char> buf(std::min<size_t>(kChunk, h.elements) * h.item_size);
  for (size_t done = 0; done < size_t(h.elements);) {
    const size_t n = std::min(kChunk, size_t(h.elements) - done);
    if (std::fread(buf.data(), h.item_size, n, in.file.get()) != n) {
      return InvalidArgument(path + ": read error in the data");
    }
    Convert<T>(h, buf.data(), n, out.data() + done);
    done += n;
  }
  return Status::Ok();
}

template <typename Array>
StatusOr<Array> ReadAs(const std::string& path, Kind kind) {
  StatusOr<OpenFile> in = Open(path, kind);
  if (!in.ok()) return in.status();
  Array out;
  out.shape = in->header.shape;
  out.descr = in->header.descr;
  ATTN_RETURN_IF_ERROR(ReadData(in.value(), path, out.data));
  return out;
}

template <typename Array, typename T>
StatusOr<Array> ParseAs(std::string_view bytes, std::string_view what, Kind kind) {
  StatusOr<Header> h = ParseHeaderFor(bytes, bytes.size(), what, kind);
  if (!h.ok()) return h.status();
  Array out;
  out.shape = h->shape;
  out.descr = h->descr;
  out.data.resize(h->elements);
  Convert<T>(*h, bytes.data() + h->data_offset, h->elements, out.data.data());
  return out;
}

// A TypedArray of header `h`: fills the vector of the file's element type.
template <typename Fill>
TypedArray Typed(const Header& h, Fill fill) {
  TypedArray out;
  out.shape = h.shape;
  out.descr = h.descr;
  out.dtype = TensorDType(h.descr);
  switch (out.dtype) {
    case DType::kF32:
      fill(out.f32);
      break;
    case DType::kBF16:
    case DType::kF16:
      fill(out.u16);
      break;
    case DType::kI8:
      fill(out.i8);
      break;
  }
  return out;
}

std::string Serialize(std::span<const int64_t> shape, const char* descr, const void* data,
                      size_t bytes) {
  std::string dict = std::string("{'descr': '") + descr +
                     "', 'fortran_order': False, 'shape': " + ShapeString(shape) + ", }";
  size_t prefix = 10;
  size_t total = prefix + dict.size() + 1;
  if ((total + 63) / 64 * 64 - prefix > 65535) prefix = 12;  // version 2.0
  total = prefix + dict.size() + 1;
  const size_t padded = (total + 63) / 64 * 64;
  dict.append(padded - total, ' ');
  dict.push_back('\n');
  std::string out(kMagic, kMagicLen);
  out.push_back(prefix == 10 ? 1 : 2);
  out.push_back(0);
  const uint64_t len = dict.size();
  for (size_t i = 0; i < prefix - 8; ++i) out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  out += dict;
  out.append(static_cast<const char*>(data), bytes);
  return out;
}

}  // namespace

std::string ShapeString(std::span<const int64_t> shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

StatusOr<Header> ParseHeader(std::string_view bytes, uint64_t file_size, std::string_view what) {
  return ParseHeaderFor(bytes, file_size, what, std::nullopt);
}

StatusOr<FloatArray> ParseFloat(std::string_view bytes, std::string_view what) {
  return ParseAs<FloatArray, float>(bytes, what, Kind::kFloat);
}
StatusOr<TypedArray> ParseTyped(std::string_view bytes, std::string_view what) {
  StatusOr<Header> h = ParseHeaderFor(bytes, bytes.size(), what, Kind::kTensor);
  if (!h.ok()) return h.status();
  return Typed(*h, [&](auto& data) {
    data.resize(h->elements);
    Convert(*h, bytes.data() + h->data_offset, h->elements, data.data());
  });
}
StatusOr<IntArray> ParseInt(std::string_view bytes, std::string_view what) {
  return ParseAs<IntArray, int64_t>(bytes, what, Kind::kInt);
}
StatusOr<FloatArray> ReadFloat(const std::string& path) {
  return ReadAs<FloatArray>(path, Kind::kFloat);
}
StatusOr<TypedArray> ReadTyped(const std::string& path) {
  StatusOr<OpenFile> in = Open(path, Kind::kTensor);
  if (!in.ok()) return in.status();
  Status status;
  TypedArray out =
      Typed(in->header, [&](auto& data) { status = ReadData(in.value(), path, data); });
  if (!status.ok()) return status;
  return out;
}
StatusOr<IntArray> ReadInt(const std::string& path) { return ReadAs<IntArray>(path, Kind::kInt); }

std::string SerializeFloat(std::span<const int64_t> shape, std::span<const float> data) {
  return Serialize(shape, "<f4", data.data(), data.size_bytes());
}
std::string SerializeFloat16(std::span<const int64_t> shape, std::span<const uint16_t> bits) {
  return Serialize(shape, "<f2", bits.data(), bits.size_bytes());
}
std::string SerializeBFloat16(std::span<const int64_t> shape, std::span<const uint16_t> bits) {
  return Serialize(shape, "<u2", bits.data(), bits.size_bytes());
}
std::string SerializeInt8(std::span<const int64_t> shape, std::span<const int8_t> data) {
  return Serialize(shape, "|i1", data.data(), data.size_bytes());
}
std::string SerializeInt32(std::span<const int64_t> shape, std::span<const int32_t> data) {
  return Serialize(shape, "<i4", data.data(), data.size_bytes());
}
Status WriteFileAtomically(const std::string& path, std::string_view bytes) {
  const std::filesystem::path target(path);
  const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : ".";
  // A unique name beside the target (same file system, so rename is atomic),
  // hidden, and short enough for NAME_MAX whatever the target's name.
  std::string name(1, '.');  // (built up: gcc 12 warns falsely on "." + s)
  name.append(target.filename().string().substr(0, 200));
  name.append(".tmp-XXXXXX");
  std::string tmp = (dir / name).string();
  const int fd = mkstemp(tmp.data());
  if (fd < 0) {
    return Bad(path, "cannot write: cannot create a temporary file in " + dir.string() + ": " +
                         std::strerror(errno));
  }
  // mkstemp makes it 0600; give it the mode a plain fopen would.
  const mode_t mask = umask(0);
  umask(mask);
  fchmod(fd, 0666 & ~mask);
  File f(fdopen(fd, "wb"));
  int err = f ? 0 : errno;
  if (!f) close(fd);
  if (err == 0 && std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size()) err = errno;
  if (err == 0 && std::fflush(f.get()) != 0) err = errno;
  if (f && std::fclose(f.release()) != 0 && err == 0) err = errno;
  if (err == 0 && std::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    std::remove(tmp.c_str());  // the previous file, if any, is untouched
    return Bad(path, std::string("cannot write: ") + std::strerror(err));
  }
  return Status::Ok();
}
Status WriteFloat(const std::string& path, std::span<const int64_t> shape,
                  std::span<const float> data) {
  return WriteFileAtomically(path, SerializeFloat(shape, data));
}
Status WriteInt32(const std::string& path, std::span<const int64_t> shape,
                  std::span<const int32_t> data) {
  return WriteFileAtomically(path, SerializeInt32(shape, data));
}

}  // namespace attn::npy
