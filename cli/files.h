// The files the CLI writes: its outputs, checked together before any kernel
// runs and then written atomically, and its temporary directory.
//
// Exit codes (cli/inputs.h): a path that cannot be written (its directory is
// missing or not writable, it is a directory, the disk is full) is kExitIo;
// a request that makes no sense (an empty path, two outputs that are the same
// file, an output that is one of the inputs) is kExitUsage.
#ifndef ATTNLAB_CLI_FILES_H_
#define ATTNLAB_CLI_FILES_H_

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cli/inputs.h"

namespace attn::cli {

// An output: the option and path as given, and the file written there (the
// path itself, or the file it links to when it is a symlink: writing
// replaces files, never links).
struct OutputFile {
  NamedPath name;
  std::string target;
};

// Checks every output before anything is computed and returns them in order.
// Paths are compared as the files they resolve to (x.npy, ./x.npy, a symlink
// to it and a hard link are all the same file). Fails (CliError) on:
//   kExitUsage  an empty path; two outputs that are the same file; an output
//               that is one of `inputs`;
//   kExitIo     an output that is a directory or another non-regular file,
//               or whose directory is missing or not writable (with the OS's
//               reason).
std::vector<OutputFile> CheckOutputs(const std::vector<NamedPath>& outputs,
                                     const std::vector<NamedPath>& inputs);

// Writes `bytes` to `path` atomically (npy::WriteFileAtomically: a failure
// leaves any previous file as it was); a failure is a CliError (kExitIo)
// "[LABEL ]PATH: cannot write: REASON".
void WriteFileOrFail(const std::string& path, std::string_view bytes, std::string_view label = "");

// WriteFileOrFail of a float32 .npy to an output, then "wrote PATH (shape)".
void WriteNpyOutput(const OutputFile& out, std::span<const int64_t> shape,
                    std::span<const float> data);
// The same for O in its element type (OutputBuffer::Serialize), then
// "wrote PATH (shape)" and, for a bf16 or f16 O, how the file holds it.
void WriteNpyOutput(const OutputFile& out, std::span<const int64_t> shape, const OutputBuffer& o);

// A new, uniquely named directory (mkdtemp) in $TMPDIR, or /tmp when TMPDIR
// is unset or empty; removed with its contents when this goes out of scope.
// A TMPDIR that cannot hold it is a CliError (kExitIo) naming TMPDIR and the
// OS's reason, never a fallback to somewhere else.
class TempDir {
 public:
  explicit TempDir(std::string_view prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace attn::cli

#endif  // ATTNLAB_CLI_FILES_H_
