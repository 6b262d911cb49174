"""Everything MLflow: opening and ending runs, params, batched metrics, artifacts, checkpoints, run references.

Tracking goes wherever MLflow's own default or ``MLFLOW_TRACKING_URI`` points; pgen never sets
a store of its own. Inside ``mlflow run`` the shell passes ``MLFLOW_RUN_ID`` as ``attach_id`` and
pgen continues that run instead of opening a second one.

Checkpoints are ``torch.save`` files of tensors and plain values only, read back with
``torch.load(weights_only=True)``; on a local artifact store they are written in place
atomically (temporary file + rename), elsewhere uploaded as one object.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import urllib.parse
import urllib.request
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from pgen.errors import PgenError, first_line

KIND = "train"
PREVIOUS = "previous.pt"  # the last.pt before the current one (local stores): the fallback of a resume
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call


def client() -> mlflow.MlflowClient:
    return mlflow.MlflowClient()


# --------------------------------------------------------------------------- runs


def start(*, attach_id: str | None = None, resume_id: str | None = None, experiment: str | None = None,
          run_name: str | None = None, tags: Mapping[str, str] | None = None) -> str:
    """Open (or re-open) the run and make it active; returns its id."""
    if attach_id and resume_id and attach_id != resume_id:
        raise PgenError(f"--resume {resume_id} inside `mlflow run` (run {attach_id}): resume with `pgen train` directly")
    run_id = attach_id or resume_id
    if run_id:
        run = mlflow.start_run(run_id=run_id)
        if run_name and not resume_id:
            mlflow.set_tag("mlflow.runName", run_name)
    else:
        if experiment:
            mlflow.set_experiment(experiment)
        run = mlflow.start_run(run_name=run_name, nested=mlflow.active_run() is not None)  # a tune trial under its parent
    if tags:
        mlflow.set_tags(dict(tags))
    _ARTIFACT_URIS[run.info.run_id] = run.info.artifact_uri
    return run.info.run_id


def end(status: str, error: str | None = None) -> None:
    """End the active run as FINISHED, FAILED (with ``pgen.error``) or KILLED."""
    if mlflow.active_run() is None:
        return
    try:
        if error:
            mlflow.set_tag("pgen.error", error[:5000])
    finally:
        mlflow.end_run(status=status)


@contextmanager
def ending_on_error(*, plain: tuple[type[BaseException], ...] = ()) -> Iterator[None]:
    """End the active run by how the block fails: KILLED on Ctrl-C, FAILED with the error as the
    ``pgen.error`` tag on any exception (the message alone for the ``plain`` types), re-raising.
    A block that completes leaves the run open for the caller to end with its own status."""
    try:
        yield
    except KeyboardInterrupt:
        end("KILLED", "interrupted")
        raise
    except plain as e:
        end("FAILED", str(e))
        raise
    except BaseException as e:
        end("FAILED", f"{type(e).__name__}: {e}")
        raise


def log_params(run_id: str, params: Mapping[str, Any]) -> None:
    """Log params once; on a resumed run the ones already there stay (MLflow params are immutable)."""
    existing = client().get_run(run_id).data.params
    new = [Param(k, _param_text(v)) for k, v in params.items() if k not in existing]
    changed = {k: _param_text(v) for k, v in params.items() if k in existing and existing[k] != _param_text(v)}
    for i in range(0, len(new), 100):
        client().log_batch(run_id, params=new[i : i + 100])
    if changed:  # e.g. more epochs on resume: the latest value as a tag
        client().log_batch(run_id, tags=[RunTag(f"pgen.resumed.{k}", v) for k, v in changed.items()])


def _param_text(v: Any) -> str:
    return "" if v is None else str(v)


class MetricLog:
    """Buffers metrics and sends them in batches (one call per ``flush``, not one per value)."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.buffer: list[Metric] = []

    def add(self, values: Mapping[str, float], step: int) -> None:
        ts = int(time.time() * 1000)
        self.buffer.extend(Metric(k, float(v), ts, int(step)) for k, v in values.items())

    def flush(self) -> None:
        while self.buffer:  # a chunk leaves the buffer only once it is logged
            client().log_batch(self.run_id, metrics=self.buffer[:MAX_BATCH])
            self.buffer = self.buffer[MAX_BATCH:]


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def log_grid(rgb, epoch: int) -> None:
    """The epoch's sample grid, as MLflow's image series ``samples``."""
    mlflow.log_image(rgb, key="samples", step=epoch, synchronous=True)  # no async queue to drain at the run's end


def log_dataset(file: str | os.PathLike, *, name: str, split: str, n: int, image_shape: tuple[int, ...], dtype: str,
                digest: str, context: str) -> None:
    """Record a split as the run's input: source = the file, a content digest, the shape as schema."""
    import numpy as np
    from mlflow.data import from_numpy

    # a zero-stride stand-in carries the shape and dtype without reading the images
    features = np.broadcast_to(np.zeros((), dtype=np.dtype(dtype)), (n, *image_shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = from_numpy(features, source=str(Path(file).resolve()), name=f"{name}:{split}", digest=digest)
        for attempt in range(3):
            try:
                mlflow.log_input(ds, context=context)
                break
            except MlflowException as e:
                # two processes (e.g. `pgen tune` workers) logging the same new dataset at once: MLflow's
                # check-then-insert loses the race in one of them; the dataset exists on the next try
                if "UNIQUE constraint" not in str(e) and "Duplicate entry" not in str(e) and "duplicate key" not in str(e):
                    raise
                if attempt == 2:
                    raise
                time.sleep(0.1 * (attempt + 1))


def file_digest(path: str | os.PathLike, *, full_below: int = 2 * 1024**3) -> str:
    """SHA-256 of the file (of its size, first and last 64 MiB beyond ``full_below`` bytes), 16 hex digits."""
    p = Path(path)
    size = p.stat().st_size
    h = hashlib.sha256()
    with open(p, "rb") as f:
        if size <= full_below:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        else:
            h.update(str(size).encode())
            h.update(f.read(1 << 26))
            f.seek(-(1 << 26), os.SEEK_END)
            h.update(f.read())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- checkpoints


_ARTIFACT_URIS: dict[str, str] = {}  # run id -> artifact URI (fixed for a run's life: no server call once known)


def _local_artifact_dir(run_id: str) -> Path | None:
    uri = _ARTIFACT_URIS.get(run_id)
    if uri is None:
        uri = _ARTIFACT_URIS[run_id] = client().get_run(run_id).info.artifact_uri
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(urllib.request.url2pathname(parsed.path))
    if len(parsed.scheme) == 1:  # a Windows drive letter
        return Path(uri)
    return None


def save_checkpoint(run_id: str, name: str, payload: Mapping[str, Any]) -> None:
    """Write ``checkpoints/<name>`` atomically (a crash never leaves a half-written checkpoint)."""
    import torch

    local = _local_artifact_dir(run_id)
    # a local store: in place; a remote one: a local copy first (it survives the server going away), then the upload
    folder = local / "checkpoints" if local is not None else spool_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp-{os.getpid()}"
    try:
        torch.save(dict(payload), tmp)
        if local is not None and name == "last.pt" and (folder / name).exists():  # the previous good one stays as a fallback
            os.replace(folder / name, folder / PREVIOUS)
        os.replace(tmp, folder / name)
    finally:
        tmp.unlink(missing_ok=True)
    if local is None:
        client().log_artifact(run_id, str(folder / name), "checkpoints")


def spool_dir(run_id: str) -> Path:
    """Where checkpoints of a run on a remote tracking server are also kept locally."""
    from pgen.data.builtin import cache_dir

    return cache_dir() / "runs" / run_id / "checkpoints"


def _spooled(run_id: str, name: str) -> dict | None:
    import torch

    path = spool_dir(run_id) / name
    if _local_artifact_dir(run_id) is not None or not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt local copy is no fallback
        return None
    return payload if isinstance(payload, dict) and payload.get("format") == "pgen-checkpoint" else None


def load_resumable(run_id: str, warn=None) -> dict:
    """The checkpoint to resume from: ``last.pt``, or the one before it (``previous.pt``) when
    ``last.pt`` is missing or corrupt, saying so through ``warn``; a PgenError when neither loads."""
    local = _spooled(run_id, "last.pt")
    try:
        payload = load_checkpoint(run_id, "last.pt")
        if local is not None and (local["epoch"], local["batch"]) > (payload["epoch"], payload["batch"]):
            raise PgenError("the server holds an older checkpoint")
        return payload
    except PgenError as last_error:
        if local is not None:  # the server lost or never got the newest checkpoint: this machine's copy
            if warn is not None:
                warn(f"warning: run {run_id}: resuming from this machine's copy of checkpoints/last.pt "
                     f"({spool_dir(run_id)}; epoch {local['epoch']}, batch {local['batch']}): {last_error}")
            return local
        try:
            payload = load_checkpoint(run_id, PREVIOUS)
        except PgenError:
            raise last_error from None
        if warn is not None:
            warn(f"warning: run {run_id}: checkpoints/last.pt is missing, corrupt or unsafe to load; resuming from the "
                 f"checkpoint before it (epoch {payload.get('epoch')}, batch {payload.get('batch')})")
        return payload


def load_checkpoint(run_id: str, name: str = "last.pt") -> dict:
    """A run's checkpoint as a dict of tensors and plain values; anything else is a PgenError."""
    import torch

    with tempfile.TemporaryDirectory() as d:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"checkpoints/{name}", dst_path=d)
        except (MlflowException, OSError):
            raise PgenError(f"run {run_id} has no checkpoints/{name} (it stopped before its first checkpoint); start a new run") from None
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - corrupt zip, truncated file or pickled objects
            raise PgenError(
                f"run {run_id}: checkpoints/{name} is corrupt or holds pickled objects pgen will not load ({first_line(e)[:200]}); "
                "resume from another run or start a new one"
            ) from None
    if not isinstance(payload, dict) or payload.get("format") != "pgen-checkpoint":
        raise PgenError(f"run {run_id}: checkpoints/{name} is not a pgen checkpoint; resume from another run or start a new one")
    return payload


# --------------------------------------------------------------------------- a tracking server that goes away


def remote() -> bool:
    return mlflow.get_tracking_uri().startswith(("http://", "https://"))


class Outage:
    """Tracking calls during training that survive the tracking server going away.

    With a remote server (http/https), `call` runs a logging call and, when the server cannot
    be reached (after MLflow's own HTTP retries), warns once, counts what was held back and lets
    training go on: metrics stay buffered in their `MetricLog` and go with the next flush,
    checkpoints stay in `spool_dir`. `finish` ends the run, retrying with back-off for
    ``PGEN_TRACKING_GRACE_S`` seconds (default 300); if the server never answers it raises a
    PgenError that says what was not logged and where the weights are. A local store raises at once.
    """

    def __init__(self, run_id: str, warn=None):
        self.run_id, self.warn = run_id, warn or (lambda message: None)
        self.down: str | None = None
        self.missed: dict[str, int] = {}

    def call(self, what: str, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - sorted below: only an unreachable server is survivable
            if not remote() or not _unreachable(e):
                raise
            if self.down is None:
                self.warn(f"warning: tracking server {mlflow.get_tracking_uri()} unreachable ({first_line(e)[:160]}); "
                          "training goes on, metrics held back, checkpoints kept in " + str(spool_dir(self.run_id)))
            self.down = what
            self.missed[what] = self.missed.get(what, 0) + 1
            return False
        if self.down is not None:
            self.warn(f"tracking server reachable again: held-back {what} logged")
            self.down = None
        return True

    def finish(self, status: str, log: "MetricLog | None" = None, grace: float | None = None) -> None:
        grace = float(os.environ.get("PGEN_TRACKING_GRACE_S", 300)) if grace is None else grace
        deadline, wait = time.monotonic() + grace, 1.0
        while True:
            try:
                if log is not None:
                    log.flush()
                if self.missed.get("checkpoint") and (spool_dir(self.run_id) / "last.pt").exists():
                    client().log_artifact(self.run_id, str(spool_dir(self.run_id) / "last.pt"), "checkpoints")
                    self.missed.pop("checkpoint")
                end(status)
                if self.down is not None:
                    self.warn("tracking server reachable again: the run is complete on it")
                return
            except Exception as e:  # noqa: BLE001
                if not remote() or not _unreachable(e):
                    raise
                if time.monotonic() + wait > deadline:
                    held = len(log.buffer) if log is not None else 0
                    lost = [f"{held} metric values"] if held else []
                    lost += [f"{n} {what} call(s)" for what, n in self.missed.items() if what != "metrics"]
                    raise PgenError(
                        f"training ended {status}, but the tracking server {mlflow.get_tracking_uri()} stayed unreachable "
                        f"for {grace:.0f} s: not logged: {', '.join(lost) or 'the run end'}; run {self.run_id} still shows "
                        f"RUNNING there. The weights are in {spool_dir(self.run_id) / 'last.pt'}: once the server is back, "
                        f"`pgen train ... --resume {self.run_id}` continues from them") from None
                if self.down is None:
                    self.warn(f"warning: tracking server unreachable at the end of training ({first_line(e)[:160]}); "
                              f"retrying for up to {grace:.0f} s")
                    self.down = "end"
                time.sleep(wait)
                wait = min(wait * 2, 30.0)


def _unreachable(e: BaseException) -> bool:
    """An error that means the server could not be reached or answered 5xx, not a bad request."""
    import requests

    if isinstance(e, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)):
        return True
    text = str(e)
    return isinstance(e, MlflowException) and any(s in text for s in (
        "Max retries exceeded", "Connection refused", "ConnectionError", "Failed to establish", "timed out",
        "Read timed out", "502", "503", "504", "too many 500 error responses"))


# --------------------------------------------------------------------------- run references


def process_tags() -> dict[str, str]:
    """Who trains a run: ``pgen.host`` and ``pgen.pid``, so a later resume can tell a dead job from a live one."""
    import socket

    return {"pgen.host": socket.gethostname(), "pgen.pid": str(os.getpid())}


def close_if_stale(run, warn=None) -> None:
    """A resumed run still shown RUNNING: refuse while its process lives on this host, else mark it
    KILLED (its process died without ending it: SIGKILL, pre-emption, a lost node) before resuming."""
    import socket

    if run.info.status != "RUNNING":
        return
    host, pid = run.data.tags.get("pgen.host"), run.data.tags.get("pgen.pid", "")
    if host == socket.gethostname() and pid.isdigit() and alive(int(pid)) and int(pid) != os.getpid():
        raise PgenError(f"run {run.info.run_id} is still being trained by process {pid} on this machine; "
                        "stop it first (Ctrl-C checkpoints it), then resume")
    client().set_terminated(run.info.run_id, "KILLED")
    client().set_tag(run.info.run_id, "pgen.stale", f"left RUNNING by process {pid or '?'} on {host or '?'}; marked KILLED on resume")
    if warn is not None:
        warn(f"run {run.info.run_id} was left RUNNING by process {pid or '?'} on {host or '?'}, which is gone: marked KILLED, resuming")


def alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine is still running (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_run(ref: str):
    """A run from a reference: a run id, ``EXPERIMENT:latest`` or ``EXPERIMENT:best`` (lowest ``val.loss``)."""
    c = client()
    if ":" in ref:
        name, which = ref.rsplit(":", 1)
        if which not in ("latest", "best"):
            raise PgenError(f"run reference '{ref}': use a run id, EXPERIMENT:latest or EXPERIMENT:best")
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise PgenError(f"run reference '{ref}': no experiment named '{name}'")
        runs = c.search_runs([exp.experiment_id], filter_string=f"tags.`pgen.kind` = '{KIND}'",
                             order_by=["attributes.start_time DESC"], max_results=5000)
        if which == "best":
            runs = sorted((r for r in runs if "val.loss" in r.data.metrics), key=lambda r: r.data.metrics["val.loss"])
        if not runs:
            raise PgenError(f"run reference '{ref}': experiment '{name}' has no training runs" + (" with a val.loss" if which == "best" else ""))
        return runs[0]
    try:
        run = c.get_run(ref)
    except MlflowException:
        raise PgenError(f"run reference '{ref}': no such run in {mlflow.get_tracking_uri()}") from None
    if run.info.lifecycle_stage == "deleted":
        raise PgenError(f"run reference '{ref}': the run is deleted")
    kind = run.data.tags.get("pgen.kind")
    if kind != KIND:
        raise PgenError(f"run reference '{ref}': a {kind or 'non-pgen'} run, not a training run")
    return run


def read_text(run_id: str, artifact_file: str) -> str:
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_file}")
    except (MlflowException, OSError):
        raise PgenError(f"run {run_id} has no {artifact_file}") from None


# --------------------------------------------------------------------------- the generator as a model


def pip_requirements() -> list[str]:
    import numpy
    import torch

    return [f"torch=={torch.__version__.split('+')[0]}", f"numpy=={numpy.__version__}", f"mlflow=={mlflow.__version__}"]


def log_generator(net_state: Mapping[str, Any], config_flat: Mapping[str, Any], image_shape: tuple[int, ...]) -> str:
    """Log the generator (or VAE) as the pyfunc model ``generator``; returns its model URI.

    Input: ``[[n]]`` (a number of samples) or latent vectors ``[N, latent_dim]``, any numeric dtype;
    output: images ``[N, H, W]`` (``[N, C, H, W]``) float32 in stored units; param ``seed``.
    """
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import ParamSchema, ParamSpec, Schema, TensorSpec

    import pgen

    shape = tuple(image_shape[1:]) if image_shape[0] == 1 else tuple(image_shape)
    signature = ModelSignature(
        inputs=None,  # [[n]] or [N, latent_dim] of any numeric dtype: checked by the model itself
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *shape))]),
        params=ParamSchema([ParamSpec("seed", "long", 0)]),
    )

    package = Path(pgen.__file__).parent
    with tempfile.TemporaryDirectory() as d:
        weights = Path(d) / "generator.pt"
        torch.save({"config": dict(config_flat), "net": dict(net_state)}, weights)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            info = mlflow.pyfunc.log_model(
                name="generator",
                python_model=str(package / "models" / "pyfunc.py"),
                artifacts={"weights": str(weights)},
                code_paths=[str(package)],
                pip_requirements=pip_requirements(),
                signature=signature,
            )
    mlflow.set_tag("pgen.model_uri", info.model_uri)
    return info.model_uri
