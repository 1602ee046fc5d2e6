"""Run PEFT's own test files against PEFT and against peftkit, and count what differs.

    python benchmarks/conformance/run_peft_tests.py --peft-git /work/.mirror/huggingface+peft/repo

PEFT's tests are read from a checkout (``--peft-src``) or a bare mirror (``--peft-git``, as the search
tool's ``fetch`` brings it) into a temporary folder, never into this repository. Each library runs the same
selection: the test files that build their models locally, minus tests of methods peftkit does not claim
(deselected by name). With ``--lib peftkit`` the shim in ``peft_shim.py`` makes ``import peft`` resolve to
peftkit. The report puts every test in one category:

- ``pass``: passes on peftkit;
- ``environment``: fails or is skipped on PEFT itself too (hub access, GPU, optional packages);
- ``missing API``: peftkit lacks a name or argument the test uses (the name is counted);
- ``unsupported feature``: peftkit refuses a PEFT feature it does not implement, by name (a DoRA embedding,
  an initialization method, a PEFT-only config field set on);
- ``message only``: the same exception type, another message (PEFT's test matches its exact wording);
- ``behaviour``: PEFT passes and peftkit gets a different outcome.

Needs PEFT's test dependencies in the environment: ``pip install diffusers scipy parameterized``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

HERE = Path(__file__).resolve().parent
FILES = ["test_custom_models.py", "test_initialization.py", "test_config.py", "test_other.py",
         "test_tuners_utils.py", "test_mapping.py"]
SUPPORT = ["__init__.py", "conftest.py", "testing_common.py", "testing_utils.py"]

# Methods peftkit does not claim, as they appear in test names and parameter ids.
UNCLAIMED = [
    "AdaLora", "AdaLoRA", "adalora", "Glora", "GLoRA", "glora", "Vera", "VeRA", "vera", "LoHa", "loha", "LoKr", "lokr",
    "BOFT", "boft", "OFT", "oft", "HRA", "hra", "VBLoRA", "vblora", "FourierFT", "fourierft", "Miss", "MiSS", "miss",
    "Bone", "bone", "LNTuning", "LN Tuning", "ln_tuning", "RandLora", "RandLoRA", "randlora", "Shira", "SHiRA",
    "shira", "C3A", "c3a", "Road", "RoAd", "road", "WaveFT", "waveft", "Delora", "DeLoRA", "delora", "OSF", "osf",
    "TrainableTokens", "Trainable Tokens", "trainable_token", "trainable_tokens", "XLora", "X-LoRA", "xlora", "Poly",
    "poly", "AdaptionPrompt", "adaption_prompt", "CPT", "cpt", "UniLora", "UniLoRA", "unilora", "Lily", "lily",
    "Hira", "HiRA", "hira", "Gralora", "GraLoRA", "gralora", "Peanut", "peanut", "Psoft", "psoft", "TinyLora",
    "TinyLoRA", "tinylora", "Velora", "VeLoRA", "velora", "Frod", "frod", "Beft", "beft", "Deft", "deft", "Adamss",
    "adamss", "Kasa", "KaSA", "kasa", "Monteclora", "MonteCLoRA", "monteclora", "Supertuning", "supertuning",
    "BdLora", "bdlora", "Pvera", "PVeRA", "pvera", "Eva", "EVA", "eva", "Corda", "CorDA", "corda", "LoftQ", "loftq",
    "lora_ga", "LoraGA", "Arrow", "arrow", "alora", "aLoRA", "qalora", "QALoRA", "hotswap", "Hotswap", "Cartridge",
    "cartridge", "MultitaskPrompt", "multitask", "loraplus", "LoraPlus", "lora_fa", "LoraFA",
    "target_parameters", "layer_replication", "megatron", "lora_bias", "LoRA-bias", "use_qalora",
    "Conv2d", "Conv2D", "conv2d", "Conv3d", "Conv3D", "Conv1d", "conv1d", "MHA", "mha", "gptq", "bnb", "8bit", "4bit",
    "ephemeral", "gpu", "GPU", "cuda", "xpu", "tied_embedding", "trainable_token_indices",
]
UNCLAIMED_RE = re.compile(r"(?<![A-Za-z])(" + "|".join(map(re.escape, UNCLAIMED)) + r")(?![a-z])")
ENVIRONMENT_RE = re.compile(r"offline|LocalEntryNotFound|couldn't connect|HF_HUB_OFFLINE|Connection|resolve|"
                            r"huggingface\.co|No module named|requires .*GPU|CUDA|cuda", re.IGNORECASE)
MISSING_RE = re.compile(r"(peft[\w.]*\.\w+) is not in peftkit")
ATTRIBUTE_RE = re.compile(r"'(\w+)' object has no attribute '(\w+)'")
# The last one: a test that builds a custom LoRA layer as `class MyLora(nn.Module, LoraLayer)` needs PEFT's
# LoraLayer to be a mixin; peftkit's layers are plain nn.Modules, so Python cannot order that class's bases.
# Custom layer dispatch (`LoraConfig._register_custom_module`) is a feature peftkit does not implement.
UNSUPPORTED_RE = re.compile(r"is a PEFT feature peftkit does not support|is not supported|peftkit supports it on "
                            r"linear layers only|cannot be combined with use_dora|init_lora_weights='\w+' is not|"
                            r"which LoRA cannot adapt|safe_serialization=False would write a pickle|"
                            r"Cannot create a consistent method resolution")
# pytest >= 8.4 reports a ``pytest.raises(..., match=)`` whose exception came but whose message differs as a
# bare AssertionError with a diff, under the ``>`` line that holds the ``pytest.raises`` call.
RAISES_MATCH_RE = re.compile(r"^>.*pytest\.raises\(.*match=.*\n(?:[^E\n].*\n)*?E\s+AssertionError: *\n", re.MULTILINE)
ARGUMENT_RE = re.compile(r"(\w+)\(\) got an unexpected keyword argument '(\w+)'")

PLUGIN = '''
import os, re, sys
sys.path.insert(0, {here!r})
if os.environ.get("CONFORMANCE_LIB") == "peftkit":
    import peft_shim
    peft_shim.install()
UNCLAIMED_RE = re.compile({pattern!r})

# Stay offline: PEFT's hub_online_once lifts HF_HUB_OFFLINE and then waits out the hub client's retries.
import contextlib
import tests.testing_utils


@contextlib.contextmanager
def _offline(*args, **kwargs):
    yield


tests.testing_utils.hub_online_once = _offline

def pytest_collection_modifyitems(config, items):
    kept = [i for i in items if not UNCLAIMED_RE.search(i.nodeid)]
    config.hook.pytest_deselected(items=[i for i in items if i not in kept])
    items[:] = kept
'''


def read_tests(args: argparse.Namespace, folder: Path) -> None:
    """Copy PEFT's test files into ``folder/tests`` from a checkout or a bare mirror."""
    tests = folder / "tests"
    tests.mkdir(parents=True)
    for name in FILES + SUPPORT:
        if args.peft_src:
            text = (Path(args.peft_src) / "tests" / name).read_text()
        else:
            text = subprocess.run(["git", f"--git-dir={args.peft_git}", "show", f"{args.rev}:tests/{name}"],
                                  check=True, capture_output=True, text=True).stdout
        (tests / name).write_text(text)
    (folder / "conformance_plugin.py").write_text(PLUGIN.format(here=str(HERE), pattern=UNCLAIMED_RE.pattern))


def run(lib: str, folder: Path, files: list[str], workers: int, extra: list[str]) -> dict[str, dict[str, str]]:
    """Run the selection under ``lib``; returns test id -> {outcome, message}."""
    report = folder / f"{lib}.xml"
    env = {**os.environ, "CONFORMANCE_LIB": lib, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(folder), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "conformance_plugin", "-p", "no:cacheprovider",
               "-n", str(workers), f"--junitxml={report}", "-o", "junit_family=xunit1", "--rootdir", str(folder),
               *[f"tests/{f}" for f in files], *extra]
    subprocess.run(command, cwd=folder, env=env, check=False)
    results = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "") + "\n" + (node.text or "")
                break
        results[test_id] = {"outcome": outcome, "message": message}
    return results


def categorize(peft: dict[str, dict[str, str]], ours: dict[str, dict[str, str]]) -> dict[str, object]:
    """Put each test in pass / environment / missing API / behaviour, and count the missing names."""
    categories: dict[str, list[str]] = collections.defaultdict(list)
    missing: collections.Counter[str] = collections.Counter()
    for test_id, result in sorted(ours.items()):
        theirs = peft.get(test_id, {"outcome": "absent"})
        if result["outcome"] == "passed":
            categories["pass"].append(test_id)
        elif theirs["outcome"] != "passed" or (result["outcome"] == "skipped" and ENVIRONMENT_RE.search(
                result["message"])):
            categories["environment"].append(test_id)
        elif names := _missing_names(result["message"]):
            categories["missing API"].append(test_id)
            missing.update(names)
        elif UNSUPPORTED_RE.search(result["message"]):
            categories["unsupported feature"].append(test_id)
        elif "Regex pattern did not match" in result["message"] or RAISES_MATCH_RE.search(result["message"]):
            categories["message only"].append(test_id)
        else:
            categories["behaviour"].append(test_id)
    reasons = {t: _first_error_line(ours[t]["message"]) for t in categories["behaviour"]}
    return {"counts": {k: len(v) for k, v in categories.items()}, "tests": categories,
            "missing_names": missing.most_common(), "behaviour_reasons": reasons}


def _first_error_line(message: str) -> str:
    """The line that names the exception (``E   SomeError: ...``), cut short."""
    lines = [line[1:].strip() for line in message.splitlines() if line.startswith("E ")]
    return (lines[0] if lines else message.strip().splitlines()[0] if message.strip() else "")[:300]


def _missing_names(message: str) -> list[str]:
    names = MISSING_RE.findall(message)
    names += [f"{cls}.{attr}" for cls, attr in ATTRIBUTE_RE.findall(message)
              if cls not in ("NoneType", "str", "dict", "list", "tuple", "int", "Tensor")]
    names += [f"{fn}({arg}=)" for fn, arg in ARGUMENT_RE.findall(message)]
    return sorted(set(names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--peft-src", help="a PEFT checkout (its tests/ folder is read)")
    source.add_argument("--peft-git", help="a bare PEFT mirror (git dir)")
    parser.add_argument("--rev", default="HEAD", help="the mirror's revision to read tests from")
    parser.add_argument("-n", "--workers", type=int, default=2)
    parser.add_argument("--files", nargs="+", default=FILES, choices=FILES, help="PEFT's test files to run")
    parser.add_argument("--peftkit-only", action="store_true", help="skip the PEFT run (for a quick look)")
    parser.add_argument("--out", default=str(HERE.parent / "results" / "peft-conformance.json"))
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (e.g. -k test_merge)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="peft-conformance-") as tmp:
        folder = Path(tmp)
        read_tests(args, folder)
        if args.peftkit_only:  # a quick look at peftkit's failures; every test counts as passing on PEFT
            ours = run("peftkit", folder, args.files, args.workers, args.pytest_args)
            peft = {t: {"outcome": "passed", "message": ""} for t in ours}
        else:
            peft = run("peft", folder, args.files, args.workers, args.pytest_args)
            ours = run("peftkit", folder, args.files, args.workers, args.pytest_args)
    summary = categorize(peft, ours)
    peft_passed = sum(r["outcome"] == "passed" for r in peft.values())
    summary = {"selected": len(ours), "peft_passed": peft_passed, **summary}
    Path(args.out).write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nselected tests: {len(ours)}; PEFT passes {peft_passed}")
    for name, count in sorted(summary["counts"].items()):  # type: ignore[attr-defined]
        print(f"  {name:<12} {count}")
    print("most used missing names:")
    for name, count in summary["missing_names"][:40]:  # type: ignore[index]
        print(f"  {count:5d}  {name}")
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
