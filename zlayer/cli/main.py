"""Entry point of the ``zlayer`` command: global options, lazy command loading, and error reporting."""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from zlayer._version import __version__
from zlayer.cli.commands import COMMANDS

# what --runtime can pick on this build: auto is linux (docker where linux cannot run), or wasm by the image
RUNTIMES = ("auto", "linux", "wasm", "docker")


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module, attr, _ = entry
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help lists commands from the registry's one-line text, without importing every module.
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "-V", "--version", prog_name="zlayer", message="%(prog)s %(version)s")
@click.option(
    "--data-dir",
    envvar="ZLAYER_DATA_DIR",
    type=click.Path(file_okay=False),
    help="Data directory [env ZLAYER_DATA_DIR; default /var/lib/zlayer as root, ~/.zlayer otherwise].",
)
@click.option(
    "--state-dir", type=click.Path(file_okay=False), help="Container state directory [default DATA/containers]."
)
@click.option(
    "--runtime",
    type=click.Choice(["auto", "youki", "linux", "docker", "wasm"]),
    envvar="ZLAYER_RUNTIME",
    default="auto",
    show_default=True,
    help="Container runtime to use (" + ", ".join(RUNTIMES) + " here; the others are refused).",
)
@click.option("--socket", "socket_path", envvar="ZLAYER_SOCKET", help="Daemon unix socket [env ZLAYER_SOCKET].")
@click.option("--host", envvar="ZLAYER_API_URL",
              help="Daemon API URL, e.g. http://node:3669; a cluster node's is https, its CA in ZLAYER_API_CA "
                   "[env ZLAYER_API_URL].")  # fmt: skip
@click.option("--token", envvar="ZLAYER_API_TOKEN", help="Bearer token for a TCP daemon [env ZLAYER_API_TOKEN].")
@click.option("-v", "--verbose", count=True, help="More output: -v info, -vv debug, -vvv trace.")
@click.option("-b", "--background", is_flag=True, help="Deploy and return once the deployment is running.")
@click.option("-d", "--detach", is_flag=True, help="Wait until running or stable, then exit.")
@click.option("--no-tui", is_flag=True, help="Plain output, no interactive display.")
@click.option("--host-network", is_flag=True, help="Run containers in the host network namespace.")
@click.option("--daemon-name", default="zlayer", show_default=True, help="Name of the daemon instance.")
@click.pass_context
def cli(
    ctx: click.Context,
    data_dir: str | None,
    state_dir: str | None,
    runtime: str,
    socket_path: str | None,
    host: str | None,
    token: str | None,
    verbose: int,
    background: bool,
    detach: bool,
    no_tui: bool,
    host_network: bool,
    daemon_name: str,
) -> None:
    """zlayer: run the services of a *.zlayer.yml with real isolation and a built-in proxy."""
    if runtime not in RUNTIMES:
        from zlayer.errors import UsageError

        # ZLayer's names are accepted by the parser so the message can say what is missing, instead of the Linux
        # runtime quietly running what the user asked another runtime to run
        hint = "available runtimes: " + ", ".join(RUNTIMES)
        hint += " (auto: linux, wasm for a WASM image, docker where linux cannot run)"
        raise UsageError(f"no {runtime} runtime in this zlayer", where="--runtime", hint=hint)
    from zlayer.cli.context import CliContext
    from zlayer.paths import Paths

    paths = Paths.resolve(data_dir, socket_path)
    os.environ["ZLAYER_DATA_DIR"] = str(paths.data_dir)  # children (daemon auto-start) see the same data dir
    ctx.obj = CliContext(
        paths=paths,
        verbose=verbose,
        runtime=runtime,
        host=host,
        token=token,
        state_dir=state_dir,
        background=background,
        detach=detach,
        no_tui=no_tui,
        host_network=host_network,
        daemon_name=daemon_name,
    )


def _report(err: BaseException, verbose: bool) -> int:
    from zlayer.errors import ZLayerError

    if isinstance(err, ZLayerError):
        click.secho(f"error: {err}", fg="red", err=True)
        if err.hint:
            click.echo(f"  hint: {err.hint}", err=True)
        return err.exit_code
    if isinstance(err, PermissionError) and err.filename:
        # the data dir and all under it are closed to other users on purpose (tokens, specs, containers' files)
        click.secho(f"error: {err.filename}: permission denied", fg="red", err=True)
        click.echo("  hint: the data dir is its owner's alone (root's for /var/lib/zlayer); run as its owner, or "
                   "pass --data-dir", err=True)  # fmt: skip
        return 77
    if verbose:
        import traceback

        traceback.print_exception(err)
    click.secho(f"error: internal error: {type(err).__name__}: {err}", fg="red", err=True)
    click.echo("  hint: run again with -v for the traceback, and please report it", err=True)
    return 70


def main(argv: list[str] | None = None) -> Any:
    """Run the CLI; every zlayer error becomes a one- or two-line message and a non-zero exit code."""
    args = sys.argv[1:] if argv is None else argv
    if "_ZLAYER_COMPLETE" in os.environ:  # a shell asks for candidates: PowerShell and Elvish are registered there
        importlib.import_module("zlayer.cli.completions")
    try:
        cli.main(args=args, prog_name="zlayer", standalone_mode=False)
        return None
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return sys.exit(130)
    except click.exceptions.Exit as e:
        return sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        return sys.exit(e.exit_code)
    except KeyboardInterrupt:
        return sys.exit(130)
    except Exception as e:  # the one place that turns anything unexpected into a message, not a traceback
        return sys.exit(_report(e, "-v" in args or "-vv" in args or "--verbose" in args))


if __name__ == "__main__":
    main()
