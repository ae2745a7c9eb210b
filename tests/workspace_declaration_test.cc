// Every variant's declared workspace (Variant::workspace_bytes) over shapes up
// to the limits Validate allows, for 1 and kMaxThreads threads: never a
// wrapped (too small) size. A wrapped size passes the budget check and lets
// the kernel run off its scratch (issue 21: simd's packed K, Lk·dk·4 bytes,
// wrapped to 64 bytes). Checked two ways:
//   * monotone: doubling any dimension or the thread count never shrinks the
//     declaration (a wrap shows as a drop). Dimensions start at 16: below a
//     whole AVX-512 vector flash packs V (dv = 8 declares a V tile that
//     dv = 16, used in place, does not), a real and harmless drop;
//   * materializing variants declare at least their Lq x Lk score matrix.
// Only Prepare runs (it reads shapes, strides and addresses, never data), on
// placeholder addresses far apart, so shapes of 2^48 elements cost nothing.
// Under the asan preset UBSan also checks every int64 product on the way.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "kernels/registry.h"

namespace attn {
namespace {

// A problem of this shape over placeholder addresses 2^50 bytes apart (past
// any tensor's extent up to kMaxTensorElements floats).
Problem ShapeOnly(const Shape& s) {
  auto at = [](int k) { return reinterpret_cast<float*>(uintptr_t{1} << 50 << (k > 0 ? k : 0)); };
  return MakeProblem(s, at(0), at(1), at(2), at(3));
}

// The declared bytes, or nullopt when Validate refuses the shape.
std::optional<size_t> Declared(const Variant& v, const Shape& s, int threads) {
  StatusOr<ValidProblem> valid = Validate(ShapeOnly(s));
  if (!valid.ok()) return std::nullopt;
  return v.workspace_bytes(*valid, threads);
}

class WorkspaceDeclarationTest : public ::testing::TestWithParam<const Variant*> {};

TEST_P(WorkspaceDeclarationTest, NeverShrinksAsTheProblemGrows) {
  const Variant& v = *GetParam();
  const Shape base{1, 1, 1, 16, 16, 16, 16};
  int64_t Shape::*dims[] = {&Shape::batch,  &Shape::heads,    &Shape::q_len,
                            &Shape::kv_len, &Shape::head_dim, &Shape::value_dim};
  const char* names[] = {"B", "H", "Lq", "Lk", "dk", "dv"};
  int checked = 0;
  for (int d = 0; d < 6; ++d) {
    for (int threads : {1, kMaxThreads}) {
      Shape s = base;
      std::optional<size_t> previous;
      for (int bit = 4; bit <= 48; ++bit) {
        s.*dims[d] = int64_t{1} << bit;
        if (dims[d] == &Shape::heads) s.kv_heads = s.heads;
        const std::optional<size_t> bytes = Declared(v, s, threads);
        if (!bytes) break;  // past what Validate accepts
        ++checked;
        if (previous) {
          EXPECT_GE(*bytes, *previous)
              << v.name << ": " << names[d] << "=2^" << bit << " threads=" << threads
              << " declares less than " << names[d] << "=2^" << bit - 1;
        }
        if (threads == kMaxThreads) {
          EXPECT_GE(*bytes, *Declared(v, s, 1)) << v.name << " " << names[d] << "=2^" << bit;
        }
        if (v.materializes_scores) {
          const double scores = 4.0 * double(s.q_len) * double(s.kv_len);
          EXPECT_GE(double(*bytes), scores)
              << v.name << ": " << names[d] << "=2^" << bit << " declares less than its scores";
        }
        previous = bytes;
      }
    }
  }
  EXPECT_GT(checked, 6 * 2 * 25) << "the sweep stopped early: Validate refused small shapes";
}

INSTANTIATE_TEST_SUITE_P(Variants, WorkspaceDeclarationTest, ::testing::ValuesIn(Registry()),
                         [](const auto& info) { return std::string(info.param->name); });

}  // namespace
}  // namespace attn
