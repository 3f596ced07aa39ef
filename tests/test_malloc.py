"""caprobe.runtime.keep_freed_memory: glibc's malloc keeps freed blocks, so a map-sized tensor
allocated again is no new run of page faults. Each case runs in its own interpreter (the
policy is process-wide and cannot be undone)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="the policy applies to glibc's malloc only")

#: allocate, touch and free a 64 MiB tensor (above glibc's largest mmap threshold, 32 MiB, so
#: glibc's default serves it from a fresh mmap every time) and count the minor page faults
#: once the heap has settled
_PROBE = """
import json, resource, sys
import torch
from caprobe.runtime import keep_freed_memory, malloc_policy
policy = keep_freed_memory() if sys.argv[1] == "keep" else malloc_policy()
def once():
    torch.empty(16 * 2**20).fill_(1.0)
for _ in range(12):  # kept: the heap settles after about 8 (aligned blocks, small neighbours)
    once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    once()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"policy": policy, "faults": faults}))
"""


def _probe(mode: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True,
                         env={**os.environ, **env}, check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kept_memory_is_reused_without_page_faults():
    default = _probe("default")
    kept = _probe("keep")
    assert default["policy"] == "system" and kept["policy"] == "kept"
    # glibc's default: every 64 MiB block is a fresh mmap, 16,384 pages touched anew
    assert default["faults"] >= 10 * 16384 * 0.9
    # kept: the freed block is handed out again, its pages still mapped
    assert kept["faults"] < 500


def test_caprobe_malloc_system_leaves_glibc_alone():
    result = _probe("keep", CAPROBE_MALLOC="system")
    assert result["policy"] == "system"
    assert result["faults"] >= 10 * 16384 * 0.9


def test_environment_records_the_policy():
    code = ("import json; from caprobe.measure.environment import collect_env; "
            "from caprobe.runtime import keep_freed_memory; "
            "a = collect_env()['malloc']; keep_freed_memory(); b = collect_env()['malloc']; "
            "print(json.dumps([a, b]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120, env={**os.environ, "CAPROBE_MALLOC": ""})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["system", "kept"]


@pytest.mark.parametrize("command", [
    ["bench", "--model", "mobilenetv2", "--attn", "none", "--input-size", "32",
     "--min-time", "0.01"],
    # compare catches errors per piece: the check must come before the plan starts
    ["compare", "--attn", "ca", "--seeds", "1", "--epochs", "1", "--out", "{tmp}/cmp"],
])
def test_unknown_caprobe_malloc_is_a_one_line_error(command, tmp_path):
    """A typo must not silently mean the default: the command stops before any work."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in command]
    code = f"import sys; from caprobe.cli import main; sys.argv = ['caprobe', *{args!r}]; main()"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "CAPROBE_MALLOC": "Sytem"})
    assert out.returncode == 2, out.stderr
    assert out.stderr == ("caprobe: error: CAPROBE_MALLOC='Sytem' is not a malloc policy; set "
                          "it to 'system' (glibc's default) or 'kept' (the default), or unset "
                          "it\n")
    assert not (tmp_path / "cmp").exists()
