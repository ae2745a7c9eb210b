// Ring attention over MPI (Liu et al. 2023, "Ring Attention with Blockwise
// Transformers"): one attention problem split along its positions over the P
// ranks of an MPI communicator.
//
// Each rank holds a slice of the queries and a slice of the keys and values
// (RankRuns below says which positions). The K/V slices travel around the
// ring: at step s = 0..P-1 rank r holds the slice of rank (r - s) mod P,
// attends its own queries to it with a local variant (flash by default) and
// merges the partial (O, lse) into its running result through the
// logsumexp: with partials (O1, l1), (O2, l2) of disjoint key sets,
//   l = log(e^l1 + e^l2),  O = e^(l1 - l)·O1 + e^(l2 - l)·O2,
// exactly the softmax over the union. Each block pair (a run of queries
// against a run of keys) is an ordinary attn::Problem whose causal/window
// diagonal is placed by Diagonal::kAt (kernels/problem.h), so every mask,
// modifier and GQA rule of one process holds unchanged.
//
// Communication: while a step computes, a helper thread sends the slice it
// holds to rank r + 1 and receives the next from rank r - 1 (MPI_Isend and
// MPI_Irecv into the other of two buffers, tested every 20-256 µs so that
// TCP transports keep streaming); the step then waits for it. The library
// needs MPI initialized with at least MPI_THREAD_SERIALIZED (the helper and
// the caller never call MPI at the same time).
//
// Causal balance (Split::kZigzag, the default): the positions are cut into
// 2P chunks and rank r holds chunks r and 2P-1-r, so under a causal mask
// every rank attends the same number of (query, key) pairs (a contiguous
// split gives rank P-1 about 2P-1 times rank 0's work). Block pairs that a
// mask hides entirely (causal above the diagonal, outside a window, past
// every key length) are not computed.
//
// Memory per rank: its slices of Q, K, V, O and lse, two K/V buffers of the
// largest rank's K/V slice (one the slice it sends, one it receives), one
// partial O and lse of at most 2048 query rows (runs are cut into pieces of
// that many), and the local variant's workspace.
//
// Semantics are single-process attention's (kernels/problem.h), including
// fully masked rows (O = 0, lse = -inf, or the sink), NaN rows and key
// lengths; results are within the same derived error bound as one process
// and deterministic for a given P and thread count (the merge order is fixed).
#ifndef ATTNLAB_DIST_RING_H_
#define ATTNLAB_DIST_RING_H_

#include <mpi.h>

#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "kernels/problem.h"
#include "kernels/registry.h"
#include "kernels/status.h"

namespace attn::ring {

// How positions [0, n) are dealt to P ranks.
enum class Split {
  kZigzag,      // 2P chunks; rank r holds chunks r and 2P-1-r (causal balance)
  kContiguous,  // P chunks; rank r holds chunk r
};
const char* SplitName(Split split);  // "zigzag", "contiguous"

// Consecutive positions a rank holds: local rows [local, local + len) are
// global positions [global, global + len).
struct PositionRun {
  int64_t global = 0;
  int64_t local = 0;
  int64_t len = 0;
};

// The runs of [0, n) that `rank` of `ranks` holds, in local row order, empty
// runs left out. Chunks are as even as possible: chunk c of m has n / m
// positions, plus one for the first n % m chunks, so any n works, P > n too
// (some ranks then hold nothing).
std::vector<PositionRun> RankRuns(Split split, int64_t n, int ranks, int rank);
// The number of positions `rank` holds: the sum of its runs' lengths.
int64_t RankRows(Split split, int64_t n, int ranks, int rank);

// One rank's share of a ring problem.
struct RingProblem {
  // The whole problem as one process would see it: shape with the global Lq
  // and Lk, scale, mask (none, causal, window; any diagonal), key lengths
  // (global, B entries, in [0, Lk]) and modifiers, all identical on every
  // rank. Its tensors hold only this rank's rows: q and o the
  // RankRows(split, Lq) query rows of RankRuns(split, Lq), k and v the
  // RankRows(split, Lk) key rows of RankRuns(split, Lk), each a strided view
  // as usual; lse (optional) [B, H, local Lq]. fp32 tensors; no additive
  // mask, packed sequences, paged K/V or weights.
  Problem problem;
  Split split = Split::kZigzag;
};

struct RingOptions {
  std::string variant = "flash";  // the local kernel of each block pair
  RunOptions run;                 // its threads and memory budget
};

// What one rank did.
struct RingStats {
  int ranks = 0;
  double total_s = 0;    // the whole call, wall clock
  double compute_s = 0;  // local kernels and merges
  double comm_s = 0;     // sends and receives in flight (the helper thread)
  double wait_s = 0;     // compute done, waiting for the next K/V slice
  int64_t pairs = 0;     // (query, key) pairs attended: the rank's work
  int64_t blocks_run = 0;
  int64_t blocks_skipped = 0;  // hidden entirely by the mask
  int64_t bytes_sent = 0;
  size_t buffer_bytes = 0;          // the ring's own buffers (K/V and partials)
  size_t workspace_peak_bytes = 0;  // the local variant's, largest block
  std::string path;                 // the local variant's ISA path
  // The share of communication hidden behind compute: 1 - wait / comm, in
  // [0, 1] (wait also holds the helper thread's wake-up, so it can exceed a
  // tiny comm).
  double overlap() const { return comm_s > 0 ? std::clamp(1.0 - wait_s / comm_s, 0.0, 1.0) : 1.0; }
};

// Ring attention: every rank of `comm` calls it with its own share of the
// same problem. On success each rank's o and lse hold its query rows of the
// result. Errors are collective: when any rank's share is malformed (or the
// ranks disagree on the problem), every rank returns the same Status, that
// of the lowest such rank, its message prefixed "rank r: ", and nothing is
// exchanged, so no rank waits for another forever. InvalidArgument and
// Unimplemented as for attn::Run; FailedPrecondition-like errors (MPI not
// initialized with MPI_THREAD_SERIALIZED) are InvalidArgument.
Status RingAttention(const RingProblem& share, MPI_Comm comm, const RingOptions& options = {},
                     RingStats* stats = nullptr);

// This process's rank in `comm` and the number of ranks in it.
int RankIn(MPI_Comm comm);
int RanksIn(MPI_Comm comm);
// The process's peak resident set in bytes (getrusage): the per-rank memory
// figure of `attnlab ring` and attnlab_ring_bench.
double PeakRssBytes();

// Every rank passes its own status; every rank gets back the lowest failing
// rank's, prefixed "rank r: " (OK when all are OK). Collective.
Status AgreeOnStatus(const Status& mine, MPI_Comm comm);

// Rows of contiguous [B, H, n, d] fp32 tensors between a whole tensor and a
// rank's share [B, H, RankRows, d] (the CLI and the tests, where one rank
// holds the whole problem).
struct RowsOf {
  int64_t batch = 1, heads = 1, n = 0, dim = 0;
};
void TakeRows(const float* whole, const RowsOf& t, std::span<const PositionRun> runs, float* share);
void PutRows(const float* share, const RowsOf& t, std::span<const PositionRun> runs, float* whole);

}  // namespace attn::ring

#endif  // ATTNLAB_DIST_RING_H_
