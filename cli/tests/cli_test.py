#!/usr/bin/python3
"""Drives the attnlab command-line tool on real .npy files.

Run by ctest (cli/CMakeLists.txt), one test group per ctest test:
  /usr/bin/python3 cli_test.py GROUP      GROUP in Npy BadInput Run Check DType Weights
                                          Outputs Heatmap List Bench Report Docs Grad
                                          Modifiers
Environment: ATTNLAB_CLI (the attnlab binary), ATTNLAB_SOURCE (the source tree).

numpy writes the inputs and a float64 numpy softmax is the reference; the
tolerance is the derived per-row bound of reference/error_bound.h, computed
again here in numpy (ErrorBoundRows) so these tests do not trust the tool's
own `check`.
"""
import io
import json
import os
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import unittest

import numpy as np

CLI = os.environ.get("ATTNLAB_CLI", "attnlab")
SOURCE = os.environ.get("ATTNLAB_SOURCE",
                        os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
U = 2.0 ** -24  # fp32 unit roundoff
SAFETY = 4.0    # reference/error_bound.h kSafety
EXP_ULPS = 8.0


def attnlab(*args, env=None, cwd=None, preexec_fn=None):
    """Runs the tool; returns (exit code, stdout, stderr)."""
    full_env = dict(os.environ)
    # A tuning file in this user's HOME (attnlab tune) from another CPU would add a warning
    # line to every stderr: tests that want one give ATTNLAB_TUNING themselves.
    full_env.setdefault("ATTNLAB_TUNING", "none")
    if env:
        full_env.update(env)
    p = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=full_env,
                       cwd=cwd, timeout=120, preexec_fn=preexec_fn)
    return p.returncode, p.stdout, p.stderr


def file_size_limit(limit):
    """preexec_fn: files the child writes may not grow past `limit` bytes (a full disk, as
    `ulimit -f` makes it); SIGXFSZ ignored so write() fails with EFBIG instead of killing."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return apply


def visible(lq, lk, mask, b, key_lengths):
    """[Lq, Lk] bool: keys row i may read under the structural masks (problem.h)."""
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    diag = i + (lk - lq)
    vis = np.ones((lq, lk), bool)
    if mask == "causal":
        vis = j <= diag
    elif mask.startswith("window:"):
        left, right = map(int, mask[7:].split(","))
        vis = (j >= diag - left) & (j <= diag + right)
    if key_lengths is not None:
        vis = vis & (j < key_lengths[b])
    return vis


def reference(q, k, v, mask="none", additive=None, key_lengths=None, scale=None, u_c=U, u_o=U):
    """float64 attention on [B,H,L,d] arrays. Returns O [B,H,Lq,dv], lse, bound_o, weights.

    u_c, u_o: the unit roundoff of the narrowest input type (2^-8 for bf16 and int8, 2^-11 for
    f16) and that of O's type. A looser form of reference/error_bound.cc's terms (which charge
    the Q·Kᵀ operands only when Q and K differ in type): these tests check the tool's plumbing
    (types, files, conversions); tests/dtype_test.cc holds the kernels to the tight bound."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    B, H, lq, dk = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    scale = 1.0 / np.sqrt(dk) if scale is None else scale
    o = np.zeros((B, H, lq, dv))
    lse = np.full((B, H, lq), -np.inf)
    w = np.zeros((B, H, lq, lk))
    bound = np.zeros((B, H, lq))
    for b in range(B):
        vis = visible(lq, lk, mask, b, key_lengths)
        for h in range(H):
            kh = h // (H // hkv)
            s = scale * q[b, h] @ k[b, kh].T
            mag = scale * np.abs(q[b, h]) @ np.abs(k[b, kh]).T
            if additive is not None:
                a = additive.astype(np.float64)
                a = a if a.ndim == 2 else a[b if a.shape[0] > 1 else 0, h if a.shape[1] > 1 else 0]
                s = s + a
                mag = np.where(np.isinf(a), 0.0, mag + np.abs(np.where(np.isinf(a), 0, a)))
            s = np.where(vis, s, -np.inf)
            m = s.max(axis=1, keepdims=True)
            m_safe = np.where(np.isfinite(m), m, 0.0)
            p = np.exp(s - m_safe)
            l = p.sum(axis=1, keepdims=True)
            ok = l[:, 0] > 0
            w[b, h][ok] = p[ok] / l[ok]
            o[b, h][ok] = (p[ok] @ v[b, kh]) / l[ok]
            with np.errstate(divide="ignore"):  # log(0) of empty rows, which `ok` drops
                lse[b, h][ok] = (m_safe + np.log(l))[ok, 0]
            # reference/error_bound.h, row by row.
            for i in range(lq):
                keys = vis[i]
                if additive is not None:
                    keys = keys & ~np.isinf(a[i])
                n = vis[i].sum()
                amax = mag[i][keys].max() if keys.any() else 0.0
                vmax = np.abs(v[b, kh][vis[i]]).max() if vis[i].any() else 0.0
                reduced = u_c if u_c > U else 0.0
                logit_err = (dk + 2) * U * amax + 2 * reduced * amax
                bound[b, h, i] = SAFETY * vmax * (2 * logit_err + (EXP_ULPS + 2 * n + 4) * U +
                                                  2 * reduced + u_o)
    return o, lse, bound, w


def npy_bytes(arr, version=(1, 0)):
    f = io.BytesIO()
    np.lib.format.write_array(f, arr, version=version)
    return f.getvalue()


def raw_npy(header, data=b"", version=1, header_len=None):
    """A hand-made .npy: magic, version, header length, header text, data."""
    h = header.encode("latin1")
    n = len(h) if header_len is None else header_len
    length = struct.pack("<H", n) if version == 1 else struct.pack("<I", n)
    return b"\x93NUMPY" + bytes([version, 0]) + length + h + data


class Case(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="attnlab-cli-")
        self.dir = self._tmp.name

    def tearDown(self):
        self._tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def save(self, name, arr, version=(1, 0)):
        with open(self.path(name), "wb") as f:
            f.write(npy_bytes(arr, version))
        return self.path(name)

    def write(self, name, data):
        with open(self.path(name), "wb") as f:
            f.write(data)
        return self.path(name)

    def qkv(self, B=1, H=2, Hkv=2, lq=9, lk=11, dk=16, dv=8, seed=0, dtype="<f4"):
        r = np.random.default_rng(seed)
        q = r.uniform(-1, 1, (B, H, lq, dk)).astype(dtype)
        k = r.uniform(-1, 1, (B, Hkv, lk, dk)).astype(dtype)
        v = r.uniform(-1, 1, (B, Hkv, lk, dv)).astype(dtype)
        return q, k, v

    def inputs(self, q, k, v):
        return ["--q", self.save("q.npy", q), "--k", self.save("k.npy", k),
                "--v", self.save("v.npy", v)]

    def expect_ok(self, *args, **kw):
        rc, out, err = attnlab(*args, **kw)
        self.assertEqual(rc, 0, f"attnlab {' '.join(map(str, args))}\nstdout:{out}\nstderr:{err}")
        return out

    def expect_error(self, pattern, *args, code=2, **kw):
        rc, out, err = attnlab(*args, **kw)
        self.assertEqual(rc, code, f"want exit {code}: attnlab {' '.join(map(str, args))}\n"
                                   f"stdout:{out}\nstderr:{err}")
        self.assertRegex(err, pattern)
        self.assertNotIn("Segmentation", err)
        return err

    def assert_close(self, got, want, bound):
        """|got - want| <= bound per row (bound broadcast over the last axis)."""
        got = np.asarray(got, np.float64)
        err = np.abs(got - want)
        b = np.broadcast_to(bound[..., None], want.shape)
        self.assertFalse(np.isnan(got).any(), "NaN in output")
        worst = np.unravel_index(np.argmax(err - b), err.shape)
        self.assertTrue((err <= b).all(),
                        f"error {err[worst]:.3g} > bound {b[worst]:.3g} at {worst}")


def first_variant():
    rc, out, _ = attnlab("list")
    assert rc == 0
    return out.splitlines()[1].split()[0]


def variant_names():
    rc, out, _ = attnlab("list")
    names = []
    for line in out.splitlines()[1:]:
        if not line.strip():
            break
        names.append(line.split()[0])
    return names


# --------------------------------------------------------------------- .npy
class Npy(Case):
    def run_and_compare(self, q, k, v, extra=(), mask="none", to_bhsd=lambda x: x, **ref):
        out = self.path("o.npy")
        self.expect_ok("run", "--variant", first_variant(), *self.inputs(q, k, v), "--out", out,
                       "--lse", self.path("lse.npy"), "--mask", mask, *extra)
        o = np.load(out)
        self.assertEqual(o.dtype, np.float32)
        return o, np.load(self.path("lse.npy"))

    def test_header_versions_and_dtypes(self):
        q, k, v = self.qkv(seed=1)
        want, want_lse, bound, _ = reference(q, k, v)
        for version in [(1, 0), (2, 0), (3, 0)]:
            for dtype in ["<f4", "<f8"]:
                with self.subTest(version=version, dtype=dtype):
                    args = ["--q", self.save("q.npy", q.astype(dtype), version),
                            "--k", self.save("k.npy", k.astype(dtype), version),
                            "--v", self.save("v.npy", v.astype(dtype), version)]
                    self.expect_ok("run", "--variant", first_variant(), *args,
                                   "--out", self.path("o.npy"))
                    self.assert_close(np.load(self.path("o.npy")), want, bound)

    def test_tool_output_is_valid_npy_and_reads_back(self):
        q, k, v = self.qkv(seed=2, lq=11)
        o, _ = self.run_and_compare(q, k, v)
        with open(self.path("o.npy"), "rb") as f:
            major, minor = np.lib.format.read_magic(f)
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            self.assertEqual((major, minor), (1, 0))
            self.assertEqual(f.tell() % 64, 0, "header not padded to 64 bytes")
        self.assertEqual((shape, fortran, dtype.str), ((1, 2, 11, 8), False, "<f4"))
        # The tool reads its own output: O [1,2,11,8] serves as V (Lk = 11).
        self.expect_ok("run", "--variant", first_variant(), "--q", self.path("q.npy"),
                       "--k", self.path("k.npy"), "--v", self.path("o.npy"),
                       "--out", self.path("o2.npy"))
        want, _, bound, _ = reference(q, k, o)
        self.assert_close(np.load(self.path("o2.npy")), want, bound)

    def test_int_key_lengths_i4_and_i8(self):
        q, k, v = self.qkv(B=2, seed=3)
        want, _, bound, _ = reference(q, k, v, key_lengths=[5, 0])
        for dtype in ["<i4", "<i8"]:
            lens = self.save("lens.npy", np.array([5, 0], dtype))
            self.expect_ok("run", "--variant", first_variant(), *self.inputs(q, k, v),
                           "--key-lengths", lens, "--out", self.path("o.npy"))
            o = np.load(self.path("o.npy"))
            self.assert_close(o, want, bound)
            self.assertTrue((o[1] == 0).all(), "key length 0 must give O = 0")


# --------------------------------------------------------------------- run
class Run(Case):
    def check_run(self, q, k, v, args=(), ref=None, layout="bhsd"):
        ref = ref or {}
        out, lse_path = self.path("o.npy"), self.path("lse.npy")
        stdout = self.expect_ok("run", "--variant", first_variant(), *self.inputs(q, k, v),
                                "--out", out, "--lse", lse_path, "--layout", layout, *args)
        self.assertRegex(stdout, r"variant \S+: .*\ntime [0-9.]+ ms")
        return np.load(out), np.load(lse_path), stdout

    def test_masks(self):
        q, k, v = self.qkv(B=2, H=4, Hkv=2, lq=13, lk=17, seed=4)
        for mask in ["none", "causal", "window:3,1", "window:0,0"]:
            with self.subTest(mask=mask):
                o, lse, _ = self.check_run(q, k, v, ["--mask", mask])
                want, want_lse, bound, _ = reference(q, k, v, mask=mask)
                self.assert_close(o, want, bound)
                fin = np.isfinite(want_lse)
                self.assertTrue(np.allclose(lse[fin], want_lse[fin], rtol=0, atol=1e-5))
                self.assertTrue((lse[~fin] == -np.inf).all())

    def test_additive_mask_2d_and_4d_and_scale(self):
        q, k, v = self.qkv(B=2, H=2, Hkv=1, lq=6, lk=10, seed=5)
        r = np.random.default_rng(6)
        m2 = np.where(r.uniform(size=(6, 10)) < 0.2, -np.inf, r.uniform(-2, 2, (6, 10)))
        m2 = m2.astype("<f4")
        m4 = np.broadcast_to(m2, (2, 1, 6, 10)).copy()
        m4[1] += 0.5
        for m in [m2, m4]:
            with self.subTest(rank=m.ndim):
                o, _, _ = self.check_run(q, k, v, ["--mask-file", self.save("m.npy", m),
                                                   "--scale", "0.3"])
                want, _, bound, _ = reference(q, k, v, additive=m, scale=0.3)
                self.assert_close(o, want, bound)

    def test_accepted_number_forms(self):
        """The strict parsers still take every ordinary spelling."""
        q, k, v = self.qkv(seed=5)
        want, _, bound, _ = reference(q, k, v, mask="window:2,0", scale=0.3)
        for scale in ["0.3", "+0.3", ".3", "3e-1", "3.E-1", "0.30"]:
            with self.subTest(scale=scale):
                o, _, _ = self.check_run(q, k, v, ["--scale", scale, "--mask", "window:2,0",
                                                   "--threads", "1"])
                self.assert_close(o, want, bound)
        o, _, out = self.check_run(q, k, v, ["--scale", "0.3", "--mask", "window:02,000",
                                             "--threads", "1024"])
        self.assert_close(o, want, bound)
        self.assertIn("on 1024 thread(s)", out)

    def test_bshd_layout_and_ranks(self):
        q, k, v = self.qkv(B=2, H=4, Hkv=1, lq=5, lk=7, seed=7)
        want, _, bound, _ = reference(q, k, v, mask="causal")
        t = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3))
        o, _, _ = self.check_run(t(q), t(k), t(v), ["--mask", "causal"], layout="bshd")
        self.assertEqual(o.shape, (2, 5, 4, 8))
        self.assert_close(o.transpose(0, 2, 1, 3), want, bound)
        # rank 3 [H, L, d] (bhsd) and [L, H, d] (bshd), rank 2 [L, d].
        o3, lse3, _ = self.check_run(q[0], k[0], v[0], ["--mask", "causal"])
        self.assertEqual((o3.shape, lse3.shape), ((4, 5, 8), (4, 5)))
        self.assert_close(o3, want[0], bound[0])
        o3b, _, _ = self.check_run(t(q)[0], t(k)[0], t(v)[0], ["--mask", "causal"], layout="bshd")
        self.assert_close(o3b.transpose(1, 0, 2), want[0], bound[0])
        o2, lse2, _ = self.check_run(q[1, 2], k[1, 0], v[1, 0], ["--mask", "causal"])
        self.assertEqual((o2.shape, lse2.shape), ((5, 8), (5,)))
        self.assert_close(o2, want[1, 2], bound[1, 2])

    def test_every_listed_variant_runs(self):
        q, k, v = self.qkv(B=1, H=4, Hkv=2, lq=20, lk=33, seed=8)
        want, _, bound, _ = reference(q, k, v, mask="causal")
        for name in variant_names():
            with self.subTest(variant=name):
                out = self.expect_ok("run", "--variant", name, *self.inputs(q, k, v), "--mask",
                                     "causal", "--threads", "2", "--out", self.path("o.npy"))
                self.assert_close(np.load(self.path("o.npy")), want, bound)
                # Where the 2 threads' time went, when a loop of the variant ran on both.
                times = re.search(r"threads: (\d+\.\d)% of their time in parallel loops idle, "
                                  r"items per thread (\d+) / (\d+)\n", out)
                if times:
                    self.assertLessEqual(float(times.group(1)), 100.0)
                    self.assertGreater(int(times.group(2)) + int(times.group(3)), 1)
        # flash on 8 heads of 256 rows: many items, on both threads.
        q, k, v = self.qkv(B=1, H=8, Hkv=8, lq=256, lk=256, seed=8)
        two = self.expect_ok("run", "--variant", "flash", *self.inputs(q, k, v), "--threads", "2",
                             "--out", self.path("o.npy"))
        self.assertRegex(two, r"threads: \d+\.\d% of their time in parallel loops idle, "
                              r"items per thread \d+ / \d+\n")
        one = self.expect_ok("run", "--variant", "flash", *self.inputs(q, k, v), "--threads", "1",
                             "--out", self.path("o.npy"))
        self.assertNotIn("threads:", one)

    def test_empty_query(self):
        q, k, v = self.qkv(lq=0, seed=9)
        o, lse, _ = self.check_run(q, k, v)
        self.assertEqual(o.shape, (1, 2, 0, 8))
        # Lk = 0: every row fully masked: O = 0, lse = -inf.
        q, k, v = self.qkv(lq=3, lk=0, seed=9)
        o, lse, _ = self.check_run(q, k, v)
        self.assertTrue((o == 0).all() and o.shape == (1, 2, 3, 8))
        self.assertTrue((lse == -np.inf).all())


# --------------------------------------------------------------------- check
class Check(Case):
    def test_check_passes_and_prints_the_table(self):
        q, k, v = self.qkv(B=2, H=4, Hkv=2, lq=19, lk=23, seed=10)
        lens = self.save("lens.npy", np.array([23, 7], "<i4"))
        out = self.expect_ok("check", *self.inputs(q, k, v), "--mask", "causal",
                             "--key-lengths", lens)
        self.assertRegex(out, r"variant\s+max_abs_err\s+max_rel_err\s+bound\s+err/bound\s+time_ms")
        for name in variant_names():
            self.assertRegex(out, rf"\n{re.escape(name)}\s+[0-9.e+-]+\s+[0-9.e+-]+\s+[0-9.e+-]+\s+"
                                  rf"[0-9.]+\s+[0-9.]+\s+ok")

    def test_subset_and_unknown(self):
        q, k, v = self.qkv(seed=11)
        name = first_variant()
        out = self.expect_ok("check", *self.inputs(q, k, v), "--variants", name)
        self.assertEqual(len(re.findall(r"  ok\n", out)), 1)
        self.expect_error(r"unknown variant 'bogus'; known: ", "check", *self.inputs(q, k, v),
                          "--variants", f"{name},bogus")

    def test_over_budget_is_skipped_not_failed(self):
        q, k, v = self.qkv(lq=64, lk=64, seed=12)  # O 4.6 KiB, scores 2 x 16.2 KiB
        args = [*self.inputs(q, k, v), "--threads", "1"]
        # 8 KiB holds no variant's workspace: every one is skipped, nothing is
        # checked, and that is not a pass.
        rc, out, err = attnlab("check", *args, "--memory-budget", "8K")
        self.assertEqual(rc, 1, out + err)
        self.assertEqual(len(re.findall(r"skipped: over budget", out)), len(variant_names()), out)
        self.assertIn("attnlab: error: every variant was skipped (see the table): nothing was "
                      "checked", err)
        # Between the smallest and the largest workspace: the small ones run
        # and pass, the others are skipped, and the check passes.
        needs = sorted(float(n) * {"B": 1, "KiB": 1024, "MiB": 2 ** 20}[u]
                       for n, u in re.findall(r"needs ([0-9.]+) (B|KiB|MiB) of", out))
        if needs[-1] - needs[0] < 2048:
            self.skipTest("every variant needs about the same workspace here")
        out = self.expect_ok("check", *args, "--memory-budget", str(int(needs[0] + 1024)))
        self.assertIn("skipped: over budget", out)
        self.assertRegex(out, r"\s+ok\n")

    def test_invalid_options_are_errors_not_skips(self):
        q, k, v = self.qkv(seed=12)
        for threads in ["1000000", "0"]:
            with self.subTest(threads=threads):
                self.expect_error(rf"bad --threads '{threads}': want an integer from 1 to 1024",
                                  "check", *self.inputs(q, k, v), "--threads", threads)

    def test_nan_input_must_match_reference(self):
        # NaN in a key seen by every row: the reference gives NaN and the
        # variants must too; check passes only if NaN matches NaN.
        q, k, v = self.qkv(seed=13)
        k[0, 0, 3, 0] = np.nan
        self.expect_ok("check", *self.inputs(q, k, v))


# --------------------------------------------------------------------- element types
U_BF16 = 2.0 ** -8   # bf16 unit roundoff (also int8 K/V's u_c in reference/error_bound.cc)
U_F16 = 2.0 ** -11   # f16 unit roundoff
FLOAT_TYPES = r"(f32|bf16|f16)(, (f32|bf16|f16))*"
ALL_TYPES = r"(f32|bf16|f16|i8)(, (f32|bf16|f16|i8))*"


def bf16_bits(x):
    """float32 -> bfloat16 bits, nearest with ties to even, as '<u2': how a bf16 tensor is
    stored in a .npy (docs/cli.md; kernels/dtype.h's BF16BitsFromF32 for finite values)."""
    u = np.asarray(x, "<f4").view("<u4").astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype("<u2")


def bf16_values(bits):
    """'<u2' bfloat16 bits -> their float32 values, exactly."""
    return (np.asarray(bits, "<u2").astype("<u4") << 16).view("<f4")


def round_bf16(x):
    """float32 -> the nearest bfloat16 (ties to even), as float32."""
    return bf16_values(bf16_bits(x))


def quantize(x):
    """kernels/dtype.h QuantizeRow on every row (last axis), in float32 as there: the int8
    '|i1' array and its float32 scales, of shape x.shape[:-1] (the files an int8 K or V is)."""
    x = np.asarray(x, "<f4")
    m = np.abs(x).max(axis=-1)
    scale = np.where(m > 0, m / np.float32(127), np.float32(1)).astype("<f4")
    q = np.clip(np.rint(x / scale[..., None]), -127, 127).astype("|i1")
    return q, scale


def quantize_rows(x):
    """The float32 values scale*q that a kernel computes with for quantize(x)."""
    q, scale = quantize(x)
    return (scale[..., None] * q.astype("<f4")).astype("<f4")


def element_types():
    """`attnlab list`'s element-types block: {variant: (Q list, K/V list, O list)}."""
    rc, out, _ = attnlab("list")
    assert rc == 0
    block = out.split("\n\n")[1].splitlines()
    assert re.match(r"^variant\s+element types", block[0]), block[0]
    types = {}
    for line in block[1:]:
        name, rest = line.split(None, 1)
        m = re.fullmatch(r"Q (.*); K, V (.*); O (.*)", rest)
        assert m, line
        types[name] = tuple(g.split(", ") for g in m.groups())
    return types


def takes(name, q, kv, o):
    """Whether variant `name` takes Q of type q, K and V of type kv, O of type o (`attnlab
    list`): onednn takes no f16 or i8 inputs."""
    tq, tkv, to = element_types()[name]
    return q in tq and kv in tkv and o in to


def types_of(args):
    """(q, kv, o) that --dtype/--q-dtype/--kv-dtype/--out-dtype `args` ask for."""
    t = {"q": "f32", "kv": "f32", "o": "f32"}
    for opt, val in zip(args[::2], args[1::2]):
        keys = {"--dtype": ("q", "kv", "o"), "--q-dtype": ("q",), "--kv-dtype": ("kv",),
                "--out-dtype": ("o",)}[opt]
        for key in keys:
            t[key] = val
    return t["q"], t["kv"], t["o"]


class DType(Case):
    """Element types: --dtype, --q-dtype, --kv-dtype, --out-dtype; float16 ('<f2'), bfloat16
    (bits as '<u2') and int8 ('|i1' with --k-scales / --v-scales) .npy files in and out.

    The comparisons that show the conversion itself is right run the first variant (naive,
    "textbook fp32": it converts its inputs exactly to fp32 and computes in fp32) on one
    thread and hold it to the fp32 bound on the converted values."""

    def run_o(self, q, k, v, *args, layout="bhsd"):
        """O from the first variant, as the file holds it, and stdout."""
        out = self.path("o.npy")
        stdout = self.expect_ok("run", "--variant", first_variant(), *self.inputs(q, k, v),
                                "--threads", "1", "--layout", layout, "--out", out, *args)
        return np.load(out), stdout

    def test_bf16_run_agrees_with_the_f32_run_within_bf16_error(self):
        q, k, v = self.qkv(B=2, H=4, Hkv=2, lq=13, lk=29, dk=16, dv=8, seed=40)
        q *= 3  # logits of a few units: rounding the inputs moves O visibly
        o32, out = self.run_o(q, k, v)
        self.assertIn("Q=f32 K=f32 V=f32 O=f32 on 1 thread(s)", out)
        ob, out = self.run_o(q, k, v, "--dtype", "bf16")
        self.assertIn("Q=bf16 K=bf16 V=bf16 O=bf16", out)
        self.assertRegex(out, r"wrote \S+o\.npy \(2, 4, 13, 8\) bf16 bits \('<u2'\)")
        self.assertEqual(ob.dtype.str, "<u2")
        ob = bf16_values(ob)
        # bf16 error: inputs rounded to u = 2^-8 move a logit by <= 2u·A and O by
        # <= Vmax·(e^(4u·A) - 1 + u) (+ u·|O| for O's own rounding): the reduced-precision
        # terms of reference/error_bound.h, whose bound for a bf16 problem covers it.
        _, _, bound_bf16, _ = reference(q, k, v, u_c=U_BF16, u_o=U_BF16)
        _, _, bound32, _ = reference(q, k, v)
        self.assert_close(ob, o32, bound_bf16 + bound32)
        self.assertGreater(np.abs(ob - o32).max(), 10 * bound32.max(), "bf16 changed nothing")
        # The conversion is round-to-nearest-even, once: float32 files already holding the
        # rounded values give the same O within the kernel's own fp32 error.
        qb, kb, vb = (round_bf16(x) for x in (q, k, v))
        want, _, bound, _ = reference(qb, kb, vb)
        o_rounded, _ = self.run_o(qb, kb, vb)
        oa, out = self.run_o(q, k, v, "--dtype", "bf16", "--out-dtype", "f32")
        self.assertIn("Q=bf16 K=bf16 V=bf16 O=f32", out)
        self.assert_close(oa, want, bound)
        self.assert_close(oa, o_rounded, 2 * bound)
        # A finer option overrides --dtype for its tensors.
        oq, out = self.run_o(q, k, v, "--dtype", "bf16", "--q-dtype", "f32", "--out-dtype", "f32")
        self.assertIn("Q=f32 K=bf16 V=bf16 O=f32", out)
        want, _, bound, _ = reference(q, kb, vb)
        self.assert_close(oq, want, bound)

    def test_f16_files_round_trip(self):
        q, k, v = (x.astype("<f2") for x in self.qkv(lq=11, lk=11, seed=41))
        want, _, bound, _ = reference(q, k, v)
        # f16 files run as f16 tensors, their values as they are; O is f32 unless asked.
        o32, out = self.run_o(q, k, v)
        self.assertIn("Q=f16 K=f16 V=f16 O=f32", out)
        self.assertEqual(o32.dtype, np.float32)
        self.assert_close(o32, want, bound)
        o16, out = self.run_o(q, k, v, "--out-dtype", "f16")
        self.assertIn("Q=f16 K=f16 V=f16 O=f16", out)
        self.assertRegex(out, r"wrote \S+o\.npy \(1, 2, 11, 8\) f16 \('<f2'\)")
        with open(self.path("o.npy"), "rb") as f:
            self.assertEqual(np.lib.format.read_magic(f), (1, 0))
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            self.assertEqual(f.tell() % 64, 0, "header not padded to 64 bytes")
        self.assertEqual((shape, fortran, dtype.str), ((1, 2, 11, 8), False, "<f2"))
        # O computed in fp32 and rounded once, to nearest even (as numpy's astype).
        np.testing.assert_array_equal(o16, o32.astype("<f2"))
        # The tool reads its own f16 file back: O [1, 2, 11, 8] serves as V (Lk = 11).
        os.replace(self.path("o.npy"), self.path("o16.npy"))
        out = self.expect_ok("run", "--variant", first_variant(), "--q", self.path("q.npy"),
                             "--k", self.path("k.npy"), "--v", self.path("o16.npy"),
                             "--out", self.path("o2.npy"))
        self.assertIn("Q=f16 K=f16 V=f16 O=f32", out)
        want2, _, bound2, _ = reference(q, k, o16)
        self.assert_close(np.load(self.path("o2.npy")), want2, bound2)
        # --dtype converts the float32 files only: f16 files stay as they are.
        of, out = self.run_o(q, k, v, "--dtype", "bf16")
        self.assertIn("Q=f16 K=f16 V=f16 O=bf16", out)
        _, _, bound_ob, _ = reference(q, k, v, u_o=U_BF16)  # + O's own rounding
        self.assert_close(bf16_values(of), want, bound_ob)
        # --q-dtype / --kv-dtype convert any float file: to f32, exactly.
        of, out = self.run_o(q, k, v, "--q-dtype", "f32", "--kv-dtype", "f32")
        self.assertIn("Q=f32 K=f32 V=f32 O=f32", out)
        self.assert_close(of, want, bound)
        # Mixed files keep each its own type; --dtype converts the float32 one among them.
        om, out = self.run_o(q, k.astype("<f4"), v)
        self.assertIn("Q=f16 K=f32 V=f16 O=f32", out)
        self.assert_close(om, want, bound)
        om, out = self.run_o(q, k.astype("<f4"), v, "--dtype", "bf16", "--out-dtype", "f32")
        self.assertIn("Q=f16 K=bf16 V=f16 O=f32", out)
        want_kb, _, bound_kb, _ = reference(q, round_bf16(k.astype("<f4")), v)
        self.assert_close(om, want_kb, bound_kb)

    def test_bf16_files_are_uint16_bits(self):
        """bfloat16 in a .npy: its bits as '<u2' (NumPy has no bfloat16), in and out."""
        q, k, v = self.qkv(lq=11, lk=11, seed=50)
        q *= 3
        qb, kb, vb = (bf16_bits(x) for x in (q, k, v))
        want, _, bound, _ = reference(*(bf16_values(x) for x in (qb, kb, vb)))
        # '<u2' files run as bf16 tensors, their bits as they are; O is f32 unless asked.
        o32, out = self.run_o(qb, kb, vb)
        self.assertIn("Q=bf16 K=bf16 V=bf16 O=f32", out)
        self.assertEqual(o32.dtype.str, "<f4")
        self.assert_close(o32, want, bound)
        # A bf16 O is written as its bits, computed in fp32 and rounded once (to nearest even).
        ob, out = self.run_o(qb, kb, vb, "--out-dtype", "bf16")
        self.assertIn("Q=bf16 K=bf16 V=bf16 O=bf16", out)
        self.assertRegex(out, r"wrote \S+o\.npy \(1, 2, 11, 8\) bf16 bits \('<u2'\)")
        self.assertEqual(ob.dtype.str, "<u2")
        np.testing.assert_array_equal(ob, bf16_bits(o32))
        # float32 files of the same values converted by --dtype bf16: the same O, bit for bit.
        oc, out = self.run_o(*(bf16_values(x) for x in (qb, kb, vb)), "--dtype", "bf16")
        self.assertIn("Q=bf16 K=bf16 V=bf16 O=bf16", out)
        np.testing.assert_array_equal(oc, ob)
        # --dtype leaves bf16 files as they are; the finer options convert them.
        of, out = self.run_o(qb, kb, vb, "--dtype", "f16", "--out-dtype", "f32")
        self.assertIn("Q=bf16 K=bf16 V=bf16 O=f32", out)
        np.testing.assert_array_equal(of, o32)
        of, out = self.run_o(qb, kb, vb, "--q-dtype", "f32", "--kv-dtype", "f16")
        self.assertIn("Q=f32 K=f16 V=f16 O=f32", out)
        kf, vf = (bf16_values(x).astype("<f2") for x in (kb, vb))
        want_f, _, bound_f, _ = reference(bf16_values(qb), kf, vf)
        self.assert_close(of, want_f, bound_f)
        # The tool reads its own bf16 file back: O [1, 2, 11, 8] serves as V (Lk = 11).
        self.run_o(qb, kb, vb, "--out-dtype", "bf16")
        os.replace(self.path("o.npy"), self.path("ob.npy"))
        out = self.expect_ok("run", "--variant", first_variant(), "--q", self.path("q.npy"),
                             "--k", self.path("k.npy"), "--v", self.path("ob.npy"),
                             "--out", self.path("o2.npy"))
        self.assertIn("Q=bf16 K=bf16 V=bf16 O=f32", out)
        want2, _, bound2, _ = reference(bf16_values(qb), bf16_values(kb), bf16_values(ob))
        self.assert_close(np.load(self.path("o2.npy")), want2, bound2)

    def test_int8_kv(self):
        r = np.random.default_rng(42)
        q, k, v = self.qkv(B=2, H=4, Hkv=2, lq=7, lk=19, dk=16, dv=8, seed=42)
        # Rows of very different magnitudes: a scale applied to the wrong row is far off.
        k *= (10.0 ** r.uniform(-1, 1, k.shape[:-1] + (1,))).astype("<f4")
        v *= (10.0 ** r.uniform(-1, 1, v.shape[:-1] + (1,))).astype("<f4")
        kd, vd = quantize_rows(k), quantize_rows(v)
        want, _, bound, _ = reference(q, kd, vd)
        want_unquantized, _, _, _ = reference(q, k, v)
        self.assertFalse((np.abs(want_unquantized - want) <= bound[..., None]).all(),
                         "int8 rounding should be visible in this test")
        oa, out = self.run_o(q, k, v, "--kv-dtype", "i8")
        self.assertIn("Q=f32 K=i8 V=i8 O=f32", out)
        self.assert_close(oa, want, bound)
        # float32 files holding what the int8 rows stand for: the same O.
        o_deq, _ = self.run_o(q, kd, vd)
        self.assert_close(oa, o_deq, 2 * bound)
        # The scales follow the layout and the rank: [B,L,H,d], [L,H,d], [L,d].
        t = lambda x: np.ascontiguousarray(x.transpose(0, 2, 1, 3))
        o4, _ = self.run_o(t(q), t(k), t(v), "--kv-dtype", "i8", layout="bshd")
        self.assert_close(o4.transpose(0, 2, 1, 3), want, bound)
        o3, _ = self.run_o(t(q)[1], t(k)[1], t(v)[1], "--kv-dtype", "i8", layout="bshd")
        self.assert_close(o3.transpose(1, 0, 2), want[1], bound[1])
        o2, _ = self.run_o(q[1, 3], k[1, 1], v[1, 1], "--kv-dtype", "i8")
        self.assert_close(o2, want[1, 3], bound[1, 3])
        # int8 files with their scales files: the same int8 values and scales as the tool's own
        # quantization give the same O, bit for bit, in every layout and rank.
        def int8_args(k, v):
            (k8, ks), (v8, vs) = quantize(k), quantize(v)
            return (k8, v8, "--k-scales", self.save("ks.npy", ks), "--v-scales",
                    self.save("vs.npy", vs))

        k8, v8, *scales = int8_args(k, v)
        of, out = self.run_o(q, k8, v8, *scales)
        self.assertIn("Q=f32 K=i8 V=i8 O=f32", out)
        np.testing.assert_array_equal(of, oa)
        k8, v8, *scales = int8_args(t(k), t(v))
        of, _ = self.run_o(t(q), k8, v8, *scales, layout="bshd")
        np.testing.assert_array_equal(of, o4)
        k8, v8, *scales = int8_args(t(k)[1], t(v)[1])
        of, _ = self.run_o(t(q)[1], k8, v8, *scales, layout="bshd")
        np.testing.assert_array_equal(of, o3)
        k8, v8, *scales = int8_args(k[1, 1], v[1, 1])
        of, _ = self.run_o(q[1, 3], k8, v8, *scales)
        np.testing.assert_array_equal(of, o2)
        # --dtype takes int8 files as they are (and converts Q and O).
        k8, v8, *scales = int8_args(k, v)
        _, out = self.run_o(q, k8, v8, *scales, "--dtype", "bf16")
        self.assertIn("Q=bf16 K=i8 V=i8 O=bf16", out)
        # An int8 K beside a float V: each its own type.
        _, out = self.run_o(q, k8, v, scales[0], scales[1])
        self.assertIn("Q=f32 K=i8 V=f32 O=f32", out)
        # With reduced Q and O too, and against the reference in `check`.
        out = self.expect_ok("check", *self.inputs(q, k, v), "--mask", "causal", "--dtype", "bf16",
                             "--kv-dtype", "i8")
        self.assertIn("Q=bf16 K=i8 V=i8 O=bf16", out.splitlines()[0])
        self.assertEqual(len(re.findall(r"\s+ok\n", out)),
                         sum(takes(n, "bf16", "i8", "bf16") for n in variant_names()), out)

    def test_check_runs_every_variant_in_the_requested_types(self):
        q, k, v = self.qkv(B=2, H=4, Hkv=2, lq=19, lk=23, seed=43)
        lens = self.save("lens.npy", np.array([23, 7], "<i4"))
        for args, types in [
            (["--dtype", "bf16"], "Q=bf16 K=bf16 V=bf16 O=bf16"),
            (["--dtype", "f16"], "Q=f16 K=f16 V=f16 O=f16"),
            (["--q-dtype", "f16", "--kv-dtype", "i8", "--out-dtype", "bf16"],
             "Q=f16 K=i8 V=i8 O=bf16"),
        ]:
            with self.subTest(args=args):
                out = self.expect_ok("check", *self.inputs(q, k, v), "--mask", "causal",
                                     "--key-lengths", lens, *args)
                self.assertRegex(out.splitlines()[0], rf"mask=causal\+key_lengths {types} \(")
                for name in variant_names():
                    if not takes(name, *types_of(args)):  # refused by name, a skip
                        self.assertRegex(out, rf"\n{re.escape(name)}\s+-.*skipped: dtype: ")
                        continue
                    self.assertRegex(out, rf"\n{re.escape(name)}\s+[0-9.e+-]+\s+[0-9.e+-]+\s+"
                                          rf"[0-9.e+-]+\s+[0-9.]+\s+[0-9.]+\s+ok")

    def test_weights_in_f16(self):
        name = Weights.weights_variant(self)
        q, k, v = self.qkv(B=1, H=2, Hkv=1, lq=6, lk=8, seed=44)
        q *= 3
        out = self.expect_ok("weights", "--variant", name, *self.inputs(q, k, v), "--dtype", "f16",
                             "--mask", "causal", "--out", self.path("w.npy"))
        self.assertIn("Q=f16 K=f16 V=f16 O=f16", out)
        w = np.load(self.path("w.npy"))
        self.assertEqual(w.dtype, np.float32)  # weights (and lse) are always fp32
        _, _, _, want = reference(*(x.astype("<f2") for x in (q, k, v)), mask="causal")
        self.assertTrue(np.allclose(w, want, atol=1e-5, rtol=0))
        _, _, _, want32 = reference(q, k, v, mask="causal")
        self.assertFalse(np.allclose(w, want32, atol=1e-5, rtol=0), "f16 changed nothing")

    def empty_problems(self, variant):
        """Lq = 0 and Lk = 0 (legal: a no-op, and every row fully masked) in reduced types."""
        q, k, v = self.qkv(lq=0, seed=46)
        for args in [["--out-dtype", "f16"], ["--dtype", "bf16"], ["--kv-dtype", "i8"]]:
            if not takes(variant, *types_of(args)):
                continue
            with self.subTest(variant=variant, lq=0, args=args):
                self.expect_ok("run", "--variant", variant, *self.inputs(q, k, v), *args,
                               "--out", self.path("o.npy"))
                o = np.load(self.path("o.npy"))
                self.assertEqual(o.shape, (1, 2, 0, 8))
        q, k, v = self.qkv(lq=3, lk=0, seed=46)
        for args in [["--out-dtype", "bf16"], ["--dtype", "f16"], ["--kv-dtype", "i8"]]:
            if not takes(variant, *types_of(args)):
                continue
            with self.subTest(variant=variant, lk=0, args=args):
                self.expect_ok("run", "--variant", variant, *self.inputs(q, k, v), *args,
                               "--out", self.path("o.npy"), "--lse", self.path("lse.npy"))
                o = np.load(self.path("o.npy"))
                self.assertTrue((o == 0).all() and o.shape == (1, 2, 3, 8))
                self.assertTrue((np.load(self.path("lse.npy")) == -np.inf).all())

    def test_empty_problems_every_variant(self):
        for name in variant_names():
            self.empty_problems(name)

    def test_f16_mask_file(self):
        q, k, v = self.qkv(lq=6, lk=10, seed=47)
        r = np.random.default_rng(47)
        m = np.where(r.uniform(size=(6, 10)) < 0.2, -np.inf, r.uniform(-2, 2, (6, 10)))
        m = m.astype("<f2")
        want, _, bound, _ = reference(q, k, v, additive=m)
        o, _ = self.run_o(q, k, v, "--mask-file", self.save("m.npy", m))
        self.assert_close(o, want, bound)

    def test_bad_values_name_the_option_and_the_types(self):
        q, k, v = self.qkv(seed=45)
        base = self.inputs(q, k, v)
        int8 = r" \(int8 is for K and V only: --kv-dtype i8\)"
        cases = [
            ("--dtype", "i8", r"it sets Q, K, V and O, which all take f32, bf16, f16" + int8),
            ("--dtype", "fp16", r"it sets Q, K, V and O, which all take f32, bf16, f16$"),
            ("--dtype", " f32", r"it sets Q, K, V and O, which all take f32, bf16, f16$"),
            ("--q-dtype", "i8", r"Q takes f32, bf16, f16" + int8),
            ("--q-dtype", "", r"Q takes f32, bf16, f16$"),
            ("--q-dtype", "float32", r"Q takes f32, bf16, f16$"),
            ("--kv-dtype", "int8", r"K and V take f32, bf16, f16, i8$"),
            ("--kv-dtype", "F16", r"K and V take f32, bf16, f16, i8$"),
            ("--out-dtype", "i8", r"O takes f32, bf16, f16" + int8),
            ("--out-dtype", "bfloat16", r"O takes f32, bf16, f16$"),
        ]
        commands = [["run", "--variant", first_variant(), "--out", self.path("o.npy")], ["check"],
                    ["weights", "--out", self.path("o.npy")]]
        for option, value, message in cases:
            for command in commands:
                with self.subTest(option=option, value=value, command=command[0]):
                    self.expect_error(rf"attnlab: error: bad {option} '{re.escape(value)}': "
                                      + message, *command, *base, option, value)
                    self.assertFalse(os.path.exists(self.path("o.npy")))

    def test_int8_and_bfloat16_file_mistakes_are_named(self):
        q, k, v = self.qkv(B=2, H=4, Hkv=2, lq=5, lk=7, seed=48)
        (k8, ks), (v8, vs) = quantize(k), quantize(v)
        qp, kp, vp = self.save("q.npy", q), self.save("k8.npy", k8), self.save("v8.npy", v8)
        kf = self.save("k.npy", k)
        ksp, vsp = self.save("ks.npy", ks), self.save("vs.npy", vs)
        ks_nan = ks.copy()
        ks_nan[1, 0, 3] = np.nan
        ks_inf = ks.copy()
        ks_inf[0, 1, 6] = -np.inf
        good = ["--q", qp, "--k", kp, "--v", vp, "--k-scales", ksp, "--v-scales", vsp]

        def with_(**over):
            args = dict(zip(good[::2], good[1::2]))
            for key, value in over.items():
                option = "--" + key.replace("_", "-")
                if value is None:
                    args.pop(option)
                else:
                    args[option] = value
            return [x for kv in args.items() for x in kv]

        want_shape = (r"\(a float32 '<f4' \.npy of shape \(2, 2, 7\): one scale per row of d "
                      r"values, element = scale \* int8\)")
        cases = [
            (with_(k_scales=None), r"\S+k8\.npy is int8 '\|i1': give its row scales with "
                                   r"--k-scales " + want_shape),
            (with_(v_scales=None), r"\S+v8\.npy is int8 '\|i1': give its row scales with "
                                   r"--v-scales"),
            (with_(k=kf), r"--k-scales \S+ks\.npy is for an int8 \('\|i1'\) --k file, but "
                          r"\S+k\.npy is float32 '<f4' \(to quantize float values, drop "
                          r"--k-scales and pass --kv-dtype i8\)"),
            (with_(k_scales=self.save("ks64.npy", ks.astype("<f8"))),
             r"\S+ks64\.npy: dtype '<f8' is not float32; the row scales of \S+k8\.npy are "
             r"float32 '<f4' \(e\.g\. s\.astype\('<f4'\)\)"),
            (with_(v_scales=self.save("vs16.npy", vs.astype("<f2"))),
             r"\S+vs16\.npy: dtype '<f2' is not float32; the row scales of \S+v8\.npy"),
            (with_(k_scales=self.save("ks8.npy", k8[..., 0])),
             r"\S+ks8\.npy: dtype '\|i1' is not supported; want little-endian float32 '<f4'"),
            (with_(k_scales=self.save("ks_short.npy", ks[:, :, :-1])),
             r"\S+ks_short\.npy has shape \(2, 2, 6\); want \(2, 2, 7\): one scale per row of "
             r"\S+k8\.npy \(2, 2, 7, 16\)"),
            (with_(k_scales=self.save("ks_t.npy", ks.transpose(0, 2, 1).copy())),
             r"\S+ks_t\.npy has shape \(2, 7, 2\); want \(2, 2, 7\)"),
            (with_(v_scales=self.save("vs_4.npy", vs[..., None])),
             r"\S+vs_4\.npy has shape \(2, 2, 7, 1\); want \(2, 2, 7\): one scale per row of "
             r"\S+v8\.npy \(2, 2, 7, 8\)"),
            (with_(k_scales=self.save("ks_nan.npy", ks_nan)),
             r"\S+ks_nan\.npy: scale nan at \(1, 0, 3\) is not finite; every row of \S+k8\.npy "
             r"needs a finite scale"),
            (with_(k_scales=self.save("ks_inf.npy", ks_inf)),
             r"\S+ks_inf\.npy: scale -inf at \(0, 1, 6\) is not finite"),
            (with_(k_scales="/nope/ks.npy"), r"/nope/ks\.npy: cannot open: no such file"),
            (with_(k_scales=""), r"bad --k-scales '': want a path"),
            (with_(q=self.save("q8.npy", quantize(q)[0])),
             r"\S+q8\.npy is int8 '\|i1': int8 is for K and V only \(with row scales\); Q takes "
             r"f32, bf16, f16"),
            (good + ["--kv-dtype", "f16"],
             r"--kv-dtype f16: \S+k8\.npy is int8 '\|i1' with row scales, which the tool does not "
             r"convert \(drop --kv-dtype, or give float values to convert\)"),
            (with_(q=self.save("qv.npy", np.zeros(q.shape, "V2"))),
             r"\S+qv\.npy: dtype '\|V2' is not supported; want little-endian float32 '<f4', "
             r"float16 '<f2', float64 '<f8', bfloat16 bits '<u2' or int8 '\|i1' \(bfloat16\? save "
             r"its bits as uint16: arr\.view\('<u2'\)\)"),
            (with_(q=self.save("qu.npy", np.zeros(q.shape, "<u4"))),
             r"\S+qu\.npy: dtype '<u4' is not supported"),
        ]
        commands = [["run", "--variant", first_variant(), "--out", self.path("o.npy")], ["check"],
                    ["weights", "--out", self.path("o.npy")]]
        for args, message in cases:
            for command in commands:
                with self.subTest(args=args, command=command[0]):
                    self.expect_error(r"^attnlab: error: " + message, *command, *args)
                    self.assertFalse(os.path.exists(self.path("o.npy")))
        # The good arguments run; an output never overwrites a scales file.
        self.expect_ok("run", "--variant", first_variant(), *good, "--out", self.path("o.npy"))
        self.expect_error(r"--out \S+ks\.npy would overwrite the input --k-scales \S+ks\.npy",
                          "run", "--variant", first_variant(), *good, "--out", ksp)
        np.testing.assert_array_equal(np.load(ksp), ks)

    def test_list_shows_each_variants_types(self):
        types = element_types()
        self.assertEqual(list(types), variant_names())
        for name, (q, kv, o) in types.items():
            with self.subTest(variant=name):
                self.assertRegex(", ".join(q), rf"^{FLOAT_TYPES}$")
                self.assertRegex(", ".join(kv), rf"^{ALL_TYPES}$")
                self.assertRegex(", ".join(o), rf"^{FLOAT_TYPES}$")

    def test_a_type_a_variant_lacks_is_the_librarys_message(self):
        """Prepare's Unimplemented: exit 2 from run, a skip in check. Only when some variant
        lacks some type (onednn: no f16 or i8 inputs)."""
        options = {"Q": "--q-dtype", "K, V": "--kv-dtype", "O": "--out-dtype"}
        lacking = None
        for name, lists in element_types().items():
            for (tensor, option), (takes, every) in zip(
                    options.items(), zip(lists, [["f32", "bf16", "f16"],
                                                 ["f32", "bf16", "f16", "i8"],
                                                 ["f32", "bf16", "f16"]])):
                missing = [t for t in every if t not in takes]
                if missing and lacking is None:
                    lacking = (name, option, missing[0])
        if lacking is None:
            self.skipTest("every variant takes every element type")
        name, option, dtype = lacking
        q, k, v = self.qkv(seed=49)
        self.expect_error(rf"attnlab: error: dtype: Q=\S+ K=\S+ V=\S+ O=\S+ is not supported by "
                          rf"variant {name} \(it takes Q .*; K, V .*; O .*\)", "run", "--variant",
                          name, *self.inputs(q, k, v), option, dtype, "--out", self.path("o.npy"))
        rc, out, err = attnlab("check", *self.inputs(q, k, v), option, dtype)
        self.assertRegex(out, rf"\n{name}\s+-.*skipped: dtype: .* is not supported by variant")


# --------------------------------------------------------------------- weights
class Weights(Case):
    def weights_variant(self):
        rc, out, _ = attnlab("list")
        for line in out.splitlines()[1:]:
            parts = line.split()
            if len(parts) > 1 and parts[1] == "yes":
                return parts[0]
        self.skipTest("no variant materializes weights")

    def test_weights_png_and_table(self):
        name = self.weights_variant()
        q, k, v = self.qkv(B=1, H=2, Hkv=1, lq=6, lk=8, seed=14)
        tokens = "the cat sat on the mat today ."
        with open(self.path("words.txt"), "w") as f:
            f.write(tokens + "\n")
        png = self.path("heat.png")
        out = self.expect_ok("weights", "--variant", name, *self.inputs(q, k, v), "--mask",
                             "causal", "--out", self.path("w.npy"), "--png", png, "--tokens",
                             self.path("words.txt"), "--head", "1")
        with open(png, "rb") as f:
            self.assertEqual(f.read(8), b"\x89PNG\r\n\x1a\n")
        w = np.load(self.path("w.npy"))
        self.assertEqual(w.shape, (1, 2, 6, 8))
        _, _, _, want = reference(q, k, v, mask="causal")
        self.assertTrue(np.allclose(w, want, atol=1e-5, rtol=0))
        # Table: row, query token (aligned bottom-right: query 0 is token 2),
        # entropy and max weight of head 1.
        rows = re.findall(r"^\s+(\d+) (\S+)\s+([0-9.]+)\s+([0-9.]+) (\S+)", out, re.M)
        self.assertEqual(len(rows), 6)
        self.assertEqual([r[1] for r in rows], tokens.split()[2:])
        p = want[0, 1]
        ent = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0)).sum(axis=1)
        for i, r in enumerate(rows):
            self.assertAlmostEqual(float(r[2]), ent[i], places=3)
            self.assertAlmostEqual(float(r[3]), p[i].max(), places=3)

    def test_weights_refuses_big_and_bad_head(self):
        name = self.weights_variant()
        q, k, v = self.qkv(B=1, H=1, Hkv=1, lq=1100, lk=2000, dk=4, dv=4, seed=15)
        self.expect_error(r"weights \[B=1, H=1, Lq=1100, Lk=2000\] would take 8\.4 MiB, over the "
                          r"8\.0 MiB limit", "weights", "--variant", name, *self.inputs(q, k, v),
                          "--out", self.path("w.npy"))
        q, k, v = self.qkv(seed=16)
        for head in ["5", "2", "-1", "+1", "0x1", "1x", "", " 1"]:
            with self.subTest(head=head):
                self.expect_error(rf"bad --head '{re.escape(head)}': want an integer from 0 to 1 "
                                  r"\(the inputs have H=2\)", "weights", *self.inputs(q, k, v),
                                  "--out", self.path("w.npy"), "--head", head)
        self.expect_error(r"bad --batch '1': want an integer from 0 to 0 \(the inputs have B=1\)",
                          "weights", *self.inputs(q, k, v), "--out", self.path("w.npy"),
                          "--batch", "1")
        self.assertFalse(os.path.exists(self.path("w.npy")))
        with open(self.path("words.txt"), "w") as f:
            f.write("too few\n")
        self.expect_error(r"has 2 tokens; want one per key \(Lk=11\)", "weights",
                          *self.inputs(q, k, v), "--out", self.path("w.npy"), "--tokens",
                          self.path("words.txt"))


# --------------------------------------------------------------------- outputs
class Outputs(Case):
    """Issue 21 #3 and #9: every output is checked before any kernel runs and
    written atomically; exit 3 when one cannot be written, 2 for a bad request;
    a previous file survives any failure."""

    PREVIOUS = b"previous good file"

    def setUp(self):
        super().setUp()
        self.q, self.k, self.v = self.qkv(B=1, H=2, Hkv=2, lq=200, lk=16, dk=8, dv=8, seed=30)
        self.base = self.inputs(self.q, self.k, self.v)  # O: 12.9 KB

    def previous(self, name):
        return self.write(name, self.PREVIOUS)

    def assert_untouched(self, path):
        with open(path, "rb") as f:
            self.assertEqual(f.read(), self.PREVIOUS, f"{path} was changed")

    def assert_no_temporary_files(self):
        left = [f for f in os.listdir(self.dir) if f.startswith(".")]
        self.assertEqual(left, [], "temporary files left behind")

    def run_args(self, *args):
        return ["run", "--variant", first_variant(), *self.base, *args]

    def weights_variant(self):
        return Weights.weights_variant(self)

    def test_duplicate_outputs_are_refused_before_running(self):
        x = self.previous("x.npy")
        os.symlink("x.npy", self.path("link.npy"))
        os.link(x, self.path("hard.npy"))
        os.mkdir(self.path("sub"))
        for out, lse in [("x.npy", "x.npy"), ("x.npy", "./x.npy"), ("x.npy", "sub/../x.npy"),
                         (x, "x.npy"), ("link.npy", "x.npy"), ("hard.npy", "x.npy"),
                         ("new.npy", "./new.npy")]:
            with self.subTest(out=out, lse=lse):
                self.expect_error(rf"--out {re.escape(out)} and --lse {re.escape(lse)} are the "
                                  r"same file; give each output its own path",
                                  *self.run_args("--out", out, "--lse", lse), cwd=self.dir)
                self.assert_untouched(x)
                self.assertFalse(os.path.exists(self.path("new.npy")))

    def test_output_that_is_an_input_is_refused(self):
        q = self.base[1]
        with open(q, "rb") as f:
            before = f.read()
        for out_args, pattern in [
            (["--out", "q.npy"], r"--out q\.npy would overwrite the input --q \S+q\.npy"),
            (["--out", "o.npy", "--lse", "./v.npy"],
             r"--lse \./v\.npy would overwrite the input --v"),
        ]:
            with self.subTest(out_args):
                self.expect_error(pattern, *self.run_args(*out_args), cwd=self.dir)
        lens = self.save("lens.npy", np.array([3], "<i4"))
        self.expect_error(r"--out \S+lens\.npy would overwrite the input --key-lengths",
                          *self.run_args("--key-lengths", lens, "--out", lens))
        with open(q, "rb") as f:
            self.assertEqual(f.read(), before)
        # weights: --png may not be --tokens, nor --out.
        name = self.weights_variant()
        q, k, v = self.qkv(lq=3, lk=4, seed=31)
        words = self.write("words.txt", b"a b c d\n")
        self.expect_error(r"--png \S+words\.txt would overwrite the input --tokens", "weights",
                          "--variant", name, *self.inputs(q, k, v), "--out", self.path("w.npy"),
                          "--tokens", words, "--png", words)
        self.expect_error(r"--out w\.npy and --png \./w\.npy are the same file", "weights",
                          "--variant", name, *self.inputs(q, k, v), "--out", "w.npy", "--png",
                          "./w.npy", cwd=self.dir)
        self.assertFalse(os.path.exists(self.path("w.npy")))

    def test_unwritable_output_is_found_before_running(self):
        """Before: O written, then the kernel's work lost on a bad --lse (exit 2)."""
        o = self.previous("o.npy")
        self.write("file", b"not a directory")
        os.mkdir(self.path("dir"))
        for lse, pattern in [
            ("/no/such/dir/lse.npy", r"--lse /no/such/dir/lse\.npy: cannot write into "
                                     r"/no/such/dir: No such file or directory"),
            (self.path("file/lse.npy"), r"--lse \S+file/lse\.npy: cannot write: Not a directory"),
            (self.path("dir"), r"--lse \S+dir: cannot write: it is a directory"),
            ("/dev/null", r"--lse /dev/null: cannot write: not a regular file"),
        ]:
            with self.subTest(lse=lse):
                self.expect_error(pattern, *self.run_args("--out", o, "--lse", lse), code=3)
                self.assert_untouched(o)
        _, out, _ = attnlab(*self.run_args("--out", o, "--lse", "/no/dir/lse.npy"))
        self.assertNotIn("variant", out, "no kernel may run")
        self.expect_error(r"bad --lse '': want a path", *self.run_args("--out", o, "--lse", ""))

    def test_full_disk_keeps_the_previous_file(self):
        """A write cut short (ulimit -f: EFBIG, as a full disk's ENOSPC) exits 3 and leaves
        the previous file as it was; before, it was truncated and the exit code was 2."""
        o = self.previous("o.npy")
        rc, out, err = attnlab(*self.run_args("--out", o), preexec_fn=file_size_limit(4096))
        self.assertEqual(rc, 3, out + err)
        self.assertRegex(err, rf"attnlab: error: --out {re.escape(o)}: cannot write: File too "
                              r"large")
        self.assert_untouched(o)
        self.assert_no_temporary_files()
        # weights --out too (its [1, 2, 200, 16] weights are 25.7 KB).
        w = self.previous("w.npy")
        rc, out, err = attnlab("weights", "--variant", self.weights_variant(), *self.base,
                               "--out", w, preexec_fn=file_size_limit(4096))
        self.assertEqual(rc, 3, out + err)
        self.assertIn("cannot write: File too large", err)
        self.assert_untouched(w)
        self.assert_no_temporary_files()

    def test_success_replaces_the_file_with_a_plain_mode(self):
        o = self.previous("o.npy")
        os.symlink("o.npy", self.path("link.npy"))
        old = os.umask(0o022)
        try:
            self.expect_ok(*self.run_args("--out", self.path("link.npy")))
        finally:
            os.umask(old)
        self.assertTrue(os.path.islink(self.path("link.npy")), "a symlinked output is written "
                                                                "through, not replaced")
        self.assertEqual(np.load(o).shape, (1, 2, 200, 8))
        self.assertEqual(os.stat(o).st_mode & 0o777, 0o644)
        self.assert_no_temporary_files()

    def test_unusable_tmpdir_is_a_clear_error(self):
        """Before: an uncaught std::filesystem exception, abort (exit 134)."""
        name = self.weights_variant()
        q, k, v = self.qkv(lq=3, lk=4, seed=32)
        self.write("afile", b"x")
        for tmpdir, reason in [("/nonexistent", "No such file or directory"),
                               (self.path("afile"), "Not a directory")]:
            with self.subTest(tmpdir=tmpdir):
                self.expect_error(rf"attnlab: error: cannot create a temporary directory in "
                                  rf"TMPDIR={re.escape(tmpdir)}: {reason} \(set TMPDIR to a "
                                  r"writable directory\)", "weights", "--variant", name,
                                  *self.inputs(q, k, v), "--out", self.path("w.npy"), "--png",
                                  self.path("h.png"), env={"TMPDIR": tmpdir}, code=3)
                self.assertFalse(os.path.exists(self.path("w.npy")), "checked before running")

    def test_png_in_a_missing_directory(self):
        """Before: the weights were computed and written, then a Python traceback (exit 1)."""
        name = self.weights_variant()
        q, k, v = self.qkv(lq=3, lk=4, seed=33)
        err = self.expect_error(r"--png /nodir/h\.png: cannot write into /nodir: No such file or "
                                r"directory", "weights", "--variant", name, *self.inputs(q, k, v),
                                "--out", self.path("w.npy"), "--png", "/nodir/h.png", code=3)
        self.assertNotIn("Traceback", err)
        self.assertFalse(os.path.exists(self.path("w.npy")))


# --------------------------------------------------------------------- heatmap
class Heatmap(Case):
    """reports/heatmap.py on its own: one-line errors, atomic PNG."""

    def heatmap(self, spec, preexec_fn=None):
        path = self.write("spec.json", json.dumps(spec).encode())
        p = subprocess.run([sys.executable, os.path.join(SOURCE, "reports", "heatmap.py"), path],
                           capture_output=True, text=True, timeout=120, preexec_fn=preexec_fn)
        self.assertNotIn("Traceback", p.stderr)
        return p.returncode, p.stderr

    def spec(self, png):
        w = np.full((6, 8), 1 / 8, "<f4")
        return {"weights": self.save("w.npy", w), "png": png, "keys": list("abcdefgh"),
                "queries": list("cdefgh"), "title": "t"}

    def test_errors_are_one_line(self):
        for spec, code, pattern in [
            (self.spec("/nodir/h.png"), 3,
             r"cannot write /nodir/h\.png: No such file or directory"),
            ({**self.spec(self.path("h.png")), "weights": self.path("none.npy")}, 2,
             r"cannot read the weights \S+none\.npy: No such file or directory"),
            ({**self.spec(self.path("h.png")), "keys": ["a"]}, 2,
             r"the spec's 'keys' has 1 labels; want 8"),
            ({"png": self.path("h.png")}, 2,
             r"the spec \S+spec\.json lacks \"weights\" and \"png\" paths"),
        ]:
            with self.subTest(pattern):
                rc, err = self.heatmap(spec)
                self.assertEqual(rc, code, err)
                self.assertRegex(err, r"^heatmap\.py: error: " + pattern + r"\n$")
        self.assertFalse(os.path.exists(self.path("h.png")))

    def test_failed_write_keeps_the_previous_png(self):
        png = self.path("h.png")
        rc, err = self.heatmap(self.spec(png))
        self.assertEqual(rc, 0, err)
        with open(png, "rb") as f:
            before = f.read()
        self.assertGreater(len(before), 2000)
        spec = self.spec(png)
        spec["title"] = "another title"
        rc, err = self.heatmap(spec, preexec_fn=file_size_limit(1000))
        self.assertEqual(rc, 3, err)
        self.assertRegex(err, r"^heatmap\.py: error: cannot write \S+h\.png: File too large\n$")
        with open(png, "rb") as f:
            self.assertEqual(f.read(), before)
        self.assertEqual([f for f in os.listdir(self.dir) if f.startswith(".")], [])


# --------------------------------------------------------------------- list
class List(Case):
    def test_list(self):
        out = self.expect_ok("list")
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^variant\s+weights\s+scores\s+highway\s+deterministic\s+"
                                   r"backward\s+summary")
        names = variant_names()
        self.assertGreaterEqual(len(names), 1)
        self.assertEqual(len(set(names)), len(names))
        for line in lines[1:len(names) + 1]:
            self.assertRegex(line,
                             r"^\S+\s+(yes|no)\s+(Lq x Lk|no)\s+(yes|no)\s+(yes|no)\s+(yes|no)\s+\S")
        # Every name it lists is one `run` accepts, and nothing else is.
        rc, _, err = attnlab("run", "--variant", "no_such_variant", "--q", "x", "--k", "x",
                             "--v", "x", "--out", "x")
        self.assertEqual(rc, 2)
        self.assertIn("known: " + ", ".join(names), err)


# --------------------------------------------------------------------- grad
def backward_variants():
    """The variants `attnlab list` marks as having a backward pass."""
    rc, out, _ = attnlab("list")
    assert rc == 0
    names = []
    for line in out.splitlines()[1:]:
        if not line.strip():
            break
        m = re.match(r"(\S+)\s+(yes|no)\s+(Lq x Lk|no)\s+(yes|no)\s+(yes|no)\s+(yes|no)\s",
                     line)
        assert m, line
        if m.group(6) == "yes":
            names.append(m.group(1))
    return names


def grad_reference(q, k, v, d_o, mask="none", additive=None, key_lengths=None, scale=None):
    """float64 backward on [B,H,L,d] arrays (kernels/problem.h, "backward"), from its own exact
    forward. Returns (dq, dk, dv) and per-element bounds of the same shapes.

    The bound is a looser form of reference/error_bound.h's backward terms (first order, in
    magnitudes): per row a relative error budget eps = (2·(dk+2)·A + 2n + dv + 20)·u for P and
    dP - D (A the largest |logit| magnitude, n the visible keys: the recomputed logit, the
    forward's lse, the exp, dP's dot product and D's sum), then each gradient's sum of
    |terms| times (eps + (terms + 1)·u), plus u·|value|, all times SAFETY. Exact zeros where
    no row contributes (a fully masked row's dQ; a key no row sees)."""
    q, k, v, d_o = (x.astype(np.float64) for x in (q, k, v, d_o))
    B, H, lq, dk = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    group = H // hkv
    scale = 1.0 / np.sqrt(dk) if scale is None else scale
    gq, gk, gv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    bq, bk, bv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in range(B):
        vis = visible(lq, lk, mask, b, key_lengths)
        for h in range(H):
            kh = h // group
            qa, ka, va, da = np.abs(q[b, h]), np.abs(k[b, kh]), np.abs(v[b, kh]), np.abs(d_o[b, h])
            s = scale * q[b, h] @ k[b, kh].T
            mag = scale * qa @ ka.T
            if additive is not None:
                a = additive.astype(np.float64)
                a = a if a.ndim == 2 else a[b if a.shape[0] > 1 else 0, h if a.shape[1] > 1 else 0]
                s = s + a
                mag = np.where(np.isinf(a), 0.0, mag + np.abs(np.where(np.isinf(a), 0, a)))
            s = np.where(vis, s, -np.inf)
            m = s.max(axis=1)
            live = m > -np.inf  # rows with a key of finite score
            m_safe = np.where(live, m, 0.0)
            with np.errstate(divide="ignore"):  # log 0 in fully masked rows, not used
                lse = np.where(live, m_safe + np.log(np.exp(s - m_safe[:, None]).sum(axis=1)),
                               0.0)
            p = np.where(live[:, None], np.exp(s - lse[:, None]), 0.0)
            dp = d_o[b, h] @ v[b, kh].T
            ds = p * (dp - (p * dp).sum(axis=1)[:, None])
            gq[b, h] = scale * ds @ k[b, kh]
            gk[b, kh] += scale * ds.T @ q[b, h]
            gv[b, kh] += p.T @ d_o[b, h]
            # Bounds.
            n = vis.sum(axis=1)
            amax = np.where(vis, mag, 0.0).max(axis=1) if lk > 0 else np.zeros(lq)
            eps = (2 * (dk + 2) * amax + 2 * n + dv + 20) * U
            dpm = da @ va.T
            dm = (p * dpm).sum(axis=1) + da.sum(axis=1) * (p @ va).max(axis=1, initial=0.0)
            dsm = p * (dpm + dm[:, None])
            m_j = (vis & live[:, None]).sum(axis=0) * group
            bq[b, h] = scale * (dsm @ ka) * (eps + (n + 1) * U)[:, None]
            bk[b, kh] += scale * ((dsm * eps[:, None]).T @ qa + ((m_j + 1) * U)[:, None] * (dsm.T @ qa))
            bv[b, kh] += (p * eps[:, None]).T @ da + ((m_j + 1) * U)[:, None] * (p.T @ da)
    bounds = [SAFETY * (x + U * np.abs(g)) for x, g in ((bq, gq), (bk, gk), (bv, gv))]
    return (gq, gk, gv), bounds


def modified_reference(q, k, v, mask, softcap=None, slopes=None, sinks=None, top_left=False):
    """float64 attention with the score modifiers (kernels/problem.h, "Score modifiers") on
    [B,H,L,d] arrays, and the per-row bound of reference/error_bound.h for it: the logit
    magnitude includes |ALiBi bias|, a softcap adds (8 + 2)·u·cap, a sink one more term."""
    q, k, v = (x.astype(np.float64) for x in (q, k, v))
    B, H, lq, dk = q.shape
    hkv, lk, dv = k.shape[1], k.shape[2], v.shape[3]
    off = 0 if top_left else lk - lq
    i, j = np.arange(lq)[:, None], np.arange(lk)[None, :]
    vis = np.ones((lq, lk), bool) if mask == "none" else (j <= i + off)
    o = np.zeros((B, H, lq, dv))
    lse = np.zeros((B, H, lq))
    bound = np.zeros((B, H, lq))
    for b in range(B):
        for h in range(H):
            kh = h // (H // hkv)
            s = q[b, h] @ k[b, kh].T / np.sqrt(dk)
            if softcap is not None:
                s = softcap * np.tanh(s / softcap)
            bias = (0.0 if slopes is None else slopes[h]) * (j - i - off)
            s = np.where(vis, s + bias, -np.inf)
            sink = -np.inf if sinks is None else sinks[h]
            m = np.maximum(s.max(1), sink)
            p = np.exp(s - m[:, None])
            l = p.sum(1) + np.exp(sink - m)
            o[b, h] = (p @ v[b, kh]) / l[:, None]
            lse[b, h] = m + np.log(l)
            mag = np.abs(q[b, h]) @ np.abs(k[b, kh]).T / np.sqrt(dk) + np.abs(bias)
            n = vis.sum(1) + (0 if sinks is None else 1)
            logit_err = (dk + 2) * U * np.where(vis, mag, 0).max(1) + (
                0 if softcap is None else 10 * U * softcap)
            bound[b, h] = SAFETY * np.abs(v[b, kh]).max() * (2 * logit_err +
                                                             (EXP_ULPS + 2 * n + 4) * U)
    return o, lse, bound


class Modifiers(Case):
    """--softcap, --alibi, --sinks and --causal-top-left reach the kernels: O of `run` against
    an independent numpy fp64 computation within the derived bound, for every variant that
    applies them (`attnlab list`), and a clear refusal from the others."""

    def run_modifiers(self, variant, extra, q, k, v):
        out = self.path("o.npy")
        args = ["run", "--variant", variant, *self.inputs(q, k, v), "--out", out,
                "--lse", self.path("lse.npy"), *extra]
        return attnlab(*args), out

    def test_each_modifier_against_numpy(self):
        q, k, v = self.qkv(B=1, H=4, Hkv=2, lq=9, lk=13, dk=16, dv=8, seed=5)
        slopes = np.array([0.5, -0.25, 0.125, 1.0], np.float32)
        sinks = np.array([1.0, -np.inf, 0.0, 2.5], np.float32)
        settings = {
            "softcap": (["--softcap", "2.5"], dict(softcap=2.5)),
            "alibi": (["--alibi", self.save("slopes.npy", slopes)], dict(slopes=slopes)),
            "alibi standard": (["--alibi", "standard"],
                               dict(slopes=np.exp2(-8.0 * np.arange(1, 5) / 4))),
            "sinks": (["--sinks", self.save("sinks.npy", sinks)], dict(sinks=sinks)),
            "all, top-left": (["--softcap", "3", "--alibi", self.path("slopes.npy"), "--sinks",
                               self.path("sinks.npy"), "--causal-top-left"],
                              dict(softcap=3.0, slopes=slopes, sinks=sinks, top_left=True)),
        }
        rc, out, _ = attnlab("list")
        self.assertEqual(rc, 0)
        # `attnlab list`'s score-modifier table: one "variant  softcap, alibi, sinks" line per
        # variant ("none" for those that apply none), up to the next blank line.
        table = out.split("score modifiers")[1].split("\n\n")[0].splitlines()[1:]
        applies = {line.split()[0]: line for line in table if line.strip()}
        self.assertIn("flash", applies)
        for name, (flags, kw) in settings.items():
            for variant, line in applies.items():
                with self.subTest(setting=name, variant=variant):
                    (rc, _, err), o_path = self.run_modifiers(
                        variant, ["--mask", "causal", *flags], q, k, v)
                    used = {"softcap" if "softcap" in kw else None,
                            "alibi" if "slopes" in kw else None,
                            "sinks" if "sinks" in kw else None} - {None}
                    if not all(m in line for m in used):
                        self.assertEqual(rc, 2, err)
                        self.assertIn("does not apply", err)
                        continue
                    self.assertEqual(rc, 0, err)
                    want, want_lse, bound = modified_reference(q, k, v, "causal", **kw)
                    self.assert_close(np.load(o_path), want, bound)

    def test_bad_modifier_values_are_named(self):
        q, k, v = self.qkv(H=2, Hkv=2)
        self.expect_error(r"softcap=-1 must be finite and > 0", "run", "--variant", "flash",
                          *self.inputs(q, k, v), "--softcap", "-1", "--out", self.path("o.npy"))
        self.expect_error(r"bad --softcap 'x'", "run", "--variant", "flash",
                          *self.inputs(q, k, v), "--softcap", "x", "--out", self.path("o.npy"))
        s3 = self.save("s3.npy", np.zeros(3, np.float32))
        self.expect_error(r"s3\.npy.*\(3,\)", "run", "--variant", "flash", *self.inputs(q, k, v),
                          "--sinks", s3, "--out", self.path("o.npy"))
        nan = self.save("nan.npy", np.array([0, np.nan], np.float32))
        self.expect_error(r"alibi_slopes\[1\]=nan is not finite", "run", "--variant", "flash",
                          *self.inputs(q, k, v), "--alibi", nan, "--out", self.path("o.npy"))

    def test_check_skips_variants_without_them(self):
        q, k, v = self.qkv(H=2, Hkv=1, lq=6, lk=6)
        out = self.expect_ok("check", *self.inputs(q, k, v), "--softcap", "4", "--alibi",
                             "standard", "--mask", "causal", "--causal-top-left")
        self.assertRegex(out, r"flash .* ok")
        self.assertRegex(out, r"blas .*skipped: score modifiers: variant blas does not apply "
                              r"softcap, alibi")


class Varlen(Case):
    """--cu-seqlens-q/-k: a packed batch (bshd [total, H, d], B = 1) gives each sequence the
    O and lse it gets alone (the numpy fp64 reference of `reference`, one sequence at a time,
    bottom-right causal within each), for every variant; lse is [H, total_q]; bad offsets
    are named."""

    def packed(self, q_lens, k_lens, H=4, Hkv=2, dk=16, dv=8, seed=3):
        r = np.random.default_rng(seed)
        tq, tk = sum(q_lens), sum(k_lens)
        q = r.uniform(-1, 1, (tq, H, dk)).astype("<f4")
        k = r.uniform(-1, 1, (tk, Hkv, dk)).astype("<f4")
        v = r.uniform(-1, 1, (tk, Hkv, dv)).astype("<f4")
        cq = np.concatenate([[0], np.cumsum(q_lens)]).astype("<i4")
        ck = np.concatenate([[0], np.cumsum(k_lens)]).astype("<i4")
        return q, k, v, cq, ck

    def test_each_sequence_against_numpy(self):
        q_lens, k_lens = [3, 0, 7, 1, 5], [5, 4, 7, 9, 0]
        q, k, v, cq, ck = self.packed(q_lens, k_lens)
        files = [*self.inputs(q, k, v), "--layout", "bshd", "--cu-seqlens-q",
                 self.save("cq.npy", cq), "--cu-seqlens-k", self.save("ck.npy", ck)]
        for variant in variant_names():
            for mask in ("none", "causal"):
                with self.subTest(variant=variant, mask=mask):
                    self.expect_ok("run", "--variant", variant, *files, "--mask", mask, "--out",
                                   self.path("o.npy"), "--lse", self.path("lse.npy"))
                    o, lse = np.load(self.path("o.npy")), np.load(self.path("lse.npy"))
                    self.assertEqual(o.shape, (sum(q_lens), 4, 8))
                    self.assertEqual(lse.shape, (4, sum(q_lens)))
                    for s in range(len(q_lens)):
                        qs, ks = slice(cq[s], cq[s + 1]), slice(ck[s], ck[s + 1])
                        if q_lens[s] == 0:
                            continue
                        if k_lens[s] == 0:  # fully masked rows: O = 0, lse = -inf
                            self.assertFalse(o[qs].any())
                            self.assertTrue((lse[:, qs] == -np.inf).all())
                            continue
                        # [L, H, d] -> [1, H, L, d]
                        bhld = lambda x: x.transpose(1, 0, 2)[None]
                        want, want_lse, bound, _ = reference(bhld(q[qs]), bhld(k[ks]),
                                                             bhld(v[ks]), mask)
                        self.assert_close(bhld(o[qs]), want, bound)
                        np.testing.assert_allclose(lse[:, qs], want_lse[0], atol=1e-5)

    def test_bad_offsets_are_named(self):
        q, k, v, cq, ck = self.packed([2, 3], [4, 1])
        files = ["--variant", "flash", *self.inputs(q, k, v), "--layout", "bshd"]
        bad = self.save("bad.npy", np.array([0, 3, 2], "<i4"))
        self.expect_error(r"cu_seqlens_q\[2\]=2 is less than cu_seqlens_q\[1\]=3", "run",
                          *files, "--cu-seqlens-q", bad, "--cu-seqlens-k",
                          self.save("ck.npy", ck), "--out", self.path("o.npy"))
        self.expect_error(r"--cu-seqlens-k is missing", "run", *files, "--cu-seqlens-q",
                          self.save("cq.npy", cq), "--out", self.path("o.npy"))
        self.expect_error(r"cu_seqlens_k ends at 4, needs Lk=5", "run", *files,
                          "--cu-seqlens-q", self.path("cq.npy"), "--cu-seqlens-k",
                          self.save("short.npy", np.array([0, 4, 4], "<i4")),
                          "--out", self.path("o.npy"))


class Paged(Case):
    """--block-table: K and V files that are block pools read through the table give what the
    contiguous K and V give (the numpy fp64 `reference`), for the variants `attnlab list` says
    read a paged cache; the others refuse naming the feature; a block out of the pool is
    named."""

    def pooled(self, k, block_size, seed=4):
        """[B, Hkv, Lk, d] -> pool [num_blocks, Hkv, block_size, d] and table [B, blocks]:
        every sequence's blocks shuffled through the pool, two spare blocks of NaN."""
        B, hkv, lk, d = k.shape
        per = -(-lk // block_size)
        ids = np.random.default_rng(seed).permutation(B * per + 2)
        pool = np.full((B * per + 2, hkv, block_size, d), np.nan, k.dtype)
        table = ids[:B * per].reshape(B, per).astype("<i4")
        for b in range(B):
            for x in range(per):
                rows = k[b, :, x * block_size:(x + 1) * block_size]
                pool[table[b, x], :, :rows.shape[1]] = rows
        return pool, table

    def test_decode_and_prefill_against_numpy(self):
        rc, out, _ = attnlab("list")
        table_text = out.split("paged K/V cache")[1].split("\n\n")[0].splitlines()[1:]
        paged = {l.split()[0]: l.split()[1] == "yes" for l in table_text if l.strip()}
        self.assertTrue(paged.get("flash"), out)
        # Lk is the table's capacity (3 blocks of 16): the causal diagonal is at Lk - Lq.
        for lq, mask in ((1, "none"), (5, "causal")):
            q, k, v = self.qkv(B=2, H=4, Hkv=2, lq=lq, lk=48, dk=16, dv=8, seed=lq)
            kl = np.array([45, 17], "<i8")
            kp, table = self.pooled(k, 16)
            vp, _ = self.pooled(v, 16)
            want, want_lse, bound, _ = reference(q, k, v, mask, key_lengths=kl)
            for variant, reads in paged.items():
                with self.subTest(variant=variant, lq=lq):
                    args = ["run", "--variant", variant, *self.inputs(q, kp, vp), "--block-table",
                            self.save("t.npy", table), "--key-lengths", self.save("kl.npy", kl),
                            "--mask", mask, "--out", self.path("o.npy")]
                    if not reads:
                        self.expect_error(r"paged K/V: variant \w+ reads contiguous K and V only",
                                          *args)
                        continue
                    self.expect_ok(*args)
                    self.assert_close(np.load(self.path("o.npy")), want, bound)

    def test_chunked_prefill_aligns_at_key_lengths(self):
        """--causal-at-key-lengths: the 5 queries are the newest tokens of each cache, so batch
        b's rows are those of the problem cut to its key_lengths[b] keys with the default
        bottom-right causal mask (a numpy reference per batch; 3 keys < 5 queries leaves two
        rows empty). Without the flag the diagonal sits at the capacity and they differ."""
        q, k, v = self.qkv(B=3, H=4, Hkv=2, lq=5, lk=48, dk=16, dv=8, seed=11)
        kl = np.array([48, 20, 3], "<i8")
        kp, table = self.pooled(k, 16)
        vp, _ = self.pooled(v, 16)
        args = ["run", "--variant", "flash", *self.inputs(q, kp, vp), "--block-table",
                self.save("t.npy", table), "--key-lengths", self.save("kl.npy", kl),
                "--mask", "causal", "--out", self.path("o.npy")]
        self.expect_ok(*args, "--causal-at-key-lengths")
        got = np.load(self.path("o.npy"))
        for b in range(3):
            cut = slice(0, int(kl[b]))
            want, _, bound, _ = reference(q[b:b + 1], k[b:b + 1, :, cut], v[b:b + 1, :, cut],
                                          "causal")
            self.assert_close(got[b:b + 1], want, bound)
        self.assertTrue(np.all(got[2, :, :2] == 0))
        self.expect_ok(*args)
        self.assertFalse(np.allclose(np.load(self.path("o.npy"))[1], got[1]))
        self.expect_error(r"--causal-(top-left|at-key-lengths) excludes --causal-", *args,
                          "--causal-at-key-lengths", "--causal-top-left")
        args = [a for a in args if a not in ("--key-lengths", self.path("kl.npy"))]
        self.expect_error(r"mask diagonal key-lengths .* needs key_lengths", *args,
                          "--causal-at-key-lengths")

    def test_bad_tables_are_named(self):
        q, k, v = self.qkv(B=2, H=2, Hkv=2, lq=1, lk=20, dk=8, dv=8)
        kp, table = self.pooled(k, 8)
        bad = table.copy()
        bad[1, 2] = 99
        files = ["run", "--variant", "flash", *self.inputs(q, kp, kp), "--out", self.path("o.npy")]
        self.expect_error(r"block_table\[1\]\[2\]=99 is outside the pool of num_blocks=8",
                          *files, "--block-table", self.save("bad.npy", bad))
        self.expect_error(r"a block table is \[B=2, blocks per sequence\]", *files,
                          "--block-table", self.save("flat.npy", table.ravel()))


def mpirun(ranks, *args):
    """`mpiexec -np RANKS attnlab ARGS` (as root, oversubscribed, one thread per rank):
    (exit code, stdout, stderr). A hang fails the test at the timeout."""
    env = dict(os.environ, ATTNLAB_TUNING="none", OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1",
               OMPI_MCA_mpi_yield_when_idle="1")
    p = subprocess.run(["mpiexec", "-np", str(ranks), CLI, *map(str, args)], capture_output=True,
                       text=True, env=env, timeout=120)
    return p.returncode, p.stdout, p.stderr


class Ring(Case):
    """`mpiexec -np P attnlab ring` (ring attention over MPI): O and lse match the numpy fp64
    `reference` within the bound and `attnlab run --variant flash`, for P = 1, 2, 3 with every
    mask the ring splits, GQA, uneven N and key lengths; bad input on rank 0 is one error and
    every rank exits 2; what the ring cannot split is named."""

    def setUp(self):
        super().setUp()
        if shutil.which("mpiexec") is None:
            self.skipTest("no mpiexec (openmpi-bin): ring attention is not built")
        rc, _, err = attnlab("ring", "--q", "x", "--k", "x", "--v", "x", "--out", "o")
        if "built without MPI" in err:
            self.skipTest("this attnlab was built without MPI")

    def test_matches_reference_and_run(self):
        for ranks, mask, lq, kl in ((1, "causal", 40, None), (2, "none", 37, None),
                                    (2, "causal", 64, [64, 20]), (3, "window:6,2", 50, [9, 50]),
                                    (3, "causal", 29, None)):
            with self.subTest(ranks=ranks, mask=mask, lq=lq):
                q, k, v = self.qkv(B=2, H=4, Hkv=2, lq=lq, lk=lq, dk=16, dv=8, seed=lq)
                args = [*self.inputs(q, k, v), "--mask", mask]
                if kl is not None:
                    args += ["--key-lengths", self.save("kl.npy", np.array(kl, "<i4"))]
                rc, out, err = mpirun(ranks, "ring", *args, "--out", self.path("o.npy"),
                                      "--lse", self.path("lse.npy"))
                self.assertEqual(rc, 0, out + err)
                self.assertRegex(out, rf"ring: {ranks} ranks, zigzag split, variant flash")
                self.assertEqual(len(re.findall(r"^ +\d+ +\d+ +\d+ ", out, re.M)), ranks, out)
                want, want_lse, bound, _ = reference(q, k, v, mask, key_lengths=kl)
                self.assert_close(np.load(self.path("o.npy")), want, bound)
                self.expect_ok("run", "--variant", "flash", *args, "--out", self.path("o1.npy"),
                               "--lse", self.path("lse1.npy"))
                np.testing.assert_allclose(np.load(self.path("o.npy")),
                                           np.load(self.path("o1.npy")), atol=1e-5)
                np.testing.assert_allclose(np.load(self.path("lse.npy")),
                                           np.load(self.path("lse1.npy")), atol=1e-5)

    def test_bad_input_is_one_error_and_every_rank_fails(self):
        q, k, v = self.qkv(H=4, Hkv=2, lq=20, lk=20)
        rc, out, err = mpirun(2, "ring", *self.inputs(q, k, v[:, :1]), "--out", self.path("o.npy"))
        self.assertEqual(rc, 2, out + err)
        self.assertEqual(err.count("attnlab: error:"), 1, err)
        self.assertRegex(err, r"Hkv")
        self.assertFalse(os.path.exists(self.path("o.npy")))

    def test_what_the_ring_cannot_split_is_named(self):
        q, k, v = self.qkv(H=2, Hkv=2, lq=8, lk=8)
        files = ["ring", *self.inputs(q, k, v), "--out", self.path("o.npy")]
        rc, _, err = mpirun(2, *files, "--mask-file",
                            self.save("m.npy", np.zeros((8, 8), "<f4")))
        self.assertEqual(rc, 2, err)
        self.assertIn("additive mask (--mask-file) is not split over ranks", err)
        rc, _, err = mpirun(1, *files, "--split", "diagonal")
        self.assertEqual(rc, 2, err)
        self.assertIn("bad --split 'diagonal': want zigzag or contiguous", err)



class Grad(Case):
    def grad_files(self, q, k, v, d_o):
        return [*self.inputs(q, k, v), "--do", self.save("do.npy", d_o),
                "--dq", self.path("dq.npy"), "--dk", self.path("dk.npy"),
                "--dv", self.path("dv.npy")]

    def assert_grads(self, want, bounds, to_bhsd=lambda x: x):
        for name, w, bound in zip(("dq", "dk", "dv"), want, bounds):
            got = np.load(self.path(name + ".npy"))
            self.assertEqual(got.dtype, np.float32, name)
            got = to_bhsd(got).astype(np.float64)
            self.assertEqual(got.shape, w.shape, name)
            self.assertFalse(np.isnan(got).any(), f"NaN in {name}")
            err = np.abs(got - w)
            worst = np.unravel_index(np.argmax(err - bound), err.shape)
            self.assertTrue((err <= bound).all(),
                            f"{name}: error {err[worst]:.3g} > bound {bound[worst]:.3g} at {worst}")

    def qkvdo(self, B=2, H=4, Hkv=2, lq=9, lk=11, dk=16, dv=8, seed=0):
        q, k, v = self.qkv(B=B, H=H, Hkv=Hkv, lq=lq, lk=lk, dk=dk, dv=dv, seed=seed)
        d_o = np.random.default_rng(seed + 100).uniform(-1, 1, (B, H, lq, dv)).astype("<f4")
        return q, k, v, d_o

    def test_list_marks_the_backward_variants(self):
        names = backward_variants()
        self.assertIn("naive", names)
        self.assertIn("blas", names)
        self.assertIn("'backward: yes'", self.expect_ok("list"))

    def test_gradients_match_numpy(self):
        q, k, v, d_o = self.qkvdo(seed=1)
        lens = self.save("lens.npy", np.array([7, 11], "<i4"))
        additive = np.random.default_rng(2).uniform(-2, 2, (9, 11)).astype("<f4")
        additive[::3, 4] = -np.inf
        cases = [("none", [], {}),
                 ("causal", [], {}),
                 ("window:3,1", ["--key-lengths", lens], {"key_lengths": [7, 11]}),
                 ("none", ["--mask-file", self.save("mask.npy", additive), "--scale", "0.3"],
                  {"additive": additive, "scale": 0.3})]
        for variant in backward_variants():
            for mask, extra, ref in cases:
                with self.subTest(variant=variant, mask=mask, extra=extra):
                    want, bounds = grad_reference(q, k, v, d_o, mask=mask, **ref)
                    out = self.expect_ok("grad", "--variant", variant,
                                         *self.grad_files(q, k, v, d_o), "--mask", mask, *extra)
                    self.assertRegex(out, r"O and lse by the forward of \w+")
                    self.assertRegex(out, r"time [0-9.]+ ms, [0-9.]+ GFLOP/s")
                    self.assertRegex(out, r"workspace .* \(declared .*\)")
                    self.assert_grads(want, bounds)

    def test_bshd_layout_and_rank_2(self):
        q, k, v, d_o = self.qkvdo(B=1, H=2, Hkv=1, lq=6, lk=13, dk=8, dv=12, seed=3)
        want, bounds = grad_reference(q, k, v, d_o, mask="causal")
        t = lambda x: x.transpose(0, 2, 1, 3)
        for variant in backward_variants():
            with self.subTest(variant=variant):
                self.expect_ok("grad", "--variant", variant, "--layout", "bshd", "--mask",
                               "causal", *self.grad_files(t(q), t(k), t(v), t(d_o)))
                self.assert_grads(want, bounds, to_bhsd=t)
        q, k, v, d_o = self.qkvdo(B=1, H=1, Hkv=1, lq=5, lk=7, dk=8, dv=4, seed=4)
        want, bounds = grad_reference(q, k, v, d_o)
        self.expect_ok("grad", "--variant", "blas", *self.grad_files(q[0, 0], k[0, 0], v[0, 0],
                                                                     d_o[0, 0]))
        self.assert_grads([w[0, 0] for w in want], [x[0, 0] for x in bounds])

    def test_given_o_and_lse(self):
        q, k, v, d_o = self.qkvdo(seed=5)
        want, bounds = grad_reference(q, k, v, d_o, mask="causal")
        self.expect_ok("run", "--variant", "flash", *self.inputs(q, k, v), "--mask", "causal",
                       "--out", self.path("o.npy"), "--lse", self.path("lse.npy"))
        for variant in backward_variants():
            with self.subTest(variant=variant):
                out = self.expect_ok("grad", "--variant", variant, "--mask", "causal",
                                     *self.grad_files(q, k, v, d_o), "--o", self.path("o.npy"),
                                     "--lse", self.path("lse.npy"))
                self.assertIn("O and lse from", out)
                self.assert_grads(want, bounds)

    def test_fully_masked_rows_ignore_nan_do(self):
        # Batch 1 has key length 0: every row fully masked, so its dQ is 0 and it adds nothing
        # to dK, dV, whatever its dO holds (NaN here).
        q, k, v, d_o = self.qkvdo(seed=6)
        d_o[1] = np.nan
        want, bounds = grad_reference(q, k, v, np.nan_to_num(d_o), key_lengths=[5, 0])
        lens = self.save("lens.npy", np.array([5, 0], "<i8"))
        for variant in backward_variants():
            with self.subTest(variant=variant):
                self.expect_ok("grad", "--variant", variant, *self.grad_files(q, k, v, d_o),
                               "--key-lengths", lens)
                self.assert_grads(want, bounds)
                self.assertTrue((np.load(self.path("dq.npy"))[1] == 0).all())
                self.assertTrue((np.load(self.path("dk.npy"))[1] == 0).all())

    def test_check_flag(self):
        q, k, v, d_o = self.qkvdo(seed=7)
        for variant in backward_variants():
            with self.subTest(variant=variant):
                out = self.expect_ok("grad", "--variant", variant, *self.grad_files(q, k, v, d_o),
                                     "--mask", "window:2,2", "--check")
                self.assertRegex(out, r"err/bound")
                self.assertRegex(out, variant + r"\s+\S+\s+\S+\s+\S+\s+[0-9.]+\s+ok")
        # Wrong O and lse (another problem's) fail the check: exit 1, after writing.
        self.expect_ok("run", "--variant", "flash", *self.inputs(q, k, v),
                       "--out", self.path("o.npy"), "--lse", self.path("lse.npy"))
        rc, out, err = attnlab("grad", "--variant", "blas", *self.grad_files(q, k, v, d_o),
                               "--mask", "causal", "--o", self.path("o.npy"),
                               "--lse", self.path("lse.npy"), "--check")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("FAIL", out)

    def test_score_modifiers_and_the_sinks_gradient(self):
        # --softcap/--alibi/--sinks reach the backward, --dsinks writes dσ [H]; --check holds
        # them all (dσ too) to the fp64 reference's bound; a variant whose backward lacks a
        # modifier refuses it by name (`attnlab list`'s backward table), and --dsinks needs
        # --sinks.
        q, k, v, d_o = self.qkvdo(seed=9)
        sinks = self.save("sinks.npy", np.array([1.0, -np.inf, 0.0, 2.5], np.float32))
        mods = ["--softcap", "3", "--alibi", "standard", "--sinks", sinks]
        _, out, _ = attnlab("list")
        table = out.split("backward score modifiers")[1].split("\n\n")[0].splitlines()[1:]
        applies = {line.split()[0]: line for line in table if line.strip()}
        self.assertEqual(set(applies), set(backward_variants()))
        for variant, line in applies.items():
            with self.subTest(variant=variant):
                args = ["grad", "--variant", variant, *self.grad_files(q, k, v, d_o), "--mask",
                        "causal", *mods, "--dsinks", self.path("ds.npy")]
                if "softcap, alibi, sinks" not in line:
                    self.expect_error(r"does not apply softcap, alibi, sinks", *args)
                    continue
                out = self.expect_ok(*args, "--check")
                self.assertRegex(out, variant + r"\s+\S+\s+\S+\s+\S+\s+[0-9.]+\s+ok")
                ds = np.load(self.path("ds.npy"))
                self.assertEqual(ds.shape, (4,))
                self.assertEqual(ds[1], 0.0)  # head 1's sink is -inf: no sink
                self.assertTrue(np.isfinite(ds).all() and (ds != 0)[[0, 2, 3]].all())
        self.expect_error(r"d_sinks is given but the problem has no sinks", "grad", "--variant",
                          "flash", *self.grad_files(q, k, v, d_o), "--dsinks",
                          self.path("ds.npy"))

    def test_bad_inputs(self):
        q, k, v, d_o = self.qkvdo(seed=8)
        args = self.grad_files(q, k, v, d_o)
        bad_do = self.save("bad_do.npy", d_o[..., :7])
        err = self.expect_error(r"--do .*bad_do\.npy has shape \(2, 4, 9, 7\); want \(2, 4, 9, 8\)",
                                "grad", "--variant", "blas", *args[:6], "--do", bad_do,
                                *args[8:])
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.expect_error(r"--o without --lse", "grad", "--variant", "blas", *args,
                          "--o", self.path("x.npy"))
        self.expect_error(r"--lse .* has shape \(2, 4, 9, 8\); want \(2, 4, 9\)", "grad",
                          "--variant", "blas", *args, "--o", self.path("do.npy"),
                          "--lse", self.path("do.npy"))
        self.expect_error(r"unknown variant 'nope'", "grad", "--variant", "nope", *args)
        without = [n for n in variant_names() if n not in backward_variants()]
        if without:
            self.expect_error(rf"{without[0]} has no backward pass; variants with one: naive",
                              "grad", "--variant", without[0], *args)
        self.expect_error(r"--dq .* would overwrite the input --q", "grad", "--variant", "blas",
                          *args[:8], "--dq", self.path("q.npy"), *args[10:])
        self.expect_error(r"--do.*no such file|cannot open|No such file", "grad", "--variant",
                          "blas", *args[:6], "--do", self.path("missing.npy"), *args[8:])
        # The backward is fp32: an f16 file is refused by the library, naming the tensor.
        self.save("q.npy", q.astype("<f2"))
        self.expect_error(r"backward takes f32 tensors only; Q=f16", "grad", "--variant",
                          "blas", *args[2:], "--q", self.path("q.npy"))
        rc, _, err = attnlab("grad", "--variant", "blas", *args, "--dtype", "bf16")
        self.assertEqual(rc, 2, err)
        self.assertIn("--dtype", err)


# --------------------------------------------------------------------- bench
FAKE = """#!/bin/sh
# Stands in for attnlab_bench / generate.py: records its arguments.
for a in "$@"; do printf '%s\\n' "$a"; done > "$FAKE_ARGS"
exit "${FAKE_RC:-0}"
"""


def installed_copy(case):
    """A copy of the tool at <case dir>/p/bin/attnlab, alone in the installed layout; returns
    the prefix as attnlab sees it (/proc/self/exe: no symlinks) and the copy."""
    prefix = os.path.realpath(case.path("p"))
    os.makedirs(os.path.join(prefix, "bin"))
    exe = os.path.join(prefix, "bin", "attnlab")
    shutil.copy2(CLI, exe)
    return prefix, exe


def run_plain(exe, *args, env=None):
    """Runs exe with no ATTNLAB_* variable but ATTNLAB_TUNING=none and those in env: what it
    finds, it finds by itself."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ATTNLAB_")}
    full_env["ATTNLAB_TUNING"] = "none"
    full_env.update(env or {})
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=full_env,
                          timeout=120)


class Bench(Case):
    def fake(self):
        path = self.write("fake.sh", FAKE.encode())
        os.chmod(path, 0o755)
        return path

    def args(self):
        with open(self.path("args.txt")) as f:
            return f.read().splitlines()

    def test_flags_map_to_google_benchmark(self):
        env = {"ATTNLAB_BENCH": self.fake(), "FAKE_ARGS": self.path("args.txt")}
        out = self.expect_ok("bench", "--suite", "quick", "--filter", "naive/.*causal:1",
                             "--threads", "1,2", "--out", self.path("r/res.json"), "--",
                             "--benchmark_repetitions=3", env=env)
        self.assertEqual(self.args(), ["--suite=quick", "--threads=1,2",
                                       "--benchmark_filter=naive/.*causal:1",
                                       f"--benchmark_out={self.path('r/res.json')}",
                                       "--benchmark_out_format=json", "--benchmark_repetitions=3"])
        self.assertTrue(os.path.isdir(self.path("r")))
        self.assertIn("attnlab report", out)

    def test_default_out_and_failure(self):
        env = {"ATTNLAB_BENCH": self.fake(), "FAKE_ARGS": self.path("args.txt")}
        self.expect_ok("bench", env=env, cwd=self.dir)
        out_arg = [a for a in self.args() if a.startswith("--benchmark_out=")][0]
        self.assertRegex(out_arg, r"^--benchmark_out=results/\S+-\d{4}-\d\d-\d\d\.json$")
        env["FAKE_RC"] = "3"
        self.expect_error(r"attnlab_bench exited with status 3", "bench", env=env, cwd=self.dir,
                          code=1)

    def test_bench_then_report(self):
        fake = self.fake()
        env = {"ATTNLAB_BENCH": fake, "ATTNLAB_REPORT_SCRIPT": fake, "ATTNLAB_PYTHON": "/bin/sh",
               "FAKE_ARGS": self.path("args.txt")}
        self.write("res.json", b"{}")  # what the real attnlab_bench would write
        out = self.expect_ok("bench", "--suite", "quick", "--out", self.path("res.json"),
                             "--report", "--label", "zen4", env=env)
        self.assertIn(f"results: {self.path('res.json')}", out)
        self.assertIn(f"+ /bin/sh {fake} {self.path('res.json')} --label zen4", out)
        self.assertEqual(self.args(), [self.path("res.json"), "--label", "zen4"])

    def test_found_beside_attnlab_else_the_error_lists_where_it_looked(self):
        """Without ATTNLAB_BENCH: the attnlab_bench installed beside attnlab, else the build
        tree's bench/ (docs/cli.md); nothing compiled in."""
        prefix, exe = installed_copy(self)
        env = {"FAKE_ARGS": self.path("args.txt")}
        p = run_plain(exe, "bench", "--out", self.path("r.json"), env=env)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(f"attnlab_bench not found; looked for:\n  {prefix}/bin/attnlab_bench\n"
                      f"  {prefix}/bench/attnlab_bench\n", p.stderr)
        os.makedirs(os.path.join(prefix, "bench"))  # a build tree: p/bin is its cli/
        shutil.copy2(self.fake(), os.path.join(prefix, "bench", "attnlab_bench"))
        p = run_plain(exe, "bench", "--out", self.path("r.json"), env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(f"+ {prefix}/bench/attnlab_bench --benchmark_out=", p.stdout)
        shutil.copy2(self.fake(), os.path.join(prefix, "bin", "attnlab_bench"))
        p = run_plain(exe, "bench", "--out", self.path("r.json"), env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(f"+ {prefix}/bin/attnlab_bench --benchmark_out=", p.stdout)

    def test_missing_bench_and_bad_flags(self):
        self.expect_error(r"attnlab_bench not found; looked for:\n  /nonexistent/attnlab_bench",
                          "bench", env={"ATTNLAB_BENCH": "/nonexistent/attnlab_bench"})
        self.expect_error(r"bad --suite 'huge': want quick, default, full, precision, backward or serving", "bench", "--suite",
                          "huge")
        self.expect_error(r"bad --threads '1;2'", "bench", "--threads", "1;2")


class Report(Case):
    def test_args_pass_through(self):
        fake = Bench.fake(self)
        env = {"ATTNLAB_REPORT_SCRIPT": fake, "ATTNLAB_PYTHON": "/bin/sh",
               "FAKE_ARGS": self.path("args.txt")}
        a = self.write("a.json", b"{}")
        b = self.write("b.json", b"{}")
        self.expect_ok("report", a, b, "--label", "zen4", "--out-dir", self.path("rep"), env=env)
        self.assertEqual(Bench.args(self), [a, b, "--label", "zen4", "--out-dir", self.path("rep")])
        self.expect_ok("report", "--compare", a, b, env=env)
        self.assertEqual(Bench.args(self), ["compare", a, b])

    def test_installed_scripts_and_python_package(self):
        """Without ATTNLAB_REPORT_SCRIPT: <prefix>/share/attnlab/reports/generate.py, relative
        to the executable (the build tree links its reports/ there); the installed Python
        package's directory first on the child's PYTHONPATH when it is there."""
        prefix, exe = installed_copy(self)
        a = self.write("a.json", b"{}")
        script = os.path.join(prefix, "share", "attnlab", "reports", "generate.py")
        p = run_plain(exe, "report", a, env={"ATTNLAB_PYTHON": "/bin/sh"})
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(f"report generator not found; looked for:\n  {script}\n", p.stderr)
        os.makedirs(os.path.dirname(script))
        with open(script, "w") as f:
            f.write(f'printf "%s\\n" "$PYTHONPATH" "$@" > {self.path("args.txt")}\n')
        env = {"ATTNLAB_PYTHON": "/bin/sh", "PYTHONPATH": "/elsewhere"}
        p = run_plain(exe, "report", a, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(f"+ /bin/sh {script} {a}\n", p.stdout)
        self.assertEqual(Bench.args(self), ["/elsewhere", a])
        pydir = os.path.join(prefix, "lib", "python3", "dist-packages")
        os.makedirs(os.path.join(pydir, "attnlab"))
        p = run_plain(exe, "report", a, env=env)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(f"+ PYTHONPATH={pydir}:/elsewhere /bin/sh {script} {a}\n", p.stdout)
        self.assertEqual(Bench.args(self), [f"{pydir}:/elsewhere", a])

    def test_real_generator_on_its_fixture(self):
        """With reports/generate.py and its fixture in the tree: a real report."""
        script = os.path.join(SOURCE, "reports", "generate.py")
        fixture = os.path.join(SOURCE, "reports", "testdata", "quick.json")
        if not (os.path.exists(script) and os.path.exists(fixture)):
            self.skipTest("reports/generate.py or its fixture is not in this tree")
        out = self.expect_ok("report", fixture, "--label", "cli", "--out-dir", self.path("rep"))
        reports = [os.path.join(d, f) for d, _, fs in os.walk(self.path("rep")) for f in fs
                   if f == "report.md"]
        self.assertEqual(len(reports), 1, out)

    def test_errors(self):
        self.expect_error(r"give RESULTS.json files, or --compare", "report")
        self.expect_error(r"missing.json: no such file", "report", self.path("missing.json"))
        a = self.write("a.json", b"{}")
        self.expect_error(r"report generator not found; looked for:\n  /nonexistent\.py "
                          r"\(\$ATTNLAB_REPORT_SCRIPT\)\nunset ATTNLAB_REPORT_SCRIPT", "report", a,
                          env={"ATTNLAB_REPORT_SCRIPT": "/nonexistent.py"})


# --------------------------------------------------------------------- docs
class Docs(Case):
    def test_readme_python_example_runs(self):
        """The Python example in docs/cli.md, run as written (attnlab on PATH)."""
        with open(os.path.join(SOURCE, "docs", "cli.md")) as f:
            text = f.read()
        m = re.search(r"<!-- python-example -->\s*```python\n(.*?)```", text, re.S)
        self.assertIsNotNone(m, "docs/cli.md lacks the marked python example")
        env = dict(os.environ)
        env["PATH"] = os.path.dirname(os.path.abspath(CLI)) + os.pathsep + env["PATH"]
        p = subprocess.run([sys.executable, "-c", m.group(1)], capture_output=True, text=True,
                           cwd=self.dir, env=env, timeout=120)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("max abs diff", p.stdout)


# --------------------------------------------------------------------- tune
class Tune(Case):
    def test_tune_writes_a_file_that_auto_follows(self):
        out_path = self.path("tuning.json")
        out = self.expect_ok("tune", "--quick", "--threads", "1", "--out", out_path)
        self.assertIn("wrote " + out_path, out)
        self.assertRegex(out, r"\[ ?\d+/\d+\] threads=1 d=64 (dense|causal) N=\d+:.* -> \w+")
        with open(out_path) as f:
            tuning = json.load(f)
        self.assertEqual(tuning["format"], 1)
        self.assertIn(tuning["flash"]["key_tile"], (128, 256, 512))
        # The key tile's pick: the default (512) unless another tile won its round and the
        # head-to-head against 512 that follows it, by the 1% margin (cli/tune.cc).
        pick = re.search(r"-> key tile (\d+) \(score [\d.]+, the default 512 scores [\d.]+"
                         r"(; head to head (\d+) ([\d.]+), the default ([\d.]+)"
                         r"(: not confirmed, the default stays)?)?; ", out)
        self.assertTrue(pick, out)
        self.assertEqual(tuning["flash"]["key_tile"], int(pick.group(1)))
        if pick.group(2):
            self.assertIn("flash key tile again, ", out)
            if pick.group(6):
                self.assertEqual(pick.group(1), "512")
            else:
                self.assertEqual(pick.group(1), pick.group(3))
                self.assertLess(float(pick.group(4)), float(pick.group(5)) * 0.99)
        else:
            self.assertNotIn("flash key tile again, ", out)
        # --quick measures no decode prefetch setting: each keeps its default.
        self.assertEqual(tuning["flash"]["decode_prefetch_bytes"], 32768)
        self.assertEqual(tuning["flash"]["paged_prefetch_bytes"], 32768)
        self.assertRegex(out, r"-> paged decode prefetch 32768 B \(the default; --quick does not "
                              r"measure it\)")
        self.assertGreater(tuning["flash"]["decode_prefetch_min_kv_bytes"], 0)
        self.assertRegex(out, r"-> decode prefetch above \d+ MiB of K and V \(the default; "
                              r"--quick does not measure it\)")
        points = tuning["auto"]["points"]
        self.assertEqual({(p["causal"], p["n"]) for p in points},
                         {(c, n) for c in (False, True) for n in (128, 256)})
        # auto runs what the file says, and `run` prints the pick and its path.
        for p in points:
            p["variant"] = "chunked"
        with open(out_path, "w") as f:
            json.dump(tuning, f)
        q, k, v = self.qkv(lq=128, lk=128, dk=64, dv=64)
        env = {"ATTNLAB_TUNING": out_path}
        ran = self.expect_ok("run", "--variant", "auto", *self.inputs(q, k, v), "--out",
                             self.path("o.npy"), env=env)
        self.assertRegex(ran, r"path chunked, \w+")
        # No file: flash, and no warning.
        rc, ran, err = attnlab("run", "--variant", "auto", *self.inputs(q, k, v), "--out",
                               self.path("o.npy"), env={"ATTNLAB_TUNING": "none"})
        self.assertEqual(rc, 0, err)
        self.assertRegex(ran, r"path flash, \w+")
        self.assertEqual(err, "")

    def test_bad_or_stale_files_warn_and_fall_back(self):
        q, k, v = self.qkv(lq=64, lk=64)
        stale = {"format": 1, "cpu": "Another CPU (family 6, model 143)", "target": "AVX3",
                 "flash": {"key_tile": 256}, "auto": {"points": []}}
        for text, why in ((json.dumps(stale), r"made on CPU 'Another CPU"),
                          ('{"format": 1}', r"tuning: cpu is missing"),
                          ("not json", r"tuning: not valid JSON")):
            path = self.write("t.json", text.encode())
            rc, out, err = attnlab("run", "--variant", "auto", *self.inputs(q, k, v), "--out",
                                   self.path("o.npy"), env={"ATTNLAB_TUNING": path})
            self.assertEqual(rc, 0, err)
            self.assertRegex(err, r"attnlab: ignoring tuning file .*t\.json: " + why +
                             r".*rerun `attnlab tune`")
            self.assertEqual(err.count("\n"), 1, err)  # once per process
            self.assertIn("path flash", out)

    def test_highway_target_limit(self):
        """ATTNLAB_HWY_TARGET runs a lesser Highway target (the AVX2 path on AVX-512)."""
        q, k, v = self.qkv(lq=70, lk=70)
        args = ("run", "--variant", "flash", *self.inputs(q, k, v), "--out", self.path("o.npy"))
        best = re.search(r"path (\S+)", self.expect_ok(*args)).group(1)
        rc, out, err = attnlab(*args, env={"ATTNLAB_HWY_TARGET": "NOT_A_TARGET"})
        self.assertEqual(rc, 0, err)
        self.assertRegex(err, r"^attnlab: ignoring ATTNLAB_HWY_TARGET=NOT_A_TARGET: this CPU and "
                              r"build dispatch \w+")
        self.assertIn("path " + best, out)
        if best in ("AVX3", "AVX3_DL", "AVX3_ZEN4"):
            for lesser in ("AVX2", "SSE4"):
                rc, out, err = attnlab(*args, env={"ATTNLAB_HWY_TARGET": lesser})
                self.assertEqual(rc, 0, err)
                # A build for this CPU's best target only (the sanitizer presets,
                # ATTNLAB_HWY_NATIVE_ONLY) has no lesser one: the switch says so and
                # names what the build dispatches.
                only = re.search(r"ignoring ATTNLAB_HWY_TARGET=%s: this CPU and build "
                                 r"dispatch (.*)" % lesser, err)
                if only:
                    self.assertNotIn(lesser, only.group(1).split(", "))
                    self.assertIn("path " + best, out)
                    print(f"skipped {lesser}: this build dispatches {only.group(1)} only")
                    continue
                self.assertRegex(out, r"path %s\n" % lesser)
        else:
            print(f"skipped the AVX2/SSE4 part: this CPU dispatches {best}, not AVX-512")

    def test_bad_arguments(self):
        self.expect_error(r"--threads: 0 must be in \[1, 1024\]", "tune", "--threads", "0",
                          "--out", self.path("t.json"))
        self.expect_error(r"--max-n: 64 must be in \[128, 65536\]", "tune", "--max-n", "64",
                          "--out", self.path("t.json"))
        self.expect_error(r"no place for the tuning file", "tune",
                          env={"ATTNLAB_TUNING": "none"})
        self.assertFalse(os.path.exists(self.path("t.json")))


# --------------------------------------------------------------------- bad input
def bad_npy_cases():
    """(name, file bytes, expected message regex) for malformed .npy inputs."""
    good = npy_bytes(np.zeros((1, 2, 3, 4), "<f4"))
    hdr = "{'descr': '%s', 'fortran_order': %s, 'shape': %s, }"

    def h(descr="<f4", fortran="False", shape="(1, 2, 3, 4)"):
        return hdr % (descr, fortran, shape)

    data = bytes(4 * 24)
    return [
        ("empty file", b"", r"truncated: 0 bytes, too short to be a \.npy file"),
        ("truncated data", good[:-5], r"truncated: shape \(1, 2, 3, 4\) of '<f4' needs 96 data "
                                      r"bytes, the file has 91"),
        ("truncated header", good[:40], r"truncated: header length \d+ runs past the end of the "
                                        r"file \(40 bytes\)"),
        ("bad magic", b"PK\x03\x04" + good[4:], r"not a \.npy file: bad magic \(first bytes "
                                                r"0x504b0304"),
        ("version 4.0", b"\x93NUMPY\x04\x00" + good[8:], r"unsupported \.npy format version 4\.0"),
        ("dtype <i2", raw_npy(h(descr="<i2")) + data, r"dtype '<i2' is not supported; want "
                                                      r"little-endian float32 '<f4'"),
        ("big-endian >f4", npy_bytes(np.zeros((1, 2, 3, 4), ">f4")),
         r"dtype '>f4' is big-endian; want little-endian float32 '<f4', float16 '<f2', float64 "
         r"'<f8', bfloat16 bits '<u2' or int8 '\|i1' \(e\.g\. arr\.astype\('<f4'\)\)"),
        ("big-endian >f2", npy_bytes(np.zeros((1, 2, 3, 4), ">f2")),
         r"dtype '>f2' is big-endian; .* \(e\.g\. arr\.astype\('<f2'\)\)"),
        ("uint8", npy_bytes(np.zeros((1, 2, 3, 4), "|u1")),
         r"dtype '\|u1' is not supported; want little-endian float32 '<f4', float16 '<f2', float64 "
         r"'<f8', bfloat16 bits '<u2' or int8 '\|i1'"),
        ("big-endian >u2", npy_bytes(np.zeros((1, 2, 3, 4), ">u2")),
         r"dtype '>u2' is big-endian; .* \(e\.g\. arr\.astype\('<u2'\)\)"),
        ("fortran order", npy_bytes(np.asfortranarray(np.zeros((1, 2, 3, 4), "<f4"))),
         r"fortran_order is True \(column-major\); want C order"),
        ("absurd header length", raw_npy(h(), version=2, header_len=0xFFFFFFF0),
         r"absurd header length 4294967280 bytes"),
        ("shape product overflow", raw_npy(h(shape="(4294967296, 4294967296, 16)")) + data,
         r"has more elements than int64 can count"),
        ("byte count overflow", raw_npy(h(shape="(4611686018427387904,)")) + data,
         r"overflows the byte count"),
        ("huge shape, tiny file", raw_npy(h(shape="(100000, 100000, 100000)")) + data,
         r"truncated: shape \(100000, 100000, 100000\) of '<f4' needs 4000000000000000 data bytes"),
        ("negative dimension", raw_npy(h(shape="(-1, 4)")), r"negative dimension in shape"),
        ("not a dict", raw_npy("[1, 2, 3]\n"), r"malformed header at byte 0: header is not a "
                                                r"Python dict"),
        ("missing shape", raw_npy("{'descr': '<f4', 'fortran_order': False}\n"),
         r"header lacks 'shape'"),
        ("unknown key", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), "
                                "'evil': 1}\n"), r"unexpected key 'evil'"),
        ("structured dtype", npy_bytes(np.zeros(3, dtype=[("a", "<f4"), ("b", "<i4")])),
         r"structured dtype \(a list of fields\) is not supported"),
        ("trailing bytes", good + b"junk", r"4 unexpected bytes after the data"),
        ("rank 1", npy_bytes(np.zeros(5, "<f4")), r"has shape \(5,\) of rank 1; want rank 4 "
                                                  r"\[B,H,L,d\], 3 \[H,L,d\] or 2 \[L,d\]"),
        ("rank 5", npy_bytes(np.zeros((1, 1, 1, 2, 2), "<f4")), r"has shape \(1, 1, 1, 2, 2\) of "
                                                                r"rank 5"),
    ]


class BadInput(Case):
    """Every bad input gets exit code 2 and a message naming the problem."""

    def setUp(self):
        super().setUp()
        self.q, self.k, self.v = self.qkv(B=2, H=4, Hkv=2, lq=5, lk=7, dk=8, dv=6, seed=20)
        self.base = self.inputs(self.q, self.k, self.v)
        self.out = ["--out", self.path("o.npy")]
        self.variant = ["--variant", first_variant()]

    def run_bad(self, pattern, *args, code=2):
        return self.expect_error(pattern, "run", *self.variant, *args, code=code)

    def test_malformed_npy_files(self):
        for name, data, pattern in bad_npy_cases():
            for slot in ["--q", "--k", "--v"]:
                with self.subTest(case=name, slot=slot):
                    bad = self.write("bad.npy", data)
                    args = dict(zip(self.base[::2], self.base[1::2]))
                    args[slot] = bad
                    argv = [x for kv in args.items() for x in kv]
                    err = self.run_bad(pattern, *argv, *self.out)
                    self.assertIn(bad, err, "the message names the file")
                    self.assertFalse(os.path.exists(self.path("o.npy")))

    def test_files(self):
        self.run_bad(r"/nope/q\.npy: cannot open: no such file", "--q", "/nope/q.npy",
                     *self.base[2:], *self.out)
        self.run_bad(r"not a regular file", "--q", self.dir, *self.base[2:], *self.out)
        self.run_bad(r"--q '': want a path", "--q", "", *self.base[2:], *self.out)
        # An output that cannot be written is an I/O failure (3), found before
        # any kernel runs; Outputs tests the rest.
        self.run_bad(r"--out /no/such/dir/o\.npy: cannot write into /no/such/dir: No such file or "
                     r"directory", *self.base, "--out", "/no/such/dir/o.npy", code=3)

    def test_shapes_that_disagree(self):
        q, k, v = self.q, self.k, self.v
        cases = [
            ("dk", (q, k[..., :4], v), r"Q and K head dims \(dk\) disagree: \S+q\.npy has shape "
                                       r"\(2, 4, 5, 8\), \S+k\.npy has shape \(2, 2, 7, 4\)"),
            ("batch", (q[:1], k, v), r"batch sizes disagree: \S+q\.npy has shape \(1, 4, 5, 8\), "
                                     r"\S+k\.npy has shape \(2, 2, 7, 8\)"),
            ("Lk", (q, k, v[:, :, :6]), r"K and V lengths \(Lk\) disagree: \S+k\.npy has shape "
                                        r"\(2, 2, 7, 8\), \S+v\.npy has shape \(2, 2, 6, 6\)"),
            ("Hkv", (q, k, v[:, :1]), r"K and V head counts \(Hkv\) disagree"),
            ("rank", (q, k[0], v), r"ranks disagree: \S+q\.npy has shape \(2, 4, 5, 8\), \S+k\.npy "
                                   r"has shape \(2, 7, 8\)"),
            ("H % Hkv", (q[:, :3], k, v), r"invalid problem: Hkv=2 does not divide H=3 \(inputs: "
                                          r"\S+q\.npy \(2, 3, 5, 8\), \S+k\.npy \(2, 2, 7, 8\)"),
        ]
        for name, (a, b, c), pattern in cases:
            with self.subTest(name):
                self.run_bad(pattern, *self.inputs(np.ascontiguousarray(a),
                                                   np.ascontiguousarray(b),
                                                   np.ascontiguousarray(c)), *self.out)

    def test_masks(self):
        b = [*self.base, *self.out]
        # Window sizes are plain non-negative decimal integers: no sign, space,
        # hex or overflow.
        for mask in ["foo", "window:3", "window:a,b", "window:1,2,3", "window:", "causal:1",
                     "window:-1,0", "window:2,-4", "window: 3,0", "window:3, 0", "window:3,0 ",
                     "window:+3,0", "window:0x3,0", "window:3,", "window:,3", "window:1e2,0",
                     "window:99999999999999999999,0", " causal"]:
            with self.subTest(mask=mask):
                self.run_bad(rf"bad --mask '{re.escape(mask)}': want none, causal or "
                             r"window:LEFT,RIGHT with LEFT and RIGHT non-negative integers", *b,
                             "--mask", mask)
        m = self.save("m.npy", np.zeros((5, 6), "<f4"))
        self.run_bad(r"invalid problem: additive mask is \[5, 6\]", *b, "--mask-file", m)
        m = self.save("m.npy", np.zeros((7,), "<f4"))
        self.run_bad(r"has shape \(7,\) of rank 1; an additive mask is \[Lq,Lk\] or \[B,H,Lq,Lk\]",
                     *b, "--mask-file", m)
        m = self.save("m.npy", np.zeros((3, 1, 5, 7), "<f4"))
        self.run_bad(r"invalid problem: additive mask batch=3", *b, "--mask-file", m)
        m = self.save("m.npy", np.zeros((5, 7), "<f4"))
        self.run_bad(r"--mask-file \(an additive mask\) cannot be combined with --mask causal", *b,
                     "--mask-file", m, "--mask", "causal")
        m = self.save("m.npy", np.zeros((5, 7), "<i4"))
        self.run_bad(r"dtype '<i4' is not supported; want little-endian float32", *b,
                     "--mask-file", m)

    def test_key_lengths(self):
        b = [*self.base, *self.out]
        for lens, pattern in [
            ([3, 8], r"invalid problem: key_lengths\[1\]=8 .*\[0, Lk=7\]|key_lengths\[1\]=8"),
            ([-1, 2], r"invalid problem: key_lengths\[0\]=-1"),
            ([3], r"invalid problem: key_lengths has 1 entries"),
            ([], r"invalid problem: key_lengths has 0 entries, needs B=2"),  # issue 21 #6
        ]:
            with self.subTest(lens=lens):
                self.run_bad(pattern, *b, "--key-lengths",
                             self.save("l.npy", np.array(lens, "<i4").reshape(len(lens))))
        self.run_bad(r"key length 8589934592 is outside \[0, Lk=7\]", *b, "--key-lengths",
                     self.save("l.npy", np.array([2 ** 33, 1], "<i8")))
        self.run_bad(r"dtype '<f4' is not supported; want little-endian int32 '<i4' or int64 '<i8'",
                     *b, "--key-lengths", self.save("l.npy", np.array([1, 2], "<f4")))
        self.run_bad(r"has shape \(1, 2\); key lengths are rank 1, one per batch \(B=2\)", *b,
                     "--key-lengths", self.save("l.npy", np.array([[1, 2]], "<i4")))

    def test_options(self):
        b = [*self.base, *self.out]
        self.expect_error(r"unknown variant 'flashy'; known: ", "run", "--variant", "flashy", *b)
        self.run_bad(r"bad --layout 'bhds': want bhsd", *b, "--layout", "bhds")
        for scale in ["", "nan", "inf", "-inf", "0x10", "1e", "1.5x", " 1", "1 ", "--1", ".",
                      "e5", "1,5", "0.5f"]:
            with self.subTest(scale=scale):
                self.run_bad(rf"bad --scale '{re.escape(scale)}': want a finite decimal number "
                             r"such as 0\.125 or 1e-3", *b, "--scale", scale)
        self.run_bad(r"bad --scale '1e39': outside the float32 range", *b, "--scale", "1e39")
        for threads in ["0", "-3", "1025", "1000000", "", "0x2", "+2", " 2", "2.0", "1e3",
                        "99999999999999999999"]:
            with self.subTest(threads=threads):
                self.run_bad(rf"bad --threads '{re.escape(threads)}': want an integer from 1 to "
                             r"1024 \(omit --threads to use every core\)", *b, "--threads", threads)
        for budget in ["12X", "", "12 G"]:
            with self.subTest(budget=budget):
                self.run_bad(rf"bad --memory-budget '{re.escape(budget)}': want a byte count such "
                             r"as 4096, 512M or 12G", *b, "--memory-budget", budget)
        self.run_bad(r"--out is required", *self.base)
        self.run_bad(r"--q is required", *self.base[2:], *self.out)
        self.expect_error(r"A subcommand is required|subcommand", code=2)
        self.expect_error(r"The following argument was not expected: --bogus|--bogus", "list",
                          "--bogus")

    def test_over_budget(self):
        # O is 1.8 KiB; a materialized 64 x 64 score matrix 16.2 KiB.
        q, k, v = self.qkv(B=1, H=1, Hkv=1, lq=64, lk=64, dk=8, dv=6, seed=21)
        if "Lq x Lk" not in attnlab("list")[1].splitlines()[1]:
            self.skipTest("the first variant does not materialize scores")
        self.run_bad(r"over budget: \S+ needs 16\.2 KiB of scores, budget 4\.0 KiB \(B=1 H=1",
                     *self.inputs(q, k, v), *self.out, "--memory-budget", "4K")
        # The output itself over budget (Q of 1 row, V of a huge dv): refused
        # before anything is allocated.
        q = np.zeros((1, 4), "<f4")
        k = np.zeros((1, 4), "<f4")
        v = np.zeros((1, 300000), "<f4")
        self.run_bad(r"over budget: the output O \[B=1, H=1, Lq=1, dv=300000\] needs 1\.1 MiB, "
                     r"budget 1\.0 MiB", *self.inputs(q, k, v), *self.out, "--memory-budget", "1M")


# --------------------------------------------------------------------- bench, interrupted
import signal  # noqa: E402 (here with the tests that use them)
import time  # noqa: E402


def process_state(pid):
    """The state letter of /proc/PID/stat ('R', 'S', 'Z', ...), or None when there is no PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(pid):
    return process_state(pid) not in (None, "Z")


def children(pid):
    found = []
    for d in os.listdir("/proc"):
        try:
            with open(f"/proc/{d}/stat") as f:
                if d.isdigit() and int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    return found


class BenchInterrupt(Case):
    """`attnlab bench` on the real attnlab_bench, stopped: its child stops with it (even when
    attnlab is SIGKILLed), the results keep what finished, --report still runs, --resume
    continues."""
    FILTER = "N:256/d:64/causal:1/threads:1|N:1024/d:64/causal:0/threads:1"

    def setUp(self):
        super().setUp()
        rc, _, err = attnlab("bench", "--suite", "quick", "--filter", "^flash/N:256/", "--out",
                             self.path("probe.json"), "--", "--benchmark_list_tests")
        if rc != 0:
            self.skipTest("attnlab_bench is not built: " + err.strip())

    def start(self, *args):
        """Starts `attnlab bench` on 12 cases; returns it, once 3 progress lines are out, with
        its attnlab_bench's pid and the stderr so far."""
        def default_sigint():
            signal.signal(signal.SIGINT, signal.SIG_DFL)
        p = subprocess.Popen([CLI, "bench", "--suite", "quick", "--threads", "1", "--filter",
                              self.FILTER, "--out", self.path("res.json"), *args, "--",
                              "--benchmark_min_time=0.1"], cwd=self.dir, text=True,
                             stdout=open(self.path("stdout"), "w"), stderr=subprocess.PIPE,
                             preexec_fn=default_sigint)
        err = ""
        while err.count("\n[") < 3:
            line = p.stderr.readline()
            self.assertTrue(line, "attnlab bench ended early:\n" + err)
            err += line
        (child,) = children(p.pid)
        return p, child, err

    def interrupted(self):
        with open(self.path("res.json")) as f:
            doc = json.load(f)  # closed by attnlab_bench
        return [e for e in doc["benchmarks"]
                if e.get("error_message", "").startswith("interrupted: SIGTERM")]

    def test_sigterm_stops_the_child_then_reports_and_resumes(self):
        if not os.path.exists(os.path.join(SOURCE, "reports", "generate.py")):
            self.skipTest("reports/generate.py is not in this tree")
        p, child, err = self.start("--report", "--label", "cut")
        os.kill(p.pid, signal.SIGTERM)  # to attnlab alone, as `kill PID` does
        err += p.stderr.read()
        p.wait(timeout=120)
        self.assertEqual(p.returncode, 143, err)
        self.assertFalse(alive(child), f"attnlab_bench {child} outlived attnlab")
        missing = self.interrupted()
        self.assertGreater(len(missing), 0)
        reports = [os.path.join(d, f) for d, _, fs in os.walk(self.path("reports"))
                   for f in fs if f == "report.md"]
        self.assertEqual(len(reports), 1, open(self.path("stdout")).read() + err)
        resume = f"attnlab bench --resume {self.path('res.json')} --report --label cut"
        self.assertIn("Continue it with:\n  " + resume, err)

        rc, out, err = attnlab("bench", "--resume", self.path("res.json"), cwd=self.dir)
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(re.findall(r"^\[\d+/\d+\] ", err, re.M)), len(missing), err)
        self.assertEqual(self.interrupted(), [])
        self.expect_error(r"--resume .*nope.json: no such file", "bench", "--resume",
                          self.path("nope.json"))

    def test_sigkill_to_attnlab_stops_the_child(self):
        p, child, _ = self.start()
        p.kill()
        p.wait(timeout=60)
        p.stderr.read()  # returns once the last writer, attnlab_bench, has exited
        for _ in range(100):
            if not alive(child):
                break
            time.sleep(0.1)
        self.assertFalse(alive(child), f"attnlab_bench {child} outlived a SIGKILLed attnlab")
        # It got SIGTERM and closed its JSON (not: it ran to the end as an orphan).
        self.assertGreater(len(self.interrupted()), 0, "attnlab_bench was not stopped")

if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    unittest.main(argv=[sys.argv[0], "-v", *sys.argv[1:]])
