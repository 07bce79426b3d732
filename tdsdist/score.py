"""`python -m tdsdist.score ...`: the scoring job's entry point, what torchrun launches.

It takes the same arguments as `tdsdist score` (every cluster script names this module, so it
stays here). Nothing imports it: the job itself is `tdsdist.jobs.score`.
"""

from tdsdist.cli import entry, score_command

if __name__ == "__main__":
    entry(score_command, prog_name="python -m tdsdist.score")
