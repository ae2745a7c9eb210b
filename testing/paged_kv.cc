#include "testing/paged_kv.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <new>
#include <numeric>
#include <random>
#include <tuple>

namespace attn::testing {
namespace {

// FNV-1a of "paged": the seed the bench's tables had when the bench drew it
// from the case's name, kept so that its pools are laid out as before.
constexpr uint64_t kPagedTableSeed = 0xde9fcc34e6e7b794ull;

}  // namespace

const std::vector<int32_t>& PagedTable(int64_t batch, int64_t kv_len, int64_t block_size) {
  static std::map<std::tuple<int64_t, int64_t, int64_t>, std::vector<int32_t>> cache;
  std::vector<int32_t>& table = cache[{batch, kv_len, block_size}];
  if (table.empty()) {
    table.resize(batch * ((kv_len + block_size - 1) / block_size));
    std::iota(table.begin(), table.end(), 0);
    std::shuffle(table.begin(), table.end(), std::mt19937_64(kPagedTableSeed));
  }
  return table;
}

void* AllocateHugePageBytes(size_t bytes) {
  void* mem = mmap(nullptr, std::max<size_t>(bytes, 1), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) throw std::bad_alloc();
  madvise(mem, bytes, MADV_HUGEPAGE);  // advice: ignored where THP is off
  return mem;
}

void FreeHugePageBytes(void* p, size_t bytes) {
  if (p != nullptr) munmap(p, std::max<size_t>(bytes, 1));
}

void PageKv(int64_t block_size, Problem& p, PagedKv& pools) {
  const Shape& s = p.shape;
  const std::vector<int32_t>& table = PagedTable(s.batch, s.kv_len, block_size);
  const int64_t per_sequence = int64_t(table.size()) / s.batch;
  for (auto [t, pool, dim] :
       {std::tuple{&p.k, &pools.k, s.head_dim}, std::tuple{&p.v, &pools.v, s.value_dim}}) {
    pool->resize(table.size() * s.kv_heads * block_size * dim);
    for (int64_t b = 0; b < s.batch; ++b) {
      for (int64_t h = 0; h < s.kv_heads; ++h) {
        for (int64_t j = 0; j < s.kv_len; ++j) {
          const int64_t block = table[b * per_sequence + j / block_size];
          std::memcpy(pool->data() + ((block * s.kv_heads + h) * block_size + j % block_size) * dim,
                      ValidProblem::Row(*t, b, h, j), dim * sizeof(float));
        }
      }
    }
    *t = {pool->data(), Strides::BHLD(s.kv_heads, block_size, dim), DType::kF32};
  }
  p.kv_pages = KvPages{table, per_sequence, block_size, int64_t(table.size())};
}

}  // namespace attn::testing
