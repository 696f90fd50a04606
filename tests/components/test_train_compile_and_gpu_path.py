"""``train.compile`` and the GPU machine's training path (issue 12 parts 2 and 4).

- compile: a tiny model trains with ``compile: true``; its ``best.ckpt`` has exactly the state-dict keys of an
  eager run (no ``_orig_mod.`` prefix) and both it and ``model.pt`` load without compile.
- The GPU machine has no faiss, Great Expectations, kfp or DVC: ``components.train`` (and what it imports)
  must import and train a step with those packages blocked (``sys.modules[name] = None`` makes any import of
  them fail), in a fresh interpreter.
- The branches a CPU can take of what a GPU run uses: bf16-mixed precision trains here too.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_data import write_tiny_split  # noqa: E402

import models as M  # noqa: E402
from components.train import ModelConfig, TrainConfig, compile_user_tower, run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
TINY = {"max_len": 6, "max_epochs": 1, "batch_size": 32, "num_negatives": 10, "patience": 2,
        "progress_refresh": 0, "eval_batch_size": 16}
GPU_MACHINE_LACKS = ("faiss", "great_expectations", "kfp", "dvc")


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    return write_tiny_split(tmp_path_factory.mktemp("split") / "split", num_users=60, num_items=50,
                            num_categories=4, min_len=6, max_len=12, seed=5)


def _ckpt_keys(path: Path) -> list[str]:
    return sorted(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])


def test_compile_trains_and_the_weights_load_without_compile(split, tmp_path):
    mc = ModelConfig(name="y", arch="youtube_dnn", hparams={"dim": 8, "hidden_dim": 8, "profile_dim": 4})
    eager = run(TrainConfig(**TINY), mc, split, tmp_path / "eager", seed=0)
    compiled = run(TrainConfig(**TINY, compile=True), mc, split, tmp_path / "compiled", seed=0)
    assert compiled["compiled"] is True and eager["compiled"] is False
    keys = _ckpt_keys(tmp_path / "compiled" / "best.ckpt")
    assert keys == _ckpt_keys(tmp_path / "eager" / "best.ckpt")
    assert not any("_orig_mod" in k for k in keys)
    net = M.load_model(tmp_path / "compiled" / "model.pt")  # a plain eager model
    assert "user_interests" not in vars(net)
    from components.task import RetrievalTask

    task = RetrievalTask.load_from_checkpoint(tmp_path / "compiled" / "best.ckpt", map_location="cpu")
    for k, v in net.state_dict().items():
        assert torch.equal(v, task.model.state_dict()[k]), k
    assert compiled["best_val_recall@50"] == compiled["best_val_recall@50"]  # finite (not nan)


def test_compile_wrapper_is_eager_outside_training_and_restores(monkeypatch):
    calls = []

    def fake_compile(fn, **kw):  # records which calls would run compiled code
        def compiled(*args):
            calls.append("compiled")
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    net = M.build_model("youtube_dnn", num_items=20, num_categories=3, profile_cardinalities=[3], max_len=4, dim=4,
                        hidden_dim=4, profile_dim=2)
    keys = list(net.state_dict())
    restore = compile_user_tower(net)
    assert list(net.state_dict()) == keys and "user_interests" in vars(net)
    h, m, p = torch.tensor([[1, 2, 0, 0]]), torch.tensor([[True, True, False, False]]), torch.tensor([[1]])
    net.train()
    net.user_interests(h, m, p)
    assert calls == ["compiled"]
    with torch.no_grad():
        net.user_interests(h, m, p)  # training mode but no gradients (e.g. a no_grad probe): eager
    net.eval()
    net.user_interests(h, m, p)  # validation / export: eager
    assert calls == ["compiled"]
    restore()
    assert "user_interests" not in vars(net)


def test_training_imports_and_trains_without_the_packages_the_gpu_machine_lacks(split, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        for name in {GPU_MACHINE_LACKS!r}:
            sys.modules[name] = None  # any import of it raises ImportError
        from components.train import ModelConfig, TrainConfig, run
        cfg = TrainConfig(**{TINY!r})
        out = run(cfg, ModelConfig(name="m", arch="mind", hparams={{"dim": 8, "hidden_dim": 8}}),
                  {str(split)!r}, {str(tmp_path / "m")!r}, seed=0)
        import components.evaluate, components.build_index  # their imports stay lazy too
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in {GPU_MACHINE_LACKS!r} and sys.modules[n])
        print(json.dumps({{"epochs": out["epochs"], "loaded": loaded}}))
    """)
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == {"epochs": 1, "loaded": []}
    assert (tmp_path / "m" / "model.pt").exists()


def test_bf16_mixed_precision_trains_on_cpu(split, tmp_path):
    mc = ModelConfig(name="s", arch="comirec_sa", hparams={"dim": 8, "attention_dim": 8})
    summary = run(TrainConfig(**TINY, precision="bf16-mixed"), mc, split, tmp_path / "s", seed=0)
    assert summary["epochs"] == 1 and summary["best_val_recall@50"] >= 0.0
    net = M.load_model(tmp_path / "s" / "model.pt")
    assert all(v.dtype != torch.bfloat16 for v in net.state_dict().values())  # weights stay float32
