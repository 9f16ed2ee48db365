"""Dense prediction across resolutions: per-patch segmentation heads on trained ViTs (Heo et al.'s second
headline, RoPE on ADE20k, at CPU scale on the procedural data sets' object masks).

`probe`: labels, features, the linear probe, the fine-tune and mIoU; `study`: the `segmentation` stage over RQ1's
seeds and its summaries; `figures`: mIoU against the test scale; `coco`: COCO-format instance annotations as pixel
labels (real photographs, for GPU-scale runs)."""
