"""The report of ``peftkit compare``: a markdown table, two charts, example outputs and one HTML
page."""

from __future__ import annotations

import base64
import dataclasses
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..common.files import write_json_atomic, write_text_atomic

__all__ = ["MethodResult", "ReportContext", "Section", "write_report"]


@dataclass
class MethodResult:
    """One row of the report."""

    name: str
    label: str
    trainable: int
    total: int
    size_bytes: int
    train_seconds: float
    tokens_per_second: float
    peak_memory_bytes: int
    steps: int
    eval_loss: float | None
    accuracy: float | None
    curve: list[tuple[int, float]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    per_seed: list[dict[str, Any]] = field(default_factory=list)
    """With ``seeds``: each run's seed, eval_loss and accuracy; the row's scores are their means."""

    @property
    def trainable_percent(self) -> float:
        return 100 * self.trainable / max(self.total, 1)


@dataclass
class Section:
    """A titled part of the report below the main table: lines, a table and an image file in the
    folder."""

    title: str
    lines: list[str]
    header: list[str]
    rows: list[list[str]]
    image: str | None = None


@dataclass
class ReportContext:
    """What the report says about the comparison, besides the rows; the comparison fills it in, so
    the report needs nothing of the comparison's config."""

    train_examples: int
    val_examples: int
    majority: float | None = None
    """Accuracy of always answering the most common held-out label (classification)."""
    examples: list[tuple[str, str]] = field(default_factory=list)
    """(prompt, reference) of the held-out examples whose outputs are shown."""
    model: str = ""
    """The base model's name, for the page title."""
    facts: list[str] = field(default_factory=list)
    """The lines above the table: model, data, split, budget, seeds (majority class is added here).
    """
    config_yaml: str = ""
    """The whole comparison config as YAML, written as config.yaml."""
    sections: list[Section] = field(default_factory=list)
    """Parts below the table, e.g. how each method's settings were selected."""


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _seed_values(row: MethodResult, key: str) -> list[float]:
    """Each seed's ``key`` (eval_loss or accuracy), where the row was trained with several seeds."""
    return [run[key] for run in row.per_seed if run[key] is not None]


def _score(row: MethodResult, key: str, digits: int) -> str:
    """The score, and over several seeds its range: ``0.715 (0.705-0.720)``."""
    text = _num(getattr(row, key), digits)
    values = _seed_values(row, key)
    if len(values) > 1:
        text += f" ({min(values):.{digits}f}-{max(values):.{digits}f})"
    return text


def table_rows(results: list[MethodResult]) -> list[list[str]]:
    """The table's cells, one list per method (the base model first)."""
    rows = []
    for r in results:
        base = r.name == "base"
        rows.append(
            [
                r.label,
                "-" if base else f"{r.trainable:,d}",
                "-" if base else f"{r.trainable_percent:.3g}%",
                "-" if base else _size(r.size_bytes),
                "-" if base else f"{r.train_seconds:.0f} s",
                "-" if base else f"{r.tokens_per_second:.0f}",
                "-" if base else _size(r.peak_memory_bytes),
                _score(r, "eval_loss", 4),
                _score(r, "accuracy", 3),
            ]
        )
    return rows


HEADER = [
    "method",
    "trainable params",
    "trainable %",
    "saved size",
    "training time",
    "tokens/s",
    "peak memory",
    "held-out loss",
    "accuracy",
]


def summary_lines(context: ReportContext) -> list[str]:
    """The facts above the table, with the majority-class score when there is one."""
    lines = list(context.facts)
    if context.majority is not None:
        lines.append(f"majority class on the held-out split: {context.majority:.3f}")
    return lines


def markdown(context: ReportContext, results: list[MethodResult]) -> str:
    lines = ["# peftkit compare", "", *[f"- {line}" for line in summary_lines(context)]]
    lines += ["", "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(cells) + " |" for cells in table_rows(results)]
    lines += [
        "",
        "Learning rates and adapter settings per method: `config.yaml` in each method's folder.",
        "Peak memory is the process's resident memory while the method trained (the GPU allocator's peak on "
        "CUDA); on CPU it includes what the process still held from earlier methods, so compare it loosely.",
        "Training time and tokens/s are wall-clock on a shared 2-core machine: other work running at the "
        "same time slows a method down (see the notes in docs/compare.md).",
        "",
        "![score vs trainable parameters](score.png)",
        "",
        "![training loss](curves.png)",
        "",
    ]
    for section in context.sections:
        lines += _section_markdown(section)
    lines += _examples_markdown(context, results)
    return "\n".join(lines) + "\n"


def _section_markdown(section: Section) -> list[str]:
    lines = [f"## {section.title}", "", *[f"- {line}" for line in section.lines], ""]
    lines += ["| " + " | ".join(section.header) + " |", "|" + "---|" * len(section.header)]
    lines += ["| " + " | ".join(_cell(c, 1000) for c in cells) + " |" for cells in section.rows]
    if section.image:
        lines += ["", f"![{section.title}]({section.image})"]
    return [*lines, ""]


def _section_html(section: Section, folder: Path) -> str:
    esc = html.escape
    items = "".join(f"<li>{esc(line).replace('`', '')}</li>" for line in section.lines)
    head = "".join(f"<th>{esc(h)}</th>" for h in section.header)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>" for cells in section.rows
    )
    return (
        f"<h2>{esc(section.title)}</h2><ul>{items}</ul><table><thead><tr>{head}</tr></thead><tbody>{body}"
        f"</tbody></table>{_image(folder, section.image, section.title)}"
    )


def _image(folder: Path, name: str | None, alt: str) -> str:
    """An <img> with the file embedded, or nothing when it is missing."""
    if not name or not (folder / name).is_file():
        return ""
    data = base64.b64encode((folder / name).read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _examples_markdown(context: ReportContext, results: list[MethodResult]) -> list[str]:
    if not context.examples:
        return []
    lines = ["## Held-out examples", ""]
    for i, (prompt, reference) in enumerate(context.examples):
        lines += [f"**{i + 1}.** {_cell(prompt, 300)}", "", f"- reference: {_cell(reference, 200)}"]
        for r in results:
            if i < len(r.outputs):
                lines.append(f"- {r.label}: {_cell(r.outputs[i], 200)}")
        lines.append("")
    return lines


def _cell(text: str, limit: int) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def write_charts(folder: Path, results: list[MethodResult], majority: float | None = None) -> bool:
    """score.png (accuracy, or held-out loss, against trainable parameters on a log scale; with
    seeds, a bar from the lowest to the highest run; the majority class as a line) and curves.png
    (every method's training loss on one plot, log scale). False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    trained = [r for r in results if r.name != "base"]
    use_accuracy = any(r.accuracy is not None for r in results)
    metric = "accuracy" if use_accuracy else "eval_loss"
    seeded = any(r.per_seed for r in trained)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in trained:
        value = getattr(r, metric)
        if value is not None and r.trainable > 0:
            runs = _seed_values(r, metric)
            spread = [[value - min(runs, default=value)], [max(runs, default=value) - value]]
            ax.errorbar(r.trainable, value, yerr=spread, fmt="o", markersize=8, capsize=4)
            ax.annotate(r.name, (r.trainable, value), textcoords="offset points", xytext=(7, 4))
    base = next((getattr(r, metric) for r in results if r.name == "base"), None)
    if base is not None:
        ax.axhline(base, linestyle="--", color="gray", label="base model (zero-shot)")
    if use_accuracy and majority is not None:
        ax.axhline(majority, linestyle=":", color="black", label="majority class")
    if base is not None or (use_accuracy and majority is not None):
        ax.legend()
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    label = "held-out accuracy" if use_accuracy else "held-out loss (lower is better)"
    ax.set_ylabel(label + (" (mean; bar: lowest-highest seed)" if seeded else ""))
    fig.tight_layout()
    _save(fig, folder / "score.png")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in trained:
        if r.curve:
            ax.plot(*zip(*r.curve, strict=True), label=r.name)
    ax.set_yscale("log")  # the first steps' losses are 10-50x the last ones'
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (log scale)" + (", first seed" if seeded else ""))
    ax.legend()
    fig.tight_layout()
    _save(fig, folder / "curves.png")
    plt.close("all")
    return True


def _save(fig: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def page(context: ReportContext, results: list[MethodResult], folder: Path) -> str:
    """One self-contained HTML page (charts embedded) with the table, the charts and the examples."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in HEADER)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"
        for cells in table_rows(results)
    )
    intro = "".join(f"<li>{esc(line).replace('`', '')}</li>" for line in summary_lines(context))
    images = _image(folder, "score.png", "score vs trainable parameters") + _image(
        folder, "curves.png", "training loss"
    )
    sections = "".join(_section_html(section, folder) for section in context.sections)
    examples = ""
    for i, (prompt, reference) in enumerate(context.examples):
        cells = "".join(
            f"<tr><th>{esc(r.label)}</th><td>{esc(r.outputs[i])}</td></tr>"
            for r in results
            if i < len(r.outputs)
        )
        examples += (
            f"<h3>Example {i + 1}</h3><p class=prompt>{esc(prompt)}</p><table>"
            f"<tr><th>reference</th><td>{esc(reference)}</td></tr>{cells}</table>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>peftkit compare: {esc(context.model)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto; padding: 0 1rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ddd; padding: .35rem .6rem; text-align: left; vertical-align: top; }}
thead th {{ background: #f4f4f4; }}
td:not(:first-child) {{ font-variant-numeric: tabular-nums; }}
img {{ max-width: 48%; margin-right: 1%; }}
.prompt {{ color: #555; white-space: pre-wrap; }}
</style></head><body>
<h1>peftkit compare</h1>
<ul>{intro}</ul>
<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>
{images}
{sections}
{"<h2>Held-out examples</h2>" + examples if examples else ""}
</body></html>
"""


def write_report(folder: Path, context: ReportContext, results: list[MethodResult]) -> None:
    """report.md, score.png, curves.png, report.html, results.json and config.yaml in ``folder``."""
    write_charts(folder, results, context.majority)
    write_text_atomic(folder / "report.md", markdown(context, results))
    write_text_atomic(folder / "report.html", page(context, results, folder))
    report = {
        k: v
        for k, v in dataclasses.asdict(context).items()
        if k not in ("facts", "config_yaml", "model", "sections")
    }
    write_json_atomic(
        folder / "results.json",
        {"context": report, "results": [dataclasses.asdict(r) for r in results]},
    )
    write_text_atomic(folder / "config.yaml", context.config_yaml)
