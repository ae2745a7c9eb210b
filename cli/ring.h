// `attnlab ring`: ring attention (dist/ring.h) from .npy files, under
// mpirun/mpiexec. Rank 0 reads the whole inputs (the same options as `attnlab
// run`), sends every rank its share, and gathers and writes O (and lse);
// every rank computes. Errors: rank 0's reading errors and the ring's
// collective ones are printed once, by rank 0, and every rank exits with the
// same non-zero code. Built only with MPI; without it the command says so.
#ifndef ATTNLAB_CLI_RING_H_
#define ATTNLAB_CLI_RING_H_

#include <optional>
#include <string>

#include "cli/inputs.h"

namespace attn::cli {

struct RingArgs {
  std::string variant = "flash";  // the per-block kernel
  std::string split = "zigzag";   // zigzag | contiguous
  std::string out;
  std::optional<std::string> lse;
  bool quiet = false;  // no per-rank table
};

// The exit code; prints the per-rank table (rank 0) unless quiet.
int RingCommand(int argc, char** argv, const InputOptions& in, const RingArgs& args);

}  // namespace attn::cli

#endif  // ATTNLAB_CLI_RING_H_
