// Byte counts as people write them: "12G" in, "12.0 GiB" out. Used by the
// memory budget (ATTNLAB_MEMORY_BUDGET), its error messages, the CLI's
// --memory-budget and the benchmark's --memory_budget.
#ifndef ATTNLAB_KERNELS_INTERNAL_BYTES_H_
#define ATTNLAB_KERNELS_INTERNAL_BYTES_H_

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace attn {

// Parses "12G", "512M", "1.5K", "4096" (units B, K, M, G, T or KiB, MiB, GiB,
// TiB; powers of 1024) into bytes. nullopt for anything else: an empty
// string, a second '.', another unit, or 2^64 bytes and more.
std::optional<size_t> ParseBytes(std::string_view text);

// "16.0 GiB", "512.0 MiB", "12.3 KiB", "12 B".
std::string FormatBytes(double bytes);

}  // namespace attn

#endif  // ATTNLAB_KERNELS_INTERNAL_BYTES_H_
