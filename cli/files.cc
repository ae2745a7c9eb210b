#include "cli/files.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <system_error>

#include "cli/npy.h"

namespace attn::cli {
namespace fs = std::filesystem;
namespace {

// What a path resolves to, to tell whether two paths name the same file.
struct FileId {
  fs::path resolved;  // absolute; symlinks, "." and ".." resolved as far as the path exists
  bool exists = false;
  dev_t dev = 0;
  ino_t ino = 0;
};

FileId Identify(const std::string& path) {
  FileId id;
  std::error_code ec;
  // Absolute first: weakly_canonical leaves a relative path with no existing
  // prefix relative ("o.npy", while "./o.npy" comes back absolute).
  const fs::path absolute = fs::absolute(path, ec);
  id.resolved = fs::weakly_canonical(absolute, ec);
  if (ec) id.resolved = absolute.lexically_normal();
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    id.exists = true;
    id.dev = st.st_dev;
    id.ino = st.st_ino;
  }
  return id;
}

bool SameFile(const FileId& a, const FileId& b) {
  return a.resolved == b.resolved || (a.exists && b.exists && a.dev == b.dev && a.ino == b.ino);
}

[[noreturn]] void FailWrite(const NamedPath& out, const std::string& why) {
  Fail(fmt::format("{} {}: cannot write{}", out.option, out.path, why), kExitIo);
}

// Where `out` will be written; fails unless that is a regular file (or
// nothing yet) in a writable directory.
std::string CheckWritable(const NamedPath& out, const FileId& id) {
  struct stat st;
  if (::stat(out.path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) FailWrite(out, ": it is a directory");
    if (!S_ISREG(st.st_mode)) FailWrite(out, ": not a regular file (an output replaces the file)");
  } else if (errno != ENOENT) {
    FailWrite(out, std::string(": ") + std::strerror(errno));
  }
  std::error_code ec;
  const fs::path target = fs::is_symlink(out.path, ec) ? id.resolved : fs::path(out.path);
  const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  if (::access(dir.c_str(), W_OK | X_OK) != 0) {
    FailWrite(out, fmt::format(" into {}: {}", dir.string(), std::strerror(errno)));
  }
  return target.string();
}

}  // namespace

std::vector<OutputFile> CheckOutputs(const std::vector<NamedPath>& outputs,
                                     const std::vector<NamedPath>& inputs) {
  std::vector<FileId> input_ids;
  for (const NamedPath& in : inputs) input_ids.push_back(Identify(in.path));
  std::vector<OutputFile> files;
  std::vector<FileId> ids;
  for (const NamedPath& out : outputs) {
    RequirePath(out.option, out.path);
    const FileId id = Identify(out.path);
    const std::string target = CheckWritable(out, id);
    for (size_t i = 0; i < ids.size(); ++i) {
      if (SameFile(id, ids[i])) {
        Fail(fmt::format("{} {} and {} {} are the same file; give each output its own path",
                         files[i].name.option, files[i].name.path, out.option, out.path));
      }
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (SameFile(id, input_ids[i])) {
        Fail(fmt::format("{} {} would overwrite the input {} {}", out.option, out.path,
                         inputs[i].option, inputs[i].path));
      }
    }
    ids.push_back(id);
    files.push_back({out, target});
  }
  return files;
}

void WriteFileOrFail(const std::string& path, std::string_view bytes, std::string_view label) {
  if (Status s = npy::WriteFileAtomically(path, bytes); !s.ok()) {
    Fail(label.empty() ? s.message() : fmt::format("{} {}", label, s.message()), kExitIo);
  }
}

void WriteNpyOutput(const OutputFile& out, std::span<const int64_t> shape,
                    std::span<const float> data) {
  WriteFileOrFail(out.target, npy::SerializeFloat(shape, data), out.name.option);
  fmt::print("wrote {} {}\n", out.name.path, npy::ShapeString(shape));
}

void WriteNpyOutput(const OutputFile& out, std::span<const int64_t> shape, const OutputBuffer& o) {
  WriteFileOrFail(out.target, o.Serialize(shape), out.name.option);
  fmt::print("wrote {} {}{}\n", out.name.path, npy::ShapeString(shape), o.FileNote());
}

TempDir::TempDir(std::string_view prefix) {
  const char* env = std::getenv("TMPDIR");
  const bool from_env = env != nullptr && *env != '\0';
  const std::string base = from_env ? env : "/tmp";
  std::string pattern = (fs::path(base) / (std::string(prefix) + "-XXXXXX")).string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    Fail(fmt::format("cannot create a temporary directory in {}: {}{}",
                     from_env ? "TMPDIR=" + base : base, std::strerror(errno),
                     from_env ? " (set TMPDIR to a writable directory)" : ""),
         kExitIo);
  }
  path_ = pattern;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

}  // namespace attn::cli
