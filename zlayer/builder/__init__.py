"""Building images: Dockerfiles (and ZImagefiles) run step by step on zlayer's own runtime.

Public names:

- :func:`parse_dockerfile`: a Dockerfile's text → :class:`Dockerfile` (typed instructions with file:line).
- :class:`BuildOptions`, :func:`build` (async): run a build into the local :class:`~zlayer.images.ImageStore`.
"""

from zlayer.builder.dockerfile import Dockerfile, Instruction, Stage
from zlayer.builder.dockerfile import parse as parse_dockerfile

__all__ = ["Dockerfile", "Instruction", "Stage", "parse_dockerfile"]
