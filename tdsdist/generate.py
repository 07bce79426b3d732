"""`python -m tdsdist.generate ...`: the generation job's entry point under torchrun.

It takes the same arguments as `tdsdist generate` (`JOB=generate launch/torchrun.sh ...`).
Nothing imports it: the job itself is `tdsdist.jobs.generate`.
"""

from tdsdist.cli import entry, generate_command

if __name__ == "__main__":
    entry(generate_command, prog_name="python -m tdsdist.generate")
