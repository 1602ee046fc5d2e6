"""Regenerate the case table of docs/reliability.md from the corpus: ``python -m
tests.hostile.render_docs``.

Runs every case and records the first line of what the user actually sees.
"""

from __future__ import annotations

import contextlib
import io
import re
import tempfile
from pathlib import Path

from peftkit.cli import main
from tests.conftest import char_tokenizer, tiny_model
from tests.hostile.test_corpus import CASES, DOCS, _prepare

BEGIN, END = "<!-- cases:begin -->", "<!-- cases:end -->"


def message(case, tmp: Path, model_dir: Path) -> str:  # type: ignore[no-untyped-def]
    if case.api is not None:
        try:
            case.api(tmp)
        except case.error as err:
            return f"peftkit: error: {err}"
        return "(no error)"
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        main(_prepare(tmp, case, model_dir))
    lines = [line for line in err.getvalue().splitlines() if line.startswith("peftkit: error:")]
    return lines[0] if lines else "(no message)"


def main_() -> None:
    root = Path(tempfile.mkdtemp())
    model_dir = root / "model"
    tiny_model("llama").save_pretrained(model_dir)
    char_tokenizer().save_pretrained(model_dir)
    rows = ["| case | what the user did | error | exit | what they see |", "|---|---|---|---|---|"]
    for case in CASES:
        tmp = root / case.id
        tmp.mkdir()
        text = message(case, tmp, model_dir).removeprefix("peftkit: error: ")
        text = (
            re.sub(re.escape(str(tmp)), "…", text)
            .replace(str(model_dir), "MODEL")
            .replace("|", "\\|")
        )
        text = re.sub(r"\s*\n\s*", " ", text)  # one table row per case
        text = text if len(text) <= 220 else text[:217] + "..."
        rows.append(f"| `{case.id}` | {case.what} | {case.error.__name__} | {case.code} | {text} |")
    doc = DOCS.read_text()
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    DOCS.write_text(doc[:start] + "\n" + "\n".join(rows) + "\n" + doc[end:])


if __name__ == "__main__":
    main_()
