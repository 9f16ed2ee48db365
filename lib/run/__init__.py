"""Running the study: training one configuration and the machinery every stage shares.

    train        one configuration: AdamW, warmup + cosine, resume from checkpoints, `save_run`
    train_cli    the same from the command line (torchrun on several GPUs or machines)
    study        run names, building and loading a variant's model, input scaling, seeding
    checkpoint   atomic writes and safe (weights-only) loading
    distributed  process-group helpers for DistributedDataParallel
    compiling    torch.compile where asked, eager where a model cannot compile
    notebook     the papermill runner that every DVC stage calls (`python -P lib/run/notebook.py ...`)
    lanes        independent DVC stages side by side, what `make repro` runs first (`python -P lib/run/lanes.py`)
    paths        the repository root and a notebook's output folder, so a notebook runs from any working directory
"""
