"""The README's "From Python" shell example, run as written: the package's O must be
bitwise identical to `attnlab run`'s on the same .npy input (the issue's "done when").

It runs in a scratch directory whose build/release is a link to this build tree, so the
README's relative paths (build/release/python, build/release/cli/attnlab) resolve."""
import os
import re
import subprocess

import pytest

SOURCE = os.environ.get("ATTNLAB_SOURCE",
                        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("ATTNLAB_BUILD")


def readme_block(marker):
  with open(os.path.join(SOURCE, "README.md")) as f:
    text = f.read()
  m = re.search(r"<!-- " + marker + r" -->\s*```sh\n(.*?)```", text, re.S)
  assert m, f"README.md lacks the marked example <!-- {marker} -->"
  return m.group(1)


def test_readme_shell_example_matches_attnlab_run(tmp_path):
  if not BUILD or not os.path.exists(os.path.join(BUILD, "cli", "attnlab")):
    pytest.skip("needs ATTNLAB_BUILD with the CLI built (ctest sets it)")
  (tmp_path / "build").mkdir()
  os.symlink(BUILD, tmp_path / "build" / "release")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the block sets its own
  p = subprocess.run(["bash", "-euo", "pipefail", "-c", readme_block("python-package-example")],
                     cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stdout + p.stderr
  assert "identical to attnlab run: True" in p.stdout, p.stdout + p.stderr
