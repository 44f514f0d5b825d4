"""How every console script runs: absl flags, and failures as one line on stderr.

A user error (bad flag, bad file, bad record, a destination that would be overwritten) prints
`PROG: error: WHAT` and exits with 2; anything else is a bug and exits with 1 saying so. The
traceback is printed only with --verbose, so the message is never buried under 60 lines.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from absl import app, flags

flags.DEFINE_bool("verbose", False, "On a failure, print the whole traceback, not only its one-line message.")
FLAGS = flags.FLAGS

USER_ERROR = 2
# Bad input reaches the library as one of these (RecordError, CheckpointError, OutputExistsError
# and JSON errors are subclasses); `app.UsageError` is a bad combination of flags.
USER_ERRORS = (app.UsageError, ValueError, OSError)


def _one_line(e: BaseException) -> str:
  text = str(e) or type(e).__name__
  return " ".join(text.split())


def _fail(message: str, code: int) -> None:
  print(f"{os.path.basename(sys.argv[0])}: error: {message}", file=sys.stderr, flush=True)
  sys.exit(code)


def _parse_flags(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as e:
    _fail(f"{_one_line(e)} (see --help)", USER_ERROR)
  except (AttributeError, KeyError) as e:  # ml_collections: a --config.KEY=VALUE override of no key
    overrides = [a.split("=")[0] for a in argv if a.startswith("--config.")]
    _fail(f"unknown config key {_one_line(e)} in {overrides}: an override must name a key of the config file",
          USER_ERROR)
  except (TypeError, ValueError) as e:  # ml_collections: a value of the wrong type, a bad config file
    _fail(f"bad --config: {_one_line(e)}", USER_ERROR)


def run(main: Callable[[list[str]], None]) -> None:
  """`app.run(main)` with the project's error contract."""

  def guarded(argv):
    try:
      main(argv)
    except USER_ERRORS as e:
      if FLAGS.verbose:
        traceback.print_exc()
      _fail(_one_line(e), USER_ERROR)
    except Exception as e:  # a bug: say so, and how to report it
      if FLAGS.verbose:
        traceback.print_exc()
      _fail(f"internal error {type(e).__name__}: {_one_line(e)} (rerun with --verbose and report the traceback)", 1)

  app.run(guarded, flags_parser=_parse_flags)
