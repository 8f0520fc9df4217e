"""The `probe` command line: parse, validate, call the library. No logic lives here.

Every error a user can fix (a ProbeError from the library, or a bad option caught by click)
prints one line on stderr and exits with code 2, never a traceback.
"""

from __future__ import annotations

import errno
import sys

import click

from probe.artifacts import ENV_ROOT, Artifacts
from probe.errors import ProbeError


class ProbeGroup(click.Group):
    def main(self, args=None, prog_name=None, **kwargs):
        kwargs.pop("standalone_mode", None)  # always handled here: one line, exit code 2
        try:
            result = super().main(args, prog_name, standalone_mode=False, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("error: aborted", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            _fail(exc.format_message())
        except ProbeError as exc:
            _fail(str(exc))
        except OSError as exc:  # the file system said no: read-only, full, a name too long ...
            _fail(os_error_line(exc))
        sys.exit(result if isinstance(result, int) else 0)


def os_error_line(exc: OSError) -> str:
    """An OSError as the one line a user can act on, naming the path."""
    path = exc.filename or ""
    if exc.errno == errno.ENOSPC:
        from probe.artifacts import free_bytes

        free = free_bytes(path) if path else None
        return (f"no space left on device while writing {path or 'the artifacts'}"
                + (f"; {free / 1e6:.1f} MB free" if free is not None else ""))
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{reason}: {path}" if path else reason


def _fail(message: str) -> None:
    click.echo("error: " + " ".join(message.split()), err=True)
    sys.exit(2)


@click.group(cls=ProbeGroup, context_settings={"help_option_names": ["-h", "--help"],
                                                "show_default": True})
@click.option("--artifacts", "artifacts_root", type=click.Path(file_okay=False),
              envvar=ENV_ROOT, default="artifacts", show_envvar=True,
              help="Where every output is written.")
@click.version_option(package_name="probe")
@click.pass_context
def cli(ctx: click.Context, artifacts_root: str) -> None:
    """Train diffusion denoisers on nested subsets and explain how they generalize."""
    if not artifacts_root.strip():
        raise click.BadParameter("must name a folder, got an empty path",
                                 param_hint="'--artifacts'")
    ctx.obj = Artifacts.at(artifacts_root)


def _register() -> None:
    # Each command family lives in its own module of this package and adds itself to `cli`.
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(__path__):
        if info.name != "options":
            importlib.import_module(f"{__name__}.{info.name}")


_register()


def main() -> None:
    cli.main(prog_name="probe")
