#include "kernels/internal/bytes.h"

#include <cctype>
#include <cstdio>
#include <string>

namespace attn {

std::optional<size_t> ParseBytes(std::string_view text) {
  // A decimal number (digits, at most one '.'), then an optional unit.
  size_t i = 0;
  double value = 0;
  int digits = 0, dots = 0;
  for (; i < text.size() && (std::isdigit(static_cast<unsigned char>(text[i])) || text[i] == '.');
       ++i) {
    (text[i] == '.' ? dots : digits) += 1;
  }
  if (digits == 0 || dots > 1) return std::nullopt;  // empty, ".", 1.5.3G
  try {
    value = std::stod(std::string(text.substr(0, i)));
  } catch (...) {
    return std::nullopt;
  }
  std::string_view suffix = text.substr(i);
  double mult = 1;
  if (suffix == "" || suffix == "B")
    mult = 1;
  else if (suffix == "K" || suffix == "KiB")
    mult = 1024.0;
  else if (suffix == "M" || suffix == "MiB")
    mult = 1024.0 * 1024;
  else if (suffix == "G" || suffix == "GiB")
    mult = 1024.0 * 1024 * 1024;
  else if (suffix == "T" || suffix == "TiB")
    mult = 1024.0 * 1024 * 1024 * 1024;
  else
    return std::nullopt;
  // 2^64 and beyond do not fit size_t (the conversion would be undefined:
  // it gave 0, a budget that refused everything).
  const double bytes = value * mult;
  if (!(bytes < 18446744073709551616.0)) return std::nullopt;
  return static_cast<size_t>(bytes);
}

std::string FormatBytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (bytes >= 1024 && u < 4) {
    bytes /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof(buf), u == 0 ? "%.0f %s" : "%.1f %s", bytes, units[u]);
  return buf;
}

}  // namespace attn
