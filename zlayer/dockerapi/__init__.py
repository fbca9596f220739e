"""The Docker Engine API shim (``zlayer serve --docker-socket``): the ``docker`` CLI, Compose and docker-py drive the
node's standalone containers, images, networks and volumes through it."""

from zlayer.dockerapi.app import DEFAULT_SOCKET, DockerApi, DockerSocket

__all__ = ["DEFAULT_SOCKET", "DockerApi", "DockerSocket"]
