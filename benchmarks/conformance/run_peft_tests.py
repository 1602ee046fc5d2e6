"""Run PEFT's own test files against PEFT and against peftkit, and record every test's two outcomes.

    python benchmarks/conformance/run_peft_tests.py # the whole selection (about an hour here)
    python benchmarks/conformance/run_peft_tests.py --subset ci # the fixed fast subset CI runs

PEFT's tests come from the source distribution of the installed PEFT version (``pip download``; PEFT
ships its tests there), so the tests match the library they were written for. The hub models they
load are local stand-ins (``standins.py``); ``claims.py`` says which files run and which tests are
out of scope, with the reason for each. With ``CONFORMANCE_LIB=peftkit`` the shim in
``peft_shim.py`` makes ``import peft`` resolve to peftkit.

Every selected test gets one category, decided from its ``E`` lines (the exception), never from the
test's source:

- ``pass``: both pass.
- ``PEFT does not pass``: PEFT fails or skips it too (its message is recorded); ``peftkit only``
  when peftkit passes it anyway.
- ``missing internal``: peftkit lacks a PEFT-internal name (listed in ``INTERNAL_NAMES`` or starting
  with ``_``); public names and attributes are behaviour.
- ``unsupported feature``: peftkit refuses, by name, a PEFT feature it does not implement.
- ``message only``: the same exception type, PEFT's test matching PEFT's own wording.
- ``reasoned``: a behaviour difference with a written reason in ``differences.py``.
- ``behaviour``: PEFT passes, peftkit does not, and nothing above explains it.

A test that one library ran and the other did not (a collection error, a crash) is a harness error:
it is listed and the run exits with status 2, since no category can be honest about it.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))

import claims  # noqa: E402
import differences  # noqa: E402
import standins  # noqa: E402

# what PEFT's selected test files import
TEST_DEPS = ["attrs", "scipy", "parameterized", "diffusers"]

# PEFT-internal names a test may reach; missing ones are "missing internal", not behaviour.
INTERNAL_NAMES = {
    "peft.utils._get_submodules",
    "peft.tuners.tuners_utils.check_target_module_exists",
    "peft.tuners.tuners_utils._get_tuner_state_dict_key_prefixes",
    "peft.tuners.tuners_utils.BaseTuner",
    "peft.tuners.tuners_utils.BaseTunerLayer",
    "peft.tuners.tuners_utils._maybe_include_all_linear_layers",
    "peft.tuners.tuners_utils.onload_layer",
    "peft.tuners.tuners_utils.replicate_layers",
    "peft.tuners.lora.layer.LoraLayer",
    "peft.tuners.lora.layer.dispatch_default",
    "peft.utils.other._get_no_split_modules",
    "peft.utils.other.get_pattern_key",
    "peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",
    "peft.utils.save_and_load._find_mismatched_keys",
    "peft.utils.save_and_load._insert_adapter_name_into_state_dict",
    "peft.utils.hotswap",
    "peft.utils.integrations.init_empty_weights",
    "peft.import_utils",
    "peft.utils.quantization_utils.Bnb8bitBackend",
}
MISSING_RE = re.compile(r"([\w.]+) is not in peftkit")
ATTRIBUTE_RE = re.compile(r"'(\w+)' object has no attribute '(\w+)'")
UNSUPPORTED_RE = re.compile(
    r"is a PEFT feature peftkit does not support|is not supported by peftkit|peftkit supports it on linear layers "
    r"only|cannot be combined with use_dora|init_lora_weights='\w+' is not|which \w+ cannot adapt|"
    r"safe_serialization=False would write a pickle"
)
MATCH_RE = re.compile(r"Regex pattern did not match|does not match|Pattern '.*' not found")

CI_SUBSET = [  # one fast slice of every claimed method, every hub-model file and the low-level API
    "test_decoder_models.py",
    "test_custom_models.py",
    "test_low_level_api.py",
    "test_seq_classifier.py",
    "test_encoder_decoder_models.py",
    "test_feature_extraction_models.py",
]
CI_FILTER = (
    "tiny-random-LlamaForCausalLM or tiny-random-BertModel or tiny-random-Bart or "
    "BertForSequenceClassification or TestLowLevelFunctional or TestPeftStateDict or "
    "(test_custom_models and (test_forward_output_finite or test_merge_layers or test_save_pretrained))"
)


def _cache_dir() -> Path:
    folder = Path(os.environ.get("PEFTKIT_CONFORMANCE_CACHE", ROOT / ".cache" / "conformance"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def install_test_deps() -> None:
    """PEFT's test dependencies, installed into this Python (a no-op once they are there)."""
    missing = [d for d in TEST_DEPS if importlib.util.find_spec(d) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def peft_tests(version: str) -> Path:
    """PEFT's tests for ``version``, from its source distribution (cached)."""
    folder = _cache_dir() / f"peft-{version}"
    if not (folder / "tests" / "testing_common.py").exists():
        sdist = _cache_dir() / "sdist"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--no-binary",
                ":all:",
                "-d",
                str(sdist),
                f"peft=={version}",
            ],
            check=True,
        )
        with tarfile.open(next(sdist.glob(f"peft-{version}.tar.gz"))) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"peft-{version}/tests/")]
            tar.extractall(_cache_dir(), members=members, filter="data")
        (_cache_dir() / f"peft-{version}").rename(folder) if not folder.exists() else None
    return folder / "tests"


def hub_cache() -> Path:
    """The stand-in hub cache, rebuilt when ``standins.py`` changes."""
    folder = _cache_dir() / f"hub-{standins.fingerprint()}"
    if not (folder / "standins.json").exists():
        print(f"building the hub stand-ins in {folder} ...", flush=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        subprocess.run(
            [sys.executable, str(HERE / "standins.py"), str(folder)],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    return folder


PLUGIN = """
import json, os, sys
sys.path.insert(0, {here!r})
if os.environ.get("CONFORMANCE_LIB") == "peftkit":
    import peft_shim
    peft_shim.install()
import contextlib
import claims, standins
import tests.testing_utils


@contextlib.contextmanager
def _offline(*args, **kwargs):  # PEFT's hub_online_once lifts HF_HUB_OFFLINE; the stand-ins are local
    yield


tests.testing_utils.hub_online_once = _offline
tests.testing_utils.load_dataset_english_quotes = standins.quotes_dataset


def _reason(item):
    params = getattr(getattr(item, "callspec", None), "params", {{}})
    return claims.unclaimed_reason(item.nodeid) or claims.unclaimed_config_reason(params)


def pytest_collection_modifyitems(config, items):
    reasons = {{i.nodeid: _reason(i) for i in items}}
    kept = [i for i in items if reasons[i.nodeid] is None]
    config.hook.pytest_deselected(items=[i for i in items if reasons[i.nodeid] is not None])
    items[:] = kept
    out = os.environ.get("CONFORMANCE_DESELECTED")
    worker = getattr(config, "workerinput", {{}}).get("workerid", "gw0")
    if out and worker == "gw0":  # every worker collects the same items; one records them
        with open(out, "w") as f:
            json.dump({{k: v for k, v in reasons.items() if v}}, f)
"""


def prepare(tests: Path, folder: Path, files: list[str]) -> None:
    """Copy PEFT's test files into ``folder/tests`` beside the plugin."""
    (folder / "tests").mkdir(parents=True, exist_ok=True)
    for name in files + claims.SUPPORT:
        if (tests / name).exists():
            (folder / "tests" / name).write_text((tests / name).read_text())
    # the sdist leaves it out; the files import each other relatively
    (folder / "tests" / "__init__.py").touch()
    (folder / "conformance_plugin.py").write_text(PLUGIN.format(here=str(HERE)))


def run(
    lib: str,
    folder: Path,
    hub: Path,
    files: list[str],
    workers: int,
    extra: list[str],
    src: str | None = None,
) -> dict[str, Any]:
    """Run the selection under ``lib``; returns test id -> {outcome, message} and the run's seconds.

    ``src``: a folder holding a ``peftkit`` package to test instead of the installed one (a
    snapshot, so that edits made while a long run goes on do not reach it)."""
    report = folder / f"{lib}.xml"
    report.unlink(missing_ok=True)
    path = os.pathsep.join([*([src] if src else []), str(folder)])
    env = {
        **os.environ,
        "CONFORMANCE_LIB": lib,
        "CONFORMANCE_DESELECTED": str(folder / f"{lib}-deselected.json"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_HUB_CACHE": str(hub),
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "conformance_plugin",
        "-p",
        "no:cacheprovider",
        "-n",
        str(workers),
        f"--junitxml={report}",
        "-o",
        "junit_family=xunit1",
        "--rootdir",
        str(folder),
        "-W",
        "ignore::DeprecationWarning",
        *[f"tests/{f}" for f in files],
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, cwd=folder, env=env, check=False, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    results: dict[str, dict[str, str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "") + "\n" + (node.text or "")
                break
        if case.find("error") is not None and outcome == "passed":
            outcome = "failed"  # an error in teardown after a pass
        results[test_id] = {"outcome": outcome, "message": message}
    deselected = json.loads((folder / f"{lib}-deselected.json").read_text())
    return {"results": results, "seconds": round(seconds, 1), "deselected": deselected}


def deselection_table(deselected: dict[str, str]) -> dict[str, dict[str, int]]:
    """file -> reason -> how many tests of that file were left out for it."""
    table: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for test_id, reason in deselected.items():
        table[test_id.split("::")[0].rsplit("/", 1)[-1]][reason] += 1
    return {f: dict(c.most_common()) for f, c in sorted(table.items())}


def error_lines(message: str) -> str:
    """The exception lines of a failure (``E ...``), or the skip reason; what categories are read
    from."""
    lines = [line[1:].strip() for line in message.splitlines() if line.startswith("E ")]
    text = "\n".join(lines) if lines else message.strip().split("\n")[0]
    return text[:600]


def missing_internal(exception: str) -> list[str]:
    """PEFT-internal names the exception says peftkit lacks (empty when any lacking name is public)."""
    names = MISSING_RE.findall(exception)
    names += [f"{cls}.{attr}" for cls, attr in ATTRIBUTE_RE.findall(exception)]
    if not names:
        return []
    internal = [n for n in names if n in INTERNAL_NAMES or n.rsplit(".", 1)[-1].startswith("_")]
    return internal if len(internal) == len(names) else []


def categorize(test_id: str, peft: dict[str, str], ours: dict[str, str]) -> tuple[str, str]:
    """The category of one test and the reason or message that decided it."""
    ours_e, peft_e = error_lines(ours["message"]), error_lines(peft["message"])
    if peft["outcome"] != "passed":
        if ours["outcome"] == "passed":
            return "peftkit only", peft_e
        return "PEFT does not pass", peft_e
    if ours["outcome"] == "passed":
        return "pass", ""
    if names := missing_internal(ours_e):
        return "missing internal", ", ".join(names)
    if UNSUPPORTED_RE.search(ours_e):
        return "unsupported feature", ours_e
    if reason := differences.reason(test_id):
        return "reasoned", reason
    if MATCH_RE.search(ours_e) and ours["outcome"] == "failed":
        return "message only", ours_e
    return "behaviour", ours_e


METHODS = {  # a test's method, from the config class or word in its id
    "prompt tuning": re.compile(r"prompttuning|prompt_tuning|prompt tuning", re.I),
    "p-tuning": re.compile(r"promptencoder|p_tuning|ptuning", re.I),
    # "prefix" alone only as a word: TestTunerStateDictKeyPrefixes is about key prefixes, not prefix
    # tuning
    "prefix tuning": re.compile(r"prefixtuning|prefix_tuning|(?<![a-z])prefix(?![a-z])", re.I),
    "ia3": re.compile(r"ia3", re.I),
    "loha": re.compile(r"loha", re.I),
    "lokr": re.compile(r"lokr", re.I),
    # not BOFT, not LoftQ
    "oft": re.compile(r"(?<![a-z])oft", re.I),
    "adalora": re.compile(r"adalora", re.I),
    "lora": re.compile(r"lora|dora|pissa|olora", re.I),
}


def method_of(test_id: str) -> str:
    return next((name for name, pattern in METHODS.items() if pattern.search(test_id)), "other")


def _unnumbered(test_id: str) -> str:
    return re.sub(r"(kwargs)\d+(?=[-\]])", r"\1#", test_id)


def renumbered(peft: dict[str, Any], ours: dict[str, Any]) -> dict[str, str]:
    """PEFT's id -> peftkit's id for a test that got another parameter index in the peftkit run (a
    parameter list filtered by which configs have some argument: the shim's stand-ins for unclaimed
    configs have none), paired only when exactly one test on each side matches once the index is
    dropped."""
    left = collections.defaultdict(list)
    for t in set(peft) - set(ours):
        left[_unnumbered(t)].append(t)
    right = collections.defaultdict(list)
    for t in set(ours) - set(peft):
        right[_unnumbered(t)].append(t)
    return {
        left[k][0]: right[k][0] for k in left if len(left[k]) == 1 and len(right.get(k, [])) == 1
    }


def summarize(peft: dict[str, Any], ours: dict[str, Any]) -> dict[str, Any]:
    """Every test's two outcomes and category, the counts, and the ratio per method."""
    pairs = renumbered(peft, ours)
    peft = {pairs.get(t, t): r for t, r in peft.items()}  # under peftkit's id
    tests, harness_errors = {}, sorted(set(peft) ^ set(ours))
    for test_id in sorted(set(peft) & set(ours)):
        category, why = categorize(test_id, peft[test_id], ours[test_id])
        tests[test_id] = {
            "category": category,
            "why": why,
            "method": method_of(test_id),
            "peft": peft[test_id]["outcome"],
            "peft_message": error_lines(peft[test_id]["message"]),
            "peftkit": ours[test_id]["outcome"],
            "peftkit_message": error_lines(ours[test_id]["message"]),
        }
    counts = collections.Counter(t["category"] for t in tests.values())
    by_method = _by_method(tests)
    peft_passes = sum(t["peft"] == "passed" for t in tests.values())
    return {
        "selected": len(tests),
        "peft_passes": peft_passes,
        "peftkit_passes_of_those": counts["pass"],
        "ratio": round(counts["pass"] / peft_passes, 4) if peft_passes else None,
        "counts": dict(sorted(counts.items())),
        "by_method": by_method,
        "harness_errors": harness_errors,
        "renumbered": pairs,
        "tests": tests,
    }


def _by_method(tests: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per method: tests selected, PEFT passes, peftkit passes of those, and their ratio."""
    by_method = {}
    for method in [*METHODS, "other"]:
        rows = [t for t in tests.values() if t["method"] == method]
        peft_passes = [t for t in rows if t["peft"] == "passed"]
        both = sum(t["peftkit"] == "passed" for t in peft_passes)
        by_method[method] = {
            "selected": len(rows),
            "peft_passes": len(peft_passes),
            "peftkit_passes_of_those": both,
            "ratio": round(both / len(peft_passes), 4) if peft_passes else None,
        }
    return by_method


def recount(recorded: dict[str, Any]) -> dict[str, Any]:
    """``recorded`` with each test's method and the per-method table recomputed by
    :func:`method_of`."""
    for test_id, test in recorded["tests"].items():
        test["method"] = method_of(test_id)
    return {**recorded, "by_method": _by_method(recorded["tests"])}


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_peft(
    folder: Path, hub: Path, files: list[str], workers: int, extra: list[str], key: str, reuse: bool
) -> tuple[dict[str, Any], str]:
    """PEFT's own run; with ``reuse``, an earlier run of exactly these tests, stand-ins and PEFT
    version."""
    saved = _cache_dir() / f"peft-results-{key}.json"
    if reuse and saved.exists():
        return json.loads(saved.read_text()), f"reused from {saved.name}"
    peft = run("peft", folder, hub, files, workers, extra)
    saved.write_text(json.dumps(peft))
    return peft, "run now"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--peft-src", help="a PEFT checkout whose tests/ to run instead of the sdist's"
    )
    parser.add_argument("-n", "--workers", type=int, default=2)
    parser.add_argument("--files", nargs="+", default=claims.FILES, help="PEFT's test files to run")
    parser.add_argument("--subset", choices=["ci"], help="the fixed fast subset CI runs")
    parser.add_argument(
        "--reuse-peft",
        action="store_true",
        help="reuse PEFT's results from an earlier run of the same tests, stand-ins and version",
    )
    parser.add_argument(
        "--peftkit-src", help="a folder with the peftkit package to test (default: the installed)"
    )
    parser.add_argument(
        "--peft-only", action="store_true", help="run PEFT's side only (cached for --reuse-peft)"
    )
    parser.add_argument(
        "--markdown", metavar="JSON", help="only write the markdown report of a recorded run"
    )
    parser.add_argument(
        "--recount",
        metavar="JSON",
        help="recount a recorded run's per-method table with this harness's method names (the "
        "outcomes and categories are the run's), then write its markdown",
    )
    parser.add_argument(
        "--out", help="where the JSON goes (default benchmarks/results/peft-conformance.json)"
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k test_merge)")
    args = parser.parse_args()
    if args.recount:
        path = Path(args.recount)
        path.write_text(json.dumps(recount(json.loads(path.read_text())), indent=1) + "\n")
        path.with_suffix(".md").write_text(markdown(json.loads(path.read_text())))
        return 0
    if args.markdown:
        recorded = json.loads(Path(args.markdown).read_text())
        Path(args.markdown).with_suffix(".md").write_text(markdown(recorded))
        return 0
    files, extra = args.files, list(args.pytest_args)
    if args.subset == "ci":
        files, extra = CI_SUBSET, ["-k", CI_FILTER, *extra]
    out = Path(
        args.out
        or (
            ROOT
            / "benchmarks"
            / "results"
            / ("peft-conformance-ci.json" if args.subset else "peft-conformance.json")
        )
    )
    install_test_deps()
    version = importlib.metadata.version("peft")
    tests = Path(args.peft_src) / "tests" if args.peft_src else peft_tests(version)
    hub = hub_cache()
    # one per run: a CI subset and a full run may overlap
    folder = _cache_dir() / f"run-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    prepare(tests, folder, files)
    sources = {
        f: hashlib.sha256((tests / f).read_bytes()).hexdigest()[:12]
        for f in files + claims.SUPPORT
        if (tests / f).exists()
    }
    key = _key(version, sources, standins.fingerprint(), Path(claims.__file__).read_text(), extra)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        # read before the run: the tree may move on meanwhile
        text=True,
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "src"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    tested = (
        f"a snapshot of src ({args.peftkit_src}), taken at {commit}"
        if args.peftkit_src
        else f"src at {commit}" + (" with uncommitted changes" if dirty else "")
    )
    peft, peft_source = run_peft(folder, hub, files, args.workers, extra, key, args.reuse_peft)
    if args.peft_only:
        print(
            f"PEFT's side: {len(peft['results'])} tests in {peft['seconds']} s, cached under key {key}"
        )
        return 0
    ours = run("peftkit", folder, hub, files, args.workers, extra, args.peftkit_src)
    shutil.rmtree(folder, ignore_errors=True)
    summary = summarize(peft["results"], ours["results"])
    meta = {
        "peft_version": version,
        "tests_from": str(args.peft_src or f"peft-{version} sdist"),
        "peftkit_commit": commit,
        "peftkit_tested": tested,
        "files": files,
        "pytest_args": extra,
        "standins": standins.fingerprint(),
        "peft_run": peft_source,
        "peft_seconds": peft["seconds"],
        "peftkit_seconds": ours["seconds"],
        "deselected_files": claims.DESELECTED_FILES,
        "date": time.strftime("%Y-%m-%d"),
        "deselected_tests": deselection_table(ours.get("deselected", {})),
        "deselected_count": len(ours.get("deselected", {})),
    }
    out.write_text(json.dumps({"meta": meta, **summary}, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown({"meta": meta, **summary}))
    report(summary, meta, out)
    return 2 if summary["harness_errors"] else 0


def markdown(recorded: dict[str, Any]) -> str:
    """The run's tables, for benchmarks/results and the docs."""
    meta, counts = recorded["meta"], recorded["counts"]
    lines = [
        f"# PEFT's test suite against peftkit ({meta['date']})",
        "",
        f"PEFT {meta['peft_version']}'s tests ({meta['tests_from']}), {len(meta['files'])} files, hub models "
        f"replaced by local stand-ins ({meta['standins']}); PEFT's run: {meta['peft_run']} "
        f"({meta['peft_seconds']} s); peftkit: {meta['peftkit_tested']} ({meta['peftkit_seconds']} s); "
        f"{meta['deselected_count']} tests deselected as out of scope (per file and reason in the JSON).",
        "",
        f"**peftkit passes {recorded['peftkit_passes_of_those']:,} of the {recorded['peft_passes']:,} selected "
        f"tests PEFT passes ({recorded['ratio']:.1%})**; {recorded['selected']:,} selected; harness errors: "
        f"{len(recorded['harness_errors'])}; renumbered tests paired: {len(recorded.get('renumbered', {}))}.",
        "",
        "| category | tests |",
        "|---|---|",
    ]
    lines += [f"| {name} | {count:,} |" for name, count in counts.items()]
    lines += ["", "| method | PEFT passes | peftkit passes of those | share |", "|---|---|---|---|"]
    for name, row in recorded["by_method"].items():
        if row["peft_passes"]:
            lines.append(
                f"| {name} | {row['peft_passes']:,} | {row['peftkit_passes_of_those']:,} | "
                f"{row['ratio']:.1%} |"
            )
    return "\n".join(lines) + "\n"


def report(summary: dict[str, Any], meta: dict[str, Any], out: Path) -> None:
    print(
        f"\nPEFT {meta['peft_version']} tests ({meta['peft_run']}, {meta['peft_seconds']} s); "
        f"peftkit: {meta['peftkit_tested']} ({meta['peftkit_seconds']} s)"
    )
    print(
        f"selected {summary['selected']}; PEFT passes {summary['peft_passes']}; peftkit passes "
        f"{summary['peftkit_passes_of_those']} of those ({summary['ratio']:.1%})"
    )
    for name, count in summary["counts"].items():
        print(f"  {name:<20} {count}")
    print("per method (peftkit passes / PEFT passes):")
    for name, row in summary["by_method"].items():
        if row["peft_passes"]:
            print(
                f"  {name:<14} {row['peftkit_passes_of_those']:5d} / {row['peft_passes']:5d}  ({row['ratio']:.1%})"
            )
    behaviour = [(t, r["why"]) for t, r in summary["tests"].items() if r["category"] == "behaviour"]
    for test_id, why in behaviour[:60]:
        print(f"  behaviour: {test_id}\n      {why.splitlines()[0] if why else ''}")
    if summary["harness_errors"]:
        print(
            f"HARNESS ERROR: {len(summary['harness_errors'])} tests ran under one library only, e.g.:"
        )
        for test_id in summary["harness_errors"][:20]:
            print(f"  {test_id}")
    print(f"written to {out}")


if __name__ == "__main__":
    sys.exit(main())
