"""`python -m agent` runs the CLI, as the zipapp does."""

from agent.cli import main

if __name__ == "__main__":
    main()
