// attnlab_ring_bench: times ring attention (dist/ring.h) on one problem,
// every rank under mpirun, and appends one JSON record per rank to a file
// (bench/ring_suite.sh runs the ring suite with it; reports/ring_report.py
// draws it).
//
//   mpirun -np P attnlab_ring_bench --n 16384 --heads 4 --kv-heads 4 --dim 128
//       --mask causal --threads 1 --reps 3 --label strong --out ring.jsonl
//   attnlab_ring_bench --single ...   one process, attn::Run of the variant on
//                                     the whole problem (the baseline)
//
// Each rank makes only its own rows (a hash of the global position, so any P
// sees the same problem) and nothing else: its peak RSS is then what the ring
// needs on top of the process (measured before anything is allocated), set
// beside the bound of dist/ring.h: its share of Q, K, V, O and lse, two K/V
// slices, one partial and the variant's workspace.
//
// A record: the problem, P, threads, split, the link (--link, a label: what
// the suite set up), the median over --reps of each rank's wall time,
// compute, communication in flight, waiting and overlap, its pairs and
// blocks, bytes sent, peak RSS above the start, the bound, and the context
// (CPU, ISA path, git commit).
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/bench_common.h"
#include "dist/ring.h"
#include "kernels/registry.h"

namespace attn::bench {
namespace {

struct Args {
  int64_t n = 4096, batch = 1, heads = 4, kv_heads = 4, dim = 128;
  std::string mask = "causal", split = "zigzag", variant = "flash";
  int threads = 1, reps = 3, warmup = 1;
  bool single = false, probe = false;
  std::string label = "ring", link = "shared memory", out = "ring.jsonl";
};

int Rank() { return ring::RankIn(MPI_COMM_WORLD); }
int Ranks() { return ring::RanksIn(MPI_COMM_WORLD); }

// Element (tensor, b, h, global row, d) in [-1, 1): the same for every P.
float Value(uint64_t tensor, int64_t b, int64_t h, int64_t row, int64_t d) {
  uint64_t x = tensor * 0x9E3779B97F4A7C15ull ^ uint64_t(b) << 56 ^ uint64_t(h) << 44 ^
               uint64_t(row) << 16 ^ uint64_t(d);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return float(double(x >> 40) / double(1 << 23) - 1.0);
}

// A rank's rows of one [B, heads, n, dim] tensor.
std::vector<float> MakeRows(uint64_t tensor, const Args& a, int64_t heads,
                            const std::vector<ring::PositionRun>& runs, int64_t rows) {
  std::vector<float> out(size_t(a.batch * heads * rows * a.dim));
  for (int64_t b = 0; b < a.batch; ++b) {
    for (int64_t h = 0; h < heads; ++h) {
      for (const ring::PositionRun& r : runs) {
        for (int64_t i = 0; i < r.len; ++i) {
          float* row = out.data() + ((b * heads + h) * rows + r.local + i) * a.dim;
          for (int64_t d = 0; d < a.dim; ++d) row[d] = Value(tensor, b, h, r.global + i, d);
        }
      }
    }
  }
  return out;
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

struct Timings {
  std::vector<double> total, compute, comm, wait;
  ring::RingStats last;
};

// The link between ranks 0 and 1, as the cost model of
// reports/ring_report.py takes it: latency alpha (half an 8-byte round trip,
// median of 200) and bandwidth (16 MiB one way then an 8-byte reply, median
// of 5, less one alpha). One record, appended by rank 0.
int Probe(const Args& a) {
  if (Ranks() < 2) {
    std::fprintf(stderr, "attnlab_ring_bench: --probe needs 2 ranks\n");
    return 2;
  }
  const int rank = Rank();
  char byte[8] = {};
  std::vector<char> big(size_t(16) << 20);
  auto round_trip = [&](const char* out, int out_bytes) {
    const auto start = std::chrono::steady_clock::now();
    if (rank == 0) {
      MPI_Send(out, out_bytes, MPI_CHAR, 1, 0, MPI_COMM_WORLD);
      MPI_Recv(byte, 8, MPI_CHAR, 1, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else if (rank == 1) {
      MPI_Recv(big.data(), out_bytes, MPI_CHAR, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      MPI_Send(byte, 8, MPI_CHAR, 0, 0, MPI_COMM_WORLD);
    }
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  std::vector<double> small, large;
  for (int i = 0; i < 210; ++i) {
    const double t = round_trip(byte, 8);
    if (i >= 10) small.push_back(t / 2);
  }
  const double alpha = Median(small);
  for (int i = 0; i < 6; ++i) {
    const double t = round_trip(big.data(), int(big.size()));
    if (i >= 1) large.push_back(t - 2 * alpha);
  }
  const double bandwidth = double(big.size()) / Median(large);
  if (rank == 0) {
    nlohmann::json record = {
        {"label", "probe"},           {"link", a.link},   {"mode", "probe"},
        {"ranks", Ranks()},           {"alpha_s", alpha}, {"bandwidth_bytes_per_s", bandwidth},
        {"message_bytes", big.size()}};
    std::ofstream(a.out, std::ios::app) << record.dump() << "\n";
    std::printf("probe %s: latency %.1f us, bandwidth %.2f GB/s\n", a.link.c_str(), alpha * 1e6,
                bandwidth / 1e9);
  }
  return 0;
}

int Main(int argc, char** argv) {
  CLI::App app{"attnlab_ring_bench: ring attention timed on every rank (bench/ring_bench.cc)"};
  Args a;
  app.add_option("--n", a.n, "sequence length N (Lq = Lk)");
  app.add_option("--batch", a.batch, "B");
  app.add_option("--heads", a.heads, "H");
  app.add_option("--kv-heads", a.kv_heads, "Hkv");
  app.add_option("--dim", a.dim, "d (dk = dv)");
  app.add_option("--mask", a.mask, "none | causal")->check(CLI::IsMember({"none", "causal"}));
  app.add_option("--split", a.split, "zigzag | contiguous")
      ->check(CLI::IsMember({"zigzag", "contiguous"}));
  app.add_option("--variant", a.variant, "the local kernel");
  app.add_option("--threads", a.threads, "OpenMP threads per rank");
  app.add_option("--reps", a.reps, "timed repetitions")->check(CLI::PositiveNumber);
  app.add_option("--warmup", a.warmup, "untimed runs first (default 1)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--single", a.single, "one process, attn::Run on the whole problem (baseline)");
  app.add_flag("--probe", a.probe,
               "measure the link between ranks 0 and 1 instead: latency (8-byte ping-pong) and "
               "bandwidth (16 MiB messages), the cost model's inputs");
  app.add_option("--label", a.label, "what the record is for: strong, weak, link, ...");
  app.add_option("--link", a.link, "how the ranks are connected (a label)");
  app.add_option("--out", a.out, "JSON lines file to append one record per rank to");

  int level = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &level);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = Rank() == 0 ? app.exit(e) : 2;
    MPI_Finalize();
    return code;
  }
  if (a.probe) {
    const int code = Probe(a);
    MPI_Finalize();
    return code;
  }
  const double rss_start = ring::PeakRssBytes();
  const ring::Split split = a.split == "zigzag" ? ring::Split::kZigzag : ring::Split::kContiguous;
  const int ranks = a.single ? 1 : Ranks();
  const int rank = a.single ? 0 : Rank();
  const std::vector<ring::PositionRun> runs = ring::RankRuns(split, a.n, ranks, rank);
  const int64_t rows = ring::RankRows(split, a.n, ranks, rank);
  std::vector<float> q = MakeRows(0, a, a.heads, runs, rows);
  std::vector<float> k = MakeRows(1, a, a.kv_heads, runs, rows);
  std::vector<float> v = MakeRows(2, a, a.kv_heads, runs, rows);
  std::vector<float> o(size_t(a.batch * a.heads * rows * a.dim)),
      lse(size_t(a.batch * a.heads * rows));

  ring::RingProblem share;
  share.split = split;
  Problem& p = share.problem;
  p.shape = {a.batch, a.heads, a.kv_heads, a.n, a.n, a.dim, a.dim};
  p.q = {q.data(), Strides::BHLD(a.heads, rows, a.dim), DType::kF32};
  p.k = {k.data(), Strides::BHLD(a.kv_heads, rows, a.dim), DType::kF32};
  p.v = {v.data(), Strides::BHLD(a.kv_heads, rows, a.dim), DType::kF32};
  p.o = {o.data(), Strides::BHLD(a.heads, rows, a.dim), DType::kF32};
  p.lse = lse;
  p.mask.kind = a.mask == "causal" ? MaskKind::kCausal : MaskKind::kNone;
  ring::RingOptions options;
  options.variant = a.variant;
  options.run = OnThreads(a.threads);

  Timings t;
  for (int rep = -a.warmup; rep < a.reps; ++rep) {  // negative: warm-up
    if (!a.single) MPI_Barrier(MPI_COMM_WORLD);
    ring::RingStats st;
    Status status;
    if (a.single) {
      RunStats run_stats;
      const auto start = std::chrono::steady_clock::now();
      status = Run(a.variant, p, options.run, &run_stats);
      st.total_s = st.compute_s =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      st.ranks = 1;
      st.path = run_stats.path;
      st.workspace_peak_bytes = run_stats.workspace_peak_bytes;
      if (status.ok()) st.pairs = VisiblePairs(*Validate(p));
    } else {
      status = ring::RingAttention(share, MPI_COMM_WORLD, options, &st);
    }
    if (!status.ok()) {
      if (rank == 0) std::fprintf(stderr, "attnlab_ring_bench: %s\n", status.ToString().c_str());
      MPI_Finalize();
      return 1;
    }
    if (rep < 0) continue;
    t.total.push_back(st.total_s);
    t.compute.push_back(st.compute_s);
    t.comm.push_back(st.comm_s);
    t.wait.push_back(st.wait_s);
    t.last = st;
  }

  // The bound of dist/ring.h: the share, two K/V slices of the largest
  // rank, one partial of the largest query run, the workspace.
  int64_t max_rows = 0, max_run = 0;
  for (int r = 0; r < ranks; ++r) {
    max_rows = std::max(max_rows, ring::RankRows(split, a.n, ranks, r));
    for (const ring::PositionRun& run : ring::RankRuns(split, a.n, ranks, r)) {
      max_run = std::max(max_run, std::min<int64_t>(run.len, 2048));  // dist/ring.cc's pieces
    }
  }
  const double share_bytes = double(q.size() + k.size() + v.size() + o.size() + lse.size()) * 4;
  const double ring_bytes =
      a.single ? 0.0
               : double(std::min(ranks, 2) * a.batch * a.kv_heads * max_rows * 2 * a.dim +
                        a.batch * a.heads * max_run * (a.dim + 1)) *
                     4;
  const double bound = share_bytes + ring_bytes + double(t.last.workspace_peak_bytes);

  nlohmann::json record = {
      {"label", a.label},
      {"link", a.link},
      {"mode", a.single ? "single" : "ring"},
      {"ranks", ranks},
      {"rank", rank},
      {"threads", a.threads},
      {"split", a.split},
      {"variant", a.variant},
      {"path", t.last.path},
      {"B", a.batch},
      {"H", a.heads},
      {"Hkv", a.kv_heads},
      {"N", a.n},
      {"d", a.dim},
      {"mask", a.mask},
      {"reps", a.reps},
      {"total_s", Median(t.total)},
      {"compute_s", Median(t.compute)},
      {"comm_s", Median(t.comm)},
      {"wait_s", Median(t.wait)},
      {"total_s_all", t.total},
      {"pairs", t.last.pairs},
      {"blocks_run", t.last.blocks_run},
      {"blocks_skipped", t.last.blocks_skipped},
      {"bytes_sent", t.last.bytes_sent},
      {"flops", 2.0 * double(t.last.pairs) * double(2 * a.dim)},
      {"peak_rss_above_start_bytes", ring::PeakRssBytes() - rss_start},
      {"memory_bound_bytes", bound},
      {"share_bytes", share_bytes},
      {"ring_buffer_bytes", ring_bytes},
      {"workspace_peak_bytes", t.last.workspace_peak_bytes},
  };
  for (const auto& [key, value] : ContextStrings(std::to_string(a.threads), "ring", 0)) {
    record["context"][key] = value;
  }
  // Rank 0 appends every rank's record, in rank order.
  const std::string line = record.dump();
  if (a.single) {
    std::ofstream(a.out, std::ios::app) << line << "\n";
  } else {
    int length = int(line.size());
    std::vector<int> lengths(ranks);
    MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
    std::vector<int> offsets(ranks, 0);
    for (int r = 1; r < ranks; ++r) offsets[r] = offsets[r - 1] + lengths[r - 1];
    std::string all(size_t(rank == 0 ? offsets.back() + lengths.back() : 0), ' ');
    MPI_Gatherv(line.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR,
                0, MPI_COMM_WORLD);
    if (rank == 0) {
      std::ofstream out(a.out, std::ios::app);
      for (int r = 0; r < ranks; ++r) out << all.substr(offsets[r], lengths[r]) << "\n";
    }
  }
  if (rank == 0) {
    std::printf(
        "%s %s N=%lld P=%d x %d thread(s) %s %s: %.3f s (median of %d), compute %.3f s, "
        "wait %.3f s\n",
        a.label.c_str(), a.single ? "single" : "ring", (long long)a.n, ranks, a.threads,
        a.mask.c_str(), a.link.c_str(), Median(t.total), a.reps, Median(t.compute), Median(t.wait));
  }
  MPI_Finalize();
  return 0;
}

}  // namespace
}  // namespace attn::bench

int main(int argc, char** argv) { return attn::bench::Main(argc, argv); }
