"""The errors that the data, checkpoint and training code raise for a user's mistake (not a bug).

Each message is one line naming the file (and the object or entry in it) or the setting at fault;
the CLI prints it as is: ``ConfigError`` exits with code 2 (a usage error), ``DataError`` and
``CheckpointError`` with code 1 (bad input data).
"""

__all__ = ["CheckpointError", "ConfigError", "DataError", "OpIndexError", "OpTypeError", "OpValueError", "one_line"]


class OpValueError(ValueError, RuntimeError):
    """A bad argument value of an op (a shape, a device, a threshold). It is also a
    ``RuntimeError``: torchvision's ops (whose drop-ins these are) raise ``RuntimeError`` for the
    same mistakes, so ``except RuntimeError`` written for torchvision still catches it."""


class OpTypeError(TypeError, RuntimeError):
    """A bad argument type or dtype of an op; also a ``RuntimeError``, as :class:`OpValueError`."""


class OpIndexError(IndexError, RuntimeError):
    """A class label outside ``[0, num_classes)`` where torchvision fails with an ``IndexError``
    (an accelerated RetinaNet's targets); also a ``RuntimeError``."""


class ConfigError(ValueError):
    """Settings that cannot work together or are out of range (``--batch-size 0``, ``--classes``
    with the shapes set, ``--amp-dtype fp16`` on CPU, ...)."""


class DataError(ValueError):
    """A dataset file that is missing or malformed: an image that does not open, an annotation
    file that does not parse, a box or label that is not valid. The message names the file and,
    where there is one, the object or annotation."""

    def __init__(self, message: str):
        # A DataLoader worker re-raises as DataError("Caught DataError in DataLoader worker process 0.
        # \nOriginal Traceback ...\nfocalops.errors.DataError: <message>"): keep the one line that matters.
        marker = f"{__name__}.DataError: "
        if "\n" in message and marker in message:
            message = message.rsplit(marker, 1)[1].strip()
        super().__init__(message)


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, corrupted (content digest mismatch), holds Python
    objects other than tensors and plain values, or does not describe a focalops model."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception's message on one line (its lines joined, cut at ``limit`` characters), or its
    type name when it has none: for wrapping a library's error into one of the above."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
