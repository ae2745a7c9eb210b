// attn::Status: how every attnlab entry point reports failure.
//
// attnlab does not throw. Every public function that can fail returns a Status
// (or a StatusOr<T>) whose message names the offending field and its value,
// e.g. "Hkv=3 does not divide H=8". The code says what kind of failure it is.
#ifndef ATTNLAB_KERNELS_STATUS_H_
#define ATTNLAB_KERNELS_STATUS_H_

#include <optional>
#include <string>
#include <utility>

namespace attn {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,    // the problem description is malformed
  kUnimplemented,      // the variant does not support this feature
  kResourceExhausted,  // the workspace would exceed the memory budget
  kNotFound,           // unknown variant name
  kInternal,           // a kernel broke an invariant (a bug)
};

const char* StatusCodeName(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return Status(); }
  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "InvalidArgument: Hkv=3 does not divide H=8".
  std::string ToString() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

inline Status InvalidArgument(std::string m) {
  return Status(StatusCode::kInvalidArgument, std::move(m));
}
inline Status Unimplemented(std::string m) {
  return Status(StatusCode::kUnimplemented, std::move(m));
}
inline Status ResourceExhausted(std::string m) {
  return Status(StatusCode::kResourceExhausted, std::move(m));
}
inline Status Internal(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }
inline Status NotFound(std::string m) { return Status(StatusCode::kNotFound, std::move(m)); }

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : status_(std::move(status)) {}  // NOLINT: implicit
  StatusOr(T value) : value_(std::move(value)) {}          // NOLINT: implicit
  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  const T& value() const& { return *value_; }
  T& value() & { return *value_; }
  const T& operator*() const& { return *value_; }
  const T* operator->() const { return &*value_; }

 private:
  Status status_;
  std::optional<T> value_;
};

#define ATTN_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::attn::Status attn_status_ = (expr);        \
    if (!attn_status_.ok()) return attn_status_; \
  } while (0)

}  // namespace attn

#endif  // ATTNLAB_KERNELS_STATUS_H_
