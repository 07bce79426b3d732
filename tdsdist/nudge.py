"""`python -m tdsdist.nudge ...`: the nudging job's entry point under torchrun.

It takes the same arguments as `tdsdist nudge` (`JOB=nudge launch/torchrun.sh ...`).
Nothing imports it: the job itself is `tdsdist.jobs.nudge`.
"""

from tdsdist.cli import entry, nudge_command

if __name__ == "__main__":
    entry(nudge_command, prog_name="python -m tdsdist.nudge")
