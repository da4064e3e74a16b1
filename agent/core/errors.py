"""One exception root. Each class's docstring is its default message."""

from __future__ import annotations


class TrainyardError(Exception):
    """Trainyard failed."""

    status_code = 500

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class InvalidJobSpec(TrainyardError):
    """The job spec is not valid."""

    status_code = 422


class InvalidRequest(TrainyardError):
    """The request is not valid."""

    status_code = 400


class JobNotFound(TrainyardError):
    """No job has that id."""

    status_code = 404


class QueueFull(TrainyardError):
    """The queue is full; try again later."""

    status_code = 429


class InvalidTransition(TrainyardError):
    """The job is not in a state that allows this."""

    status_code = 409


class StaleState(TrainyardError):
    """Someone else changed the job first (compare-and-set lost)."""

    status_code = 409


class DatabaseUnavailable(TrainyardError):
    """The database cannot be reached."""

    status_code = 503


class RuntimeUnavailable(TrainyardError):
    """The Docker engine cannot be reached."""

    status_code = 503


class ContainerError(TrainyardError):
    """The Docker engine refused or failed an operation."""

    status_code = 502

    def __init__(self, message: str | None = None, *, permanent: bool = False) -> None:
        super().__init__(message)
        # permanent: the job can never run as written (missing image, bad command, no GPU runtime).
        self.permanent = permanent


class ImageNotFound(ContainerError):
    """The image does not exist on this host and cannot be pulled."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, permanent=True)


class PayloadTooLarge(TrainyardError):
    """The request body is larger than this service accepts."""

    status_code = 413


class NotFound(TrainyardError):
    """Nothing is there."""

    status_code = 404
