"""What the procedural data sets (shapes, signs) share: rendering scene vectors in memory-bounded chunks
with per-scene seeded pixel noise, and building the stored splits from fixed seeds."""
from collections.abc import Callable

import numpy as np

RenderChunk = Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]]


def render_scenes(scenes: np.ndarray, height: int, width: int, render_chunk: RenderChunk, num_columns: int,
                  noise_seed_column: int, noise_std_column: int, samples_per_chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W, 3) and bool masks from `render_chunk` (float images in [0, 1] + masks for a chunk
    of scenes), rendered in chunks of about `samples_per_chunk` supersamples; each scene's Gaussian pixel
    noise (std in `noise_std_column`) is drawn from its own seed (`noise_seed_column`), so a scene renders the
    same alone or in any batch."""
    if scenes.ndim != 2 or scenes.shape[1] != num_columns:
        raise ValueError(f"scenes must have shape (N, {num_columns}) (see SCENE_COLUMNS), got {scenes.shape}")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise ValueError(f"height and width must be positive ints, got height={height!r}, width={width!r}")
    chunk = max(1, samples_per_chunk // (height * width))
    starts = range(0, max(len(scenes), 1), chunk)  # max(): an empty input still yields one (empty) chunk
    rendered = [render_chunk(scenes[start : start + chunk], height, width) for start in starts]
    image = np.concatenate([image for image, _ in rendered])
    masks = np.concatenate([mask for _, mask in rendered])
    for i, scene in enumerate(scenes):
        noise_rng = np.random.default_rng(int(scene[noise_seed_column]))
        image[i] += scene[noise_std_column] * noise_rng.standard_normal((height, width, 3))
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), masks


def build_splits(generate_scenes: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                 render: Callable[[np.ndarray, int, int], tuple[np.ndarray, np.ndarray]],
                 split_sizes: dict[str, int], seeds: dict[str, int],
                 resolution: tuple[int, int]) -> dict[str, dict[str, np.ndarray]]:
    """{split: {"images", "labels", "masks", "scenes"}}: each split's scenes generated from its seed and
    rendered at `resolution` (the stored data set)."""
    splits = {}
    for split, size in split_sizes.items():
        scenes, labels = generate_scenes(size, seeds[split])
        images, masks = render(scenes, *resolution)
        splits[split] = {"images": images, "labels": labels, "masks": masks, "scenes": scenes}
    return splits
