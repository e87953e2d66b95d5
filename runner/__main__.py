"""python -m runner ARGS: the runner behind ./run_experiments.sh (which fixes CUDA_VISIBLE_DEVICES first)."""
import sys


def entry():
    if sys.version_info < (3, 11):
        sys.exit(f"run_experiments.sh: the runner needs Python 3.11 or later; '{sys.executable}' is "
                 f"{sys.version.split()[0]} (set --python or PYTHON, or run 'make env')")
    from runner.cli import main
    sys.exit(main())


if __name__ == "__main__":
    entry()
