"""docs/writing-a-spec.md: its spec builds as it stands, and the op does what the page says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "docs" / "writing-a-spec.md"


def _guide_spec() -> str:
    return re.search(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S).group(1)


def test_the_guide_spec_builds_and_steps_as_documented(tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "lion_update.yaml").write_text(_guide_spec())
    env = {**os.environ, "OPGEN_CACHE_DIR": str(tmp_path / "cache")}
    build = subprocess.run([sys.executable, "-m", "opgen", "build", "--out", "lion_ops"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stderr
    assert (tmp_path / "lion_ops" / "docs" / "lion_update.md").exists()
    check = textwrap.dedent("""\
        import numpy as np
        from lion_ops import lion_update, lion_update_multi, RowSparseArray, use_backend

        def lion(w, g, m, lr, beta1=0.9, beta2=0.99, wd=0.0):   # the paper's algorithm
            c = beta1 * m + (1 - beta1) * g
            return w - lr * (np.sign(c) + wd * w), beta2 * m + (1 - beta2) * g

        for backend in ("c", "numpy"):
            with use_backend(backend):
                weight = np.array([1.0, -2.0, 0.5], np.float32)
                grad = np.array([0.3, 0.1, -0.2], np.float32)
                mom = np.zeros(3, np.float32)
                lion_update(weight, grad, mom, lr=0.1, out=weight)
                assert np.allclose(weight, [0.9, -2.1, 0.6]), weight          # the guide's numbers
                assert np.allclose(mom, [0.003, 0.001, -0.002]), mom
                rng = np.random.default_rng(0)
                w, m = rng.standard_normal(50), rng.standard_normal(50)
                ow, om = w.copy(), m.copy()
                for _ in range(3):
                    g = rng.standard_normal(50)
                    lion_update(w, g, m, lr=0.01, wd=0.1, out=w)
                    ow, om = lion(ow, g, om, 0.01, wd=0.1)
                assert np.allclose(w, ow, rtol=1e-12) and np.allclose(m, om, rtol=1e-12)
                rows = RowSparseArray(np.ones((1, 2)), [1], (3, 2))
                w2, m2 = np.ones((3, 2)), np.zeros((3, 2))
                lion_update(w2, rows, m2, lr=0.5, out=w2)
                assert np.array_equal(w2[[0, 2]], np.ones((2, 2))) and np.allclose(w2[1], 0.5)
                try:
                    lion_update(w, g, m, lr=0.1, beta1=1.5)
                except ValueError as exc:
                    assert "'beta1'" in str(exc)
                else:
                    raise AssertionError("beta1 outside its range was accepted")
        print("ok")
        """)
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"


def test_the_guide_error_example_is_what_opgen_prints(tmp_path):
    (tmp_path / "specs").mkdir()
    broken = _guide_spec().replace("  - c = beta1 * mom", "  - c = beta1 * mon", 1)
    (tmp_path / "specs" / "lion_update.yaml").write_text(broken)
    run = subprocess.run([sys.executable, "-m", "opgen", "build", "--no-compile"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 2
    documented = re.search(r"\$ opgen build\n(specs/lion_update\.yaml:.*)\n", GUIDE.read_text()).group(1)
    assert run.stderr.strip() == documented


def test_the_guide_class_trains_as_the_paper_says(tmp_path):
    """Section 6: the spec with its optimizer section builds a torch.optim class, which
    follows the paper's algorithm step by step (weight decay, both betas)."""
    pytest = __import__("pytest")
    pytest.importorskip("torch")
    blocks = re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)
    (tmp_path / "specs").mkdir()
    optimizer = next(b for b in blocks[1:] if b.startswith("optimizer:"))  # (section 5's block is LAMB's math)
    (tmp_path / "specs" / "lion_update.yaml").write_text(blocks[0] + optimizer)
    env = {**os.environ, "OPGEN_CACHE_DIR": str(tmp_path / "cache")}
    build = subprocess.run([sys.executable, "-m", "opgen", "build", "--out", "lion_ops"], cwd=tmp_path,
                           capture_output=True, text=True, env=env)
    assert build.returncode == 0, build.stderr
    check = textwrap.dedent("""\
        import torch
        from lion_ops.optim import Lion

        w = torch.nn.Parameter(torch.linspace(-1, 1, 7, dtype=torch.float64))
        opt = Lion([w], lr=0.01, betas=(0.8, 0.95), weight_decay=0.1)
        ref_w, ref_m = w.detach().clone(), torch.zeros(7, dtype=torch.float64)
        for step in range(5):
            g = torch.sin(torch.arange(7, dtype=torch.float64) + step)
            w.grad = g.clone()
            opt.step()
            c = 0.8 * ref_m + 0.2 * g                    # the paper's algorithm
            ref_w = ref_w - 0.01 * (torch.sign(c) + 0.1 * ref_w)
            ref_m = 0.95 * ref_m + 0.05 * g
            assert torch.allclose(w.detach(), ref_w, rtol=1e-12), (step, w, ref_w)
        assert torch.allclose(opt.state[w]["mom"], ref_m, rtol=1e-12)
        print("ok")
        """)
    run = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ok"
