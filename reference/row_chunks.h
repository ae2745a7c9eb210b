// The reference's long loops on every core, with results that do not depend
// on how many.
//
// The fp64 backward and its error bounds are O(B·H·Lq·Lk·d) in scalar double:
// at Lq = Lk = 16384 that is minutes per shape on one core, and the accuracy
// run (bench/accuracy.cc) needs ten such shapes. Query rows are independent
// but for the sums over them (dK, dV and their bounds), so the rows are cut
// into a fixed number of chunks, a function of the row count alone; each
// chunk sums into its own partial and the partials are added in chunk order.
// The arithmetic of every row stays the plain loop it was; only where a dK
// or dV sum is split between chunks does its rounding differ from one pass
// over all rows, and it is the same on every machine and thread count.
#ifndef ATTNLAB_REFERENCE_ROW_CHUNKS_H_
#define ATTNLAB_REFERENCE_ROW_CHUNKS_H_

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

namespace attn::reference {

// How many chunks `rows` query rows are cut into: 1 up to 256 rows (the
// tests' shapes run as one pass, as before), at most 8 (each chunk may hold a
// partial of dK and dV).
int64_t RowChunkCount(int64_t rows);

// body(chunk, begin, end) for every chunk of [0, rows) (RowChunkCount pieces
// of nearly equal size), on up to std::thread::hardware_concurrency()
// threads, the last chunk first (causal rows grow longer with i). Returns
// when all have run. `body` must not throw.
void ForEachRowChunk(int64_t rows,
                     const std::function<void(int64_t chunk, int64_t begin, int64_t end)>& body);

// sum[x] += part[x] (an empty part: a chunk that added nothing). Callers add
// their chunks' parts in chunk order.
template <class T>
void AddPartial(std::span<T> sum, const std::vector<T>& part) {
  for (size_t x = 0; x < part.size(); ++x) sum[x] += part[x];
}

}  // namespace attn::reference

#endif  // ATTNLAB_REFERENCE_ROW_CHUNKS_H_
