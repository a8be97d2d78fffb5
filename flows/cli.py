"""``unetflow``: one command per flow. Every command validates ``params.yaml`` (with ``--set``
overrides) before any work starts, so a typo is refused in a second, not after an hour. A command
that fails ends with one line, ``error: …`` (``unetflow --debug …`` shows the traceback)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

import flows  # noqa: F401  (telemetry off before Prefect is imported)
from flows.errors import cli_errors

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

ParamsOpt = Annotated[Path, typer.Option("--params", "-p", help="params.yaml to read (relative to --root).")]
SetOpt = Annotated[list[str] | None, typer.Option("--set", "-s", help="Override a key, e.g. train.epochs=3.")]
RootOpt = Annotated[Path, typer.Option("--root", help="Project folder (where data/ and outputs/ live).")]


def _checked(root: Path, params: Path, overrides: list[str] | None) -> dict[str, Any]:
    from tasks.config import ConfigError, load_params  # imports torch: not for `serve` or `--help`

    root = root.resolve()
    path = params if params.is_absolute() else root / params
    try:
        load_params(path, overrides or [])
    except ConfigError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    return {"root": str(root), "params_file": str(path), "overrides": overrides or []}


def _show(result: dict) -> None:
    typer.echo(json.dumps(result, indent=2, default=str))


@app.callback()
def _options(ctx: typer.Context, debug: Annotated[bool, typer.Option(
        "--debug", help="Show the full traceback of a failure (Prefect's and Python's), not one error line.")]
        = False) -> None:
    """Options for every command; the error handler wraps the command that follows."""
    ctx.with_resource(cli_errors(debug))


@app.command()
def demo(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None,
         n_train: int = 24, n_test: int = 4) -> None:
    """Write the embedded demo data, retrain, segment held-out images, print the test Dice."""
    from flows.demo import demo_flow

    demo_flow(**_checked(root, params, set), n_train=n_train, n_test=n_test)


@app.command()
def ingest(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None,
           strict: Annotated[bool, typer.Option(help="Fail when any case is rejected.")] = False) -> None:
    """Validate the raw inbox and write the canonical dataset."""
    from flows.ingest import ingest_flow

    _show(ingest_flow(**_checked(root, params, set), strict=strict))


@app.command()
def preprocess(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """Plan from the data; normalise cases; compute (cached) weight maps."""
    from flows.preprocess import preprocess_flow

    _show(preprocess_flow(**_checked(root, params, set)))


@app.command()
def train(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None,
          resume: Annotated[bool, typer.Option(help="Continue the last checkpoint's run.")] = False,
          nproc: Annotated[int, typer.Option(help="DDP processes via torchrun (GPUs, or CPU cores with gloo).")]
          = 1) -> None:
    """Train the configured network; log and register it in MLflow."""
    from flows.train import train_flow

    _show(train_flow(**_checked(root, params, set), resume=resume, nproc=nproc))


@app.command()
def evaluate(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """Test-set metrics of the trained model."""
    from flows.evaluate import evaluate_flow

    _show(evaluate_flow(**_checked(root, params, set)))


@app.command()
def infer(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None,
          model: Annotated[str | None, typer.Option(help="models:/NAME@alias, runs:/ID/model or a .pt file.")]
          = None,
          input: Annotated[str | None, typer.Option("--input", "-i", help="Folder of studies.")] = None,
          output: Annotated[str | None, typer.Option("--output", "-o", help="Folder for masks.")] = None,
          device: Annotated[str | None, typer.Option(help="auto, cpu or cuda (infer.device).")] = None,
          tta: Annotated[bool | None, typer.Option(help="Mirroring test-time augmentation.")] = None,
          cgm_threshold: Annotated[float | None, typer.Option(
              help="CGM post-filter: 'foreground present' probability below which it is dropped.")] = None,
          runner: Annotated[str | None, typer.Option(help="threads or dask (infer.runner).")] = None,
          workers: Annotated[int | None, typer.Option(help="Cases segmented at once.")] = None,
          trust_pickled_model: Annotated[bool, typer.Option(
              "--trust-pickled-model", help="Also load an older model version saved as a pickled PyTorch module "
              "(unpickling runs its code: only for a registry whose writers you trust).")] = False) -> None:
    """Segment a folder of new studies."""
    from flows.infer import infer_flow

    flags = {"device": device, "mirror_tta": tta, "cgm_threshold": cgm_threshold, "runner": runner,
             "workers": workers}
    overrides = [*(set or []), *(f"infer.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None)]
    _show(infer_flow(**_checked(root, params, overrides), model=model, input=input, output=output,
                     trust_pickled_model=trust_pickled_model))


@app.command("pacs-sync")
def pacs_sync(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None,
              url: Annotated[str | None, typer.Option(help="DICOMweb root, e.g. http://127.0.0.1:8042/dicom-web.")]
              = None,
              dimse: Annotated[str | None, typer.Option(help="DIMSE instead: HOST:PORT:AET of the PACS.")] = None,
              model: Annotated[str | None, typer.Option(help="models:/NAME@alias (default: the champion).")] = None,
              study_date: Annotated[str | None, typer.Option(help="YYYYMMDD-YYYYMMDD (inclusive).")] = None,
              recent_days: Annotated[int | None, typer.Option(help="Instead: studies of the last N days, today "
                                                                   "included.")] = None,
              modality: Annotated[str | None, typer.Option(help="Only series of this modality, e.g. CT.")] = None,
              series_description: Annotated[str | None, typer.Option(help="Only series whose description "
                                                                              "matches this regex.")] = None,
              trust_pickled_model: Annotated[bool, typer.Option(
                  "--trust-pickled-model", help="Also load an older, pickled model version (runs its code).")]
              = False) -> None:
    """Segment a PACS's new series and store a DICOM SEG and a volume report back into each study.

    Credentials: UNETFLOW_PACS_TOKEN, or UNETFLOW_PACS_USER + UNETFLOW_PACS_PASSWORD (never on the command line)."""
    from flows.infer import pacs_sync_flow

    flags = {"url": url, "dimse": dimse, "study_date": study_date, "recent_days": recent_days,
             "modality": modality, "series_description": series_description}
    overrides = [*(set or []), *(f"pacs.{k}={json.dumps(v)}" for k, v in flags.items() if v is not None)]
    # one transport or date filter on the command line replaces the one params.yaml names (both: the schema refuses)
    if bool(url) != bool(dimse):
        overrides.append(f"pacs.{'dimse' if url else 'url'}=null")
    if bool(study_date) != bool(recent_days):
        overrides.append(f"pacs.{'recent_days' if study_date else 'study_date'}=null")
    _show(pacs_sync_flow(**_checked(root, params, overrides), model=model, trust_pickled_model=trust_pickled_model))


@app.command()
def retrain(root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """ingest → preprocess → train → evaluate → promote the model if it beats the champion."""
    from flows.retrain import retrain_flow

    _show(retrain_flow(**_checked(root, params, set)))


@app.command()
def compare(variants: Annotated[str, typer.Option(help="Comma-separated networks, e.g. unet,unetpp,unet3p.")],
            root: RootOpt = Path("."), params: ParamsOpt = Path("params.yaml"), set: SetOpt = None) -> None:
    """Bake-off: train each variant on the same split, budget and seed; print one comparison table."""
    from flows.compare import compare_flow
    from monai_ext.networks import available_networks

    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in available_networks()]
    if unknown or not names:
        typer.secho(f"error: unknown variant(s) {unknown}; known: {', '.join(available_networks())}",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    _show(compare_flow(variants=names, **_checked(root, params, set)))


def _serving(call: Callable[[], int]) -> None:
    """Exit with the code of a tasks.serving call; its ServeError becomes `error: …` and exit 1."""
    from tasks.serving import ServeError

    try:
        code = call()
    except ServeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


@app.command()
def serve(root: RootOpt = Path("."),
          port: Annotated[int, typer.Option(help="Port of the Prefect server (API and dashboard).")] = 4200,
          host: Annotated[str, typer.Option(help="Address the server listens on.")] = "127.0.0.1",
          pool: Annotated[str, typer.Option(help="The work pool named in prefect.yaml.")] = "unetflow",
          startup_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server's /api/health.")]
          = 180.0,
          no_ui: Annotated[bool, typer.Option("--no-ui", help="API only (no Prefect dashboard).")] = False) -> None:
    """Prefect server on loopback + the deployments of prefect.yaml + a process worker, in the foreground.

    Stop with Ctrl-C or `unetflow serve-stop`: the worker stops before the server; schedules stay active.
    A dead worker is restarted; runs left without a live process are marked Crashed (slots freed).

    PIDs and logs: outputs/serve/ under --root."""
    from tasks.serving import serve as serve_deployments

    _serving(lambda: serve_deployments(root, host, port, pool, startup_timeout, ui=not no_ui))


@app.command()
def serve_stop(root: RootOpt = Path(".")) -> None:
    """Stop a running `unetflow serve` (worker first, then server) and every process it left, orphaned
    flow runs included, or what a killed one left running; says what it stopped."""
    from tasks.serving import stop

    _serving(lambda: stop(root))


@app.command("pacs-demo")
def pacs_demo(root: RootOpt = Path("."),
              http_port: Annotated[int, typer.Option(help="Orthanc's HTTP port (an Orthanc already there is used).")]
              = 8042,
              dicom_port: Annotated[int, typer.Option(help="Orthanc's DICOM port, when the demo starts it.")] = 4242,
              stop: Annotated[bool, typer.Option("--stop", help="Stop the Orthanc a pacs-demo left running.")]
              = False) -> None:
    """Try pacs-sync in two minutes: a local Orthanc (started in the background when none answers, left
    running), 3 synthetic CT series uploaded, a tiny CT model trained once (outputs/pacs-demo), then the sync.

    Open the Orthanc Explorer address it prints: the SEG and the volume report sit beside each study's images.
    `unetflow pacs-demo --stop` (make pacs-stop) stops the Orthanc it started."""
    import time

    from tasks.pacs import demo

    if stop:
        typer.echo(demo.stop_orthanc(root.resolve()))
        return
    clock = time.perf_counter()
    try:
        prepared = demo.prepare(root.resolve(), http_port, dicom_port, echo=typer.echo)
    except demo.DemoError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from None
    from flows.infer import pacs_sync_flow

    result = pacs_sync_flow(**_checked(prepared.project, prepared.params_file, None), model=str(prepared.model))
    typer.echo(demo.closing_words(prepared, result, time.perf_counter() - clock))


if __name__ == "__main__":
    app()
