"""`python -m worker ...`; import-safe, since LiveKit's job processes re-import the main module."""

from worker.cli import main

if __name__ == "__main__":
    main()
