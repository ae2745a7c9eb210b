#include "reference/row_chunks.h"

#include <algorithm>
#include <atomic>
#include <thread>

namespace attn::reference {

int64_t RowChunkCount(int64_t rows) { return std::clamp<int64_t>((rows + 255) / 256, 1, 8); }

void ForEachRowChunk(int64_t rows,
                     const std::function<void(int64_t chunk, int64_t begin, int64_t end)>& body) {
  const int64_t chunks = RowChunkCount(rows);
  std::atomic<int64_t> next{chunks - 1};
  auto run = [&] {
    for (int64_t c; (c = next.fetch_sub(1)) >= 0;) {
      body(c, rows * c / chunks, rows * (c + 1) / chunks);
    }
  };
  const int64_t threads =
      std::min<int64_t>(chunks, std::max(1u, std::thread::hardware_concurrency()));
  std::vector<std::thread> helpers;
  for (int64_t t = 1; t < threads; ++t) helpers.emplace_back(run);
  run();
  for (std::thread& t : helpers) t.join();
}

}  // namespace attn::reference
