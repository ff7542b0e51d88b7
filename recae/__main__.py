"""``python -m recae`` runs the CLI (also how ``torchrun -m recae`` launches training)."""

from recae.cli import main

if __name__ == "__main__":
    main()
