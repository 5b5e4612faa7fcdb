"""The ``realnvp`` command line: a thin layer over the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import tomllib

__all__ = ["cli", "main"]

# Errors that mean "bad input": printed as one line, exit status 2, no traceback.
_USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, PermissionError,
                                                 IsADirectoryError, tomllib.TOMLDecodeError)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``realnvp`` console script and ``python -m realnvp``."""
    try:
        cli.main(args=argv, prog_name="realnvp", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except _USER_ERRORS as e:
        click.echo(f"Error: {_one_line(e)}", err=True)
        sys.exit(2)
    except RuntimeError as e:
        from realnvp.training import NonFiniteLossError  # loaded: training raised it

        if not isinstance(e, NonFiniteLossError):
            raise
        click.echo(f"Error: {_one_line(e)}", err=True)
        sys.exit(2)
    except OSError as e:
        click.echo(f"Error: {e.filename or ''}: {e.strerror or e}".replace(": : ", ": "), err=True)
        sys.exit(2)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="realnvp")
def cli() -> None:
    """Density estimation with RealNVP normalizing flows.

    Train a flow on a toy or your own table, then score, sample, evaluate and plot it.
    Start with `realnvp train` (two moons, about a minute on a laptop CPU).
    """


def _config_help(name: str) -> str:
    """A flag's help: the config field's text and its default (one source for both)."""
    from realnvp.training import TrainConfig

    default = getattr(TrainConfig(), name)
    if isinstance(default, tuple):
        default = ",".join(map(str, default))
    return f"{TrainConfig.fields_help()[name]} [default: {default}]"


@cli.command()
@click.option("--data", default="moons", show_default=True,
              help="A toy name (see `realnvp datasets`) or a CSV/TSV/NPY/Parquet file.")
@click.option("--columns", default=None, help="Columns of the file to use, by name or 0-based "
              "index, comma-separated (default: all).")
@click.option("--preset", type=click.Choice(["fast", "default", "accurate"]), default=None,
              help="A recipe chosen by measurement: fast, default or accurate.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="TOML file of options (same names as the flags, with "
              "underscores); flags given on the command line override it.")
@click.option("--steps", type=int, default=None, help=_config_help("steps"))
@click.option("--batch-size", type=int, default=None,
              help=_config_help("batch_size"))
@click.option("--lr", type=float, default=None, help=_config_help("lr"))
@click.option("--layers", type=int, default=None, help=_config_help("layers"))
@click.option("--hidden", default=None, help=_config_help("hidden") + " Comma-separated.")
@click.option("--coupling", type=click.Choice(["affine", "additive", "spline"]), default=None,
              help=_config_help("coupling"))
@click.option("--ensemble", type=int, default=None, help=_config_help("ensemble"))
@click.option("--seed", type=int, default=None, help=_config_help("seed"))
@click.option("--device", default=None, help=_config_help("device"))
@click.option("--n-train", type=int, default=None, help=_config_help("n_train"))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Run folder to write. [default: runs/<data name>]")
@click.option("--force", is_flag=True,
              help="Replace an existing run folder (one with a config.json; never other folders).")
@click.option("--resume", type=click.Path(path_type=Path), default=None,
              help="Continue the run in this folder from its last checkpoint.")
@click.option("--checkpoint-every", type=int, default=500, show_default=True,
              help="Write a resumable checkpoint every this many steps.")
@click.option("--no-plots", is_flag=True, help="Skip the pictures and the report.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def train(**opts: Any) -> None:
    """Train a RealNVP flow and write a run folder: model, config, metrics, pictures, report.

    With no options: two moons (scikit-learn make_moons, noise 0.05), standardised inside
    the flow, 32 affine couplings, under a minute on a laptop CPU.
    """
    from realnvp import commands

    commands.train(**opts)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("-n", "--n-samples", type=int, default=1000, show_default=True,
              help="Number of samples.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write to this file (.csv, .tsv, .npy, .parquet) instead of standard output.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--continuous", is_flag=True, help="Keep columns that were rounded in the "
              "training data continuous (default: round them back onto their grid).")
def sample(run: Path, n_samples: int, out: Path | None, seed: int, continuous: bool) -> None:
    """Draw samples from a trained model (a run folder or a model file)."""
    from realnvp import commands

    commands.sample(run, n_samples, out, seed, continuous)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--columns", default=None, help="Columns of FILE to score (default: the "
              "training columns when present, else all).")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="CSV to write (default: standard output).")
@click.option("--contamination", type=float, default=None,
              help="Expected fraction of outliers: adds an `outlier` column (1 for the "
              "lowest-density rows, threshold set on the run's validation data).")
@click.option("--chunk-rows", type=int, default=100_000, show_default=True,
              help="Rows scored at a time (bounds memory for huge files).")
def score(run: Path, file: Path, columns: str | None, out: Path | None,
          contamination: float | None, chunk_rows: int) -> None:
    """Log-density of every row of FILE under a trained model, in the data's units.

    Writes CSV: the input columns, then `log_prob` (and `outlier` with --contamination).
    """
    from realnvp import commands

    commands.score(run, file, columns, out, contamination, chunk_rows)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
@click.option("--data", default=None, help="Data to evaluate on (a toy name or a file); "
              "default: the run's own data (fresh samples for a toy, the held-out split for "
              "a file). A file given here is the test set, every row of it; the baselines "
              "still fit on the run's own training split.")
@click.option("--columns", default=None, help="Columns of the file to use (default: the "
              "training columns, by name, when the file has names; else by position).")
@click.option("--n-test", type=int, default=20000, show_default=True,
              help="Test rows drawn from a toy.")
@click.option("--no-baselines", is_flag=True, help="Skip the GaussianMixture/KDE baselines.")
def evaluate(run: Path, data: str | None, columns: str | None, n_test: int,
             no_baselines: bool) -> None:
    """Held-out NLL, bits/dim, calibration, the gap to the truth (toys) and baselines."""
    from realnvp import commands

    commands.evaluate(run, data, columns, n_test, no_baselines)


@cli.command()
@click.argument("run", type=click.Path(path_type=Path))
def plot(run: Path) -> None:
    """Redraw every picture of a run (and its report)."""
    from realnvp import commands

    commands.plot(run)


@cli.command()
def datasets() -> None:
    """List the toy data sets."""
    from realnvp.datasets import TOYS

    width = max(map(len, TOYS))
    for name, toy in TOYS.items():
        click.echo(f"{name:<{width}}  {toy.description}")


