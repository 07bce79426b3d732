"""`python -m tdsdist.serve ...`: the service's entry point, what torchrun launches (the same
arguments as `tdsdist serve`). Nothing imports it: the service itself is `tdsdist.serve.run`."""

from tdsdist.cli import entry, serve_command

if __name__ == "__main__":
    entry(serve_command, prog_name="python -m tdsdist.serve")
