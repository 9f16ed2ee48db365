# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python (attention-rope-study)
#     language: python
#     name: attention-rope-study
# ---

# %% [markdown]
# # A pretrained RoPE-ViT at Heo et al.'s test resolutions
#
# One model of `pretrained.run`: its entry in `pretrained.models` names a timm port of naver-ai/rope-vit's
# ImageNet-1k weights and the local file that holds them (nothing is downloaded). It is converted to
# `lib.models.VisionTransformer` and tested zero-shot on the image-folder data set's labelled `val/` images at every
# resolution of `pretrained.resolutions`, as trained and, for RoPE-Mixed, with each test-time rescaling of
# `pretrained.rescalings`. Top-1 accuracy with Wilson 95% intervals over the test images
# (`accuracy.csv`), beside Heo et al.'s published ViT-S numbers where they exist. `checkpoint: null` runs the
# architecture with random weights: a dry run, labelled so (the numbers are then at chance).

# %% tags=["parameters"]
params_file = "params.yaml"
model_name = "vit_s_rope_mixed"
out_dir = "results/pretrained/vit_s_rope_mixed"

# %%
from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
from IPython.display import display

from lib.config import load_params
from lib.extrapolation.pretrained import evaluate_resolutions, load_pretrained
from lib.plots import publish, set_style
from lib.run.distributed import local_device
from lib.run.paths import chdir_repo_root, output_dir

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/; every path here is relative to the repo root
params = load_params(params_file)
cfg = params.pretrained
spec = cfg.models[model_name]
out = output_dir(out_dir)

# %%
checkpoint = None if spec.checkpoint is None else Path(params.data_root) / spec.checkpoint
model, data_config = load_pretrained(spec.timm_model, checkpoint, params.seed, **spec.timm_kwargs)
model = model.to(local_device(params.device))
weights = "random weights (dry run)" if checkpoint is None else str(checkpoint)
print(f"{model_name}: {spec.timm_model}, {weights}, on {local_device(params.device)}; eval transform {data_config}")

# %%
table = evaluate_resolutions(model, data_config, Path(params.data_root) / cfg.dataset / "val", cfg.resolutions,
                             cfg.rescalings, cfg.test_images, cfg.batch_size, params.data_workers, spec.timm_model)
table.insert(0, "weights", "random" if checkpoint is None else "pretrained")
table.insert(0, "timm_model", spec.timm_model)
table.insert(0, "model", model_name)
table.to_csv(out / "accuracy.csv", index=False)
display(table)

# %%
set_style()
figure, axis = plt.subplots(figsize=(5, 3.5))
sns.lineplot(data=table.assign(accuracy=100 * table["accuracy"]), x="resolution", y="accuracy", hue="method",
             marker="o", ax=axis)
axis.set(xlabel="test resolution (px)", ylabel="top-1 accuracy (%)", title=f"{model_name} ({table['weights'][0]} weights)")
publish(figure, out / "accuracy_vs_resolution")
