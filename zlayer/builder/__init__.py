"""Building images: Dockerfiles (and ZImagefiles) run step by step on zlayer's own runtime.

Public names:

- :func:`parse_dockerfile`: a Dockerfile's text → :class:`Dockerfile` (typed instructions with file:line).
- :class:`Builder` (``Builder(store, work_dir, progress).build(BuildOptions(...))``, async): run a build into the
  local :class:`~zlayer.images.ImageStore`; :class:`Progress` is what it reports as it goes.
"""

from zlayer.builder.dockerfile import Dockerfile, Instruction, Stage
from zlayer.builder.dockerfile import parse as parse_dockerfile
from zlayer.builder.executor import Builder, BuildError, BuildOptions, Progress, QuietProgress

__all__ = [
    "BuildError",
    "BuildOptions",
    "Builder",
    "Dockerfile",
    "Instruction",
    "Progress",
    "QuietProgress",
    "Stage",
    "parse_dockerfile",
]
