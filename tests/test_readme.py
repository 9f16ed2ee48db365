"""README.md stays short and every relative link in it and in docs/ resolves (fast, no pipeline)."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [README, *DOCS]

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def links(text: str) -> list[str]:
    """Targets of inline markdown links, outside fenced code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    return LINK.findall(text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def relative_links(path: Path):
    for target in links(path.read_text(encoding="utf-8")):
        if not SCHEME.match(target):
            yield target


def test_link_extraction_skips_code_and_finds_links():
    text = "see [a](docs/a.md#x) and `[b](no.md)`\n```\n[c](no2.md)\n```\n![img](fig.png) [w](https://x.org)"
    assert links(text) == ["docs/a.md#x", "fig.png", "https://x.org"]
    assert slug("Profiles: override files for other scales") == "profiles-override-files-for-other-scales"
    assert slug("Results (default study, CPU)") == "results-default-study-cpu"


def test_readme_is_at_most_10000_characters():
    assert len(README.read_text(encoding="utf-8")) <= 10_000


def test_docs_exist():
    assert {p.name for p in DOCS} >= {"methods.md", "pipeline.md", "ablations.md", "development.md"}


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    broken = []
    for target in relative_links(path):
        file_part = target.split("#", 1)[0]
        resolved = (path.parent / file_part).resolve()
        # a file outside the repository (e.g. ../shared/) is missing from a normal clone
        if file_part and not (resolved.exists() and resolved.is_relative_to(ROOT)):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to files missing from the repository: {broken}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_anchors_resolve(path):
    broken = []
    for target in relative_links(path):
        if "#" not in target:
            continue
        file_part, anchor = target.split("#", 1)
        linked = (path.parent / file_part).resolve() if file_part else path
        if linked.suffix == ".md" and linked.exists() and anchor not in anchors(linked):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)}: links to missing headings: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_doc_is_linked_from_readme(doc):
    linked = {(ROOT / t.split("#", 1)[0]).resolve() for t in relative_links(README)}
    assert doc.resolve() in linked, f"README.md does not link {doc.relative_to(ROOT)}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_doc_links_back_to_readme(doc):
    lines = doc.read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("# ")
    assert "../README.md" in {t.split("#", 1)[0] for t in relative_links(doc)}


def ablation_overrides(path: Path) -> list[list[str]]:
    """The `-S` overrides of each `dvc exp run` line inside the fenced code blocks of `path`, one list per command
    (a command's overrides apply together)."""
    found = []
    for block in FENCE.finditer(path.read_text(encoding="utf-8")):
        for line in block.group(0).splitlines():
            line = line.removeprefix("$ ").split("  #")[0]
            if line.startswith("dvc exp run"):
                found.append([arg.strip("'\"") for arg in re.findall(r"-S\s+('[^']*'|\"[^\"]*\"|\S+)", line)])
    return [overrides for overrides in found if overrides]


EXAMPLES = [(path.name, overrides) for path in (README, ROOT / "docs" / "ablations.md")
            for overrides in ablation_overrides(path)]


def test_the_readme_has_ablation_examples():
    assert sum(name == "README.md" for name, _ in EXAMPLES) >= 3


@pytest.mark.parametrize("where, overrides", EXAMPLES, ids=[" ".join(o) for _, o in EXAMPLES])
def test_ablation_examples_parse_in_dvc_and_validate(where, overrides, tmp_path):
    """Each documented `dvc exp run -S ...` goes through DVC's own override parser (as `dvc exp run` applies a
    command's overrides to params.yaml, together), and the result passes the schema: an example that DVC or the
    study would refuse fails here."""
    from dvc.utils.hydra import apply_overrides

    from lib.config import load_params
    params_file = tmp_path / "params.yaml"
    params_file.write_text((ROOT / "params.yaml").read_text())
    apply_overrides(str(params_file), overrides)
    load_params(params_file)


def test_readme_rq5_quotes_the_committed_convex_findings():
    """Every paired difference the README's RQ5 paragraph states is one the `convex` stage wrote (findings.md)."""
    paragraph = README.read_text(encoding="utf-8").split("**RQ5")[1].split("\n\n")[0]
    interval = re.compile(r"[+−-]\d+\.\d+(?:\s+points)?\s+\[[+−-]\d+\.\d+,\s+[+−-]\d+\.\d+\]")
    quoted = [" ".join(q.split()).replace("−", "-") for q in interval.findall(paragraph)]  # lines wrap anywhere
    findings = (ROOT / "results" / "convex" / "findings.md").read_text(encoding="utf-8").replace("−", "-")
    assert len(quoted) >= 5
    assert [q for q in quoted if q not in findings] == []


def test_readme_rq1_quotes_the_committed_resolution_study():
    """Every interval the README's RQ1 section states (seed means and paired differences) and every verdict count
    ("N of M") is one the `rq1-summary` stage wrote (accuracy.md, paired.md, findings.md)."""
    section = README.read_text(encoding="utf-8").split("**RQ1")[1].split("**RQ2")[0].replace("−", "-")
    summary = ROOT / "results" / "rq1" / "summary"
    written = " ".join((summary / name).read_text(encoding="utf-8") for name in ("accuracy.md", "paired.md", "findings.md"))
    written = " ".join(written.split())
    interval = re.compile(r"[+-]?\d+\.\d+ \[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]")
    quoted = interval.findall(" ".join(section.split()))
    assert len(quoted) >= 20
    assert [q for q in quoted if q not in written] == []
    counts = re.findall(r"\b(\d+ of (?:the )?\d+)\b", " ".join(section.split()))
    assert counts and [c for c in counts if c not in written] == []


def test_readme_rq2_quotes_the_committed_efficiency_numbers():
    """Every decimal the README's RQ2 paragraph states is one the `efficiency` stage wrote: slopes (scaling.csv),
    the lib/timm goals' median [slowest, fastest round] and percentages (targets.csv), and compile's speed-up and
    time (lib_vs_timm.csv)."""
    import numpy as np
    import pandas as pd

    paragraph = " ".join(README.read_text(encoding="utf-8").split("**RQ2")[1].split("\n\n")[0].split())
    efficiency = ROOT / "results" / "efficiency"
    scaling = pd.read_csv(efficiency / "scaling.csv")
    targets = pd.read_csv(efficiency / "targets.csv").dropna(subset=["value"])
    speed = pd.read_csv(efficiency / "lib_vs_timm.csv").set_index(["model", "mode"])["images_per_s_train"]
    stated = {f"{v:.2f}" for v in scaling["forward_slope"]}
    stated |= {f"{v:.0f}" for v in scaling["forward_crossover_tokens"] if np.isfinite(v)}
    for _, row in targets.iterrows():
        if "overhead" in row["target"] or "FLOP/s" in row["target"]:
            stated |= {f"{100 * row[c]:.1f}" for c in ("value", "min", "max")}
        else:
            stated |= {f"{row[c]:.2f}" for c in ("value", "min", "max")}
    stated |= {f"{speed[(model, 'compiled')] / speed[(model, 'eager')]:.2f}"
               for model, mode in speed.index if mode == "compiled"}
    stated |= set(re.findall(r"\d+\.\d+", " ".join(targets["goal"])))  # the goals themselves
    sweep = pd.read_csv(ROOT / "results" / "benchmarks" / "compile_sweep.csv")["seconds"]
    stated |= {f"{v:.1f}" for v in sweep}
    numbers = re.findall(r"(?<![\d.,])\d+\.\d+(?![\d.])", paragraph)
    assert len(numbers) >= 10
    assert [n for n in numbers if n not in stated] == []
    compile_seconds = pd.read_csv(efficiency / "lib_vs_timm.csv")["compile_seconds"].dropna().round().astype(int)
    assert {int(n) for n in re.findall(r"(\d+) s of compiling", paragraph)} <= set(compile_seconds)


def test_readme_dense_prediction_quotes_the_committed_segmentation_findings():
    """Every interval the README's dense-prediction paragraph states is one the `segmentation` stage wrote."""
    paragraph = " ".join(README.read_text(encoding="utf-8").split("**Dense prediction")[1].split("\n\n")[0].split())
    findings = " ".join((ROOT / "results" / "segmentation" / "findings.md").read_text(encoding="utf-8").split())
    interval = re.compile(r"[+-]?\d+\.\d+ \[[+-]?\d+\.\d+, [+-]?\d+\.\d+\]")
    quoted = interval.findall(paragraph.replace("−", "-"))
    assert len(quoted) >= 3
    assert [q for q in quoted if q not in findings] == []
    counts = re.findall(r"\b(\d+ of \d+)\b", paragraph)
    assert [c for c in counts if c not in findings] == []


def test_readme_explanations_over_seeds_quote_the_committed_findings():
    """Every count and gain the README's seed-study paragraph of RQ3 states is one the `analysis-seeds` stage wrote."""
    paragraph = " ".join(README.read_text(encoding="utf-8").split("**Explanations over training seeds**")[1]
                         .split("\n\n")[0].split())
    findings = " ".join((ROOT / "results" / "analysis_seeds" / "findings.md").read_text(encoding="utf-8").split())
    counts = re.findall(r"\b(\d+ of \d+ cells)\b", paragraph)
    assert len(counts) >= 2 and [c for c in counts if c not in findings] == []
    gains = re.findall(r"[+-]\d+\.\d{3}", paragraph.replace("−", "-"))
    assert gains and [g for g in gains if g not in findings] == []


def test_readme_rq4_quotes_the_committed_safety_numbers():
    """Every interval the README's RQ4 paragraph states is one the `safety-seeds` stage wrote, and every other number
    in it is in the generated RQ4 section of results/README.md."""
    paragraph = " ".join(README.read_text(encoding="utf-8").split("**RQ4")[1].split("\n\n")[0].split()).replace("−", "-")
    findings = " ".join((ROOT / "results" / "safety_seeds" / "summary" / "findings.md").read_text(encoding="utf-8")
                        .split()).replace("−", "-")
    results = (ROOT / "results" / "README.md").read_text(encoding="utf-8").split("## RQ4")[1].split("## RQ5")[0]
    interval = re.compile(r"[+-]?\d+\.\d+%? \[[+-]?\d+\.\d+%?, [+-]?\d+\.\d+%?\]")
    quoted = interval.findall(paragraph)
    assert len(quoted) >= 3 and [q for q in quoted if q not in findings] == []
    counts = re.findall(r"\b(\d+ of \d+)\b", paragraph)
    assert [c for c in counts if c not in findings] == []
    numbers = re.findall(r"\d+\.\d+", interval.sub("", paragraph))
    assert [n for n in numbers if n not in results.replace("−", "-")] == []
