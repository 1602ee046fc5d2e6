"""The ``peftkit`` command: a thin layer that parses flags, calls the library, and maps errors to exit codes.

Exit codes: 0 success, 2 bad input (config, file, name), 1 runtime failure. Tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import PeftkitError

__all__ = ["main"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(model_name=args.model, max_new_tokens=args.max_new_tokens)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from .inspection import describe_model
    from .models import load_model

    print(describe_model(load_model(args.model, task=args.task), r=args.r))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peftkit", description="Parameter-efficient fine-tuning, PEFT-compatible.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="attach LoRA to the packaged SmolLM2-135M and generate")
    demo.add_argument("--model", default="smollm2-135m", help="model alias, folder, .gguf file or hub id")
    demo.add_argument("--max-new-tokens", type=int, default=24)
    demo.set_defaults(func=_cmd_demo)

    inspect = sub.add_parser("inspect", help="list a model's adaptable layers and trainable-parameter counts")
    inspect.add_argument("model", help="model alias, folder, .gguf file or hub id")
    inspect.add_argument("--task", default=None, help="CAUSAL_LM, SEQ_CLS, SEQ_2_SEQ_LM, FEATURE_EXTRACTION")
    inspect.add_argument("--r", type=int, default=8, help="LoRA rank for the counts")
    inspect.set_defaults(func=_cmd_inspect)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (also used by ``python -m peftkit``)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except PeftkitError as err:
        if args.debug:
            raise
        print(f"peftkit: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("peftkit: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(f"peftkit: unexpected {type(err).__name__}: {err} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
