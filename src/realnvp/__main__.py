"""``python -m realnvp`` runs the command line."""

from realnvp.cli import main

if __name__ == "__main__":
    main()
