"""torch.compile and torch.export: every attention variant and position encoding traces whole and matches eager."""
import pytest
import torch

from lib.layers.attention import ATTENTION_LAYERS
from lib.layers.position import POSITION_ENCODINGS
from lib.layers.rope import RotaryTables, rotate_complex
from lib.models import VisionTransformer
from lib.run.compiling import compile_or_eager
import lib.run.compiling
from lib.run.train import train
from tests.test_train import metrics_of, same_weights

ATTENTION_KWARGS = {"local": {"window_radius": 1}, "multi_axis": {"window_size": 3, "grid_size": 3},
                    "sparse_fixed": {"block_size": 3, "summary": 1}}
# every position encoding with softmax attention, and every other attention variant with RoPE-Mixed
COMBINATIONS = ([("softmax", name) for name in sorted(POSITION_ENCODINGS)]
                + [(name, "rope_mixed") for name in sorted(ATTENTION_LAYERS) if name != "softmax"])
SIZES = (24, 36)  # the training grid (6x6) and a larger one: RoPE's tables and APE's resampling change with it


def tiny(attention: str, pos_embed: str) -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(img_size=24, patch_size=4, in_chans=1, num_classes=4, embed_dim=32, depth=2, num_heads=2,
                             attention=attention, pos_embed=pos_embed, attention_kwargs=ATTENTION_KWARGS.get(attention))


def outputs_and_gradients(model, images):
    model.zero_grad(set_to_none=True)
    logits = model(images)
    logits.square().sum().backward()
    return logits.detach(), {name.removeprefix("_orig_mod."): p.grad.clone() for name, p in model.named_parameters()
                             if p.grad is not None}


def test_real_rotation_tables_equal_the_complex_ones():
    angles = torch.randn(2, 1, 3, 5, 4)  # (L, B, H, N, P)
    complex_tables = RotaryTables.from_angles(angles, num_prefix_tokens=1)
    real_tables = RotaryTables.from_angles(angles, num_prefix_tokens=1, real=True)
    assert complex_tables.phasors.is_complex() and real_tables.phasors.shape == (2, 1, 3, 6, 4, 2)
    assert torch.allclose(complex_tables.cos, real_tables.cos) and torch.allclose(complex_tables.sin, real_tables.sin)
    x = torch.randn(7, 3, 6, 8)
    for layer in range(2):
        expected = rotate_complex(x, complex_tables.rotation(layer))
        assert torch.allclose(rotate_complex(x, real_tables.rotation(layer)), expected, atol=1e-6)
        assert all(torch.allclose(a, b) for a, b in zip(complex_tables.layer(layer), real_tables.layer(layer)))
    assert torch.equal(rotate_complex(x, real_tables.rotation(0))[:, :, 0], x[:, :, 0])  # CLS: identity


@pytest.mark.parametrize("attention, pos_embed", COMBINATIONS)
def test_every_variant_compiles_whole_with_eager_outputs_and_gradients(attention, pos_embed):
    """fullgraph=True: no graph break anywhere. The backend runs Dynamo, AOTAutograd with Inductor's
    decompositions and its forward/backward partition, i.e. what Inductor gets, without its code generation
    (tested once below: ~30 s a model on this CPU). At two resolutions, outputs and gradients within 1e-5."""
    model = tiny(attention, pos_embed).eval()  # eval: rope_mixed_norm's training-time jitter draws random numbers
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager_decomp_partition")
    torch._dynamo.reset()
    for size in SIZES:
        images = torch.randn(2, 1, size, size, generator=torch.Generator().manual_seed(size))
        eager_logits, eager_grads = outputs_and_gradients(model, images)
        logits, grads = outputs_and_gradients(compiled, images)
        assert torch.allclose(logits, eager_logits, atol=1e-5)
        assert grads.keys() == eager_grads.keys()
        assert all(torch.allclose(grads[k], eager_grads[k], atol=1e-5) for k in grads)


@pytest.mark.parametrize("attention, pos_embed", COMBINATIONS)
def test_every_variant_exports_with_eager_outputs(attention, pos_embed):
    model = tiny(attention, pos_embed).eval()
    images = torch.randn(2, 1, 24, 24)
    exported = torch.export.export(model, (images,))
    assert torch.allclose(exported.module()(images), model(images), atol=1e-5)


def test_inductor_compiles_a_rope_mixed_training_step():
    """The default backend end to end, in training mode: no complex kernels reach Inductor."""
    model = tiny("softmax", "rope_mixed").train()
    compiled = torch.compile(model)
    torch._dynamo.reset()
    images = torch.randn(4, 1, 24, 24, generator=torch.Generator().manual_seed(0))
    eager_logits, eager_grads = outputs_and_gradients(model, images)
    logits, grads = outputs_and_gradients(compiled, images)
    assert torch.allclose(logits, eager_logits, atol=1e-5)
    assert all(torch.allclose(grads[k], eager_grads[k], atol=1e-5) for k in eager_grads)


class _Uncompilable:
    def __init__(self, module):
        self.module = module

    def __call__(self, *args):
        torch.rand(3)  # draws from the global RNG before failing
        raise RuntimeError("Tensor must have a last dimension of size 2\nmore detail")


def test_a_model_that_does_not_compile_trains_eagerly_with_one_line(tiny_params, tmp_path, monkeypatch, capsys):
    """train.compile with a model that cannot compile: one line naming the run, then the eager run, bit for bit
    (the failed warm-up leaves the RNG and the gradients as they were)."""
    eager = train(tiny_params, "shapes", "rope_mixed", tmp_path / "eager", tmp_path / "eager.pt", progress=False)
    monkeypatch.setattr(lib.run.compiling.torch, "compile", _Uncompilable)
    compile_on = tiny_params.train.model_copy(update={"compile": True})
    params = tiny_params.model_copy(update={"train": compile_on})
    capsys.readouterr()
    fallback = train(params, "shapes", "rope_mixed", tmp_path / "fallback", tmp_path / "fallback.pt", progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train.compile")]
    assert lines == ["train.compile: shapes-rope_mixed does not compile (RuntimeError: Tensor must have a last "
                     "dimension of size 2); training it eagerly"]
    assert metrics_of(fallback.history) == metrics_of(eager.history) and same_weights(fallback.model, eager.model)


def test_compile_or_eager_returns_the_compiled_module_when_it_compiles():
    model = tiny("softmax", "rope_mixed")
    calls = []
    compiled = compile_or_eager(model, "tiny", lambda m: calls.append(type(m).__name__), log=calls.append)
    assert compiled is not model and calls == ["OptimizedModule"]
