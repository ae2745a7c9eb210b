// An environment variable set for one scope (the library's switches,
// e.g. ATTNLAB_PORTABLE and ATTNLAB_NO_AMX, are read at every Run).
#ifndef ATTNLAB_TESTING_SCOPED_ENV_H_
#define ATTNLAB_TESTING_SCOPED_ENV_H_

#include <cstdlib>
#include <optional>
#include <string>

namespace attn::testing {

// A null value unsets the variable for the scope.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value != nullptr) {
      setenv(name, value, 1);
    } else {
      unsetenv(name);
    }
  }
  ~ScopedEnv() {
    if (old_) {
      setenv(name_, old_->c_str(), 1);
    } else {
      unsetenv(name_);
    }
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace attn::testing

#endif  // ATTNLAB_TESTING_SCOPED_ENV_H_
