#include "bench/resume.h"

#include <signal.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "bench/bench_common.h"

namespace attn::bench {

// ---------------------------------------------------------------- interruption
namespace {

std::atomic<int> g_signal{0};
std::atomic<int64_t> g_signal_ns{0};  // when the first signal came (CLOCK_MONOTONIC)
static_assert(std::atomic<int>::is_always_lock_free && std::atomic<int64_t>::is_always_lock_free,
              "the signal handler needs lock-free atomics");
constexpr int64_t kSameInterruptionNs = 500'000'000;

// Everything here is async-signal-safe: atomics, clock_gettime, write, signal, raise.
void WriteStderr(const char* text) { (void)!write(STDERR_FILENO, text, std::strlen(text)); }

void OnSignal(int sig) {
  timespec now_ts;
  clock_gettime(CLOCK_MONOTONIC, &now_ts);
  const int64_t now = int64_t{now_ts.tv_sec} * 1'000'000'000 + now_ts.tv_nsec;
  int64_t none = 0;
  if (g_signal_ns.compare_exchange_strong(none, now)) {
    g_signal.store(sig);
    WriteStderr("\nattnlab_bench: ");
    WriteStderr(SignalName(sig));
    WriteStderr(
        ": stopping when the running step ends, keeping the results so far (interrupt again to "
        "quit at once)\n");
    return;
  }
  if (now - g_signal_ns.load() < kSameInterruptionNs) return;  // the same one, delivered twice
  signal(sig, SIG_DFL);
  raise(sig);
}

std::string InterruptedMessage(const char* when) {
  return std::string("interrupted: ") + SignalName(InterruptSignal()) + " " + when;
}

}  // namespace

void InstallInterruptHandlers() {
  struct sigaction action = {};
  action.sa_handler = OnSignal;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) sigaddset(&action.sa_mask, sig);
  for (int sig : {SIGINT, SIGTERM, SIGHUP}) {
    struct sigaction before = {};
    if (sigaction(sig, nullptr, &before) == 0 && before.sa_handler == SIG_IGN) continue;
    sigaction(sig, &action, nullptr);
  }
}

int InterruptSignal() { return g_signal.load(std::memory_order_relaxed); }

const char* SignalName(int sig) {
  switch (sig) {
    case SIGINT:
      return "SIGINT";
    case SIGTERM:
      return "SIGTERM";
    case SIGHUP:
      return "SIGHUP";
  }
  return "a signal";
}

bool SkipIfInterrupted(benchmark::State& state) {
  if (InterruptSignal() == 0) return false;
  // Skipped from inside the timing loop, the run reports the iteration count Google Benchmark
  // asked for; skipped before it, 0. With repetitions that matters: 1.7.1's ComputeStats
  // BM_CHECKs that every repetition of a case ran the same count (src/statistics.cc) and
  // aborts the process when earlier repetitions of this case finished.
  for (auto _ : state) {
    state.SkipWithError(InterruptedMessage("before this case ran").c_str());
    break;
  }
  return true;
}

bool StopIfInterrupted(benchmark::State& state) {
  if (InterruptSignal() == 0) return false;
  state.SkipWithError(InterruptedMessage("during this case").c_str());
  return true;
}

// ---------------------------------------------------------------- reading
namespace {

constexpr size_t kCut = std::string::npos;  // "the text ends before this value does"

std::runtime_error ErrorAt(size_t at, const std::string& what) {
  return std::runtime_error("byte " + std::to_string(at) + ": " + what);
}

size_t SkipSpace(const std::string& t, size_t i) {
  while (i < t.size() && (t[i] == ' ' || t[i] == '\n' || t[i] == '\r' || t[i] == '\t')) ++i;
  return i;
}

// One past the string starting at t[i] == '"', or kCut.
size_t StringEnd(const std::string& t, size_t i) {
  for (++i; i < t.size(); ++i) {
    if (t[i] == '\\') {
      ++i;
    } else if (t[i] == '"') {
      return i + 1;
    }
  }
  return kCut;
}

// One past the JSON value starting at t[i], or kCut. Objects and arrays by bracket depth
// (brackets inside strings do not count); a scalar runs to the next delimiter.
size_t ValueEnd(const std::string& t, size_t i) {
  if (t[i] == '"') return StringEnd(t, i);
  if (t[i] != '{' && t[i] != '[') return t.find_first_of(",}] \t\r\n", i);
  int depth = 0;
  for (; i < t.size(); ++i) {
    if (t[i] == '"') {
      i = StringEnd(t, i);
      if (i == kCut) return kCut;
      --i;
    } else if (t[i] == '{' || t[i] == '[') {
      ++depth;
    } else if ((t[i] == '}' || t[i] == ']') && --depth == 0) {
      return i + 1;
    }
  }
  return kCut;
}

// Google Benchmark writes NaN and ±Infinity bare (the cv aggregate of a counter that is 0 is
// NaN); JSON has neither, so for nlohmann they become null. Strings are left alone.
std::string NonFiniteAsNull(const std::string& t) {
  std::string out;
  for (size_t i = 0; i < t.size();) {
    if (t[i] == '"') {
      const size_t end = std::min(StringEnd(t, i), t.size());
      out.append(t, i, end - i);
      i = end;
      continue;
    }
    bool replaced = false;
    for (const char* word : {"-Infinity", "Infinity", "-NaN", "NaN"}) {
      const size_t n = std::strlen(word);
      if (t.compare(i, n, word) == 0) {
        out += "null";
        i += n;
        replaced = true;
        break;
      }
    }
    if (!replaced) out += t[i++];
  }
  return out;
}

template <class Json>
Json ParseAt(const std::string& text, size_t at) {
  try {
    return Json::parse(text);
  } catch (const nlohmann::json::parse_error&) {
  }
  try {
    return Json::parse(NonFiniteAsNull(text));
  } catch (const nlohmann::json::parse_error& e) {
    throw ErrorAt(at, e.what());
  }
}

std::string StringField(const nlohmann::json& entry, const char* key) {
  auto it = entry.find(key);
  return it != entry.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::string RunName(const nlohmann::json& entry) {
  std::string name = StringField(entry, "run_name");
  return name.empty() ? StringField(entry, "name") : name;
}

bool IsAggregate(const nlohmann::json& entry) {
  return StringField(entry, "run_type") == "aggregate";
}

bool IsInterrupted(const nlohmann::json& entry) {
  std::string message = StringField(entry, "error_message");
  if (message.empty()) message = StringField(entry, "skip_message");  // Google Benchmark >= 1.8
  return message.rfind("interrupted: ", 0) == 0;
}

bool IsGoogleBenchmarkSuffix(const std::string& token) {
  for (const char* word : {"real_time", "process_time", "manual_time"}) {
    if (token == word) return true;
  }
  for (const char* prefix : {"iterations:", "repeats:", "min_time:", "min_warmup_time:"}) {
    if (token.rfind(prefix, 0) == 0) return true;
  }
  return false;
}

// The opening of a benchmark JSON as Google Benchmark writes it, with `entries` in its array
// (Google Benchmark's JSONReporter indents entries by 4 and separates them with ",\n").
std::string Opening(const nlohmann::ordered_json& context,
                    const std::vector<const std::string*>& entries) {
  std::string text = "{\n  \"context\": ";
  for (char c : context.dump(2, ' ', false, nlohmann::json::error_handler_t::replace)) {
    text += c;
    if (c == '\n') text += "  ";
  }
  text += ",\n  \"benchmarks\": [\n";
  for (size_t i = 0; i < entries.size(); ++i) {
    text += (i == 0 ? "    " : ",\n    ") + *entries[i];
  }
  return text;
}

}  // namespace

BenchJson ReadBenchJson(const std::string& t) {
  BenchJson out;
  size_t i = SkipSpace(t, 0);
  if (i == t.size()) return out;
  if (t[i] != '{') throw ErrorAt(i, "not a JSON object");
  ++i;
  while (true) {
    i = SkipSpace(t, i);
    if (i == t.size()) return out;
    if (t[i] == ',') {
      ++i;
      continue;
    }
    if (t[i] == '}') {
      out.closed = true;
      return out;
    }
    if (t[i] != '"') throw ErrorAt(i, "expected a key");
    const size_t key_end = StringEnd(t, i);
    if (key_end == kCut) return out;
    const std::string key = t.substr(i + 1, key_end - i - 2);
    i = SkipSpace(t, key_end);
    if (i == t.size()) return out;
    if (t[i] != ':') throw ErrorAt(i, "expected ':' after \"" + key + "\"");
    i = SkipSpace(t, i + 1);
    if (i == t.size()) return out;
    if (key != "benchmarks") {
      const size_t end = ValueEnd(t, i);
      if (end == kCut) return out;
      if (key == "context") {
        out.context = ParseAt<nlohmann::ordered_json>(t.substr(i, end - i), i);
        if (!out.context.is_object()) throw ErrorAt(i, "\"context\" is not an object");
        out.has_context = true;
      }
      i = end;
      continue;
    }
    if (t[i] != '[') throw ErrorAt(i, "\"benchmarks\" is not an array");
    out.has_benchmarks = true;
    for (++i;;) {
      i = SkipSpace(t, i);
      if (i == t.size()) return out;
      if (t[i] == ',') {
        ++i;
      } else if (t[i] == ']') {
        ++i;
        break;
      } else if (t[i] == '{') {
        const size_t end = ValueEnd(t, i);
        if (end == kCut) return out;
        out.texts.push_back(t.substr(i, end - i));
        out.entries.push_back(ParseAt<nlohmann::json>(out.texts.back(), i));
        i = end;
      } else {
        throw ErrorAt(i, "a \"benchmarks\" entry is not an object");
      }
    }
  }
}

std::string CaseName(const std::string& run_name) {
  std::string name;
  for (size_t start = 0; start <= run_name.size();) {
    const size_t end = std::min(run_name.find('/', start), run_name.size());
    const std::string token = run_name.substr(start, end - start);
    if (!IsGoogleBenchmarkSuffix(token)) name += (name.empty() ? "" : "/") + token;
    start = end + 1;
  }
  return name;
}

bool IsFinishedRun(const nlohmann::json& entry) {
  return !IsAggregate(entry) && !IsInterrupted(entry);
}

// ---------------------------------------------------------------- resuming

ResumeFile ResumeFile::Read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open: " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  ResumeFile file;
  file.path = path;
  try {
    file.json = ReadBenchJson(text.str());
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": not a Google Benchmark JSON: " + e.what());
  }
  if (file.json.closed && !file.json.has_benchmarks) {
    throw std::runtime_error(path + ": no \"benchmarks\" array: not a Google Benchmark JSON");
  }
  for (const nlohmann::json& entry : file.json.entries) {
    if (!IsFinishedRun(entry)) continue;
    Earlier& earlier = file.cases[CaseName(RunName(entry))];
    if (earlier.finished++ == 0) {
      earlier.run_name = RunName(entry);
      auto it = entry.find("repetitions");
      earlier.repetitions = it != entry.end() && it->is_number() ? it->get<int64_t>() : 1;
    }
  }
  return file;
}

int ResumeFile::Finished(const std::string& case_name) const {
  auto it = cases.find(case_name);
  return it == cases.end() ? 0 : it->second.finished;
}

std::vector<const std::string*> ResumeFile::Kept() const {
  std::vector<const std::string*> kept;
  for (size_t i = 0; i < json.entries.size(); ++i) {
    const nlohmann::json& entry = json.entries[i];
    const bool runs_again = rerun.count(CaseName(RunName(entry))) > 0;
    if (runs_again && (IsAggregate(entry) || IsInterrupted(entry))) continue;
    kept.push_back(&json.texts[i]);
  }
  return kept;
}

std::string ContextDifferences(const nlohmann::ordered_json& file_context,
                               const std::map<std::string, std::string>& now) {
  static const std::pair<const char*, const char*> kKeys[] = {{"attnlab_git_commit", "git commit"},
                                                              {"attnlab_suite", "suite"},
                                                              {"attnlab_threads", "threads"},
                                                              {"attnlab_cpu_model", "CPU"}};
  std::string differences;
  for (const auto& [key, what] : kKeys) {
    auto it = file_context.find(key);
    const std::string before =
        it != file_context.end() && it->is_string() ? it->get<std::string>() : "(none)";
    auto now_it = now.find(key);
    const std::string after = now_it == now.end() ? "(none)" : now_it->second;
    if (before == after) continue;
    differences += (differences.empty() ? "" : ", ") + std::string(what) + " '" + before +
                   "' (now '" + after + "')";
  }
  return differences;
}

bool MayResume(const std::string& path, const nlohmann::ordered_json& file_context,
               const std::map<std::string, std::string>& now, bool force, std::string* forced) {
  const std::string differences = ContextDifferences(file_context, now);
  if (differences.empty()) return true;
  if (!force) {
    std::fprintf(stderr,
                 "attnlab_bench: cannot resume %s: it was written by another run: %s. Resuming "
                 "would mix two datasets in one file: write a new file (drop --resume), or add "
                 "--resume_force to mix them anyway.\n",
                 path.c_str(), differences.c_str());
    return false;
  }
  std::fprintf(stderr, "attnlab_bench: warning: --resume_force: mixing runs in %s: %s\n",
               path.c_str(), differences.c_str());
  *forced = " (--resume_force: " + differences + ")";
  return true;
}

void NoteResumedRun(nlohmann::ordered_json& context, const std::string& what) {
  auto it = context.find("attnlab_resumed_runs");
  std::string runs = it != context.end() && it->is_string() ? it->get<std::string>() : "";
  context["attnlab_resumed_runs"] = runs + (runs.empty() ? "" : "; ") + UtcNow() + " " + what;
}

bool WriteFileAtomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

std::string ClosedBenchJson(const ResumeFile& resume) {
  return Opening(resume.json.context, resume.Kept()) + "\n  ]\n}\n";
}

// ---------------------------------------------------------------- writing

JsonFileReporter::JsonFileReporter(const ResumeFile* resume, std::string note)
    : resume_(resume), note_(std::move(note)) {}

bool JsonFileReporter::ReportContext(const Context& context) {
  if (resume_ == nullptr) return JSONReporter::ReportContext(context);
  std::ostream& out = GetOutputStream();
  if (resume_->json.has_context) {
    nlohmann::ordered_json old_context = resume_->json.context;
    NoteResumedRun(old_context, note_);
    const std::vector<const std::string*> kept = resume_->Kept();
    out << Opening(old_context, kept);
    need_comma_ = !kept.empty();
  } else {
    JSONReporter::ReportContext(context);  // nothing to keep: a new file
  }
  out.flush();
  const std::string tmp = resume_->path + ".tmp";
  if (!out || std::rename(tmp.c_str(), resume_->path.c_str()) != 0) {
    std::fprintf(stderr, "attnlab_bench: cannot write %s: %s\n", resume_->path.c_str(),
                 std::strerror(errno));
    return false;  // Google Benchmark then runs nothing
  }
  return true;
}

void JsonFileReporter::ReportRuns(const std::vector<Run>& runs) {
  std::vector<Run> out;
  for (Run run : runs) {
    const std::string name = CaseName(run.run_name.str());
    const bool interrupted = run.error_occurred && run.error_message.rfind("interrupted: ", 0) == 0;
    if (run.run_type == Run::RT_Iteration && !interrupted) ++finished_[name];
    const int before = resume_ == nullptr ? 0 : resume_->Finished(name);
    if (before > 0 && resume_->rerun.count(name) > 0) {
      if (run.run_type == Run::RT_Aggregate) continue;
      const ResumeFile::Earlier& earlier = resume_->cases.at(name);
      run.run_name = benchmark::BenchmarkName();
      run.run_name.function_name = earlier.run_name;
      run.repetition_index += before;
      run.repetitions = earlier.repetitions;
    }
    out.push_back(std::move(run));
  }
  if (out.empty()) return;
  if (need_comma_) GetOutputStream() << ",\n";
  need_comma_ = false;
  JSONReporter::ReportRuns(out);
}

int JsonFileReporter::Finished(const std::string& case_name) const {
  auto it = finished_.find(case_name);
  return it == finished_.end() ? 0 : it->second;
}

}  // namespace attn::bench
