// Ring attention (dist/ring.h), top to bottom:
//   1. who holds what: RankRuns (zigzag or contiguous chunks);
//   2. the share is checked on every rank, and the ranks agree on the
//      problem (a fingerprint of every shared field) and on one Status;
//   3. the two K/V buffers are allocated, this rank's K and V packed into
//      one, and the largest block pair is Prepared (validation and the
//      memory budget, before anything travels);
//   4. P steps: a helper thread exchanges K/V slices with the neighbours
//      while each (query piece, key run) block pair of the slice held runs
//      as an ordinary problem and its (O, lse) is merged into the result;
//   5. sinks join the denominator once, at the end.
// Traffic per rank and step: one K/V slice out and one in,
// B·Hkv·(N/P)·(dk + dv)·4 bytes each way, against 4·(N/P)²·H·d FLOPs of
// compute (dense): the compute per byte sent grows with N/P, so
// communication hides behind compute once N/P is past a point set by the
// link's bandwidth and latency (reports/ring_model.py works it out).
#include "dist/ring.h"

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace attn::ring {
namespace {

using Clock = std::chrono::steady_clock;
constexpr float kInf = std::numeric_limits<float>::infinity();

double Since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Chunk c of m over positions [0, n): n / m positions, one more for the
// first n % m chunks.
PositionRun Chunk(int64_t n, int64_t m, int64_t c) {
  const int64_t base = n / m, extra = n % m;
  return {c * base + std::min(c, extra), 0, base + (c < extra ? 1 : 0)};
}

// ----------------------------------------------------------- 2. agreement

// Fields every rank must agree on, by name; values that are arrays (key
// lengths, slopes, sinks) are compared through a hash of their bytes.
uint64_t HashBytes(const void* data, size_t bytes) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (size_t i = 0; i < bytes; ++i)
    h = (h ^ static_cast<const unsigned char*>(data)[i]) * 1099511628211ull;
  return h;
}

struct Field {
  const char* name;
  int64_t value;
  bool hashed = false;  // a hash of an array: its value says nothing to a reader
};

std::vector<Field> Fingerprint(const RingProblem& share, const RingOptions& options) {
  const Problem& p = share.problem;
  const Shape& s = p.shape;
  auto bits = [](std::optional<float> x) -> int64_t {
    if (!x) return -1;
    uint32_t u;
    std::memcpy(&u, &*x, 4);
    return u;
  };
  auto hash = [](auto span) -> int64_t {
    return int64_t(HashBytes(span.data(), span.size_bytes()) >> 1);
  };
  const std::span<const int32_t> lengths =
      p.mask.key_lengths ? *p.mask.key_lengths : std::span<const int32_t>();
  return {{"split", int64_t(share.split)},
          {"B", s.batch},
          {"H", s.heads},
          {"Hkv", s.kv_heads},
          {"Lq", s.q_len},
          {"Lk", s.kv_len},
          {"dk", s.head_dim},
          {"dv", s.value_dim},
          {"mask", int64_t(p.mask.kind)},
          {"diagonal", int64_t(p.mask.diagonal)},
          {"diagonal_offset", p.mask.diagonal_offset},
          {"window_left", p.mask.window_left},
          {"window_right", p.mask.window_right},
          {"key_lengths", p.mask.key_lengths ? hash(lengths) : -1, true},
          {"scale", bits(p.scale)},
          {"softcap", bits(p.modifiers.softcap)},
          {"alibi_slopes", hash(p.modifiers.alibi_slopes), true},
          {"sinks", hash(p.modifiers.sinks), true},
          {"variant", hash(std::span<const char>(options.variant)), true}};
}

// InvalidArgument naming every field the ranks disagree on. Collective.
Status AgreeOnProblem(const RingProblem& share, const RingOptions& options, MPI_Comm comm) {
  const std::vector<Field> fields = Fingerprint(share, options);
  std::vector<int64_t> lo, hi;
  for (const Field& f : fields) lo.push_back(f.value);
  hi = lo;
  MPI_Allreduce(MPI_IN_PLACE, lo.data(), int(lo.size()), MPI_INT64_T, MPI_MIN, comm);
  MPI_Allreduce(MPI_IN_PLACE, hi.data(), int(hi.size()), MPI_INT64_T, MPI_MAX, comm);
  std::string differ;
  for (size_t i = 0; i < fields.size(); ++i) {
    if (lo[i] == hi[i]) continue;
    differ += differ.empty() ? "" : ", ";
    differ += fields[i].name;
    if (!fields[i].hashed) {
      differ += " (" + std::to_string(lo[i]) + " to " + std::to_string(hi[i]) + ")";
    }
  }
  if (differ.empty()) return Status::Ok();
  return InvalidArgument("ring: the ranks disagree on " + differ);
}

// This rank's share on its own: what the ring cannot split, then its tensors
// as a problem of its local lengths (Validate's checks and messages), then
// the global key lengths.
Status CheckShare(const RingProblem& share, int ranks, int rank) {
  const Problem& p = share.problem;
  if (share.split != Split::kZigzag && share.split != Split::kContiguous) {
    return InvalidArgument("ring: split " + std::to_string(int(share.split)) + " is not a Split");
  }
  if (p.mask.kind == MaskKind::kAdditive) {
    return Unimplemented(
        "ring: an additive mask is not split over ranks (use causal, window or "
        "key lengths)");
  }
  if (p.mask.sequences) return Unimplemented("ring: packed sequences are not split over ranks");
  if (p.kv_pages) return Unimplemented("ring: paged K/V is not split over ranks");
  if (!p.weights.empty() || p.weights.data() != nullptr) {
    return Unimplemented("ring: no attention weights (each rank sees one K/V slice at a time)");
  }
  const DTypes types = DTypesOf(p);
  if (types.q != DType::kF32 || types.k != DType::kF32 || types.v != DType::kF32 ||
      types.o != DType::kF32) {
    return Unimplemented("ring: fp32 tensors only, got " + Describe(types));
  }
  if (p.shape.q_len < 0 || p.shape.kv_len < 0) {
    return InvalidArgument("ring: Lq=" + std::to_string(p.shape.q_len) +
                           " and Lk=" + std::to_string(p.shape.kv_len) + " must be >= 0");
  }
  if (p.mask.diagonal == Diagonal::kKeyLengths) {
    return Unimplemented(
        "ring: no key-lengths diagonal (a per-sequence KV-cache fill; ring splits one long "
        "sequence, whose diagonal is bottom-right, top-left or at an offset)");
  }
  Problem local = p;
  local.shape.q_len = RankRows(share.split, p.shape.q_len, ranks, rank);
  local.shape.kv_len = RankRows(share.split, p.shape.kv_len, ranks, rank);
  local.mask.key_lengths.reset();
  if (Status s = Validate(local).status(); !s.ok()) {
    return Status(s.code(), s.message() + " (this rank's share: Lq and Lk are its " +
                                std::to_string(local.shape.q_len) + " query and " +
                                std::to_string(local.shape.kv_len) + " key rows)");
  }
  if (p.mask.key_lengths) {
    const std::span<const int32_t> lengths = *p.mask.key_lengths;
    if (int64_t(lengths.size()) != p.shape.batch) {
      return InvalidArgument("key_lengths has " + std::to_string(lengths.size()) +
                             " entries, needs B=" + std::to_string(p.shape.batch));
    }
    for (size_t b = 0; b < lengths.size(); ++b) {
      if (lengths[b] < 0 || lengths[b] > p.shape.kv_len) {
        return InvalidArgument("key_lengths[" + std::to_string(b) +
                               "]=" + std::to_string(lengths[b]) +
                               " is outside [0, Lk=" + std::to_string(p.shape.kv_len) + "]");
      }
    }
  }
  return Status::Ok();
}

// ------------------------------------------------- 3. buffers and blocks

// A K/V slice in a ring buffer: K [B, Hkv, rows, dk] then V [B, Hkv, rows, dv].
struct Slice {
  const float* data;
  int64_t rows;
};

// Packs this rank's K and V rows into `out` (the Slice layout).
void PackKv(const Problem& p, int64_t rows, float* out) {
  const Shape& s = p.shape;
  float* v_out = out + s.batch * s.kv_heads * rows * s.head_dim;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.kv_heads; ++h) {
      for (int64_t j = 0; j < rows; ++j) {
        const int64_t row = (b * s.kv_heads + h) * rows + j;
        std::memcpy(out + row * s.head_dim, ValidProblem::Row(p.k, b, h, j), s.head_dim * 4);
        std::memcpy(v_out + row * s.value_dim, ValidProblem::Row(p.v, b, h, j), s.value_dim * 4);
      }
    }
  }
}

// Query rows of one block pair at most: the partial O is B·H·this·dv floats
// whatever N/P (4 MiB at B = 1, H = 4, dv = 128, where a whole run of
// N/P = 32768 rows would take 64 MiB), and flash still has B·H·2048/64 row
// tiles to share among its threads. Cutting a run costs no traffic: flash
// reads K and V once per row tile either way.
constexpr int64_t kQueryPieceRows = 2048;

// `runs` cut into pieces of at most `most` rows.
std::vector<PositionRun> Pieces(const std::vector<PositionRun>& runs, int64_t most) {
  std::vector<PositionRun> pieces;
  for (const PositionRun& r : runs) {
    for (int64_t at = 0; at < r.len; at += most) {
      pieces.push_back({r.global + at, r.local + at, std::min(most, r.len - at)});
    }
  }
  return pieces;
}

// Where the global problem's diagonal meets key 0 from query 0.
int64_t GlobalOffset(const Problem& p) {
  if (p.mask.diagonal == Diagonal::kAt) return p.mask.diagonal_offset;
  return p.mask.diagonal == Diagonal::kTopLeft ? 0 : p.shape.kv_len - p.shape.q_len;
}

// Uninitialized floats: every element is written before it is read (a K/V
// slice by PackKv or a receive, a partial O by its kernel), so zero-filling
// them would be memory traffic for nothing (two slices of N/P rows a call).
struct Floats {
  std::unique_ptr<float[]> values;
  size_t count = 0;
  void Allocate(size_t n) {
    values = std::make_unique_for_overwrite<float[]>(n);
    count = n;
  }
  float* data() const { return values.get(); }
  size_t size() const { return count; }
};

// The partial result of one block pair and the key lengths it sees.
struct Partial {
  Floats o;
  std::vector<float> lse;
  std::vector<int32_t> key_lengths;
};

// Query run `qr` of this rank against key run `kr` of `slice`: an ordinary
// problem whose diagonal is the global one moved to the runs' origins.
Problem BlockProblem(const Problem& p, float scale, const PositionRun& qr, const PositionRun& kr,
                     const Slice& slice, Partial& part) {
  const Shape& s = p.shape;
  Problem block;
  block.shape = {s.batch, s.heads, s.kv_heads, qr.len, kr.len, s.head_dim, s.value_dim};
  block.q = {ValidProblem::Row(p.q, 0, 0, qr.local), p.q.strides, DType::kF32};
  const float* v_part = slice.data + s.batch * s.kv_heads * slice.rows * s.head_dim;
  block.k = {slice.data + kr.local * s.head_dim, Strides::BHLD(s.kv_heads, slice.rows, s.head_dim),
             DType::kF32};
  block.v = {v_part + kr.local * s.value_dim, Strides::BHLD(s.kv_heads, slice.rows, s.value_dim),
             DType::kF32};
  block.o = {part.o.data(), Strides::BHLD(s.heads, qr.len, s.value_dim), DType::kF32};
  block.lse = std::span<float>(part.lse.data(), size_t(s.batch * s.heads * qr.len));
  block.scale = scale;
  block.mask.kind = p.mask.kind;
  block.mask.window_left = p.mask.window_left;
  block.mask.window_right = p.mask.window_right;
  block.mask.diagonal = Diagonal::kAt;
  block.mask.diagonal_offset = GlobalOffset(p) + qr.global - kr.global;
  if (p.mask.key_lengths) {
    part.key_lengths.resize(s.batch);
    for (int64_t b = 0; b < s.batch; ++b) {
      part.key_lengths[b] =
          int32_t(std::clamp<int64_t>((*p.mask.key_lengths)[b] - kr.global, 0, kr.len));
    }
    block.mask.key_lengths = std::span<const int32_t>(part.key_lengths);
  }
  block.modifiers.softcap = p.modifiers.softcap;
  block.modifiers.alibi_slopes = p.modifiers.alibi_slopes;  // sinks join once, at the end
  return block;
}

// ------------------------------------------------------------- 4. merge

// Folds a partial (O, lse) over keys disjoint from those already in (o, lse).
// A NaN lse on either side makes the row NaN (single-process semantics: a
// NaN logit poisons its row); a -inf one (nothing visible) adds nothing.
void MergeRow(float* o, float& lse, const float* o_part, float lse_part, int64_t dv) {
  if (lse_part == -kInf) return;
  if (std::isnan(lse) || std::isnan(lse_part)) {
    lse = std::numeric_limits<float>::quiet_NaN();
    std::fill(o, o + dv, lse);
    return;
  }
  if (lse == -kInf) {
    std::copy(o_part, o_part + dv, o);
    lse = lse_part;
    return;
  }
  const float m = std::max(lse, lse_part);
  const float w = std::exp(lse - m), w_part = std::exp(lse_part - m);
  const float sum = w + w_part;
  for (int64_t d = 0; d < dv; ++d) o[d] = (o[d] * w + o_part[d] * w_part) / sum;
  lse = m + std::log(sum);
}

// This rank's result: O rows through the caller's strides, lse [B, H, Lq].
struct Result {
  const Problem& p;
  int64_t rows;  // local query rows
  std::span<float> lse;
  float* ORow(int64_t b, int64_t h, int64_t i) const {
    return static_cast<float*>(ValidProblem::Row(p.o, b, h, i));
  }
  float& Lse(int64_t b, int64_t h, int64_t i) const {
    return lse[(b * p.shape.heads + h) * rows + i];
  }
};

void MergeBlock(const Result& r, const PositionRun& qr, const Partial& part) {
  const Shape& s = r.p.shape;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      for (int64_t i = 0; i < qr.len; ++i) {
        const int64_t row = (b * s.heads + h) * qr.len + i;
        MergeRow(r.ORow(b, h, qr.local + i), r.Lse(b, h, qr.local + i),
                 part.o.data() + row * s.value_dim, part.lse[row], s.value_dim);
      }
    }
  }
}

// ----------------------------------------------------------- 5. sinks

// The sink logit σ_h joins each row's denominator: lse' = log(e^lse + e^σ),
// O scaled by e^(lse - lse'). A fully masked row gets lse = σ, O = 0.
void AddSinks(const Result& r) {
  const Shape& s = r.p.shape;
  const std::span<const float> sinks = r.p.modifiers.sinks;
  for (int64_t b = 0; b < s.batch; ++b) {
    for (int64_t h = 0; h < s.heads; ++h) {
      const float sink = sinks[h];
      if (sink == -kInf) continue;
      for (int64_t i = 0; i < r.rows; ++i) {
        float& lse = r.Lse(b, h, i);
        if (std::isnan(lse)) continue;
        if (lse == -kInf) {
          lse = sink;
          continue;
        }
        const float m = std::max(lse, sink);
        const float total = m + std::log(std::exp(lse - m) + std::exp(sink - m));
        const float w = std::exp(lse - total);
        float* o = r.ORow(b, h, i);
        for (int64_t d = 0; d < s.value_dim; ++d) o[d] *= w;
        lse = total;
      }
    }
  }
}

// ------------------------------------------------------- 4. the exchange

// Sends `send` to rank `to` and receives into `recv` from rank `from`
// (counts in K/V rows of dk + dv floats), testing it every 20-256 µs so that
// a TCP transport keeps streaming while the caller computes. Runs on the helper
// thread; returns the seconds the exchange was in flight.
double Exchange(const float* send, int send_rows, float* recv, int recv_rows, int to, int from,
                int tag, MPI_Datatype row, MPI_Comm comm, const std::atomic<bool>& waited_for) {
  const Clock::time_point start = Clock::now();
  MPI_Request requests[2];
  MPI_Irecv(recv, recv_rows, row, from, tag, comm, &requests[0]);
  MPI_Isend(send, send_rows, row, to, tag, comm, &requests[1]);
  // Each test wakes the helper on the compute thread's core: every 20 µs at
  // first (a shared-memory exchange is over in a few), backing off to every
  // 256 µs, so that a long exchange over a slow link (tens of ms) wakes it a
  // few hundred times, not thousands, while a TCP socket buffer of a few MB
  // still never runs dry at 100 Gbit/s. (Over TCP at 1 Gbit/s on the 2-core
  // VM the compute ran 7-18% slower during exchanges with either schedule:
  // the kernel's TCP work shares the cores; the ring report shows it.)
  // Once the compute waits for it (`waited_for`), the core is idle: test
  // without sleeping, so that the end of the exchange is seen at once, not up
  // to 256 µs late (which was most of a step's wait at N/P = 128).
  auto pause = std::chrono::microseconds(20);
  for (int done = 0;;) {
    MPI_Testall(2, requests, &done, MPI_STATUSES_IGNORE);
    if (done) break;
    if (waited_for.load(std::memory_order_relaxed)) continue;
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds(256));
  }
  return Since(start);
}

// ------------------------------------------- 3 and 4. buffers and steps

// One rank's ring once the ranks agree on the problem.
class Ring {
 public:
  Ring(const RingProblem& share, MPI_Comm comm, const Variant& variant, const RunOptions& run)
      : p_(share.problem),
        s_(share.problem.shape),
        split_(share.split),
        comm_(comm),
        rank_(RankIn(comm)),
        ranks_(RanksIn(comm)),
        variant_(variant),
        run_(run),
        scale_(p_.scale ? *p_.scale : float(1.0 / std::sqrt(double(s_.head_dim)))),
        q_pieces_(Pieces(RankRuns(split_, s_.q_len, ranks_, rank_), kQueryPieceRows)),
        q_rows_(RankRows(split_, s_.q_len, ranks_, rank_)),
        row_floats_(s_.head_dim + s_.value_dim) {}

  // Two K/V slices of the largest rank's rows (one at P = 1) and one
  // partial, within the memory budget, the largest block pair Prepared,
  // this rank's K and V packed and its result cleared: everything that can
  // fail, before anything is exchanged.
  Status Allocate() {
    int64_t max_k_rows = 0, max_k_run = 0, max_q_run = 0;
    for (int r = 0; r < ranks_; ++r) {
      max_k_rows = std::max(max_k_rows, RankRows(split_, s_.kv_len, ranks_, r));
      for (const PositionRun& kr : RankRuns(split_, s_.kv_len, ranks_, r)) {
        max_k_run = std::max(max_k_run, kr.len);
      }
    }
    for (const PositionRun& qr : q_pieces_) max_q_run = std::max(max_q_run, qr.len);
    const int64_t slice_rows = s_.batch * s_.kv_heads * max_k_rows;  // MPI counts K/V rows
    if (slice_rows > INT_MAX) {
      return Unimplemented("ring: a K/V slice of " + std::to_string(slice_rows) +
                           " rows (B·Hkv·Lk/P) is more than one MPI message holds (2^31 - 1)");
    }
    const int64_t slice = std::max<int64_t>(1, slice_rows * row_floats_);
    const int64_t partial = std::max<int64_t>(1, s_.batch * s_.heads * max_q_run);
    const int64_t own_lse = p_.lse.empty() ? s_.batch * s_.heads * q_rows_ : 0;
    const size_t bytes =
        size_t(std::min(ranks_, 2) * slice + partial * (s_.value_dim + 1) + own_lse) * 4;
    const size_t budget = run_.memory_budget_bytes.value_or(DefaultMemoryBudgetBytes());
    if (bytes > budget) {
      return ResourceExhausted("ring: its K/V slices and partial take " + std::to_string(bytes) +
                               " bytes, over the memory budget of " + std::to_string(budget));
    }
    try {
      for (int b = 0; b < std::min(ranks_, 2); ++b) buffers_[b].Allocate(size_t(slice));
      part_.o.Allocate(size_t(partial * s_.value_dim));
      part_.lse.resize(size_t(partial));
      own_lse_.resize(size_t(own_lse));
    } catch (const std::bad_alloc&) {
      return ResourceExhausted("ring: cannot allocate its K/V slices and partial (" +
                               std::to_string(bytes) + " bytes)");
    }
    stats_.ranks = ranks_;
    stats_.buffer_bytes = bytes;
    if (max_q_run > 0 && max_k_run > 0) {
      const Problem largest = BlockProblem(p_, scale_, {0, 0, max_q_run}, {0, 0, max_k_run},
                                           {buffers_[0].data(), max_k_rows}, part_);
      ATTN_RETURN_IF_ERROR(Prepare(variant_, largest, run_).status());
    }
    PackKv(p_, RankRows(split_, s_.kv_len, ranks_, rank_), buffers_[0].data());
    ClearResult();
    return Status::Ok();
  }

  // The P steps. A kernel that fails (it should not: the largest block was
  // Prepared) stops this rank's compute, not the exchanges, so that no
  // neighbour waits forever; its Status is returned after the last step.
  Status Turn() {
    MPI_Datatype kv_row;
    MPI_Type_contiguous(int(row_floats_), MPI_FLOAT, &kv_row);
    MPI_Type_commit(&kv_row);
    Status failed = Status::Ok();
    int held = 0;  // the buffer holding the slice of rank `source`
    for (int step = 0; step < ranks_; ++step) {
      const int source = (rank_ - step + ranks_) % ranks_;
      const int64_t rows = RankRows(split_, s_.kv_len, ranks_, source);
      std::thread helper;
      double in_flight = 0;
      std::atomic<bool> waited_for{false};
      if (step + 1 < ranks_) {
        const int next = (source - 1 + ranks_) % ranks_;
        const int send_rows = int(s_.batch * s_.kv_heads * rows);
        const int recv_rows =
            int(s_.batch * s_.kv_heads * RankRows(split_, s_.kv_len, ranks_, next));
        stats_.bytes_sent += int64_t(send_rows) * row_floats_ * 4;
        helper = std::thread([&, send_rows, recv_rows, step] {
          in_flight = Exchange(buffers_[held].data(), send_rows, buffers_[1 - held].data(),
                               recv_rows, (rank_ + 1) % ranks_, (rank_ - 1 + ranks_) % ranks_, step,
                               kv_row, comm_, waited_for);
        });
      }
      const Clock::time_point compute = Clock::now();
      if (failed.ok()) failed = Compute(source, {buffers_[held].data(), rows});
      stats_.compute_s += Since(compute);
      if (helper.joinable()) {
        const Clock::time_point wait = Clock::now();
        waited_for = true;
        helper.join();
        stats_.wait_s += Since(wait);
        stats_.comm_s += in_flight;
      }
      held = 1 - held;
    }
    MPI_Type_free(&kv_row);
    return failed;
  }

  const Result& result() const { return result_; }
  const RingStats& stats() const { return stats_; }

 private:
  // O = 0 and lse = -inf on every row: what a row with nothing visible keeps.
  void ClearResult() {
    result_.lse = p_.lse.empty() ? std::span<float>(own_lse_) : p_.lse;
    for (int64_t b = 0; b < s_.batch; ++b) {
      for (int64_t h = 0; h < s_.heads; ++h) {
        for (int64_t i = 0; i < q_rows_; ++i) {
          std::fill(result_.ORow(b, h, i), result_.ORow(b, h, i) + s_.value_dim, 0.0f);
          result_.Lse(b, h, i) = -kInf;
        }
      }
    }
  }

  // Every query piece against every key run of `source`'s slice: skipped
  // when the mask hides the pair entirely, else run and merged.
  Status Compute(int source, const Slice& slice) {
    for (const PositionRun& qr : q_pieces_) {
      for (const PositionRun& kr : RankRuns(split_, s_.kv_len, ranks_, source)) {
        const Problem block = BlockProblem(p_, scale_, qr, kr, slice, part_);
        StatusOr<ValidProblem> valid = Validate(block);
        ATTN_RETURN_IF_ERROR(valid.status());
        const int64_t pairs = VisiblePairs(*valid);
        if (pairs == 0) {
          ++stats_.blocks_skipped;
          continue;
        }
        RunStats run_stats;
        ATTN_RETURN_IF_ERROR(Run(variant_, block, run_, &run_stats));
        MergeBlock(result_, qr, part_);
        stats_.pairs += pairs;
        ++stats_.blocks_run;
        stats_.workspace_peak_bytes =
            std::max(stats_.workspace_peak_bytes, run_stats.workspace_peak_bytes);
        if (stats_.path.empty()) stats_.path = run_stats.path;
      }
    }
    return Status::Ok();
  }

  const Problem& p_;
  const Shape& s_;
  const Split split_;
  const MPI_Comm comm_;
  const int rank_, ranks_;
  const Variant& variant_;
  const RunOptions run_;
  const float scale_;
  const std::vector<PositionRun> q_pieces_;
  const int64_t q_rows_, row_floats_;
  Floats buffers_[2];  // the slice held and the one arriving (P > 1)
  Partial part_;
  std::vector<float> own_lse_;  // lse when the caller wants none
  Result result_{p_, q_rows_, {}};
  RingStats stats_;
};

}  // namespace

const char* SplitName(Split split) { return split == Split::kZigzag ? "zigzag" : "contiguous"; }

std::vector<PositionRun> RankRuns(Split split, int64_t n, int ranks, int rank) {
  std::vector<PositionRun> chunks;
  if (split == Split::kContiguous) {
    chunks.push_back(Chunk(n, ranks, rank));
  } else {
    chunks.push_back(Chunk(n, 2 * int64_t(ranks), rank));
    chunks.push_back(Chunk(n, 2 * int64_t(ranks), 2 * int64_t(ranks) - 1 - rank));
  }
  std::vector<PositionRun> runs;
  int64_t local = 0;
  for (PositionRun c : chunks) {
    if (c.len == 0) continue;
    if (!runs.empty() && runs.back().global + runs.back().len == c.global) {
      runs.back().len += c.len;  // P = 1: the two chunks are one run
    } else {
      c.local = local;
      runs.push_back(c);
    }
    local += c.len;
  }
  return runs;
}

int64_t RankRows(Split split, int64_t n, int ranks, int rank) {
  int64_t rows = 0;
  for (const PositionRun& r : RankRuns(split, n, ranks, rank)) rows += r.len;
  return rows;
}

int RankIn(MPI_Comm comm) {
  int rank = 0;
  MPI_Comm_rank(comm, &rank);
  return rank;
}

int RanksIn(MPI_Comm comm) {
  int ranks = 1;
  MPI_Comm_size(comm, &ranks);
  return ranks;
}

double PeakRssBytes() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_maxrss) * 1024.0;  // Linux: KiB
}

Status AgreeOnStatus(const Status& mine, MPI_Comm comm) {
  const int rank = RankIn(comm), ranks = RanksIn(comm);
  int first = mine.ok() ? ranks : rank;
  MPI_Allreduce(MPI_IN_PLACE, &first, 1, MPI_INT, MPI_MIN, comm);
  if (first == ranks) return Status::Ok();
  int code = int(mine.code());
  std::string message = mine.message();
  int length = int(message.size());
  MPI_Bcast(&code, 1, MPI_INT, first, comm);
  MPI_Bcast(&length, 1, MPI_INT, first, comm);
  message.resize(length);
  MPI_Bcast(message.data(), length, MPI_CHAR, first, comm);
  return Status(StatusCode(code), "rank " + std::to_string(first) + ": " + message);
}

Status RingAttention(const RingProblem& share, MPI_Comm comm, const RingOptions& options,
                     RingStats* stats) {
  const Clock::time_point start = Clock::now();
  int initialized = 0, level = 0;
  MPI_Initialized(&initialized);
  if (!initialized) return InvalidArgument("ring: MPI is not initialized (MPI_Init_thread)");
  MPI_Query_thread(&level);
  const int rank = RankIn(comm), ranks = RanksIn(comm);

  // 2. Each share on its own, then the ranks against each other.
  Status mine = CheckShare(share, ranks, rank);
  if (mine.ok() && level < MPI_THREAD_SERIALIZED && ranks > 1) {
    mine = InvalidArgument(
        "ring: MPI was initialized below MPI_THREAD_SERIALIZED (the K/V "
        "exchange runs on a helper thread); use MPI_Init_thread");
  }
  const Variant* variant = FindVariant(options.variant);
  if (mine.ok() && variant == nullptr) {
    mine = NotFound("ring: no variant '" + options.variant + "' (" + VariantNames() + ")");
  }
  ATTN_RETURN_IF_ERROR(AgreeOnStatus(mine, comm));
  ATTN_RETURN_IF_ERROR(AgreeOnStatus(AgreeOnProblem(share, options, comm), comm));

  // 3. Buffers, the largest block Prepared; 4. the ring; 5. sinks.
  Ring ring(share, comm, *variant, options.run);
  ATTN_RETURN_IF_ERROR(AgreeOnStatus(ring.Allocate(), comm));
  ATTN_RETURN_IF_ERROR(AgreeOnStatus(ring.Turn(), comm));
  if (!share.problem.modifiers.sinks.empty()) AddSinks(ring.result());
  RingStats st = ring.stats();
  st.total_s = Since(start);
  if (stats != nullptr) *stats = st;
  return Status::Ok();
}

void TakeRows(const float* whole, const RowsOf& t, std::span<const PositionRun> runs,
              float* share) {
  int64_t rows = 0;
  for (const PositionRun& r : runs) rows += r.len;
  for (int64_t bh = 0; bh < t.batch * t.heads; ++bh) {
    for (const PositionRun& r : runs) {
      std::memcpy(share + (bh * rows + r.local) * t.dim, whole + (bh * t.n + r.global) * t.dim,
                  size_t(r.len * t.dim) * 4);
    }
  }
}

void PutRows(const float* share, const RowsOf& t, std::span<const PositionRun> runs, float* whole) {
  int64_t rows = 0;
  for (const PositionRun& r : runs) rows += r.len;
  for (int64_t bh = 0; bh < t.batch * t.heads; ++bh) {
    for (const PositionRun& r : runs) {
      std::memcpy(whole + (bh * t.n + r.global) * t.dim, share + (bh * rows + r.local) * t.dim,
                  size_t(r.len * t.dim) * 4);
    }
  }
}

}  // namespace attn::ring
