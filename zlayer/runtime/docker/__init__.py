"""The Docker workload driver (a dockerd through its Engine API)."""

from zlayer.runtime.docker.driver import DockerRuntime, docker_socket

__all__ = ["DockerRuntime", "docker_socket"]
