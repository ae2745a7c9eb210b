#!/usr/bin/python3
"""Interrupting and resuming attnlab_bench and the main job (bench/README.md, "Interruption and
resume"): signals close the JSON, --resume runs exactly what is missing, a file cut anywhere
resumes, and scripts/main.sh continues an interrupted job.

Run by ctest (bench/CMakeLists.txt), one test group per ctest test:
  /usr/bin/python3 interrupt_test.py GROUP     GROUP in Signals Repetitions Truncated MainJob
Environment: ATTNLAB_BENCH (the attnlab_bench binary), ATTNLAB_SOURCE (the source tree).
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

BENCH = os.path.abspath(os.environ.get("ATTNLAB_BENCH", "build/release/bench/attnlab_bench"))
SOURCE = os.environ.get("ATTNLAB_SOURCE",
                        os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Every variant and the sgemm ceiling at one shape (6 cases), or at two (12), on one thread.
SHAPE = "N:256/d:64/causal:1/threads:1"
TWO_SHAPES = SHAPE + "|N:1024/d:64/causal:0/threads:1"
QUICK = ["--suite=quick", "--threads=1"]
PROGRESS = re.compile(r"^\[(\d+)/(\d+)\] (\S+)$")
GB_SUFFIX = re.compile(r"^(real_time|process_time|manual_time|(iterations|repeats|min_time|"
                       r"min_warmup_time):.*)$")


def case_name(entry):
    """The registered name of a benchmark entry (Google Benchmark's suffixes stripped)."""
    return "/".join(t for t in entry["run_name"].split("/") if not GB_SUFFIX.match(t))


def listed(name_filter):
    out = subprocess.run([BENCH, *QUICK, "--benchmark_list_tests",
                          "--benchmark_filter=" + name_filter],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    return sorted(case_name({"run_name": line}) for line in out.split())


def default_sigint():
    # The test may run where SIGINT is ignored (a background job); attnlab_bench keeps an
    # ignored SIGINT ignored, so give it the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run(args, stop_after=None, sig=None, cwd=None, program=None):
    """Runs attnlab_bench (or `program`); sends `sig` once `stop_after` progress lines are out.
    Returns (exit status, stderr lines, names of the progress lines)."""
    p = subprocess.Popen(program or [BENCH, *args], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, cwd=cwd, preexec_fn=default_sigint)
    lines, progress = [], []
    for line in p.stderr:
        lines.append(line.rstrip("\n"))
        m = PROGRESS.match(lines[-1])
        if m:
            progress.append(m.group(3))
            if len(progress) == stop_after:
                p.send_signal(sig)
    p.wait(timeout=120)
    return p.returncode, lines, progress


def load(path):
    with open(path) as f:
        return json.load(f)  # accepts Google Benchmark's bare NaN


def by_case(doc):
    cases = {}
    for e in doc["benchmarks"]:
        cases.setdefault(case_name(e), []).append(e)
    return cases


def interrupted(entry):
    return entry.get("error_message", "").startswith("interrupted: ")


class Case(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="attnlab-interrupt-")
        self.dir = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def assert_complete(self, path, cases, repetitions=1):
        """`path` loads and holds every case `repetitions` times, finished, none twice."""
        got = by_case(load(path))
        self.assertEqual(sorted(got), cases)
        for name, entries in got.items():
            runs = [e for e in entries if e["run_type"] == "iteration"]
            self.assertEqual(sorted(e["repetition_index"] for e in runs),
                             list(range(repetitions)), name)
            self.assertEqual({e["run_name"] for e in entries}, {entries[0]["run_name"]}, name)
            for e in runs:
                self.assertNotIn("error_message", e, name)
        return got


class Signals(Case):
    def interrupt_and_resume(self, sig, after):
        out = self.path("r.json")
        cases = listed(TWO_SHAPES)
        rc, err, progress = run([*QUICK, "--benchmark_min_time=0.05",
                                 "--benchmark_filter=" + TWO_SHAPES, "--benchmark_out=" + out],
                                stop_after=after, sig=sig)
        self.assertEqual(rc, 128 + sig, "\n".join(err))
        self.assertGreaterEqual(len(progress), after)
        doc = load(out)  # closed: json.load would fail on a cut file
        got = by_case(doc)
        self.assertEqual(sorted(got), cases)
        for name, entries in got.items():
            self.assertEqual(len(entries), 1, name)
        # Each case that started before the signal finished, but perhaps the one running then;
        # the rest say they were interrupted, and by what.
        for name in progress[:-1]:
            self.assertNotIn("error_message", got[name][0], name)
        self.assertTrue(not got[progress[-1]][0].get("error_occurred") or
                        interrupted(got[progress[-1]][0]))
        signame = signal.Signals(sig).name
        for name in set(cases) - set(progress):
            self.assertTrue(got[name][0]["error_message"].startswith("interrupted: " + signame),
                            got[name][0])
        missing = sorted(n for n, es in got.items() if interrupted(es[0]))
        self.assertGreater(len(missing), 0)
        self.assertTrue(any(f"Resume: attnlab_bench --resume={out}" in line for line in err))

        # --resume=FILE alone: FILE's command line, only the missing cases.
        rc, err, progress = run(["--resume=" + out])
        self.assertEqual(rc, 0, "\n".join(err))
        self.assertEqual(sorted(progress), missing)
        self.assertEqual(len(progress), len(set(progress)))
        self.assertTrue(any(f"{len(cases) - len(missing)} of {len(cases)} cases already there"
                            in line for line in err), err)
        final = self.assert_complete(out, cases)
        for name, entries in got.items():  # what finished before is kept as it was
            if name not in missing:
                self.assertEqual(final[name], entries)
        self.assertIn(f"ran {len(missing)} of {len(cases)} cases",
                      load(out)["context"]["attnlab_resumed_runs"])

        # Nothing missing: says so, runs nothing, leaves the file as it is.
        before = open(out).read()
        rc, err, progress = run(["--resume=" + out])
        self.assertEqual((rc, progress), (0, []))
        self.assertTrue(any(line.endswith("; nothing to run") for line in err), err)
        self.assertEqual(open(out).read(), before)

    def test_sigint(self):
        self.interrupt_and_resume(signal.SIGINT, 3)

    def test_sigterm(self):
        self.interrupt_and_resume(signal.SIGTERM, 7)

    def test_resume_refuses_another_configuration(self):
        out = self.path("r.json")
        rc, err, _ = run([*QUICK, "--benchmark_min_time=0.01", "--benchmark_filter=" + SHAPE,
                          "--benchmark_out=" + out], stop_after=2, sig=signal.SIGTERM)
        self.assertEqual(rc, 143, "\n".join(err))
        before = open(out).read()
        rc, err, progress = run(["--suite=quick", "--threads=2", "--benchmark_filter=" + SHAPE,
                                 "--resume=" + out])
        self.assertEqual((rc, progress), (2, []))
        self.assertIn("threads '1' (now '2')", "\n".join(err))
        self.assertIn("--resume_force", "\n".join(err))
        self.assertEqual(open(out).read(), before)


class Repetitions(Case):
    def test_interleaved_repetitions_resume_the_missing_ones(self):
        # Interleaved, a case's repetitions are reported together once its last one ran, and
        # Google Benchmark BM_CHECKs that they ran the same iteration count: an interrupted
        # repetition must not abort the process.
        out = self.path("r.json")
        cases = listed(SHAPE)
        rc, err, progress = run([*QUICK, "--benchmark_min_time=0.1", "--benchmark_repetitions=3",
                                 "--benchmark_enable_random_interleaving=true",
                                 "--benchmark_filter=" + SHAPE, "--benchmark_out=" + out],
                                stop_after=8, sig=signal.SIGINT)
        self.assertEqual(rc, 130, "\n".join(err))
        got = by_case(load(out))
        self.assertEqual(sorted(got), cases)
        finished = {n: sum(e["run_type"] == "iteration" and not e.get("error_occurred")
                           for e in es) for n, es in got.items()}
        self.assertLess(sum(finished.values()), 3 * len(cases))
        for name, entries in got.items():
            self.assertEqual(sum(e["run_type"] == "iteration" for e in entries), 3, name)

        rc, err, progress = run(["--resume=" + out])
        self.assertEqual(rc, 0, "\n".join(err))
        for name in cases:
            self.assertEqual(progress.count(name), 3 - finished[name], name)
        final = self.assert_complete(out, cases, repetitions=3)
        for name, entries in final.items():
            # A case that had repetitions before has no aggregates of the new ones alone.
            if 0 < finished[name] < 3:
                self.assertEqual({e["run_type"] for e in entries}, {"iteration"}, name)


class Truncated(Case):
    def complete_file(self):
        out = self.path("full.json")
        rc, err, _ = run([*QUICK, "--benchmark_min_time=0.01", "--benchmark_filter=" + SHAPE,
                          "--benchmark_out=" + out])
        self.assertEqual(rc, 0, "\n".join(err))
        with open(out) as f:
            return f.read()

    def resume_prefix(self, text, cut, extra=()):
        """Resumes `text` cut at `cut`; returns (names run, names of the complete entries kept)."""
        out = self.path("cut.json")
        with open(out, "w") as f:
            f.write(text[:cut])
        rc, err, progress = run([*extra, "--resume=" + out])
        self.assertEqual(rc, 0, f"cut at {cut}:\n" + "\n".join(err))
        self.assert_complete(out, listed(SHAPE))
        return progress

    def test_cut_anywhere(self):
        text = self.complete_file()
        cases = listed(SHAPE)
        starts = [m.start() for m in re.finditer(r"\n    \{", text)]
        ends = [m.end() for m in re.finditer(r"\n    \}", text)]
        self.assertEqual(len(starts), len(cases))
        cuts = {
            "after the array opens": (text.index('"benchmarks": [') + 16, 0),
            "inside the third entry's name": (text.index('"name": "', starts[2]) + 15, 2),
            "right after the fourth entry": (ends[3], 4),
            "after the comma that follows it": (ends[3] + 1, 4),
            "before the closing brackets": (ends[-1], len(cases)),
        }
        entries = by_case(json.loads(text))
        for what, (cut, complete) in cuts.items():
            with self.subTest(what):
                progress = self.resume_prefix(text, cut)
                kept = [case_name(json.loads(text[s:e].strip().rstrip(",")))
                        for s, e in zip(starts, ends)][:complete]
                self.assertEqual(sorted(progress), sorted(set(cases) - set(kept)))
                got = by_case(load(self.path("cut.json")))
                for name in kept:
                    self.assertEqual(got[name], entries[name])
        # Cut inside the context: nothing to keep, and no command line to resume with.
        out = self.path("cut.json")
        with open(out, "w") as f:
            f.write(text[:text.index('"host_name"')])
        rc, err, progress = run(["--resume=" + out])
        self.assertEqual((rc, progress), (2, []))
        self.assertIn("records no command line", "\n".join(err))
        progress = self.resume_prefix(text, text.index('"host_name"'),
                                      extra=[*QUICK, "--benchmark_min_time=0.01",
                                             "--benchmark_filter=" + SHAPE])
        self.assertEqual(sorted(progress), cases)

    def test_sigkill_keeps_the_finished_cases(self):
        # Google Benchmark flushes the file after each case: SIGKILL leaves it cut after the
        # last one, which --resume reads.
        out = self.path("r.json")
        cases = listed(TWO_SHAPES)
        rc, err, progress = run([*QUICK, "--benchmark_min_time=0.05",
                                 "--benchmark_filter=" + TWO_SHAPES, "--benchmark_out=" + out],
                                stop_after=4, sig=signal.SIGKILL)
        self.assertEqual(rc, -signal.SIGKILL)
        with open(out) as f:
            self.assertRaises(json.JSONDecodeError, json.load, f)
        rc, err, resumed = run(["--resume=" + out])
        self.assertEqual(rc, 0, "\n".join(err))
        # The cases before the one running at the kill were kept and do not run again; that
        # one had perhaps finished too.
        self.assertTrue(set(progress[:-1]).isdisjoint(resumed), (progress, resumed))
        self.assertIn(len(cases) - len(resumed), (len(progress) - 1, len(progress)))
        self.assert_complete(out, cases)


class MainJob(Case):
    """scripts/main.sh in a copy of the tree: install-deps, cmake and the report generator are
    stand-ins, attnlab_bench is the real one restricted to TWO_SHAPES."""

    def setUp(self):
        super().setUp()
        root = self.path("tree")
        self.root = root
        os.makedirs(os.path.join(root, "scripts"))
        os.makedirs(os.path.join(root, "build/release/bench"))
        os.makedirs(os.path.join(root, "reports"))
        os.makedirs(os.path.join(root, "bin"))
        shutil.copy(os.path.join(SOURCE, "scripts", "main.sh"), os.path.join(root, "scripts"))
        self.write("scripts/install-deps.sh", "exit 0\n")
        self.write("bin/cmake", "#!/bin/sh\nexit 0\n")
        self.write("build/release/bench/attnlab_bench",
                   f"#!/bin/sh\nexec {BENCH} --threads=1 --benchmark_min_time=0.05 "
                   f"'--benchmark_filter={TWO_SHAPES}' \"$@\"\n")
        # The report generator: both files must load (json.load fails on a cut file).
        self.write("reports/generate.py",
                   "import json, sys\n"
                   "for f in (sys.argv[1], sys.argv[3]): json.load(open(f))\n"
                   "print('reports/fake/report.md')\n")

    def write(self, name, text):
        path = os.path.join(self.root, name)
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o755)

    def main_job(self, stop_after=None, sig=None, stop_on=PROGRESS, group=True,
                 args=("--suite", "quick", "--accuracy-max-n", "256")):
        """Runs main.sh in its own session; once `stop_after` stderr lines match `stop_on`,
        signals the whole session, as a Ctrl-C (or a service manager) does, or main.sh alone."""
        env = dict(os.environ, PATH=os.path.join(self.root, "bin") + os.pathsep +
                   os.environ["PATH"])
        with open(self.path("stdout"), "w") as stdout:
            p = subprocess.Popen(["bash", "scripts/main.sh", *args], cwd=self.root, env=env,
                                 stdout=stdout, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True)
            lines, matched = [], 0
            for line in p.stderr:
                lines.append(line.rstrip("\n"))
                if stop_on.match(lines[-1]):
                    matched += 1
                    if matched == stop_after:
                        (os.killpg if group else os.kill)(p.pid, sig)
            p.wait(timeout=180)
        with open(self.path("stdout")) as f:
            return p.returncode, lines, f.read()

    def test_interrupted_job_continues(self):
        state = os.path.join(self.root, "results", ".main-job")
        rc, err, out = self.main_job(stop_after=3, sig=signal.SIGINT)
        self.assertEqual(rc, 130, "\n".join(err))
        stem = re.search(r"^stem=(.*)$", open(state).read(), re.M).group(1)
        bench_json = os.path.join(self.root, stem + ".json")
        accuracy_json = os.path.join(self.root, stem + "-accuracy.json")
        missing = sorted(n for n, es in by_case(load(bench_json)).items() if interrupted(es[0]))
        self.assertGreater(len(missing), 0)
        self.assertIn("Continue the job with: bash scripts/main.sh --suite quick "
                      "--accuracy-max-n 256", "\n".join(err))
        # Other options: not this job; said at once, before building.
        rc, err, out = self.main_job(args=("--suite", "default"))
        self.assertEqual(rc, 2)
        self.assertIn("Continue it with: bash scripts/main.sh --suite quick --accuracy-max-n 256",
                      "\n".join(err))

        # Again: the suite runs only what is missing; SIGTERM during the accuracy run.
        accuracy_line = re.compile(r"^\w+/N:\d+/d:\d+/\w+(/dtype:[\w-]+)?: max_abs ")
        rc, err, out = self.main_job(stop_after=2, sig=signal.SIGTERM, stop_on=accuracy_line)
        self.assertEqual(rc, 143, "\n".join(err))
        self.assertIn(f"resuming {stem}.json", out)
        self.assertEqual(sorted(m.group(3) for m in map(PROGRESS.match, err) if m), missing)
        ran = [line for line in err if accuracy_line.match(line)]
        self.assertGreaterEqual(len(load(accuracy_json)["results"]), 2)

        # And again: it finishes, and keeps what both earlier runs finished.
        before = load(accuracy_json)["results"]
        rc, err, out = self.main_job()
        self.assertEqual(rc, 0, "\n".join(err))
        self.assertTrue(out.rstrip().endswith("report: reports/fake/report.md"), out)
        self.assertFalse(os.path.exists(state))
        self.assertEqual([m for m in map(PROGRESS.match, err) if m], [])
        self.assert_complete(bench_json, listed(TWO_SHAPES))
        results = load(accuracy_json)["results"]
        keys = [(r["variant"], r["N"], r["d"], r["mask"], r.get("dtype", "f32"),
                 r.get("pass", "forward")) for r in results]
        self.assertEqual(len(keys), len(set(keys)))
        variants = len({k[0] for k in keys})
        forward = [k for k in keys if k[5] == "forward"]
        self.assertEqual(sum(k[4] == "f32" for k in forward), variants * 2 * 2 * 5)  # N, d, mask
        # The backward of the variants that have one: f32, every N, d and mask.
        backward = [k for k in keys if k[5] == "backward"]
        self.assertEqual(len(backward), len({k[0] for k in backward}) * 2 * 2 * 5)
        self.assertGreater(len(backward), 0)
        keys = forward
        # Reduced precision (bench/accuracy.cc): N = 128 of the lengths up to 256, d, none
        # and causal, in each of the five reduced combinations a variant takes.
        self.assertLessEqual(sum(k[4] != "f32" for k in keys), variants * 2 * 2 * 5)
        self.assertGreater(sum(k[4] != "f32" for k in keys), 0)
        self.assertEqual(results[:len(before)], before)
        self.assertEqual(len([line for line in err if accuracy_line.match(line)]),
                         len(keys) - len(before))
        self.assertLessEqual(len(before), len(ran) + 1)

    def test_sigkill_to_the_job_stops_its_step(self):
        # main.sh cannot trap SIGKILL; setpriv --pdeathsig gives its step SIGTERM. stderr ends
        # (main_job returns) once the step, which holds it too, has exited.
        rc, err, out = self.main_job(stop_after=3, sig=signal.SIGKILL, group=False)
        self.assertEqual(rc, -signal.SIGKILL)
        stem = re.search(r"^stem=(.*)$", open(os.path.join(self.root, "results", ".main-job"))
                         .read(), re.M).group(1)
        entries = load(os.path.join(self.root, stem + ".json"))["benchmarks"]  # closed
        self.assertTrue(any(e.get("error_message", "").startswith("interrupted: SIGTERM")
                            for e in entries), "\n".join(err))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    unittest.main(argv=[sys.argv[0], "-v", *sys.argv[1:]])
