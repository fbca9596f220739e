"""Which module implements each top-level command.

One line per command: ``"name": ("module", "attribute", "one-line help")``. Modules are imported only when their
command runs (or when help lists them), so adding a command costs nothing at start-up.
"""

from __future__ import annotations

COMMANDS: dict[str, tuple[str, str, str]] = {
    "validate": ("zlayer.cli.validate", "validate", "Check a deployment spec and report every problem"),
    "spec": ("zlayer.cli.spec", "spec", "Inspect deployment specs (dump, schema)"),
    "completions": ("zlayer.cli.completions", "completions", "Print a shell completion script"),
}
