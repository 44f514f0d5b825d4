"""`depthvlm-train` for the resume tests, with one addition: the first argument N makes the run
SIGKILL its process group (start it in a session of its own) while it writes its N-th checkpoint
(0: never), after orbax created the step's temporary directory and before the commit."""

import os
import signal
import sys

from depthvlm_jax.train import checkpoint


def main() -> None:
  die_in_save = int(sys.argv.pop(1))
  saves = [0]
  get_state = checkpoint._IteratorState.get_state  # pylint: disable=protected-access

  def get_state_or_die(self):
    saves[0] += 1
    if saves[0] == die_in_save:
      os.killpg(os.getpgid(0), signal.SIGKILL)  # grain's worker processes too
    return get_state(self)

  checkpoint._IteratorState.get_state = get_state_or_die  # pylint: disable=protected-access
  from depthvlm_jax.cli import train  # pylint: disable=import-outside-toplevel
  train.run()


if __name__ == "__main__":
  main()
