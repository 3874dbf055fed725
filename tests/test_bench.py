"""The benchmarks cannot rot unnoticed: every script parses its arguments, and the ones whose smallest mode takes
seconds run it (``make bench-smoke`` runs every script's smallest mode and the GPU check's CPU smoke mode)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p.name for p in (ROOT / "bench").glob("*.py"))
# The smallest mode of each script that finishes in seconds on one thread (the others run in make bench-smoke).
SMOKE = {
    "environments.py": ["--records", "50", "--size", "64", "--scenes", "4"],
    "latent_reward.py": ["--scenes", "3", "--per-mask", "3"],
    "trainer.py": ["--steps", "3", "--rounds", "1"],
}


def _run(script, args, timeout):
    return subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          timeout=timeout, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HOME": str(Path.home())})


def test_every_script_is_covered():
    assert set(SCRIPTS) == {"environments.py", "fuzz.py", "latent_reward.py", "lm_head.py", "rewards.py",
                            "rollout.py", "tokenizer.py", "trainer.py"}, "a new bench script: add it here and to make bench-smoke"


@pytest.mark.parametrize("script", [s for s in SCRIPTS if s not in SMOKE])
def test_parses_its_arguments(script):
    out = _run(script, ["--help"], 120)
    assert out.returncode == 0 and "usage" in out.stdout, out.stderr[-2000:]


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_smallest_mode_runs(script):
    out = _run(script, SMOKE[script], 300)
    assert out.returncode == 0, out.stderr[-3000:]
