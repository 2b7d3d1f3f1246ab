"""Entry point: builds the typer app and turns user errors into one line and a non-zero exit code."""

from __future__ import annotations

import sys

import click
import typer

from adapterbank.errors import AdapterBankError
from cli import (
    bank_commands,
    bench_commands,
    core_commands,
    export_commands,
    predict_commands,
    serve_commands,
    train_commands,
)
from cli.ownership import root_object

app = typer.Typer(
    name="adapterbank",
    help="Parameter-efficient tuning of one frozen vision backbone for many tasks.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    """Parameter-efficient tuning of one frozen vision backbone for many tasks."""


core_commands.register(app)
bank_commands.register(app)
export_commands.register(app)
bench_commands.register(app)
train_commands.register(app)
predict_commands.register(app)
serve_commands.register(app)

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1


def one_line(text: str) -> str:
    return " ".join(text.split())


def _usage_error_types() -> tuple[type[Exception], ...]:
    """click's ClickException, and typer's own copy of it: typer >= 0.2x vendors click and raises its classes."""
    vendored = [cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"]
    return tuple({click.exceptions.ClickException, *vendored})


def _abort_types() -> tuple[type[BaseException], ...]:
    return tuple({click.exceptions.Abort, typer.Abort})


USAGE_ERRORS = _usage_error_types()
ABORTS = _abort_types()


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        result = app(args=args, prog_name="adapterbank", standalone_mode=False, obj=root_object(argv is None))
    except USAGE_ERRORS as exc:  # bad option value, unknown option, missing argument
        if debug:
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group run bare: its help is the answer
            exc.show()
            sys.exit(exc.exit_code)
        context = getattr(exc, "ctx", None)
        hint = f" (see {context.command_path} --help)" if context is not None else ""
        typer.echo(f"error: {one_line(exc.format_message())}{hint}", err=True)
        sys.exit(exc.exit_code)
    except ABORTS:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except AdapterBankError as exc:
        if debug:
            raise
        typer.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(EXIT_USER_ERROR)
    except Exception as exc:
        if debug:
            raise
        typer.echo(
            f"internal error: {type(exc).__name__}: {one_line(str(exc))[:300]} (rerun with --debug for the traceback)",
            err=True,
        )
        sys.exit(EXIT_INTERNAL_ERROR)
    sys.exit(result if isinstance(result, int) else 0)
