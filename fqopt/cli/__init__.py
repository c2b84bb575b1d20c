"""The ``fqopt`` command. Each sub-command lives in its own module and is imported only when run."""

from __future__ import annotations

import importlib
import sys

import click

from fqopt._version import __version__
from fqopt.errors import UserError

# command name -> module under fqopt.cli that defines ``command`` (a click.Command)
COMMANDS = {
    "train": "train",
    "import": "import_",
    "profile": "profile",
    "allocate": "allocate",
    "evaluate": "evaluate",
    "search": "search",
    "show": "show",
    "refine": "refine",
    "report": "report",
    "export": "export",
}

_HELP = {
    "train": "Train the full-precision baseline of a run.",
    "import": "Create a run from a trained checkpoint (no training).",
    "profile": "Measure per-unit, per-group sensitivity; writes RUN/sensitivity.npz.",
    "allocate": "Solve for a bit allocation under a budget; writes a plan JSON.",
    "evaluate": "Fairness report of the FP model or of a quantization plan.",
    "search": "Optuna multi-objective search over plans (whole pipeline by default).",
    "show": "List the Pareto plans of a run's search.",
    "refine": "BAQ: learn bit-widths and weights together, then round under the budget.",
    "report": "Write report.html and PNG figures for a run.",
    "export": "Write packed low-bit weights (safetensors or ONNX) for a plan.",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(f"fqopt.cli.{COMMANDS[name]}")
        return module.command

    def format_commands(self, ctx, formatter):
        # list commands without importing them (keeps `fqopt --help` fast)
        rows = [(name, _HELP.get(name, "")) for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fqopt")
def cli():
    """fqopt: fairness-aware mixed-precision quantization of image classifiers."""


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv=None) -> int:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        cli.main(args=argv, prog_name="fqopt", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, --version
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("fqopt: interrupted", err=True)
        return 130
    except click.UsageError as exc:
        cmd = exc.ctx.command_path if exc.ctx is not None else "fqopt"
        click.echo(f"{cmd}: error: {_one_line(exc.format_message())}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"fqopt: error: {_one_line(exc.format_message())}", err=True)
        return 2
    except UserError as exc:
        click.echo(f"fqopt: error: {_one_line(str(exc))}", err=True)
        return 2
    except KeyboardInterrupt:
        click.echo("fqopt: interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
