// Interrupting and resuming attnlab_bench (bench/README.md, "Interruption and resume").
//
// Interrupting. SIGINT, SIGTERM and SIGHUP only set a flag (InstallInterruptHandlers). Every
// case checks it before it starts and once per iteration of its timing loop and then skips
// itself as `interrupted: ...` (SkipIfInterrupted, StopIfInterrupted): the run ends within one
// iteration, Google Benchmark closes the JSON, and every case that did not finish says so. A
// second signal kills at once (the default action), unless it comes within 0.5 s of the first:
// a Ctrl-C reaches attnlab_bench both from the terminal and from a parent that forwards it
// (`attnlab bench`, scripts/main.sh), and that is one interruption. A run killed outright
// (SIGKILL, OOM) leaves the JSON cut after the last case reported: Google Benchmark 1.7.1
// flushes the file after every case (Report() in its src/benchmark.cc).
//
// Resuming. ReadBenchJson reads such a file, closed or cut anywhere: nlohmann::json cannot parse
// a prefix, so a scanner that knows strings and escapes finds the context and each complete
// {...} entry of "benchmarks", and nlohmann parses each alone. ResumeFile says how many
// repetitions of each case are finished; JsonFileReporter writes the resumed file: the old
// context and finished entries, then the new runs.
#ifndef ATTNLAB_BENCH_RESUME_H_
#define ATTNLAB_BENCH_RESUME_H_

#include <benchmark/benchmark.h>

#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

namespace attn::bench {

// ---------------------------------------------------------------- interruption

// Catches SIGINT, SIGTERM and SIGHUP, except those ignored at startup (nohup; the SIGINT of a
// command a script starts with `&`).
void InstallInterruptHandlers();
// The signal that interrupted the run; 0 while none has.
int InterruptSignal();
const char* SignalName(int sig);  // "SIGINT", "SIGTERM", "SIGHUP"
// At the top of a case function: when interrupted, skips the run as `interrupted: <signal>
// before this case ran` and returns true (the caller returns).
bool SkipIfInterrupted(benchmark::State& state);
// Inside a timing loop, once per iteration: when interrupted, skips the run as `interrupted:
// <signal> during this case` and returns true (the caller breaks out of the loop).
bool StopIfInterrupted(benchmark::State& state);

// ---------------------------------------------------------------- reading

// A Google Benchmark JSON file, complete or cut short anywhere.
struct BenchJson {
  bool has_context = false;             // its "context" object is complete
  nlohmann::ordered_json context;       // that object
  std::vector<std::string> texts;       // each complete entry of "benchmarks", as in the file
  std::vector<nlohmann::json> entries;  // the same entries parsed (NaN, Infinity read as null)
  bool has_benchmarks = false;          // its "benchmarks" array has begun
  bool closed = false;                  // the file ends with its closing brackets
};
// Throws std::runtime_error ("byte N: ...") when `text` is not (a prefix of) such a file.
BenchJson ReadBenchJson(const std::string& text);

// The case an entry belongs to: its run_name without the tokens Google Benchmark appends
// (real_time, repeats:3, min_time:0.067, ...), i.e. the registered name.
std::string CaseName(const std::string& run_name);
// A repetition that does not run again: a result, or a skip for a final reason (over budget:,
// failed check:, not run:). Not an aggregate, not `interrupted:`.
bool IsFinishedRun(const nlohmann::json& entry);

// ---------------------------------------------------------------- resuming

// The file a run resumes (--resume=FILE) and what it holds per case.
struct ResumeFile {
  struct Earlier {
    int finished = 0;         // finished repetitions
    std::string run_name;     // as the file names them
    int64_t repetitions = 0;  // the "repetitions" they record
  };
  std::string path;
  BenchJson json;
  std::map<std::string, Earlier> cases;  // by CaseName, cases with a finished repetition
  std::set<std::string> rerun;           // cases this run runs (again)

  // Reads `path` (throws std::runtime_error naming it).
  static ResumeFile Read(const std::string& path);
  int Finished(const std::string& case_name) const;
  // The entries the new file keeps, in file order: all but the `interrupted:` skips and the
  // aggregates of the cases that run again.
  std::vector<const std::string*> Kept() const;
};

// The attnlab_* keys that must agree to mix two runs in one file (git commit, suite, threads,
// CPU), as "git commit abc (now def), threads 1,2 (now 1)"; empty when they all agree.
std::string ContextDifferences(const nlohmann::ordered_json& file_context,
                               const std::map<std::string, std::string>& now);
// Whether the run may continue `path` (context `file_context`): not when ContextDifferences
// finds any, unless `force`; then `forced` gets " (--resume_force: <differences>)" for
// attnlab_resumed_runs. Says why on stderr.
bool MayResume(const std::string& path, const nlohmann::ordered_json& file_context,
               const std::map<std::string, std::string>& now, bool force, std::string* forced);
// Appends "<UTC date> <what>" to the context's attnlab_resumed_runs ("; "-separated).
void NoteResumedRun(nlohmann::ordered_json& context, const std::string& what);

// Writes `text` to path + ".tmp" and renames it over `path`: readers see the old file or the
// new one, never a part. False (errno set) when it cannot.
bool WriteFileAtomically(const std::string& path, const std::string& text);

// ---------------------------------------------------------------- writing

// Google Benchmark's JSON file reporter, which also counts the finished runs per case. Resuming
// (`resume` not null), Google Benchmark opens the file at resume->path + ".tmp"; this writes
// there the old context (with `note` added to attnlab_resumed_runs) and the kept entries, then
// renames it over resume->path, so the file is never without them. New runs of a case that
// already had finished repetitions get its old name and the repetition indices after those, and
// their aggregates are left out (they would summarize only the new repetitions).
class JsonFileReporter : public benchmark::JSONReporter {
 public:
  JsonFileReporter(const ResumeFile* resume, std::string note);
  bool ReportContext(const Context& context) override;
  void ReportRuns(const std::vector<Run>& runs) override;
  int Finished(const std::string& case_name) const;  // finished runs reported by this run

 private:
  const ResumeFile* resume_;
  std::string note_;
  bool need_comma_ = false;
  std::map<std::string, int> finished_;
};

// The file a resume with nothing to run leaves: the old context and every entry, closed (a file
// cut after its last entry gets its closing brackets).
std::string ClosedBenchJson(const ResumeFile& resume);

}  // namespace attn::bench

#endif  // ATTNLAB_BENCH_RESUME_H_
