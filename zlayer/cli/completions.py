"""``zlayer completions bash|zsh|fish|powershell|elvish``: print the shell completion script.

Every shell asks the same question the same way: it runs ``zlayer`` with ``_ZLAYER_COMPLETE={shell}_complete`` and
the words typed so far in ``COMP_WORDS``, and reads one candidate per line. click answers for bash, zsh and fish;
PowerShell and Elvish are two more :class:`~click.shell_completion.ShellComplete` classes on that protocol, each with
a small script that calls it.
"""

from __future__ import annotations

import os

import click
from click.shell_completion import CompletionItem, ShellComplete, add_completion_class, split_arg_string

SHELLS = ("bash", "zsh", "fish", "powershell", "elvish")

# PowerShell: the line up to the cursor in COMP_WORDS, the word under the cursor in COMP_CWORD. Lines are
# "type<TAB>value<TAB>help"; file and directory candidates are left to PowerShell's own path completion.
_SOURCE_POWERSHELL = """\
Register-ArgumentCompleter -Native -CommandName %(prog_name)s -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)
    $line = $commandAst.ToString()
    $end = [Math]::Min($line.Length, $cursorPosition - $commandAst.Extent.StartOffset)
    $env:COMP_WORDS = $line.Substring(0, $end)
    $env:COMP_CWORD = $wordToComplete
    $env:%(complete_var)s = 'powershell_complete'
    $candidates = & %(prog_name)s 2>$null
    Remove-Item Env:\\%(complete_var)s, Env:\\COMP_WORDS, Env:\\COMP_CWORD
    foreach ($candidate in $candidates) {
        $type, $value, $help = $candidate -split "`t", 3
        if ($type -eq 'plain') {
            $tip = if ($help) { $help } else { $value }
            [System.Management.Automation.CompletionResult]::new($value, $value, 'ParameterValue', $tip)
        }
    }
}
"""

# Elvish: the words in COMP_WORDS, one a line, the last the one being completed; file and directory candidates
# come from a glob of that word.
_SOURCE_ELVISH = """\
use str
fn %(complete_func)s {|@words|
  var incomplete = $words[-1]
  tmp E:%(complete_var)s = elvish_complete
  tmp E:COMP_WORDS = (str:join "\\n" $words)
  for line [(%(prog_name)s 2>/dev/null)] {
    var parts = [(str:split "\\t" $line)]
    if (eq $parts[0] plain) {
      put $parts[1]
    } else {
      put $incomplete*[nomatch-ok]
    }
  }
}
set edit:completion:arg-completer[%(prog_name)s] = $%(complete_func)s~
"""


def _line(item: CompletionItem) -> str:
    return f"{item.type}\t{item.value}\t{item.help or ''}"


class PowerShellComplete(ShellComplete):
    """PowerShell's native argument completer on click's protocol."""

    name = "powershell"
    source_template = _SOURCE_POWERSHELL

    def get_completion_args(self) -> tuple[list[str], str]:
        words = split_arg_string(os.environ.get("COMP_WORDS", ""))
        incomplete = os.environ.get("COMP_CWORD", "")
        if incomplete and words and words[-1] == incomplete:
            words = words[:-1]
        return words[1:], incomplete

    def format_completion(self, item: CompletionItem) -> str:
        return _line(item)


class ElvishComplete(ShellComplete):
    """Elvish's arg-completer on click's protocol."""

    name = "elvish"
    source_template = _SOURCE_ELVISH

    def get_completion_args(self) -> tuple[list[str], str]:
        words = os.environ.get("COMP_WORDS", "").split("\n")
        return words[1:-1], words[-1] if len(words) > 1 else ""

    def format_completion(self, item: CompletionItem) -> str:
        return _line(item)


add_completion_class(PowerShellComplete)
add_completion_class(ElvishComplete)


@click.command("completions")
@click.argument("shell", type=click.Choice(SHELLS))
def completions(shell: str) -> None:
    """Print the completion script for SHELL, e.g. `zlayer completions bash > /etc/bash_completion.d/zlayer`."""
    from click.shell_completion import get_completion_class

    from zlayer.cli.main import cli

    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - registered above
        raise click.UsageError(f"unsupported shell {shell}")
    click.echo(cls(cli, {}, "zlayer", "_ZLAYER_COMPLETE").source())
