"""Errors a user can cause: `main()` turns each into one `error: ...` line and exit code 1."""


class UserError(Exception):
    """A problem with the user's input or files, reported without a traceback."""


class DatasetError(UserError):
    """The dataset folder is missing, incomplete or holds files that are not CIFAR-10 batches."""


class PretrainedModelError(UserError):
    """The pretrained model file is missing or does not hold weights for `Net`."""


class RunDirectoryError(UserError):
    """The run directory cannot be created, resumed or finished as asked."""
