"""What attention costs: throughput, memory and FLOP/s versus token count, and lib versus timm.

Timings are medians of repeated runs after a warm-up, each a whole batch (forward in eval mode
without gradients, or a training step: forward, backward and AdamW step). Comparisons between two
models interleave their repetitions (A B A B ...) so that drift in the machine's speed hits both.
Peak memory is the peak resident set size (Linux VmHWM, reset before each grid) of a fresh process
per attention variant while one grid is timed, minus what was resident once the model was set up.
FLOPs come from `torch.utils.flop_counter` on the variant's own path with attention on PyTorch's
"math" backend (the fused CPU kernel reports none), counted outside the measured process; training
is counted as 3x the forward.
"""
import argparse
import copy
import math
import multiprocessing
import re
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lib.models import VisionTransformer

# The study's CPU-sized ViT (params.yaml `model`), on 1-channel images.
TINY = dict(patch_size=4, in_chans=1, num_classes=10, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)


def matmul_peak_gflops(size: int = 1024, repeats: int = 10) -> float:
    """Measured fp32 matmul rate of this machine (GFLOP/s, best of `repeats`), the roofline for FLOP/s."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def median_seconds(step: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `repeats` calls of `step`, after `warmup` untimed calls (one-time allocation)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_step(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    """One inference batch: eval mode, no gradients."""
    def step():
        model.eval()
        with torch.no_grad():
            model(images)
    return step


def train_step(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    """One training step: forward, cross-entropy, backward, AdamW update."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    labels = torch.zeros(len(images), dtype=torch.long)

    def step():
        model.train()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def forward_flops(model: VisionTransformer, images: torch.Tensor) -> int:
    """FLOPs of one forward pass of the variant's own (fast) path.

    The fused CPU attention kernel reports no FLOPs to the counter, so attention runs on PyTorch's
    "math" backend here, which performs the same products as matmuls the counter sees.
    """
    model.eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(images)
    return counter.get_total_flops()


def batch_for(tokens: int, tokens_per_batch: int) -> int:
    """Images per batch so that a batch holds about `tokens_per_batch` tokens (at least one image)."""
    return max(1, tokens_per_batch // tokens)


def _status_mb(key: str) -> float:
    match = re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024


def rss_mb() -> float:
    """Resident memory of this process now (MB)."""
    return _status_mb("VmRSS")


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS counter (VmHWM) from the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last `reset_peak_rss` (MB)."""
    return _status_mb("VmHWM")


def tiny_model(attention: str, pos_embed: str, grid: int, attention_kwargs: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    return VisionTransformer(img_size=TINY["patch_size"] * grid, attention=attention, pos_embed=pos_embed,
                             attention_kwargs=attention_kwargs, **TINY)


def images_for(grid: int, batch: int) -> torch.Tensor:
    return torch.randn(batch, TINY["in_chans"], grid * TINY["patch_size"], grid * TINY["patch_size"])


def measure_variant(attention: str, pos_embed: str, grids: list[int], tokens_per_batch: int, repeats: int,
                    attention_kwargs: dict | None = None) -> list[dict]:
    """One row per grid: forward and training throughput and peak memory of one variant.

    Meant to run in a fresh process (see `measure_in_subprocess`), so that no other model's memory
    is in the count: peak_mb is the peak resident memory while timing a grid, above the memory
    resident once the model, its optimizer and the runtime are set up. Grids run in increasing
    order, so memory kept by the allocator from earlier grids stays below the current grid's peak.
    """
    model = tiny_model(attention, pos_embed, min(grids), attention_kwargs)
    # one step on a single small image first: one-time runtime set-up (thread pools, optimizer state)
    # is then part of the baseline, not of the first grid's peak
    train_step(model, images_for(min(grids), 1))()
    forward_step(model, images_for(min(grids), 1))()
    baseline_mb = rss_mb()
    rows = []
    for grid in sorted(grids):
        tokens = grid * grid
        batch = batch_for(tokens, tokens_per_batch)
        images = images_for(grid, batch)
        reset_peak_rss()
        forward_s = median_seconds(forward_step(model, images), repeats)
        train_s = median_seconds(train_step(model, images), repeats)
        rows.append({
            "attention": attention, "pos_embed": pos_embed, "grid": grid, "tokens": tokens, "batch": batch,
            "forward_images_per_s": batch / forward_s, "train_images_per_s": batch / train_s,
            "forward_ms_per_image": 1e3 * forward_s / batch, "train_ms_per_image": 1e3 * train_s / batch,
            "peak_mb": peak_rss_mb() - baseline_mb,
        })
    return rows


def _measure(spec: dict) -> list[dict]:
    """`measure_variant` in a worker of `measure_in_subprocess`, at the spec's thread count."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    return measure_variant(spec["attention"], spec["pos_embed"], spec["grids"], spec["tokens_per_batch"],
                           spec["repeats"], spec.get("attention_kwargs"))


def measure_in_subprocess(attention: str, pos_embed: str, grids: list[int], tokens_per_batch: int, repeats: int,
                          attention_kwargs: dict | None = None, threads: int | None = None) -> list[dict]:
    """`measure_variant` in a fresh process (own memory accounting); returns its rows.

    The process is forked from a server that imported this module once, so a variant does not pay a new
    interpreter's ~5 s start (torch, timm), and no other model's memory is in its count."""
    spec = {"attention": attention, "pos_embed": pos_embed, "grids": grids, "tokens_per_batch": tokens_per_batch,
            "repeats": repeats, "attention_kwargs": attention_kwargs or {}, "threads": threads}
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["lib.efficiency.benchmark"])  # takes effect when the server first starts
    try:
        with ProcessPoolExecutor(1, mp_context=context) as pool:
            rows = pool.submit(_measure, spec).result()
    except Exception as err:
        raise RuntimeError(f"benchmark of {attention}/{pos_embed} failed: {err!r}") from err
    # FLOPs here, not in the measured process: counting them materializes what the fast path avoids
    model = tiny_model(attention, pos_embed, min(grids), attention_kwargs)
    for row in rows:
        flops = forward_flops(model, images_for(row["grid"], 1))
        row["forward_gflops"] = flops / 1e9
        row["forward_gflops_per_s"] = flops * row["forward_images_per_s"] / 1e9
        row["train_gflops_per_s"] = 3 * flops * row["train_images_per_s"] / 1e9
    return rows


def loglog_slope(table: pd.DataFrame, x: str = "tokens", y: str = "forward_ms_per_image", min_x: int = 0) -> float:
    """Least-squares slope of log(y) against log(x) over rows with x >= min_x: the empirical cost exponent."""
    part = table[table[x] >= min_x]
    return float(np.polyfit(np.log(part[x]), np.log(part[y]), 1)[0])


def crossover_tokens(variant: pd.DataFrame, baseline: pd.DataFrame, y: str = "forward_ms_per_image",
                     margin: float = 0.0) -> float:
    """Token count from which `variant` stays at least `margin` cheaper than `baseline` (time ratio at most
    1 - margin; log-log interpolation between measured sizes).

    inf if it is not that much cheaper at the largest measured size; the smallest size if it is throughout.
    With margin 0 a size where both cost the same within timing noise decides by a coin flip (one run found
    linear attention cheaper from 50 tokens, the next from 273); a margin of 10% keeps such ties out.
    """
    merged = variant.merge(baseline, on="tokens", suffixes=("", "_base")).sort_values("tokens")
    tokens = merged["tokens"].to_numpy(dtype=float)
    # < 0: the variant is at least `margin` cheaper
    excess = np.log(merged[y].to_numpy() / merged[f"{y}_base"].to_numpy()) - math.log1p(-margin)
    if excess[-1] >= 0:
        return math.inf
    start = len(excess) - 1  # walk back to the start of the final run of "cheaper" sizes
    while start > 0 and excess[start - 1] < 0:
        start -= 1
    if start == 0:
        return float(tokens[0])
    before, after = excess[start - 1], excess[start]  # >= 0, then < 0: the crossing
    t = before / (before - after)
    return float(np.exp(np.log(tokens[start - 1]) + t * (np.log(tokens[start]) - np.log(tokens[start - 1]))))


def timm_counterparts(grid: int) -> dict[str, torch.nn.Module]:
    """timm models at the study's configuration, to compare with lib's at identical settings."""
    import timm.models
    from timm.models.eva import Eva

    size = TINY["patch_size"] * grid
    common = dict(img_size=size, patch_size=TINY["patch_size"], in_chans=TINY["in_chans"], num_classes=TINY["num_classes"],
                  embed_dim=TINY["embed_dim"], depth=TINY["depth"], num_heads=TINY["num_heads"], mlp_ratio=TINY["mlp_ratio"])
    return {
        "timm_vit_ape": timm.models.VisionTransformer(**common, qkv_bias=True, class_token=True, global_pool="token"),
        "timm_eva_rope_axial": Eva(**common, qkv_bias=True, use_abs_pos_emb=False, use_rot_pos_emb=True, rope_type="cat",
                                   rope_grid_indexing="xy", rope_temperature=100.0, global_pool="token"),
        "timm_eva_rope_mixed": Eva(**common, qkv_bias=True, use_abs_pos_emb=False, use_rot_pos_emb=True, rope_type="mixed",
                                   rope_grid_indexing="xy", rope_temperature=10.0, global_pool="token"),
    }


LIB_MODELS = ("lib_ape", "lib_rope_axial", "lib_rope_mixed")
TIMM_MODELS = ("timm_vit_ape", "timm_eva_rope_axial", "timm_eva_rope_mixed")  # timm_counterparts' keys, in this order
COMPARED_MODELS = LIB_MODELS + TIMM_MODELS  # the names `efficiency.compiled` may list


def lib_and_timm_models(grid: int) -> dict[str, torch.nn.Module]:
    """lib's ViT with APE, RoPE-Axial and RoPE-Mixed, and timm's counterparts, at the same configuration."""
    size = TINY["patch_size"] * grid
    lib = {name: VisionTransformer(img_size=size, pos_embed=name.removeprefix("lib_"), **TINY) for name in LIB_MODELS}
    return {**lib, **timm_counterparts(grid)}


def compare_with_timm(grid: int, batch: int, repeats: int, rounds: int = 5, compiled: tuple[str, ...] = (),
                      log=print) -> pd.DataFrame:
    """Training and forward throughput of lib and timm models at the same configuration, interleaved.

    Each of `rounds` rounds times every model once (median of `repeats` steps), eagerly and, for the models
    named in `compiled`, as a `torch.compile`d training step (what `train.compile` compiles; compiled from
    the same initial weights before the first round, its compile time measured apart). Slow phases of a
    shared machine then hit every model alike, and ratios are taken round by round (`round_ratios`).

    Returns one row per (model, mode, round): mode "eager" or "compiled", images/s of the training step and
    (eager only) of an inference batch, FLOPs per image (`forward_flops`), compile seconds, parameters.
    """
    models = lib_and_timm_models(grid)
    unknown = sorted(set(compiled) - set(models))
    if unknown:
        raise ValueError(f"compiled: unknown model(s) {unknown}; expected some of {sorted(models)}")
    images = images_for(grid, batch)
    steps = {}
    for name, model in models.items():
        steps[(name, "eager", "train")] = train_step(model, images)
        steps[(name, "eager", "forward")] = forward_step(model, images)
    compile_seconds = {}
    for name in compiled:
        step = train_step(torch.compile(copy.deepcopy(models[name])), images)
        start = time.perf_counter()
        try:
            step()  # the first call compiles forward and backward
        except Exception as err:  # a model that does not compile is reported, not timed
            first_line = (str(err).strip().splitlines() or [""])[0]
            log(f"{name} does not compile ({type(err).__name__}: {first_line}); no compiled rows")
            continue
        compile_seconds[name] = time.perf_counter() - start
        steps[(name, "compiled", "train")] = step
    timings: dict[tuple[str, str, str], list[float]] = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            timings[key].append(median_seconds(step, repeats))
    flops = {name: forward_flops(model, images_for(grid, 1)) for name, model in models.items()}
    rows = []
    for (name, mode, kind), seconds in timings.items():
        if kind == "forward":
            continue
        forward = timings.get((name, mode, "forward"), [math.nan] * rounds)
        rows += [{"model": name, "mode": mode, "round": r, "grid": grid, "batch": batch,
                  "images_per_s_train": batch / seconds[r], "images_per_s_forward": batch / forward[r],
                  "forward_gflops_per_image": flops[name] / 1e9, "compile_seconds": compile_seconds.get(name, math.nan)
                  if mode == "compiled" else math.nan,
                  "parameters": sum(p.numel() for p in models[name].parameters())} for r in range(rounds)]
    return pd.DataFrame(rows)


def throughput_summary(per_round: pd.DataFrame, peak_gflops: float) -> pd.DataFrame:
    """Per (model, mode): median images/s over rounds (training: also the slowest and fastest round), and the
    training step's achieved FLOP/s as a fraction of the matmul peak (training counted as 3x the forward)."""
    grouped = per_round.groupby(["model", "mode"], sort=False)
    table = grouped.agg(grid=("grid", "first"), batch=("batch", "first"),
                        images_per_s_train=("images_per_s_train", "median"),
                        images_per_s_train_min=("images_per_s_train", "min"),
                        images_per_s_train_max=("images_per_s_train", "max"),
                        images_per_s_forward=("images_per_s_forward", "median"),
                        forward_gflops_per_image=("forward_gflops_per_image", "first"),
                        compile_seconds=("compile_seconds", "first"), parameters=("parameters", "first")).reset_index()
    table["train_fraction_of_peak"] = 3 * table["forward_gflops_per_image"] * table["images_per_s_train"] / peak_gflops
    return table


def round_ratios(per_round: pd.DataFrame, numerator: str, denominator: str, mode: str) -> np.ndarray:
    """Training throughput of `numerator` over `denominator`, round by round (both timed in the same round);
    empty if either was not measured in `mode`."""
    def speed(model):
        part = per_round[(per_round["model"] == model) & (per_round["mode"] == mode)]
        return part.set_index("round")["images_per_s_train"]
    a, b = speed(numerator), speed(denominator)
    if a.empty or b.empty:
        return np.array([])
    return (a / b).sort_index().to_numpy()


def efficiency_targets(per_round: pd.DataFrame, peak_gflops: float, linear_slope: float | None) -> pd.DataFrame:
    """The efficiency goals, each in eager and compiled mode where measured: value is the median over rounds
    of the per-round ratio, with the slowest and fastest round; `met` compares the goal's statistic (every
    round for the lib/timm speed-up, the median otherwise) with its bound; NaN where nothing was measured. The
    training step's achieved FLOP/s counts training as 3x the forward, against the measured fp32 matmul peak."""
    rows = []

    def add(target, mode, values, goal, bound, every_round=False):
        values = np.asarray(values, dtype=float)
        measured = len(values) > 0 and not np.isnan(values).all()
        median, low, high = ((float(np.median(values)), float(values.min()), float(values.max())) if measured
                             else (math.nan,) * 3)
        statistic = (low if ">=" in goal else high) if every_round else median
        met = (statistic >= bound if ">=" in goal else statistic <= bound) if measured and bound is not None else None
        rows.append({"target": target, "mode": mode, "value": median, "min": low, "max": high, "goal": goal,
                     "met": met})

    for mode in ("eager", "compiled"):
        add("lib RoPE-Mixed / timm RoPE-Mixed training throughput", mode,
            round_ratios(per_round, "lib_rope_mixed", "timm_eva_rope_mixed", mode), ">= 1.15 in every round", 1.15,
            every_round=True)
        add("lib RoPE-Mixed overhead over lib APE (training)", mode,
            round_ratios(per_round, "lib_ape", "lib_rope_mixed", mode) - 1, "<= 0.08", 0.08)
        add("timm RoPE-Mixed overhead over timm ViT APE (training)", mode,
            round_ratios(per_round, "timm_vit_ape", "timm_eva_rope_mixed", mode) - 1, "(reference)", None)
        add("lib APE ViT / timm ViT training throughput", mode,
            round_ratios(per_round, "lib_ape", "timm_vit_ape", mode), ">= 1.0", 1.0)
        lib_rope = per_round[(per_round["model"] == "lib_rope_mixed") & (per_round["mode"] == mode)]
        fraction = 3 * lib_rope["forward_gflops_per_image"] * lib_rope["images_per_s_train"] / peak_gflops
        grid = int(per_round["grid"].iloc[0])
        add(f"lib RoPE-Mixed training FLOP/s / fp32 matmul peak ({grid}x{grid} patches)", mode, fraction, ">= 0.5", 0.5)
    add("linear attention forward log-log slope", "eager", [] if linear_slope is None else [linear_slope],
        "<= 1.1", 1.1)
    return pd.DataFrame(rows)


def sweep_seconds(pos_embed: str, resolutions: list[int], images: int, batch: int, mode: str) -> dict:
    """Wall time of a resolution sweep as the evaluate stage runs one (eval mode, no gradients, `images` images
    at every resolution in batches of `batch`), compile time included. `mode`: "eager"; "recompile"
    (torch.compile with static shapes: one compilation per resolution); "dynamic" (symbolic sizes: one
    compilation for every resolution). Outputs are checked against eager at every resolution."""
    model = tiny_model("softmax", pos_embed, resolutions[0] // TINY["patch_size"]).eval()
    torch._dynamo.reset()  # no compilation carried over from an earlier call
    run = model if mode == "eager" else torch.compile(model, dynamic=mode == "dynamic")
    generator = torch.Generator().manual_seed(0)
    seconds, worst = 0.0, 0.0
    with torch.no_grad():
        for size in resolutions:
            data = torch.randn(images, TINY["in_chans"], size, size, generator=generator)
            start = time.perf_counter()
            outputs = [run(chunk) for chunk in data.split(batch)]
            seconds += time.perf_counter() - start
            worst = max(worst, (torch.cat(outputs) - model(data)).abs().max().item())
    return {"pos_embed": pos_embed, "mode": mode, "resolutions": len(resolutions), "images": images, "batch": batch,
            "seconds": seconds, "max_abs_difference_to_eager": worst}


def main(argv: list[str]) -> int:
    """`compile-sweep`: an evaluation sweep over resolutions, eager against torch.compile with a recompile per
    resolution and with dynamic shapes (the evaluate stage stays eager)."""
    parser = argparse.ArgumentParser(description="the efficiency benchmark's measurements")
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("compile-sweep", help="eager vs compiled evaluation over a resolution sweep")
    sweep.add_argument("--pos-embeds", nargs="+", default=["ape", "rope_mixed"])
    sweep.add_argument("--resolutions", type=int, nargs="+", default=[12, 16, 20, 24, 32, 40, 48],
                       help="px, multiples of the patch size (default: shapes' eval_resolutions)")
    sweep.add_argument("--images", type=int, default=200, help="test images per resolution")
    sweep.add_argument("--batch", type=int, default=500)
    sweep.add_argument("--threads", type=int, default=None)
    sweep.add_argument("--out", type=Path, default=None, help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = pd.DataFrame([sweep_seconds(p, args.resolutions, args.images, args.batch, mode)
                          for p in args.pos_embeds for mode in ("eager", "recompile", "dynamic")])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(table.to_markdown(index=False, floatfmt=".3g"))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
