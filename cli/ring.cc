// `attnlab ring` (cli/ring.h), top to bottom: rank 0 reads and checks the
// inputs and the outputs and broadcasts the problem (or its error) as one
// header; rank 0 sends every rank its Q, K, V rows; every rank runs
// RingAttention on its share; rank 0 gathers O, lse and each rank's figures,
// writes the files and prints the per-rank table.
#include "cli/ring.h"

#ifdef ATTNLAB_HAVE_MPI

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "cli/files.h"
#include "dist/ring.h"
#include "kernels/internal/bytes.h"

namespace attn::cli {
namespace {

int Rank() { return ring::RankIn(MPI_COMM_WORLD); }
int Ranks() { return ring::RanksIn(MPI_COMM_WORLD); }

// ------------------------------------------------------------ the header

// What every rank needs to build its share: rank 0's verdict on the inputs
// and, when they are good, the problem without its tensors. Serialized as
// raw bytes (every rank runs this same binary).
struct Header {
  int exit_code = kExitOk;
  std::string error;
  Shape shape;
  Mask mask;  // kind, diagonal, windows (key lengths below)
  std::optional<float> scale, softcap;
  std::vector<int32_t> key_lengths;
  bool has_key_lengths = false;
  std::vector<float> alibi_slopes, sinks;
  RunOptions run;

  // Every field, in one order, for both directions: `io` takes a trivially
  // copyable value, a std::string or a std::vector of them.
  template <typename Self, typename Io>
  static void Fields(Self& h, Io&& io) {
    io(h.exit_code);
    io(h.error);
    io(h.shape);
    io(h.mask.kind);
    io(h.mask.diagonal);
    io(h.mask.diagonal_offset);
    io(h.mask.window_left);
    io(h.mask.window_right);
    io(h.scale);
    io(h.softcap);
    io(h.has_key_lengths);
    io(h.key_lengths);
    io(h.alibi_slopes);
    io(h.sinks);
    io(h.run.threads);
    io(h.run.memory_budget_bytes);
  }

  // Appends values to a byte string.
  struct Writer {
    std::vector<char>& out;
    void Bytes(const void* p, size_t n) {
      if (n == 0) return;  // an empty vector's data() may be null
      out.insert(out.end(), static_cast<const char*>(p), static_cast<const char*>(p) + n);
    }
    template <typename T>
    void operator()(const T& x) {
      Bytes(&x, sizeof(T));
    }
    template <typename Seq>
    void Sequence(const Seq& v) {
      (*this)(int64_t(v.size()));
      Bytes(v.data(), v.size() * sizeof(v[0]));
    }
    void operator()(const std::string& x) { Sequence(x); }
    template <typename T>
    void operator()(const std::vector<T>& x) {
      Sequence(x);
    }
  };
  // Reads them back in the same order.
  struct Reader {
    const char* in;
    void Bytes(void* p, size_t n) {
      if (n == 0) return;  // memcpy's pointers must not be null, even for 0 bytes (UBSan)
      std::memcpy(p, in, n);
      in += n;
    }
    template <typename T>
    void operator()(T& x) {
      Bytes(&x, sizeof(T));
    }
    template <typename Seq>
    void Sequence(Seq& v) {
      int64_t n = 0;
      (*this)(n);
      v.resize(size_t(n));
      Bytes(v.data(), size_t(n) * sizeof(v[0]));
    }
    void operator()(std::string& x) { Sequence(x); }
    template <typename T>
    void operator()(std::vector<T>& x) {
      Sequence(x);
    }
  };

  std::vector<char> Serialize() const {
    std::vector<char> out;
    Fields(*this, Writer{out});
    return out;
  }
  void Deserialize(const std::vector<char>& bytes) { Fields(*this, Reader{bytes.data()}); }
  void Broadcast() {
    std::vector<char> bytes = Rank() == 0 ? Serialize() : std::vector<char>();
    int64_t size = int64_t(bytes.size());
    MPI_Bcast(&size, 1, MPI_INT64_T, 0, MPI_COMM_WORLD);
    bytes.resize(size);
    MPI_Bcast(bytes.data(), int(size), MPI_CHAR, 0, MPI_COMM_WORLD);
    if (Rank() != 0) Deserialize(bytes);
  }
};

// ---------------------------------------------------------- moving rows

// MPI counts are int: large tensors go in pieces of 2^30 floats.
constexpr int64_t kPiece = int64_t{1} << 30;
void SendFloats(const std::vector<float>& data, int to) {
  for (int64_t at = 0; at < int64_t(data.size()); at += kPiece) {
    const int n = int(std::min<int64_t>(kPiece, int64_t(data.size()) - at));
    MPI_Send(data.data() + at, n, MPI_FLOAT, to, 0, MPI_COMM_WORLD);
  }
}
void RecvFloats(std::vector<float>& data, int from) {
  for (int64_t at = 0; at < int64_t(data.size()); at += kPiece) {
    const int n = int(std::min<int64_t>(kPiece, int64_t(data.size()) - at));
    MPI_Recv(data.data() + at, n, MPI_FLOAT, from, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
}

// A view (any layout) as contiguous [B, heads, len, dim] fp32.
std::vector<float> Contiguous(const TensorRef<const void>& t, const ring::RowsOf& r) {
  std::vector<float> out(size_t(r.batch * r.heads * r.n * r.dim));
  for (int64_t b = 0; b < r.batch; ++b) {
    for (int64_t h = 0; h < r.heads; ++h) {
      for (int64_t i = 0; i < r.n; ++i) {
        std::memcpy(out.data() + ((b * r.heads + h) * r.n + i) * r.dim,
                    ValidProblem::Row(t, b, h, i), size_t(r.dim) * 4);
      }
    }
  }
  return out;
}

// The tensors of one rank's share, as ring::RingProblem wants them.
struct ShareTensors {
  std::vector<float> q, k, v, o, lse;
};

ring::RowsOf QRows(const Shape& s) { return {s.batch, s.heads, s.q_len, s.head_dim}; }
ring::RowsOf KRows(const Shape& s) { return {s.batch, s.kv_heads, s.kv_len, s.head_dim}; }
ring::RowsOf VRows(const Shape& s) { return {s.batch, s.kv_heads, s.kv_len, s.value_dim}; }
ring::RowsOf ORows(const Shape& s) { return {s.batch, s.heads, s.q_len, s.value_dim}; }
ring::RowsOf LseRows(const Shape& s) { return {s.batch, s.heads, s.q_len, 1}; }

std::vector<float> TakeShare(const std::vector<float>& whole, const ring::RowsOf& rows,
                             ring::Split split, int rank) {
  const std::vector<ring::PositionRun> runs = ring::RankRuns(split, rows.n, Ranks(), rank);
  std::vector<float> share(
      size_t(rows.batch * rows.heads * ring::RankRows(split, rows.n, Ranks(), rank) * rows.dim));
  ring::TakeRows(whole.data(), rows, runs, share.data());
  return share;
}

// Rank 0 sends each rank its rows and keeps its own.
ShareTensors Scatter(const Problem* whole, const Shape& s, ring::Split split) {
  ShareTensors mine;
  if (Rank() == 0) {
    const std::vector<float> q = Contiguous(whole->q, QRows(s));
    const std::vector<float> k = Contiguous(whole->k, KRows(s));
    const std::vector<float> v = Contiguous(whole->v, VRows(s));
    for (int r = Ranks() - 1; r >= 0; --r) {
      ShareTensors share{TakeShare(q, QRows(s), split, r),
                         TakeShare(k, KRows(s), split, r),
                         TakeShare(v, VRows(s), split, r),
                         {},
                         {}};
      if (r == 0) {
        mine = std::move(share);
        break;
      }
      SendFloats(share.q, r);
      SendFloats(share.k, r);
      SendFloats(share.v, r);
    }
  } else {
    const int64_t q_rows = ring::RankRows(split, s.q_len, Ranks(), Rank());
    const int64_t k_rows = ring::RankRows(split, s.kv_len, Ranks(), Rank());
    mine.q.resize(size_t(s.batch * s.heads * q_rows * s.head_dim));
    mine.k.resize(size_t(s.batch * s.kv_heads * k_rows * s.head_dim));
    mine.v.resize(size_t(s.batch * s.kv_heads * k_rows * s.value_dim));
    RecvFloats(mine.q, 0);
    RecvFloats(mine.k, 0);
    RecvFloats(mine.v, 0);
  }
  return mine;
}

// Rank 0 collects every rank's O and lse rows into whole [B, H, Lq, dv] and
// [B, H, Lq] tensors.
void Gather(ShareTensors& mine, const Shape& s, ring::Split split, std::vector<float>& o,
            std::vector<float>& lse) {
  if (Rank() != 0) {
    SendFloats(mine.o, 0);
    SendFloats(mine.lse, 0);
    return;
  }
  o.resize(size_t(s.batch * s.heads * s.q_len * s.value_dim));
  lse.resize(size_t(s.batch * s.heads * s.q_len));
  for (int r = 0; r < Ranks(); ++r) {
    const int64_t rows = ring::RankRows(split, s.q_len, Ranks(), r);
    ShareTensors share;
    if (r == 0) {
      share = std::move(mine);
    } else {
      share.o.resize(size_t(s.batch * s.heads * rows * s.value_dim));
      share.lse.resize(size_t(s.batch * s.heads * rows));
      RecvFloats(share.o, r);
      RecvFloats(share.lse, r);
    }
    const std::vector<ring::PositionRun> runs = ring::RankRuns(split, s.q_len, Ranks(), r);
    ring::PutRows(share.o.data(), ORows(s), runs, o.data());
    ring::PutRows(share.lse.data(), LseRows(s), runs, lse.data());
  }
}

// ------------------------------------------------------------ the table

// One rank's figures, gathered to rank 0.
struct RankFigures {
  double compute_s, comm_s, wait_s, total_s, overlap;
  int64_t q_rows, k_rows, pairs, blocks_run, blocks_skipped, bytes_sent;
  double peak_rss_bytes;
};

void PrintTable(const std::vector<RankFigures>& ranks, const Header& h, const RingArgs& args,
                const std::string& path) {
  fmt::print("ring: {} ranks, {} split, variant {} (path {}), {} f32\n", ranks.size(), args.split,
             args.variant, path, attn::Describe(h.shape, h.mask));
  fmt::print("{:>4} {:>8} {:>8} {:>14} {:>7} {:>11} {:>9} {:>9} {:>8} {:>10} {:>9} {:>10}\n",
             "rank", "queries", "keys", "pairs", "blocks", "compute ms", "comm ms", "wait ms",
             "overlap", "total ms", "GFLOP/s", "peak RSS");
  double slowest = 0;
  int64_t pairs = 0;
  for (size_t r = 0; r < ranks.size(); ++r) {
    const RankFigures& f = ranks[r];
    const double flops = 2.0 * double(f.pairs) * double(h.shape.head_dim + h.shape.value_dim);
    fmt::print(
        "{:>4} {:>8} {:>8} {:>14} {:>3}+{:<3} {:>11.2f} {:>9.2f} {:>9.2f} {:>8.2f} {:>10.2f} "
        "{:>9.2f} {:>10}\n",
        r, f.q_rows, f.k_rows, f.pairs, f.blocks_run, f.blocks_skipped, f.compute_s * 1e3,
        f.comm_s * 1e3, f.wait_s * 1e3, f.overlap, f.total_s * 1e3,
        f.compute_s > 0 ? flops / f.compute_s / 1e9 : 0.0, FormatBytes(f.peak_rss_bytes));
    slowest = std::max(slowest, f.total_s);
    pairs += f.pairs;
  }
  const double flops = 2.0 * double(pairs) * double(h.shape.head_dim + h.shape.value_dim);
  fmt::print(
      "time {:.3f} ms (slowest rank), {:.2f} GFLOP/s (visible pairs, all ranks); blocks: "
      "run+skipped\n",
      slowest * 1e3, slowest > 0 ? flops / slowest / 1e9 : 0.0);
}

int ExitCodeFor(const Status& status) {
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
    case StatusCode::kUnimplemented:
    case StatusCode::kNotFound:
    case StatusCode::kResourceExhausted:
      return kExitUsage;
    default:
      return kExitFailed;
  }
}

// An error every rank has reached (the header's, or a refusal that every
// rank's RingAttention returns alike): rank 0 prints the one message, then
// all wait for each other before exiting with `code`. The first rank to exit
// non-zero makes mpiexec kill the others, and a rank 0 killed before it
// printed left the user no error at all (seen under load).
int EveryRankFails(int code, const std::string& message) {
  if (Rank() == 0) {
    std::fflush(stdout);
    fmt::print(stderr, "attnlab: error: {}\n", message);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  return code;
}

// Rank 0's side of the header: the inputs and outputs checked, or why not.
struct Loaded {
  std::optional<Inputs> inputs;
  OutputBuffer o{DType::kF32, 0};
  std::vector<OutputFile> files;
  Problem problem;
};

Header LoadOnRankZero(const InputOptions& in, const RingArgs& args, Loaded& loaded) {
  Header h;
  try {
    if (args.split != "zigzag" && args.split != "contiguous") {
      Fail("bad --split '" + args.split + "': want zigzag or contiguous");
    }
    VariantOrFail(args.variant);
    loaded.inputs.emplace(in);
    const Inputs& inputs = *loaded.inputs;
    std::vector<NamedPath> outputs = {{"--out", args.out}};
    if (args.lse) outputs.push_back({"--lse", *args.lse});
    loaded.files = CheckOutputs(outputs, inputs.Files());
    loaded.o = inputs.MakeOutput();
    loaded.problem = inputs.MakeProblem(loaded.o);
    const Problem& p = loaded.problem;
    h.shape = p.shape;
    h.mask = p.mask;
    h.mask.key_lengths.reset();
    h.mask.sequences.reset();
    if (p.mask.sequences)
      Fail("ring: packed sequences (--cu-seqlens-q/-k) are not split over ranks");
    if (p.kv_pages) Fail("ring: a paged K/V cache (--block-table) is not split over ranks");
    if (p.mask.kind == MaskKind::kAdditive) {
      Fail(
          "ring: an additive mask (--mask-file) is not split over ranks; use --mask causal or "
          "window:L,R and --key-lengths");
    }
    const DTypes types = DTypesOf(p);
    if (types.q != DType::kF32 || types.k != DType::kF32 || types.v != DType::kF32 ||
        types.o != DType::kF32) {
      Fail("ring: fp32 tensors only, got " + attn::Describe(types));
    }
    h.scale = p.scale;
    h.softcap = p.modifiers.softcap;
    h.has_key_lengths = p.mask.key_lengths.has_value();
    if (h.has_key_lengths)
      h.key_lengths.assign(p.mask.key_lengths->begin(), p.mask.key_lengths->end());
    h.alibi_slopes.assign(p.modifiers.alibi_slopes.begin(), p.modifiers.alibi_slopes.end());
    h.sinks.assign(p.modifiers.sinks.begin(), p.modifiers.sinks.end());
    h.run = inputs.run_options();
  } catch (const CliError& e) {
    h.exit_code = e.code;
    h.error = e.what();
  }
  return h;
}

}  // namespace

int RingCommand(int argc, char** argv, const InputOptions& in, const RingArgs& args) {
  int level = 0;
  MPI_Init_thread(&argc, &argv, MPI_THREAD_SERIALIZED, &level);
  struct Finalize {
    ~Finalize() { MPI_Finalize(); }
  } finalize;
  const ring::Split split =
      args.split == "contiguous" ? ring::Split::kContiguous : ring::Split::kZigzag;

  // 1. Rank 0 reads; everyone learns the problem or the error.
  Loaded loaded;
  Header h = Rank() == 0 ? LoadOnRankZero(in, args, loaded) : Header{};
  h.Broadcast();
  if (h.exit_code != kExitOk) return EveryRankFails(h.exit_code, h.error);

  // 2. Shares out.
  const Shape& s = h.shape;
  ShareTensors mine = Scatter(Rank() == 0 ? &loaded.problem : nullptr, s, split);
  const int64_t q_rows = ring::RankRows(split, s.q_len, Ranks(), Rank());
  const int64_t k_rows = ring::RankRows(split, s.kv_len, Ranks(), Rank());
  mine.o.resize(size_t(s.batch * s.heads * q_rows * s.value_dim));
  mine.lse.resize(size_t(s.batch * s.heads * q_rows));

  // 3. The ring.
  ring::RingProblem share;
  share.split = split;
  Problem& p = share.problem;
  p.shape = s;
  p.q = {mine.q.data(), Strides::BHLD(s.heads, q_rows, s.head_dim), DType::kF32};
  p.k = {mine.k.data(), Strides::BHLD(s.kv_heads, k_rows, s.head_dim), DType::kF32};
  p.v = {mine.v.data(), Strides::BHLD(s.kv_heads, k_rows, s.value_dim), DType::kF32};
  p.o = {mine.o.data(), Strides::BHLD(s.heads, q_rows, s.value_dim), DType::kF32};
  p.lse = mine.lse;
  p.scale = h.scale;
  p.mask = h.mask;
  if (h.has_key_lengths) p.mask.key_lengths = std::span<const int32_t>(h.key_lengths);
  p.modifiers.softcap = h.softcap;
  p.modifiers.alibi_slopes = h.alibi_slopes;
  p.modifiers.sinks = h.sinks;
  ring::RingOptions options;
  options.variant = args.variant;
  options.run = h.run;
  ring::RingStats stats;
  const Status status = ring::RingAttention(share, MPI_COMM_WORLD, options, &stats);
  if (!status.ok()) return EveryRankFails(ExitCodeFor(status), "ring: " + status.message());

  // 4. Results and figures in.
  const RankFigures figures{stats.compute_s,  stats.comm_s,
                            stats.wait_s,     stats.total_s,
                            stats.overlap(),  q_rows,
                            k_rows,           stats.pairs,
                            stats.blocks_run, stats.blocks_skipped,
                            stats.bytes_sent, ring::PeakRssBytes()};
  std::vector<RankFigures> all(Ranks());
  MPI_Gather(&figures, sizeof(RankFigures), MPI_BYTE, all.data(), sizeof(RankFigures), MPI_BYTE, 0,
             MPI_COMM_WORLD);
  std::vector<float> o_whole, lse_whole;
  Gather(mine, s, split, o_whole, lse_whole);
  if (Rank() != 0) return kExitOk;
  if (!args.quiet) PrintTable(all, h, args, stats.path);
  const Problem& whole = loaded.problem;  // O through the inputs' layout
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t hd = 0; hd < s.heads; ++hd) {
      for (int64_t i = 0; i < s.q_len; ++i) {
        std::memcpy(ValidProblem::Row(whole.o, b, hd, i),
                    o_whole.data() + ((b * s.heads + hd) * s.q_len + i) * s.value_dim,
                    size_t(s.value_dim) * 4);
      }
    }
  }
  WriteNpyOutput(loaded.files[0], loaded.inputs->OutputShape(), loaded.o);
  if (args.lse) WriteNpyOutput(loaded.files[1], loaded.inputs->LseShape(), lse_whole);
  return kExitOk;
}

}  // namespace attn::cli

#else  // no MPI

namespace attn::cli {

int RingCommand(int, char**, const InputOptions&, const RingArgs&) {
  Fail(
      "ring: this attnlab was built without MPI (install openmpi-bin and libopenmpi-dev, e.g. "
      "with scripts/install-deps.sh, and configure again)");
}

}  // namespace attn::cli

#endif
