"""Shared fixtures: materialized data in a temporary folder and tiny study parameters."""
from pathlib import Path

import pytest
import torch
import yaml

from lib.config import Params
from lib.data import materialize

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Test tensors are tiny: one intra-op thread is as fast, and far faster on a busy machine.
    (Pipeline runs in subprocesses use the default.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """data/ materialized once per test session (about 5 s), outside the repo."""
    root = tmp_path_factory.mktemp("data")
    materialize(root)
    return root


def tiny_params_dict(data_root: Path | str = "data") -> dict:
    """The repo's params.yaml shrunk to seconds: small model, 2 epochs on 256 images, 3 test sizes."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data_root"] = str(data_root)
    params["model"].update(embed_dim=32, depth=2, num_heads=2)
    params["variants"]["moh"]["attention_kwargs"]["top_k"] = 1  # 2 heads, 1 shared: 1 left to route
    params["train"].update(epochs=2, batch_size=64, warmup_epochs=1, train_subset=256)
    params["evaluate"]["batch_size"] = 1000
    params["datasets"]["mnist"].update(train_resolution=28, eval_resolutions=[20, 28, 36], train={})
    params["datasets"]["shapes"].update(train_resolution=32, eval_resolutions=[24, 32, 48], train={})
    params["study"] = {"datasets": ["mnist", "shapes"], "variants": ["ape", "rope_mixed"]}
    params["zoo"] = {"datasets": ["shapes"], "variants": ["linear"]}
    params["case_study"] = {"datasets": ["signs"], "variants": ["ape"]}
    params["seeds"] = {"runs": {"datasets": ["shapes"], "variants": ["rope_mixed"]}, "seeds": [1]}
    params["datasets"]["signs"].update(train_resolution=24, eval_resolutions=[16, 24, 32], train={})
    params["analysis"].update(runs={"datasets": ["shapes"], "variants": ["rope_mixed", "linear"]}, num_images=20,
                              ig_steps=2, perturbation_steps=2, random_orders=1, bootstrap_resamples=20, example_images=2)
    params["safety"].update(runs={"datasets": ["shapes"], "variants": ["ape", "rope_mixed"]}, num_test_images=40,
                            corruptions=["gaussian_noise", "occlusion"], severities=[1, 5],
                            example_corruptions=["occlusion"], example_severity=5, num_examples=2)
    params["convex"].update(train_size=60, grid_size=2, num_seeds=1, steps=20, max_iter=3000, num_heads=2, gates=2,
                            gap_tol=1e-3)
    params["efficiency"].update(grids=[2, 4], variants=["rope_mixed", "linear"], tokens_per_batch=64, repeats=1,
                                slope_min_tokens=1, timm_grid=2, timm_batch=8, timm_rounds=1)
    return params


@pytest.fixture
def tiny_params(data_root) -> Params:
    return Params.model_validate(tiny_params_dict(data_root))
