"""The ``peftkit`` command: a thin layer that parses flags, calls the library, and maps errors to
exit codes.

Exit codes: 0 success, 2 bad input (config, file, name), 1 runtime failure. Tracebacks only with
``--debug``.

Every field of the job schema (:class:`~peftkit.train.JobConfig`) is a flag: ``--model``,
``--data.path``, ``--train.lr``, ``--adapter.r``; a ``--config`` YAML file supplies the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError, PeftkitError

__all__ = ["main"]

TOP_LEVEL = ("model", "method", "output_dir", "seed", "dtype", "trust_remote_code", "quantization")


# ----- flags from the schema
# --------------------------------------------------------------------------------- Written here
# rather than with a dataclass-to-CLI library (tyro, jsonargparse, simple_parsing), because those
# convert each value as they parse it and stop at the first bad one, and read YAML 1.1 (`{pos: yes}`
# becomes True). peftkit's flags and YAML files go through one reader that keeps every value as the
# text written (configfile.py) and one typed schema that converts it and reports every problem at
# once, with did-you-mean for misspelt fields (train/config.py) — the guarantees the hostile-input
# corpus (tests/hostile) checks. What is left here is the argparse surface: a flag per schema field,
# its placeholder and its help.


def _kinds(hint: Any) -> tuple[Any, ...]:
    """The members of a union hint (``int | None``: int, None); any other hint alone (``dict[str,
    int]``)."""
    return (
        typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, types.UnionType)
        else (hint,)
    )


def _is_list(hint: Any) -> bool:
    return any(typing.get_origin(a) in (list, set) for a in _kinds(hint))


def _is_dict(hint: Any) -> bool:
    return any(typing.get_origin(a) is dict for a in _kinds(hint))


def _metavar(hint: Any) -> str:
    """A short placeholder for ``--help`` from the field's type."""
    kinds = set(_kinds(hint)) - {type(None)}
    if _is_dict(hint):
        return "{KEY: VALUE}"
    if _is_list(hint):
        items = {
            t for k in kinds if typing.get_origin(k) in (list, set) for t in typing.get_args(k)
        }
        return "N" if items == {int} else "NAME"
    if bool in kinds:
        return "true|false" if kinds == {bool} else "true|false|TEXT"
    if int in kinds and float not in kinds:
        return "N"
    if float in kinds:
        return "X"
    return "TEXT"


def _help(doc: str, default: Any) -> str:
    """A field's docstring as plain text (no reStructuredText markup), with its default when it has
    one."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", doc)  # :class:`~peftkit.X` -> X
    text = text.replace("``", "").replace("%", "%%")  # argparse formats help with %
    if default is None or default == "" or default == {} or default == []:
        return text
    shown = (
        str(default).lower() if isinstance(default, bool) else getattr(default, "value", default)
    )
    return f"{text} (default: {shown})"


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def _add_section(
    parser: argparse.ArgumentParser, cls: type, prefix: str, only: Sequence[str] | None = None
) -> None:
    from .common.schema import field_docs, field_types

    docs, hints = field_docs(cls), field_types(cls)
    group = parser.add_argument_group(f"{prefix or 'job'} fields" if prefix else "job fields")
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name.startswith("_"):
            continue
        dest = f"{prefix}.{f.name}" if prefix else f.name
        flag = f"--{dest}" if prefix else f"--{f.name.replace('_', '-')}"
        kwargs: dict[str, Any] = {
            "dest": dest,
            "default": None,
            "help": _help(docs.get(f.name, ""), _default(f)),
            "metavar": _metavar(hints[f.name]),
        }
        if _is_list(hints[f.name]):
            kwargs["nargs"] = "+"
        group.add_argument(flag, **kwargs)


def _adapter_fields() -> dict[str, tuple[type, Any]]:
    """Every field of every method's config (flags ``--adapter.<field>``), with the class that
    documents it."""
    from .config import CONFIG_CLASSES, PeftConfig

    fields: dict[str, tuple[type, Any]] = {}
    base = {f.name for f in dataclasses.fields(PeftConfig)}
    for cls in CONFIG_CLASSES.values():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if (
                f.name not in base
                and not f.name.startswith("_")
                and f.name not in cls.peft_only_fields()
            ):
                fields.setdefault(f.name, (cls, hints[f.name]))
    return fields


def _adapter_help(cls: type, name: str) -> str:
    """The field's docstring and default in the method that documents it (defaults differ between
    methods)."""
    from .common.schema import field_docs

    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    methods = {
        "LoraConfig": "LoRA",
        "IA3Config": "IA3",
        "PromptTuningConfig": "prompt tuning",
        "PromptEncoderConfig": "p-tuning",
        "PrefixTuningConfig": "prefix tuning",
    }
    return f"[{methods.get(cls.__name__, cls.__name__)}] " + _help(
        field_docs(cls).get(name, ""), _default(field)
    )


def add_job_flags(parser: argparse.ArgumentParser) -> None:
    """``--config`` plus a flag for every field of the job schema."""
    from .train.config import DataConfig, JobConfig, TrainingConfig

    parser.add_argument(
        "--config", metavar="YAML", help="a YAML job file; flags override its fields"
    )
    _add_section(parser, JobConfig, "", only=TOP_LEVEL)
    _add_section(parser, DataConfig, "data")
    _add_section(parser, TrainingConfig, "train")
    group = parser.add_argument_group(
        "adapter fields (PEFT's names; those of the chosen --method apply)"
    )
    for name, (cls, hint) in sorted(_adapter_fields().items()):
        kwargs: dict[str, Any] = {
            "dest": f"adapter.{name}",
            "default": None,
            "help": _adapter_help(cls, name),
            "metavar": _metavar(hint),
        }
        if _is_list(hint):
            kwargs["nargs"] = "+"
        group.add_argument(f"--adapter.{name}", **kwargs)


def _flag_value(value: Any, hint: Any, name: str) -> Any:
    """A mapping flag's text parsed as YAML (values stay text for the schema to type); others as
    given."""
    from .common.configfile import parse_yaml

    if isinstance(value, list) or not _is_dict(hint):
        return value
    try:
        return parse_yaml(value)
    except ConfigError as err:
        raise ConfigError(
            f"--{name} {value!r} is not a mapping; write it as '{{key: value, ...}}' "
            f"({'; '.join(err.problems)})"
        ) from err


def _section_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--data.*``, ``--train.*`` (and ``--select.*``) flags given, as dotted overrides
    (mappings parsed from YAML text)."""
    from .compare.select import SelectConfig
    from .train.config import DataConfig, TrainingConfig

    hints = {
        f"{prefix}.{k}": v
        for prefix, cls in (
            ("data", DataConfig),
            ("train", TrainingConfig),
            ("select", SelectConfig),
        )
        for k, v in typing.get_type_hints(cls).items()
    }
    return {
        k: _flag_value(v, hints.get(k), k)
        for k, v in vars(args).items()
        if v is not None and k in hints
    }


def job_from_args(args: argparse.Namespace) -> Any:
    """The validated :class:`~peftkit.train.JobConfig` from ``--config`` and the flags given."""
    from .train.config import JobConfig, apply_overrides

    hints = {
        **typing.get_type_hints(JobConfig),
        **{f"adapter.{k}": h for k, (_, h) in _adapter_fields().items()},
    }
    overrides = {
        **_section_flags(args),
        **{
            k: _flag_value(v, hints.get(k), k)
            for k, v in vars(args).items()
            if v is not None and (k in TOP_LEVEL or k.startswith("adapter."))
        },
    }
    if args.config:
        return JobConfig.from_yaml(args.config, overrides)
    return JobConfig.from_dict(apply_overrides({}, overrides), source="command line")


def _launch(nproc: int, argv: Sequence[str]) -> int:
    """``peftkit train --nproc N ...``: the same command under torchrun, N processes on this
    machine."""
    import subprocess

    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        "-m",
        "peftkit",
        *rest,
    ]
    print("launching: torchrun " + " ".join(command[3:]), file=sys.stderr)
    return subprocess.run(command, check=False).returncode


# ----- commands
# --------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    if args.resume is not None:
        args.__dict__["train.resume"] = args.resume
    job = job_from_args(args)  # a bad config fails here, before any process starts
    if args.nproc is not None and args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        if job.train.batch_size < args.nproc:
            raise ConfigError(
                f"train.batch_size={job.train.batch_size} is the global micro-batch, split over "
                f"--nproc {args.nproc} processes; raise it to at least {args.nproc}"
            )
        return _launch(args.nproc, args.argv)
    result = train(job)
    if result.before and result.after:
        for key, before in result.before.as_dict().items():
            print(
                f"{key.removeprefix('eval_'):<12} before {before:.4f}  after {result.after.as_dict()[key]:.4f}"
            )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .train import defaults
    from .train.kernels import pick_device
    from .workflows import evaluate_job

    job = job_from_args(args)
    print(
        defaults.banner([defaults.inference_dtype(job.dtype, pick_device(job.train.device))]),
        file=sys.stderr,
    )
    metrics, count = evaluate_job(job, args.adapter_path, all_rows=args.all)
    label = f"{job.model} + {args.adapter_path}" if args.adapter_path else job.model
    print(f"{label} on {count} examples of {job.data.path}:")
    for key, value in metrics.as_dict("").items():
        print(f"  {key:<12} {value:.4f}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from .train import defaults
    from .workflows import generate_side_by_side

    print(
        defaults.banner([defaults.generation_dtype(args.dtype, torch.device("cpu"))]),
        file=sys.stderr,
    )
    texts = generate_side_by_side(
        args.model, args.prompt, args.adapter_path, args.max_new_tokens, args.chat, args.dtype
    )
    print(f"> {args.prompt}")
    for label, output in texts.items():
        print(f"\n[{label}]\n{output}")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .workflows import merge_to_folder

    out = merge_to_folder(args.model, args.adapter_path, args.output_dir)
    print(
        f"merged model written to {out}; load it with "
        f"transformers.AutoModelForCausalLM.from_pretrained({str(out)!r})"
    )
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export.files import export_files

    target, out = args.to
    print(
        export_files(
            target,
            args.paths,
            out,
            base=args.base,
            encoding=args.quant,
            adapter_name=args.adapter_name,
        )
    )
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import describe_model
    from .integrations.models import load_model
    from .train import defaults

    print(describe_model(load_model(args.model, task=args.task), r=args.r))
    print()
    print(defaults.describe())
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import CompareConfig, compare

    overrides = _section_flags(args)
    for name in ("model", "methods", "budget", "output_dir", "seed", "seeds", "examples", "dtype"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    if args.select is not None:
        overrides["select.params"] = args.select
    if args.data_path is not None:
        overrides["data.path"] = args.data_path
    for item in args.lr or []:
        method, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--lr {item!r} must be METHOD=RATE, e.g. --lr lora=2e-3 prompt=1e-2")
        overrides[f"lr.{method}"] = value
    config = CompareConfig.from_yaml(args.config, overrides)
    compare(config)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve.config import FLAG_FIELDS

    try:
        from .serve import ServeConfig, serve
    except ImportError as err:
        raise ConfigError(
            f"peftkit serve needs the serve extra ({err.name} is missing): "
            "pip install 'peftkit[serve]'"
        ) from err

    adapters = {}
    for item in args.adapter or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(
                f"--adapter {item!r} must be NAME=PATH, e.g. --adapter demo=outputs/demo"
            )
        adapters[name] = path
    flags = {name: getattr(args, name) for name in FLAG_FIELDS}
    serve(ServeConfig.load(args.config, {"model": args.model, "adapters": adapters, **flags}))
    return 0


def _add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per ServeConfig field, documented by the field's own docstring and default (flags
    override the --config file)."""
    from .common.schema import field_docs
    from .serve.config import FLAG_FIELDS, ServeConfig

    docs, defaults = (
        field_docs(ServeConfig),
        {f.name: f.default for f in dataclasses.fields(ServeConfig)},
    )
    for name in FLAG_FIELDS:
        default = "" if defaults[name] is None else f" (default {defaults[name]})"
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=docs[name] + default)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(output_dir=args.output_dir, quick=args.quick)
    return 0


def _add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per field of a command's options (:mod:`peftkit.commands`), its help the field's
    docstring."""
    from .common.schema import field_docs, field_types

    docs, hints = field_docs(cls), field_types(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        positional, flag = meta.pop("positional", False), meta.pop("flag", None)
        kinds = set(_kinds(hints[f.name])) - {type(None)}
        items = {
            a for k in kinds for a in (typing.get_args(k) if typing.get_origin(k) is list else (k,))
        }
        default = _default(f)
        kwargs: dict[str, Any] = {
            "help": _help(docs.get(f.name, ""), None if positional else default),
            **meta,
        }
        if kinds == {bool}:
            kwargs["action"] = "store_true"
        elif items == {int}:
            kwargs["type"] = int
        if positional:
            parser.add_argument(f.name, **kwargs)
        else:
            parser.add_argument(
                flag or "--" + f.name.replace("_", "-"), dest=f.name, default=default, **kwargs
            )


EXPORT_USAGE = (
    "peftkit export ADAPTER --to gguf-lora OUT.gguf  |  peftkit export BASE [ADAPTER] --to gguf OUT.gguf "
    "[--quant q8_0]. Llama-family models (SmolLM2, Llama, Mistral)."
)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The CLI's parser. ``command``: add the schema flags of that command only (building them
    imports the schemas, and with them torch), so ``--version`` and ``--help`` answer at once; None:
    every command's."""
    from .commands import COMMAND_OPTIONS
    from .version import __version__

    parser = argparse.ArgumentParser(
        prog="peftkit", description="Parameter-efficient fine-tuning, PEFT-compatible."
    )
    parser.add_argument("--version", action="version", version=f"peftkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, options in COMMAND_OPTIONS.items():
        doc = (options.__doc__ or "").strip()
        cmd = sub.add_parser(name, help=doc, description=EXPORT_USAGE if name == "export" else doc)
        _add_options(cmd, options)
        if command is None or command == name:
            _SCHEMA_FLAGS.get(name, lambda _: None)(cmd)
        cmd.set_defaults(func=_HANDLERS[name])
    return parser


def _compare_sections(parser: argparse.ArgumentParser) -> None:
    from .compare.select import SelectConfig
    from .train.config import DataConfig, TrainingConfig

    _add_section(parser, DataConfig, "data")
    _add_section(parser, TrainingConfig, "train")
    _add_section(parser, SelectConfig, "select")


# The schema flags each command takes besides its options (built only for the command being run).
_SCHEMA_FLAGS: dict[str, Any] = {
    "train": lambda p: add_job_flags(p),
    "eval": lambda p: add_job_flags(p),
    "compare": _compare_sections,
    "serve": lambda p: _add_serve_flags(p),
}
_HANDLERS: dict[str, Any] = {
    "train": _cmd_train,
    "eval": _cmd_eval,
    "generate": _cmd_generate,
    "merge": _cmd_merge,
    "export": _cmd_export,
    "inspect": _cmd_inspect,
    "compare": _cmd_compare,
    "serve": _cmd_serve,
    "demo": _cmd_demo,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used by ``python -m peftkit``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # that command's flags only
    parser = build_parser(next((a for a in argv if a in _HANDLERS), ""))
    # accepted after the command too, where people add it when a command fails
    if "--debug" in argv[1:]:
        argv = ["--debug", *[a for a in argv if a != "--debug"]]
    args = parser.parse_args(argv)
    args.argv = argv
    where = f" (rank {os.environ['RANK']})" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    try:
        return int(args.func(args))
    except PeftkitError as err:
        if args.debug:
            raise
        print(f"peftkit: error{where}: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(
            f"peftkit: unexpected {type(err).__name__}{where}: {err} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
