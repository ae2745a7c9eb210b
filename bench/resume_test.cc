// ReadBenchJson must read a benchmark JSON cut at any byte: every entry that is complete in the
// prefix, nothing else, and never throw on a prefix of a valid file. ResumeFile must count the
// finished repetitions per case and keep what a resume keeps.
#include "bench/resume.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace attn::bench {
namespace {

// Google Benchmark's layout, with what a naive scanner gets wrong: braces, brackets, escaped
// quotes and backslashes inside strings, NaN and -Infinity, nested objects in the context.
const char kFile[] = R"({
  "context": {
    "date": "2026-11-21T10:00:00+00:00",
    "host_name": "vm",
    "caches": [
      {
        "type": "Data",
        "level": 1
      }
    ],
    "load_avg": [1.5,0.25],
    "attnlab_args": "[\"--suite=quick\",\"--benchmark_filter=a|{b}\"]",
    "attnlab_suite": "quick"
  },
  "benchmarks": [
    {
      "name": "flash/N:256/d:64/causal:1/threads:1/real_time",
      "run_name": "flash/N:256/d:64/causal:1/threads:1/real_time",
      "run_type": "iteration",
      "repetitions": 1,
      "repetition_index": 0,
      "real_time": 1.5e+00,
      "causal": NaN
    },
    {
      "name": "naive/N:65536/d:64/causal:0/threads:1/real_time",
      "run_name": "naive/N:65536/d:64/causal:0/threads:1/real_time",
      "run_type": "iteration",
      "error_occurred": true,
      "error_message": "over budget: naive needs {16.0 GiB} of \"scores\" [B=1] \\ ok",
      "iterations": 0
    },
    {
      "name": "blas/N:256/d:64/causal:1/threads:1/real_time",
      "run_name": "blas/N:256/d:64/causal:1/threads:1/real_time",
      "run_type": "iteration",
      "error_occurred": true,
      "error_message": "interrupted: SIGINT before this case ran",
      "iterations": 1,
      "GFLOPS": -Infinity
    }
  ]
}
)";

// Offsets one past each entry's closing brace, found with the reader on the whole file.
std::vector<size_t> EntryEnds(const std::string& text, const BenchJson& whole) {
  std::vector<size_t> ends;
  size_t from = 0;
  for (const std::string& entry : whole.texts) {
    const size_t at = text.find(entry, from);
    EXPECT_NE(at, std::string::npos);
    ends.push_back(at + entry.size());
    from = ends.back();
  }
  return ends;
}

void ExpectPrefixes(const std::string& text, size_t step) {
  const BenchJson whole = ReadBenchJson(text);
  ASSERT_TRUE(whole.closed && whole.has_context);
  const std::vector<size_t> ends = EntryEnds(text, whole);
  const size_t context_end = text.find("\n  },") + 4;
  const size_t close = text.rfind('}') + 1;
  for (size_t cut = 0; cut <= text.size();
       cut += std::min(step, std::max<size_t>(1, text.size() - cut))) {
    SCOPED_TRACE("cut at byte " + std::to_string(cut));
    BenchJson part;
    ASSERT_NO_THROW(part = ReadBenchJson(text.substr(0, cut)));
    size_t want = 0;
    while (want < ends.size() && ends[want] <= cut) ++want;
    ASSERT_EQ(part.entries.size(), want);
    for (size_t i = 0; i < want; ++i) {
      EXPECT_EQ(part.texts[i], whole.texts[i]);
      EXPECT_EQ(part.entries[i], whole.entries[i]);
    }
    EXPECT_EQ(part.has_context, cut >= context_end);
    if (part.has_context) {
      EXPECT_EQ(part.context, whole.context);
    }
    EXPECT_EQ(part.closed, cut >= close);
    if (cut == text.size()) break;
  }
}

TEST(ReadBenchJsonTest, EveryPrefixOfASmallFile) {
  const std::string text = kFile;
  const BenchJson whole = ReadBenchJson(text);
  ASSERT_EQ(whole.entries.size(), 3u);
  EXPECT_TRUE(whole.entries[0]["causal"].is_null());  // NaN
  EXPECT_EQ(whole.entries[1]["error_message"],
            "over budget: naive needs {16.0 GiB} of \"scores\" [B=1] \\ ok");
  EXPECT_EQ(whole.context["attnlab_suite"], "quick");
  ExpectPrefixes(text, 1);
}

TEST(ReadBenchJsonTest, PrefixesOfARealDefaultSuiteFile) {
  // The sample report's raw results: 3 interleaved repetitions, aggregates, NaN cv values.
  std::ifstream in(std::string(ATTNLAB_SOURCE_DIR) +
                   "/reports/vm-2026-11-21/data/vm-2026-11-21.json");
  if (!in) GTEST_SKIP() << "the sample report's JSON is not in this tree";
  std::ostringstream text;
  text << in.rdbuf();
  const BenchJson whole = ReadBenchJson(text.str());
  size_t names = 0;
  for (size_t at = 0; (at = text.str().find("\"run_name\"", at)) != std::string::npos; ++at)
    ++names;
  EXPECT_EQ(whole.entries.size(), names);
  ExpectPrefixes(text.str(), 161803);  // ~20 cuts (3.2 MB), each anywhere in an entry
}

TEST(ReadBenchJsonTest, EmptyAndForeignFiles) {
  EXPECT_FALSE(ReadBenchJson("").has_context);
  EXPECT_FALSE(ReadBenchJson(" \n").has_context);
  EXPECT_THROW(ReadBenchJson("[1, 2]"), std::runtime_error);
  EXPECT_THROW(ReadBenchJson("hello"), std::runtime_error);
  EXPECT_THROW(ReadBenchJson(R"({"benchmarks": 5})"), std::runtime_error);
  EXPECT_THROW(ReadBenchJson(R"({"benchmarks": [1]})"), std::runtime_error);
  EXPECT_THROW(ReadBenchJson(R"({"benchmarks": [{"a": nope}]})"), std::runtime_error);
  EXPECT_FALSE(ReadBenchJson(R"({"results": []})").has_benchmarks);  // an accuracy JSON
}

TEST(ResumeTest, CaseNameStripsGoogleBenchmarkSuffixes) {
  EXPECT_EQ(CaseName("flash/N:256/d:64/causal:1/threads:2/min_time:0.067/repeats:3/real_time"),
            "flash/N:256/d:64/causal:1/threads:2");
  EXPECT_EQ(CaseName("layer/flash/N:512/d:64/threads:1/real_time"),
            "layer/flash/N:512/d:64/threads:1");
}

std::string Entry(const std::string& name, const std::string& type, int index,
                  const std::string& error = "") {
  std::string e = "{\"name\": \"" + name + "\", \"run_name\": \"" + name + "\", \"run_type\": \"" +
                  type + "\", \"repetitions\": 3, \"repetition_index\": " + std::to_string(index);
  if (!error.empty()) e += ", \"error_occurred\": true, \"error_message\": \"" + error + "\"";
  return e + "}";
}

TEST(ResumeTest, FinishedRepetitionsAndKeptEntries) {
  const std::string a = "flash/N:256/d:64/causal:1/threads:1/min_time:0.067/repeats:3/real_time";
  const std::string b = "naive/N:65536/d:64/causal:0/threads:1/real_time";
  const std::string c = "blas/N:256/d:64/causal:1/threads:1/min_time:0.067/repeats:3/real_time";
  const std::vector<std::string> entries = {
      Entry(a, "iteration", 0),
      Entry(a, "iteration", 1),
      Entry(a, "iteration", 2, "interrupted: SIGINT before this case ran"),
      Entry(a, "aggregate", 0),
      Entry(b, "iteration", 0, "over budget: naive needs 16 GiB"),
      Entry(c, "iteration", 0, "interrupted: SIGTERM during this case")};
  std::string text = "{\"context\": {\"attnlab_suite\": \"default\"}, \"benchmarks\": [";
  for (size_t i = 0; i < entries.size(); ++i) text += (i ? ",\n" : "\n") + entries[i];
  const std::string path = ::testing::TempDir() + "/resume_test.json";
  std::ofstream(path) << text;  // cut: no closing brackets
  ResumeFile file = ResumeFile::Read(path);
  std::remove(path.c_str());
  EXPECT_FALSE(file.json.closed);
  EXPECT_EQ(file.Finished("flash/N:256/d:64/causal:1/threads:1"), 2);
  EXPECT_EQ(file.Finished("naive/N:65536/d:64/causal:0/threads:1"), 1);  // a final skip
  EXPECT_EQ(file.Finished("blas/N:256/d:64/causal:1/threads:1"), 0);
  EXPECT_EQ(file.cases.at("flash/N:256/d:64/causal:1/threads:1").run_name, a);
  EXPECT_EQ(file.cases.at("flash/N:256/d:64/causal:1/threads:1").repetitions, 3);
  EXPECT_EQ(file.Kept().size(), entries.size());  // nothing runs again: all kept
  file.rerun = {"flash/N:256/d:64/causal:1/threads:1", "blas/N:256/d:64/causal:1/threads:1"};
  std::vector<std::string> kept;
  for (const std::string* e : file.Kept()) kept.push_back(*e);
  EXPECT_EQ(kept, (std::vector<std::string>{entries[0], entries[1], entries[4]}));
  // What a resume with nothing to run writes: the same entries, closed, loadable.
  file.rerun.clear();
  const BenchJson closed = ReadBenchJson(ClosedBenchJson(file));
  EXPECT_TRUE(closed.closed);
  EXPECT_EQ(closed.texts.size(), entries.size());
  EXPECT_NO_THROW(nlohmann::json::parse(ClosedBenchJson(file)));
}

TEST(ResumeTest, ContextDifferencesNameWhatDiffers) {
  const nlohmann::ordered_json before = {{"attnlab_git_commit", "abc"},
                                         {"attnlab_suite", "default"},
                                         {"attnlab_threads", "1,2"},
                                         {"attnlab_cpu_model", "AMD EPYC"}};
  std::map<std::string, std::string> now = {{"attnlab_git_commit", "abc"},
                                            {"attnlab_suite", "default"},
                                            {"attnlab_threads", "1,2"},
                                            {"attnlab_cpu_model", "AMD EPYC"},
                                            {"attnlab_compiler", "gcc"}};
  EXPECT_EQ(ContextDifferences(before, now), "");
  now["attnlab_git_commit"] = "def";
  now["attnlab_threads"] = "1";
  EXPECT_EQ(ContextDifferences(before, now),
            "git commit 'abc' (now 'def'), threads '1,2' (now '1')");
  EXPECT_EQ(ContextDifferences(nlohmann::ordered_json::object(), now).substr(0, 23),
            "git commit '(none)' (no");
}

}  // namespace
}  // namespace attn::bench
