// `attnlab tune`: measures this machine and writes its tuning file
// (kernels/tuning.h says what it holds, where it lives and how the kernels
// read it; docs/cli.md says how to run it).
#ifndef ATTNLAB_CLI_TUNE_H_
#define ATTNLAB_CLI_TUNE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace attn::cli {

struct TuneArgs {
  std::optional<std::string> out;  // default: attn::TuningPath()
  std::vector<int> threads;        // default: 1 and every core OpenMP gives
  std::vector<int64_t> head_dims = {64, 128};
  int64_t max_n = 2048;  // auto's points: N = 128, 256, ... up to this
  int reps = 5;          // timed repetitions per candidate, interleaved
  bool quick = false;    // a smoke run: d = 64, N <= 256, 2 repetitions
};

int TuneCommand(TuneArgs args);

}  // namespace attn::cli

#endif  // ATTNLAB_CLI_TUNE_H_
