"""tools/gpu_check.py stays runnable: its AMP and recipe checks at --quick sizes on the CPU (the GPU run
itself is done on a GPU machine; the extraction check needs a ViT-B/32 forward, too slow here)."""
from __future__ import annotations

import importlib.util

from conftest import REPO_ROOT


def _tool():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO_ROOT / "tools" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_amp_and_recipe_checks_run_quick_on_cpu(tmp_path):
    tool = _tool()
    amp = tool.check_amp_steps("cpu", quick=True)
    for name in ("qd_detr", "tmass"):
        assert amp[name]["fp32"]["finite"] and amp[name]["amp"]["finite"]
        assert amp[name]["first_loss_rel_diff"] < 0.02             # bf16 on CPU, as the GPU's fp16 should be
    recipes = tool.check_recipes("cpu", quick=True, work=tmp_path)
    assert set(recipes) == {"qvhighlights_qd_detr_epoch1", "msrvtt_tmass_epoch1"}
    assert 0 <= recipes["msrvtt_tmass_epoch1"]["test_t2v_R@1"] <= 100
