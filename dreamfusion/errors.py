"""User-facing errors: the CLI prints their message on one line and exits with status 2."""


class UserError(Exception):
    """Something the user can fix: bad input, a missing model, an unwritable folder."""

    run_dir = None
    """The run folder the error happened in, when one had been made (the CLI prints it as its last line)."""


class ConfigError(UserError):
    """An unknown config key, a wrong type or an out-of-range value."""


class ModelNotFoundError(UserError):
    """A guidance model that is neither a local folder nor reachable on the hub."""


class CheckpointError(UserError):
    """A resume folder with no checkpoint, or one that cannot be read."""


class WriteError(UserError):
    """A file of the run could not be written (a full disk, no permission); its previous version is intact."""
