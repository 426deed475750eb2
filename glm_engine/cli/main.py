"""Entry point of the ``glm-engine`` console script: one sub-command per module in this folder."""

from __future__ import annotations

import typer

from glm_engine.cli.backends import backends
from glm_engine.cli.bench import bench
from glm_engine.cli.chat import chat
from glm_engine.cli.conformance import conformance
from glm_engine.cli.convert import convert, convert_tp, quantize
from glm_engine.cli.evaluate import evaluate
from glm_engine.cli.export import export_app
from glm_engine.cli.interrupts import Interruptions
from glm_engine.cli.run import run
from glm_engine.cli.serve import serve

app = typer.Typer(
    name="glm-engine",
    help="Run GLM models (GLM-130B and family) on CPU, CUDA, ROCm/DCU, Ascend and TensorRT with the same answers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.command(name="run")(run)
app.command(name="backends")(backends)
app.command(name="chat")(chat)
app.command(name="convert-tp")(convert_tp)
app.command(name="convert")(convert)
app.command(name="quantize")(quantize)
app.add_typer(export_app, name="export")
app.command(name="conformance")(conformance)
app.command(name="evaluate")(evaluate)
app.command(name="bench")(bench)
app.command(name="serve")(serve)


def main() -> None:
    interruptions = Interruptions()
    interruptions.install()
    try:
        app()
    except SystemExit as exc:
        raise SystemExit(interruptions.exit_code(exc.code)) from None
    except KeyboardInterrupt:  # raised where typer does not map it to exit 130 (while it tears down)
        raise SystemExit(interruptions.exit_code(130)) from None
    finally:
        interruptions.uninstall()


if __name__ == "__main__":
    main()
