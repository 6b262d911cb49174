"""Optuna studies over any model: each trial is one ordinary training run (`pgen.train.run`).

The objective, ``--objective`` (default ``val.loss``: the VAE's negative ELBO, the GANs'
``val.score + val.collapse``, `pgen evaluate`'s summary score plus a mode-collapse penalty), is
any validation metric of the model's runs (``steps.VAL_METRICS``), minimised unless
``--direction maximize``. Each trial reports it every epoch, so the pruner can stop a
poor trial early: the trial ends PRUNED in Optuna and its MLflow run KILLED with the tag
``pgen.trial_state=PRUNED``.

MLflow: one parent run per `pgen tune` invocation (``pgen.kind=tune``); each trial is a nested
training run with the tags ``pgen.trial`` and ``pgen.trial_state``. The parent logs ``best.value``,
``best.<param>`` and ``best_params.json`` as they improve, and Optuna's plots at the end.

Storage: any URL Optuna accepts (default ``sqlite:///optuna.db`` in the current folder; RDB
storages get a heartbeat, so a trial of a killed worker is failed and retried once), or a path
ending in ``.log`` / ``.journal`` for a journal file. Workers sharing a storage and a study name
share the study; ``trials`` caps the study's total of finished and running trials.
"""

from __future__ import annotations

import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from pgen import config
from pgen.errors import PgenError, first_line
from pgen.search_space import PARAMS, Space, overrides_of, read_space

DEFAULT_STORAGE = "sqlite:///optuna.db"
OBJECTIVE = "val.loss"  # the default objective
DIRECTIONS = ("minimize", "maximize")
LOSS_METRIC = {"gan": "val.score + val.collapse", "dcgan": "val.score + val.collapse", "vae": "val.nelbo"}  # what val.loss is for each model
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")


# --------------------------------------------------------------------------- storage


def redact(url: str) -> str:
    """The URL with any password replaced by ***."""
    return re.sub(r"(://[^/:@]*:)[^@/]*@", r"\1***@", url)


def _password(url: str) -> str | None:
    m = re.search(r"://[^/:@]*:([^@/]*)@", url)
    return m.group(1) if m and m.group(1) else None


def open_storage(url: str, *, heartbeat: bool = True):
    """An Optuna storage for a URL or a journal file path; problems are one PgenError line, the password hidden."""
    import optuna

    shown = redact(url)
    if "://" not in url:
        if not url.endswith((".log", ".journal")):
            raise PgenError(f"--storage {shown}: not a storage URL; use e.g. sqlite:///optuna.db, "
                            "postgresql://user:pass@host/db or a journal file path ending in .log or .journal")
        from optuna.storages.journal import JournalFileBackend

        path = Path(url)
        if not path.parent.is_dir():
            raise PgenError(f"--storage {shown}: folder {path.parent} does not exist")
        try:
            return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
        except Exception as e:  # noqa: BLE001 - any problem opening the file is the user's to fix
            raise PgenError(f"--storage {shown}: cannot open the journal file ({_storage_error(e, url)})") from None
    import warnings

    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # heartbeats are marked experimental
            kwargs: dict[str, Any] = {}
            if heartbeat:  # a killed worker's trial is failed after the grace period and retried once
                kwargs = {"heartbeat_interval": 10, "grace_period": 30,
                          "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
            return RDBStorage(url, **kwargs)
    except Exception as e:  # noqa: BLE001 - sqlalchemy's ArgumentError, OperationalError, a missing driver, ...
        raise PgenError(f"--storage {shown}: cannot open it ({_storage_error(e, url)}); check the URL, the server and its driver") from None


def _storage_error(e: BaseException, url: str) -> str:
    text = first_line(e)[:300]
    if isinstance(e, ImportError) and isinstance(e.__cause__ or e.__context__, ImportError):  # name the missing driver
        text += f" ({e.__cause__ or e.__context__})"

    secret = _password(url)
    if secret:
        text = text.replace(secret, "***")
    return f"{type(e).__name__}: {text}" if text != type(e).__name__ else text


def check_objective(family: str, objective: str, direction: str) -> None:
    from pgen import steps

    if direction not in DIRECTIONS:
        raise PgenError(f"--direction must be minimize or maximize, got '{direction}'")
    known = steps.VAL_METRICS.get(family, ("loss",))
    if not objective.startswith("val.") or objective[4:] not in known:
        raise PgenError(f"--objective '{objective}' is not a validation metric of {family} runs; "
                        f"choose one of {', '.join('val.' + k for k in known)}")


def load_or_create(storage, name: str, family: str, *, objective: str = OBJECTIVE, direction: str = "minimize",
                   sampler=None, pruner=None, create: bool = True):
    """The study named ``name``; an existing one must optimise the same objective, the same way, of the same model."""
    import optuna

    existing = {s.study_name: s for s in optuna.study.get_all_study_summaries(storage, include_best_trial=False)}
    summary = existing.get(name)
    if summary is not None:
        was = "minimises" if summary.direction == optuna.study.StudyDirection.MINIMIZE else "maximises"
        if was[:6] != direction[:6]:
            raise PgenError(f"study '{name}' exists and {was} its objective, not --direction {direction}: "
                            "pick another --study name")
        model = summary.user_attrs.get("model")
        if model is not None and model != family:
            raise PgenError(f"study '{name}' tunes model '{model}', not '{family}'; use `pgen tune {model}` or another --study name")
        recorded = summary.user_attrs.get("objective")
        if recorded is not None and recorded != objective:
            raise PgenError(f"study '{name}' {was} '{recorded}', not {objective}; pass --objective {recorded} "
                            "or pick another --study name")
        metric, wanted = summary.user_attrs.get("loss_metric"), LOSS_METRIC.get(family)
        if objective == OBJECTIVE and model is not None and metric != wanted and not (metric is None and family == "vae"):
            ranked = metric or "the GANs' former sample distance"
            raise PgenError(f"study '{name}' ranked its trials by {ranked}, not "
                            f"{wanted}: the values do not compare; pick another --study name")
    elif not create:
        names = ", ".join(sorted(existing)) or "none"
        raise PgenError(f"no study named '{name}' in this storage (it has: {names})")
    study = optuna.create_study(study_name=name, storage=storage, direction=direction, sampler=sampler, pruner=pruner,
                                load_if_exists=True)
    if "model" not in study.user_attrs:
        study.set_user_attr("model", family)
        study.set_user_attr("objective", objective)
        if family in LOSS_METRIC and objective == OBJECTIVE:
            study.set_user_attr("loss_metric", LOSS_METRIC[family])
    return study


# --------------------------------------------------------------------------- one tuning session


@dataclass
class Outcome:
    study: str
    parent_run_id: str | None
    ran: int  # trials this invocation ran
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    command: str | None
    objective: str = OBJECTIVE


def _counted(study, before: int | None = None) -> int:
    """Trials that count towards --trials: finished or running, not surplus (numbered below ``before``)."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return sum(1 for t in study.get_trials(deepcopy=False, states=states)
               if not t.user_attrs.get("pgen.surplus") and (before is None or t.number < before))


def _train_args(family: str, config_file, overrides: Mapping[str, Any]) -> list[str]:
    flags = {"data.path": "--data", "train.epochs": "--epochs", "train.batch_size": "--batch-size", "train.seed": "--seed",
             "train.device": "--device"}
    args = ["pgen", "train", family]
    if config_file:
        args += ["--config", str(Path(config_file).resolve())]
    for key, flag in flags.items():
        value = overrides.get(key)
        if value is not None:  # files as absolute paths: the command works from any folder
            args += [flag, str(Path(value).resolve()) if key == "data.path" and Path(str(value)).is_file() else str(value)]
    return args


def command_for(study, trial) -> str:
    import shlex

    args = list(study.user_attrs.get("train_args") or ["pgen", "train", study.user_attrs.get("model", "MODEL")])
    for name, value in trial.params.items():
        flag = PARAMS.get(name, (None, f"--{name.replace('_', '-')}"))[1]
        if flag in args:  # a tuned param wins over a common flag (e.g. --batch-size)
            i = args.index(flag)
            del args[i : i + 2]
        args += [flag, repr(value) if isinstance(value, float) else str(value)]  # exact: the retrain reproduces the trial
    return shlex.join(args)


def run(
    family: str,
    *,
    trials: int,
    study_name: str | None = None,
    storage: str = DEFAULT_STORAGE,
    timeout: float | None = None,
    pruner: str = "median",
    sampler: str = "tpe",
    objective: str = OBJECTIVE,
    direction: str = "minimize",
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    experiment: str | None = None,
    attach_run_id: str | None = None,
    echo=print,
) -> Outcome:
    """Run trials of study ``study_name`` until it holds ``trials`` trials (or ``timeout`` seconds pass)."""
    import optuna

    from pgen import tracking, train
    from pgen.data import builtin

    if family not in config.FAMILIES:
        raise PgenError(f"unknown model '{family}'; choose one of {', '.join(config.FAMILIES)}")
    if trials < 1:
        raise PgenError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise PgenError(f"--timeout must be > 0 seconds, got {timeout}")
    if pruner not in PRUNERS:
        raise PgenError(f"--pruner must be one of {', '.join(PRUNERS)}, got '{pruner}'")
    if sampler not in SAMPLERS:
        raise PgenError(f"--sampler must be one of {', '.join(SAMPLERS)}, got '{sampler}'")
    check_objective(family, objective, direction)
    key = objective[len("val."):]
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    space = read_space(family, config_file)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # pgen prints one line per trial
    store = open_storage(storage)
    # the base config and every range's ends must be valid before anything is started
    file_values = config.read_toml(config_file) if config_file else {}
    base = config.build(family, file_values, overrides, source=str(config_file) if config_file else "flags")
    for d in space.dims:
        for v in (d.choices or (d.low, d.high)):
            config.build(family, file_values, {**overrides, **overrides_of({d.name: v})}, source=f"[tune] {d.name} = {v!r}")
    path = builtin.resolve(base.data.path)
    base = config.complete(base, train.data_facts(path))
    train.resolve_device(base.train.device)
    name = study_name or f"{family}-{train.dataset_name(base)}"

    epochs = base.train.epochs
    pruner_obj = {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=space.settings["startup_trials"],
                                                      n_warmup_steps=space.settings["warmup_epochs"]),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3),
        "none": lambda: optuna.pruners.NopPruner(),
    }[pruner]()
    study = load_or_create(store, name, family, objective=objective, direction=direction, pruner=pruner_obj)
    _retry_orphans(study, store)
    seed = (base.train.seed * 1_000_003 + len(study.get_trials(deepcopy=False))) % 2**32
    study.sampler = optuna.samplers.TPESampler(seed=seed) if sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    if "train_args" not in study.user_attrs:
        study.set_user_attr("train_args", _train_args(family, config_file, overrides))
    if _counted(study) >= trials:
        echo(f"study '{name}' already holds {_counted(study)} trials (--trials {trials}); raise --trials to add more")
        return _outcome(study, name, None, 0)

    tags = {"pgen.kind": "tune", "pgen.model": family, "pgen.dataset": train.dataset_name(base), "pgen.study": name}
    parent = tracking.start(attach_id=attach_run_id, experiment=None if attach_run_id else experiment,
                            run_name=None if attach_run_id else f"tune-{name}", tags=tags)
    client = tracking.client()
    ran = 0
    sign = 1.0 if direction == "minimize" else -1.0  # sign * value: lower is better
    best = {"value": math.inf}
    with tracking.ending_on_error():
        tracking.log_params(parent, {"study": name, "storage": redact(storage), "sampler": sampler, "pruner": pruner,
                                     "trials": trials, "objective": objective, "direction": direction, "model": family,
                                     "space": json.dumps({d.name: list(d.choices) if d.choices else [d.low, d.high] for d in space.dims})})

        def run_trial(trial):
            nonlocal ran
            if _counted(study, before=trial.number) >= trials:  # another worker got there first
                trial.set_user_attr("pgen.surplus", True)
                study.stop()
                raise optuna.TrialPruned("surplus: the study already holds --trials trials")
            ran += 1
            trial.set_user_attr("pgen.worker", _worker())
            params = space.suggest(trial)
            pruned_at: list[int] = []

            def on_epoch(epoch: int, val: dict[str, float]) -> bool:
                trial.report(val[key], epoch)
                if epoch < epochs and trial.should_prune():  # a trial that trained every epoch completes
                    pruned_at.append(epoch)
                    return True
                return False

            run_tags = {"pgen.trial": str(trial.number), "pgen.trial_state": "RUNNING", "pgen.study": name}
            try:
                result = train.run(family, config_file=config_file, overrides={**overrides, **overrides_of(params)},
                                   run_name=f"{name}-trial-{trial.number}", on_epoch=on_epoch, tags=run_tags, progress=False)
            except PgenError as e:
                _mark(client, parent, trial.number, "FAIL")
                echo(f"trial {trial.number} FAIL: {e}")
                raise
            if result.status == "KILLED" and pruned_at:
                client.set_tag(result.run_id, "pgen.trial_state", "PRUNED")
                echo(f"trial {trial.number} PRUNED after epoch {pruned_at[0]}: {objective} {result.val[key]:.6g} {_fmt(params)}")
                raise optuna.TrialPruned(f"pruned after epoch {pruned_at[0]}")
            if result.status == "KILLED":  # Ctrl-C / SIGTERM: stop the whole session
                client.set_tag(result.run_id, "pgen.trial_state", "FAIL")
                raise KeyboardInterrupt
            client.set_tag(result.run_id, "pgen.trial_state", "COMPLETE")
            value = float(result.val[key])
            echo(f"trial {trial.number} COMPLETE: {objective} {value:.6g} {_fmt(params)}")
            return value

        def log_best(study_, frozen) -> None:
            try:
                bt = study_.best_trial
            except ValueError:
                return
            if bt.value is None or sign * bt.value >= best["value"]:
                return
            best["value"] = sign * bt.value
            metrics = {"best.value": bt.value, "best.trial": bt.number}
            metrics.update({f"best.{k}": float(v) for k, v in bt.params.items() if isinstance(v, (int, float))})
            log = tracking.MetricLog(parent)
            log.add(metrics, frozen.number)
            log.flush()
            client.log_text(parent, json.dumps({"trial": bt.number, "value": bt.value, "params": bt.params,
                                                "command": command_for(study_, bt)}, indent=2), "best_params.json")

        def cap(study_, frozen) -> None:
            if _counted(study_) >= trials:
                study_.stop()

        study.optimize(run_trial, n_trials=trials, timeout=timeout, catch=(PgenError,), callbacks=[cap, log_best],
                       gc_after_trial=False)
        _log_plots(client, parent, study, space)
    tracking.end("FINISHED")
    return _outcome(study, name, parent, ran)


def _worker() -> str:
    from pgen import tracking

    who = tracking.process_tags()
    return f"{who['pgen.host']}:{who['pgen.pid']}"


def _retry_orphans(study, storage) -> None:
    """Journal storages have no heartbeat: a RUNNING trial whose worker process on this host is gone
    (killed with SIGKILL, a crash) is marked FAIL and its parameters enqueued once more."""
    import optuna
    from optuna.trial import TrialState

    from pgen import tracking

    if not isinstance(storage, optuna.storages.JournalStorage):
        return  # RDB storages: the heartbeat fails and retries stale trials
    host = tracking.process_tags()["pgen.host"]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(t.user_attrs.get("pgen.worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or tracking.alive(int(pid)):
            continue  # another machine's worker, or one still running
        storage.set_trial_user_attr(t._trial_id, "pgen.fail_reason", f"worker {worker_host}:{pid} died mid-trial")
        if storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
            if "pgen.retry_of" not in t.user_attrs:  # retried once
                study.enqueue_trial(t.params, user_attrs={"pgen.retry_of": t.number}, skip_if_exists=False)


def _mark(client, parent: str, number: int, state: str) -> None:
    """Tag the trial's run (if it was started) with its final state."""
    runs = client.search_runs([client.get_run(parent).info.experiment_id],
                              filter_string=f"tags.`mlflow.parentRunId` = '{parent}' and tags.`pgen.trial` = '{number}'")
    for r in runs:
        client.set_tag(r.info.run_id, "pgen.trial_state", state)


def _fmt(params: Mapping[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()) + ")"


def _outcome(study, name: str, parent: str | None, ran: int) -> Outcome:
    objective = study.user_attrs.get("objective", OBJECTIVE)
    try:
        bt = study.best_trial
    except ValueError:
        return Outcome(name, parent, ran, None, None, {}, None, objective)
    return Outcome(name, parent, ran, bt.number, bt.value, dict(bt.params), command_for(study, bt), objective)


def _log_plots(client, parent: str, study, space: Space) -> None:
    """Optimisation history, parameter importances and the latent_dim x lr contour, as PNG artifacts."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as ovm

    notes: list[str] = []
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    names = [d.name for d in space.dims]
    lr = "lr" if "lr" in names else next((n for n in names if n.startswith("lr")), None)
    plots = [("optimization_history", lambda: ovm.plot_optimization_history(study))]
    if len(complete) >= 2 and len(names) >= 2:
        plots.append(("param_importances", lambda: ovm.plot_param_importances(study)))
    else:
        notes.append(f"param_importances skipped: {len(complete)} complete trial(s), at least 2 are needed")
    if "latent_dim" in names and lr and len(complete) >= 2:
        plots.append((f"contour_latent_dim_{lr}", lambda: ovm.plot_contour(study, params=["latent_dim", lr])))
    else:
        notes.append("contour skipped: needs latent_dim and a learning rate in the space and 2 complete trials")
    for title, draw in plots:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ax = draw()
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(8, 6)
            fig.tight_layout()
            client.log_figure(parent, fig, f"plots/{title}.png")
            plt.close(fig)
        except (ValueError, RuntimeError, ZeroDivisionError, optuna.exceptions.OptunaError) as e:
            notes.append(f"{title} skipped: {e}")
    if notes:
        client.set_tag(parent, "pgen.plots_note", "; ".join(notes)[:5000])
        client.log_text(parent, "\n".join(notes) + "\n", "plots/notes.txt")


# --------------------------------------------------------------------------- the best trial


def best(study_name: str, storage: str = DEFAULT_STORAGE) -> tuple[Any, str, str]:
    """(the study's best trial, the `pgen train` command that retrains it, the study's objective)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # pgen prints one line per trial
    store = open_storage(storage, heartbeat=False)
    names = {s.study_name for s in optuna.study.get_all_study_summaries(store, include_best_trial=False)}
    if study_name not in names:
        raise PgenError(f"no study named '{study_name}' in {redact(storage)} (it has: {', '.join(sorted(names)) or 'none'})")
    study = optuna.load_study(study_name=study_name, storage=store)
    try:
        bt = study.best_trial
    except ValueError:
        raise PgenError(f"study '{study_name}' has no complete trial yet; run `pgen tune` first") from None
    return bt, command_for(study, bt), study.user_attrs.get("objective", OBJECTIVE)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `pgen tune`")
