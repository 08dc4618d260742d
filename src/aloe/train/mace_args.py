"""Command lines for mace-torch's own training script (``python -m mace.cli.run_train``), checked before use.

Every option is written as ``--name=value`` (so negative numbers and dict literals pass through argparse),
booleans of mace's ``str2bool`` options as ``True``/``False``, dicts and lists as Python literals (mace reads
them with ``ast.literal_eval``), and flags without a value (``--ema``, ``--amsgrad`` ...) only when they are
on.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
from typing import Any

from aloe.errors import AloeError

#: The module aloe runs (``python -m``): mace-torch's training script.
ENTRY_POINT = "mace.cli.run_train"

#: Options aloe sets itself, and the aloe setting to use instead.
RESERVED: dict[str, str] = {
    "name": "(set by aloe: member-<k>)",
    "work_dir": "output",
    "log_dir": "output",
    "model_dir": "output",
    "checkpoints_dir": "output",
    "results_dir": "output",
    "downloads_dir": "output",
    "train_file": "inputs and split",
    "valid_file": "inputs and split",
    "test_file": "inputs and split",
    "test_dir": "inputs and split",
    "heads": "data_format (aloe names the data files; hdf5 shards go through --heads)",
    "valid_fraction": "split",
    "energy_key": "(set by aloe: REF_energy)",
    "forces_key": "(set by aloe: REF_forces)",
    "stress_key": "(set by aloe: REF_stress)",
    "E0s": "e0s",
    "seed": "seed",
    "device": "device",
    "max_num_epochs": "epochs",
    "foundation_model": "foundation_model",
    "restart_latest": "resume (checkpoint: a killed training continues from its checkpoint; restart: it starts again)",
    "atomic_numbers": "(set by aloe: every element of the dataset)",
}

_PARSER: list[argparse.ArgumentParser] = []


def mace_parser() -> argparse.ArgumentParser:
    """mace-torch's own ``run_train`` argument parser (built once)."""
    if not _PARSER:
        import importlib.util

        if importlib.util.find_spec("mace") is None:
            raise AloeError("aloe train needs mace-torch: pip install mace-torch")
        from aloe.potentials.mace import ensure_e3nn_importable

        ensure_e3nn_importable()
        from mace.tools.arg_parser import build_default_arg_parser

        _PARSER.append(build_default_arg_parser())
    return _PARSER[0]


def _action(parser: argparse.ArgumentParser, name: str) -> argparse.Action | None:
    return parser._option_string_actions.get(f"--{name}")  # argparse keeps no public map


def check_user_options(options: dict[str, Any]) -> None:
    """Reject unknown mace-torch options and the ones aloe sets itself, with one line naming the key."""
    parser = mace_parser()
    known = sorted(s[2:] for s in parser._option_string_actions if s.startswith("--"))
    for key in options:
        if key in RESERVED:
            raise AloeError(f"mace_options.{key}: set by aloe; use the train setting {RESERVED[key]}")
        if _action(parser, key) is None:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise AloeError(f"mace_options.{key}: mace-torch run_train has no option --{key}{hint}")


def format_args(options: dict[str, Any]) -> list[str]:
    """``{"lr": 0.01, "ema": True, "radial_MLP": [64]}`` -> ``["--lr=0.01", "--ema", "--radial_MLP=[64]"]``.

    Raises
    ------
    AloeError
        An unknown option, or a value a flag without argument cannot take.
    """
    parser = mace_parser()
    argv: list[str] = []
    for key, value in options.items():
        action = _action(parser, key)
        if action is None:
            raise AloeError(f"mace option --{key} is unknown to mace-torch run_train")
        if action.nargs == 0:  # store_true / store_false: the flag alone
            if value == action.const:
                argv.append(f"--{key}")
            elif value != action.default:
                raise AloeError(
                    f"mace option {key}: mace-torch only has the flag --{key} (meaning {action.const}); "
                    f"{value!r} cannot be given"
                )
            continue
        if isinstance(value, bool):
            text = "True" if value else "False"
        elif isinstance(value, dict | list | tuple):
            text = repr(value if not isinstance(value, tuple) else list(value))
        else:
            text = str(value)
        argv.append(f"--{key}={text}")
    return argv


def validate_argv(argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` with mace-torch's parser; a bad value is an AloeError with argparse's message."""
    parser = mace_parser()
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parser.parse_args(argv)
    except SystemExit:
        lines = [line for line in err.getvalue().splitlines() if line.strip()]
        message = lines[-1] if lines else "invalid arguments"
        message = message.split("error: ", 1)[-1]
        raise AloeError(f"mace-torch run_train rejects the options: {message}") from None


def e0s_literal(e0s: dict[int, float]) -> str:
    """``{29: -0.5, 13: ...}`` as mace's ``--E0s`` wants it (a Python dict literal with integer keys)."""
    return "{" + ", ".join(f"{int(z)}: {float(e)!r}" for z, e in sorted(e0s.items())) + "}"
