"""`python -m regiongate` is the `regiongate` command."""

from regiongate.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
