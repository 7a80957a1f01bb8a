"""What the subcommands share: the one-line error of a user's mistake and its exit status."""

import sys

EXIT_USER_ERROR = 2


def fail(message, status=EXIT_USER_ERROR):
    """Print `error: message` (one line on stderr); returns `status`, the exit status to give."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def run_guarded(function, user_errors, statuses=None, translate=None):
    """`(0, function())`, or `(status, None)` after one `error:` line when `function` made a user's
    mistake known by raising:

    - an instance of a type in `statuses` ({exception type: exit status}, looked at first);
    - one of `user_errors` (status 2);
    - any other exception for which `translate(error)` gives a message (status 2), e.g. a data
      check's ValueError that tf.data wrapped in an `OpError`.

    Anything else propagates (the dispatcher prints it, with the traceback behind --verbose).
    """
    try:
        return 0, function()
    except Exception as error:  # noqa: BLE001 - filtered below; the rest is raised again
        for error_type, status in (statuses or {}).items():
            if isinstance(error, error_type):
                return fail(str(error), status), None
        if isinstance(error, user_errors):
            return fail(str(error)), None
        message = translate(error) if translate is not None else None
        if message is None:
            raise
        return fail(message), None
