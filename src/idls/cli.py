"""The ``idls`` command: list, explain, train-rts, attack, demo, run, report, reproduce.

User mistakes raise :class:`~idls.errors.UserError`; :func:`main` prints its one
line and exits with status 2 instead of showing a traceback.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from idls.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Attack and defend interpretable deep learning systems (classifier + interpreter).",
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # help texts escape rich markup ('idls\\[ray]'); typer's default mode changed across releases
)

def _show_version(value: bool) -> None:
    if value:
        from idls import __version__

        typer.echo(f"idls {__version__}")
        raise typer.Exit()


@app.callback()
def _main_options(
    version: Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """Attack and defend interpretable deep learning systems (classifier + interpreter)."""


# -- shared options ---------------------------------------------------------------------
ModelOpt = Annotated[str, typer.Option("--model", "-m", help="registered model name (see `idls list`)")]
WeightsOpt = Annotated[
    Optional[str],
    typer.Option(help="'pretrained', a torchvision weights name, a local checkpoint file, or 'random'"),
]
DataOpt = Annotated[
    Optional[str],
    typer.Option(help="'embedded', a folder with labels.csv or class sub-folders, or 'cifar10'"),
]
NOpt = Annotated[int, typer.Option("--n", help="number of correctly classified images to use")]
InterpOpt = Annotated[
    Optional[list[str]], typer.Option("--interpreter", "-i", help="interpreter name; repeat for several (default: all that apply)")
]
BatchOpt = Annotated[int, typer.Option(help="images per batch")]
DeviceOpt = Annotated[str, typer.Option(help="'cpu', 'cuda', 'cuda:1', ...")]
SeedOpt = Annotated[int, typer.Option(help="seed for data selection, targets and random starts")]
OutOpt = Annotated[Path, typer.Option(help="output directory")]
RtsOpt = Annotated[Optional[Path], typer.Option("--rts", help="trained RTS checkpoint (from `idls train-rts`)")]


def _device(name: str):
    from idls.devices import resolve_device

    return resolve_device(name)


def _classifier(model: str, weights: str | None, device):
    from idls.models import MODELS, create_model

    entry = MODELS.get(model)
    if weights is None:
        if entry.family == "embedded":
            weights = "pretrained"
        else:
            raise UserError(
                f"model {model!r} needs --weights (a checkpoint file, 'pretrained', or 'random' for random weights)"
            )
    return create_model(model, weights=None if weights == "random" else weights, device=device)


def _data(classifier, data: str | None, seed: int):
    """All images of ``--data`` (attacks select the correctly classified ones in the experiment engine)."""
    from idls.data.datasets import load_images

    if data is None:
        if not classifier.info.embedded:
            raise UserError(f"model {classifier.info.name!r} needs --data (a folder with labels.csv or class sub-folders)")
        data = "embedded"
    images = load_images(data, input_size=classifier.input_size, seed=seed)
    if int(images.labels.max()) >= classifier.num_classes:
        raise UserError(
            f"labels in {data!r} go up to {int(images.labels.max())} but {classifier.info.name} has "
            f"{classifier.num_classes} classes; use a model trained on these classes"
        )
    return images


def _default_interpreters(classifier, rts: Path | None) -> list[str]:
    """Every registered interpreter that can explain ``classifier`` (each one's ``unavailable_reason``)."""
    from idls.interpreters import interpreter_class, interpreters_in_order

    options = _interpreter_options(interpreters_in_order(), rts, None)
    return [name for name in interpreters_in_order()
            if interpreter_class(name).unavailable_reason(classifier, options.get(name, {})) is None]


def _interpreter_options(names: list[str], rts: Path | None, mask_iterations: int | None) -> dict:
    """Options of the command-line flags, for the interpreters that take them (``--rts``, ``--mask-iterations``)."""
    from idls.interpreters import interpreter_class

    options: dict = {name: {} for name in names}
    for name in names:
        accepted = inspect.signature(interpreter_class(name).__init__).parameters
        if rts is not None and "checkpoint" in accepted:
            options[name]["checkpoint"] = str(rts)
        if mask_iterations is not None and "iterations" in accepted:
            options[name]["iterations"] = mask_iterations
    return {name: values for name, values in options.items() if values}


def _check_attack_options(attack: str, options: dict, mode: str, interpreters: list[str] | None) -> None:
    """Build the attack once without a model, so that bad options fail before any loading or training."""
    from idls.attacks import create_attack
    from idls.runner import attack_needs_interpreter

    extra = {"interpreter": (interpreters or ["cam"])[0]} if attack_needs_interpreter(attack) else {}
    create_attack(attack, mode=mode, **extra, **options)


def _joint_options(attack: str, framework: str | None, target: str | None, mode: str) -> dict:
    """``framework`` / ``target_map`` options, for the attacks that declare them (refused with a hint otherwise)."""
    from idls.attacks import ATTACKS, list_frameworks
    from idls.attacks.base import attack_options
    from idls.attacks.target_maps import MAP_FILE_SUFFIXES, TARGET_MAP_KINDS

    accepted = set(attack_options(ATTACKS.get(attack)))  # unknown names fail here with the list of attacks
    on_frameworks = [name for name in ATTACKS.names() if "framework" in attack_options(ATTACKS.get(name))]
    options: dict = {}
    if "framework" in accepted:
        if framework is not None and framework not in list_frameworks():
            raise UserError(f"unknown --framework {framework!r}; choose one of: {', '.join(list_frameworks())}")
        options["framework"] = framework or "pgd"
    elif framework is not None and framework != attack:
        raise UserError(f"--framework applies to the attacks that run on another's optimiser "
                        f"({', '.join(on_frameworks)}); for a plain {framework} attack use --attack {framework}")
    if target is None:
        return options
    if "target_map" not in accepted:
        raise UserError(f"--target applies to the attacks that steer the map ({', '.join(on_frameworks)}); "
                        f"{attack} does not take a target map")
    if target not in TARGET_MAP_KINDS:
        path = Path(target)
        if path.suffix not in MAP_FILE_SUFFIXES:
            raise UserError(f"unknown --target {target!r}; choose one of: {', '.join(TARGET_MAP_KINDS)}, "
                            f"or a map file ({', '.join(MAP_FILE_SUFFIXES)})")
        if not path.is_file():
            raise UserError(f"--target map file {target} does not exist; check the path")
    options["target_map"] = target
    return options


def _check_fit_sources(attack: str, fit_data: str | None, perturbation: Path | None,
                       detectors: list[str] | None = None) -> None:
    """A fitted attack needs --fit-data or --perturbation (one of them); others take neither, unless a --detector
    is fitted here. Checked before loading."""
    from idls.attacks import ATTACKS

    fitted_detectors = [d for d in detectors or [] if not d.endswith(".safetensors")]
    if fitted_detectors and fit_data is None:
        raise UserError(f"--detector {fitted_detectors[0]} is fitted on training images: pass --fit-data FOLDER, or "
                        "give a detector file from `idls detector fit`")
    if ATTACKS.get(attack).needs_fit:
        if fit_data is None and perturbation is None:
            raise UserError(f"attack {attack!r} is fitted on a data set before it is applied: pass --fit-data FOLDER "
                            "(training images, not the evaluation images), or --perturbation FILE to reuse a fitted one")
        if fit_data is not None and perturbation is not None:
            raise UserError("give --fit-data (fit a new perturbation) or --perturbation (reuse one), not both")
    elif perturbation is not None or (fit_data is not None and not fitted_detectors):
        raise UserError(f"--fit-data and --perturbation apply to universal attacks (fitted once, then applied); "
                        f"{attack} attacks each image on its own")


def _default_mode(attack: str) -> str:
    from idls.attacks import ATTACKS

    return ATTACKS.get(attack).Options.default("mode").value


_EXPONENT_NUMBER = r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+"


def _exponent_floats(value):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; make such strings (also inside lists) floats."""
    import re

    if isinstance(value, str) and re.fullmatch(_EXPONENT_NUMBER, value.strip()):
        return float(value)
    if isinstance(value, list):
        return [_exponent_floats(v) for v in value]
    return value


def _key_values(pairs: list[str], flag: str = "--option") -> dict:
    """``['lam=10', 'label_smoothing=[0.9, 0.99]']`` -> ``{'lam': 10, 'label_smoothing': [0.9, 0.99]}`` (YAML values;
    ``1e-4`` is a number)."""
    import yaml

    options: dict = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {pair!r} is not KEY=VALUE; write e.g. {flag} lam=10")
        try:
            value = _exponent_floats(yaml.safe_load(text))
        except yaml.YAMLError:
            raise UserError(f"{flag} {pair!r}: cannot read the value {text!r}; use a number, true/false, "
                            "a word or a list like [0.9, 0.99]") from None
        options[key.strip().replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return options


# -- commands ---------------------------------------------------------------------------
@app.command("list")
def list_command() -> None:
    """List registered models, interpreters and attacks."""
    from rich.console import Console
    from rich.table import Table

    from idls.attacks import list_attacks
    from idls.defenses import list_defenses
    from idls.defenses.detectors import list_detectors
    from idls.defenses.training import list_objectives
    from idls.interpreters import list_interpreters
    from idls.models import MODELS

    console = Console()
    table = Table(title="models")
    for col in ("name", "input", "classes", "weights", "description"):
        table.add_column(col)
    for name in MODELS.names():
        e = MODELS.get(name)
        table.add_row(name, f"{e.input_size}px", str(e.num_classes), ", ".join(e.weights_names), e.description)
    console.print(table)
    console.print("interpreters: " + ", ".join(list_interpreters()))
    console.print("attacks: " + ", ".join(list_attacks()) + "  (options: `idls options ATTACK`)")
    console.print("defences (--defense): " + ", ".join(list_defenses()))
    console.print("detectors (--detector, `idls detector fit`): " + ", ".join(list_detectors())
                  + "  (options: `idls options DETECTOR`)")
    console.print("training objectives (`idls train`): " + ", ".join(list_objectives())
                  + "  (options: `idls options OBJECTIVE`)")


@app.command("options")
def options_command(
    attack: Annotated[Optional[str], typer.Argument(help="attack, detector or training objective name, or 'aid' "
                                                          "(default: every attack)")] = None,
) -> None:
    """List an attack's, a detector's, a training objective's or AID's options with their defaults (the names
    -o KEY=VALUE and experiment files take)."""
    from rich.console import Console
    from rich.table import Table

    from idls.attacks import ATTACKS, list_attacks
    from idls.attacks.reference import option_rows
    from idls.defenses.aid import DEFENSE_NAME as AID_NAME
    from idls.defenses.aid import AIDOptions
    from idls.defenses.detectors import DETECTORS
    from idls.defenses.training import OBJECTIVES, TrainingOptions

    names = [attack] if attack else list_attacks()
    for name in names:
        if name not in DETECTORS and name not in OBJECTIVES and name != AID_NAME:
            ATTACKS.get(name)  # unknown names: one line with the list of attacks
    console = Console()
    for name in names:
        table = Table(title=name)
        for col in ("option", "default", "meaning"):
            table.add_column(col)
        if name in DETECTORS:
            rows = DETECTORS.get(name).Options.describe()
        elif name in OBJECTIVES:  # the objective's own options, then the training loop's
            rows = OBJECTIVES.get(name).Options.describe() + TrainingOptions.describe()
        elif name == AID_NAME:  # `idls train-rts --aid --aid-option KEY=VALUE`
            rows = AIDOptions.describe()
        else:
            rows = option_rows(name)
        for row in rows:
            table.add_row(*row)
        console.print(table)


@app.command()
def explain(
    model: ModelOpt = "embedded_cnn",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    n: NOpt = 8,
    interpreter: InterpOpt = None,
    rts: RtsOpt = None,
    batch_size: BatchOpt = 32,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    out: OutOpt = Path("runs/explain"),
) -> None:
    """Compute attribution maps; write maps.safetensors and PNG overlays."""
    import torch
    from safetensors.torch import save_file

    from idls.report.figures import overlay_png
    from idls.runner import build_interpreters

    classifier = _classifier(model, weights, _device(device))
    images = _data(classifier, data, seed)
    images_x = images.images[:n].to(classifier.device)
    names = interpreter or _default_interpreters(classifier, rts)
    interpreters = build_interpreters(classifier, names, _interpreter_options(names, rts, None))
    out.mkdir(parents=True, exist_ok=True)
    preds = classifier.predict(images_x)
    tensors = {"images": images_x.cpu().contiguous(), "pred": preds.cpu()}
    for name, interp in interpreters.items():
        maps = torch.cat([interp.attribute(c) for c in images_x.split(batch_size)])
        tensors[f"map/{name}"] = maps.cpu().contiguous()
        for i in range(maps.shape[0]):
            title = f"{name}: {classifier.info.class_name(int(preds[i]))}"
            (out / f"{i:04d}_{name}.png").write_bytes(overlay_png(images_x[i], maps[i], title))
    save_file(tensors, str(out / "maps.safetensors"))
    typer.echo(f"wrote maps of {len(interpreters)} interpreters for {images_x.shape[0]} images to {out}")


@app.command("train-rts")
def train_rts_command(
    model: ModelOpt = "embedded_cnn",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    n: Annotated[int, typer.Option("--n", help="training images (0 = all)")] = 0,
    epochs: Annotated[Optional[int], typer.Option(help="training epochs (default 10; with --aid: AID's epochs "
                                                       "option)")] = None,
    batch_size: Annotated[Optional[int], typer.Option(help="images per batch (default 64; with --aid: AID's "
                                                           "batch_size option)")] = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    init: Annotated[Optional[Path], typer.Option("--init", help="a trained RTS checkpoint to start from "
                                                                "(fine-tuning; needed by --aid)")] = None,
    aid: Annotated[bool, typer.Option("--aid", help="adversarial interpretation distillation (paper 001): "
                                                    "fine-tune the --init masker against ADV²")] = False,
    aid_option: Annotated[Optional[list[str]], typer.Option(
        "--aid-option", help="an AID option as KEY=VALUE (e.g. --aid-option attack_steps=10; list: "
                             "`idls options aid`)")] = None,
    out: Annotated[Path, typer.Option(help="checkpoint path (.safetensors); a killed run resumes from "
                                           "OUT.checkpoint.safetensors when run again")] = Path("runs/rts.safetensors"),
) -> None:
    """Train the RTS masking model for a classifier (two phases: class selector, then decoder), or fine-tune one
    with AID (--aid --init FILE)."""
    from idls.interpreters.rts_training import load_rts, read_rts_metadata, save_rts, train_rts

    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: RTS checkpoints are .safetensors files, e.g. --out runs/rts.safetensors")
    if aid_option and not aid:
        raise UserError("--aid-option configures AID; add --aid (and --init FILE)")
    aid_values = _key_values(aid_option or [], "--aid-option")
    if aid:
        from idls.defenses.aid import aid_options

        for name, value in (("epochs", epochs), ("batch_size", batch_size)):
            if value is not None:
                if name in aid_values:
                    raise UserError(f"--{name.replace('_', '-')} and --aid-option {name}= both set AID's {name}; "
                                    "give one")
                aid_values[name] = value
        aid_values.setdefault("seed", seed)
        options = aid_options(**aid_values)  # bad options fail before any loading
        if init is None:
            raise UserError("--aid fine-tunes a trained masker: train one with `idls train-rts --out base.safetensors` "
                            "and pass --init base.safetensors")
    classifier = _classifier(model, weights, _device(device))
    initial = None if init is None else load_rts(classifier, init)
    images = _data(classifier, data, seed)
    x, y = (images.images, images.labels) if n <= 0 else (images.images[:n], images.labels[:n])
    x, y = x.to(classifier.device), y.to(classifier.device)
    checkpoint = out.with_name(out.stem + ".checkpoint.safetensors")
    extra = None
    if aid:
        from idls.defenses.aid import aid_metadata, train_aid

        masker = train_aid(classifier, initial, x, y, options, checkpoint=checkpoint)
        extra = aid_metadata(options)
    else:
        masker = train_rts(classifier, x, y, epochs=10 if epochs is None else epochs,
                           batch_size=64 if batch_size is None else batch_size, seed=seed, initial=initial,
                           checkpoint=checkpoint)
    if init is not None:
        extra = {**(extra or {}), "init": {"path": str(init), "tensors_sha256": read_rts_metadata(init)["tensors_sha256"]}}
    save_rts(masker, out, extra=extra)
    typer.echo(f"saved {'AID-trained ' if aid else ''}RTS for {model} to {out}")


@app.command()
def attack(
    attack: Annotated[str, typer.Option(help="attack name (see `idls list`)")] = "pgd",
    model: ModelOpt = "embedded_cnn",
    weights: WeightsOpt = None,
    data: DataOpt = None,
    n: NOpt = 64,
    interpreter: InterpOpt = None,
    rts: RtsOpt = None,
    epsilon: Annotated[Optional[float], typer.Option(help="perturbation budget on the [0,1] pixel scale (PGD default 8/255)")] = None,
    step_size: Annotated[Optional[float], typer.Option(help="step size (default: the attack's)")] = None,
    steps: Annotated[Optional[int], typer.Option(help="iterations (default: the attack's)")] = None,
    norm: Annotated[Optional[str], typer.Option(help="linf or l2 (PGD)")] = None,
    mode: Annotated[Optional[str], typer.Option(help="targeted, untargeted or least_likely (default: the "
                                                     "attack's: targeted, universal attacks untargeted)")] = None,
    random_start: Annotated[Optional[bool], typer.Option(help="start from a random point in the ball (PGD)")] = None,
    mask_iterations: Annotated[Optional[int], typer.Option(help="MASK optimisation steps")] = None,
    framework: Annotated[
        Optional[str], typer.Option(help="joint attacks: the optimiser underneath, pgd (default), cw or stadv")
    ] = None,
    target: Annotated[
        Optional[str],
        typer.Option(help="joint attacks: the map to keep, benign (default), patch, other-class, or a map FILE "
                          "(.safetensors/.pt: one h x w map, or one per image)"),
    ] = None,
    option: Annotated[
        Optional[list[str]],
        typer.Option("--option", "-o", help="any other attack option as KEY=VALUE (e.g. -o lam=10 -o warm_start=50); "
                                            "repeat for several (`idls options ATTACK` lists them)"),
    ] = None,
    fit_data: Annotated[
        Optional[str], typer.Option(help="universal attacks: images to fit the perturbation on (a folder, or "
                                         "embedded-train); never the evaluation images")
    ] = None,
    fit_n: Annotated[Optional[int], typer.Option(help="how many --fit-data images (default: all)")] = None,
    perturbation: Annotated[
        Optional[Path], typer.Option(help="universal attacks: apply this fitted perturbation instead of fitting")
    ] = None,
    defense: Annotated[
        Optional[str], typer.Option(help="attack the classifier behind an input defence: NAME or NAME:KEY=VALUE,... "
                                         "(e.g. bit-depth:bits=4; see `idls list`)")
    ] = None,
    detector: Annotated[
        Optional[list[str]], typer.Option(help="guard the system with a detector: a file from `idls detector fit`, or "
                                               "NAME[:KEY=VALUE,...] fitted here on --fit-data; repeat for several")
    ] = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    backend: Annotated[str, typer.Option(help="'local' (this process) or 'ray' (a Ray cluster; pip install "
                                              "'idls\\[ray]')")] = "local",
    out: OutOpt = Path("runs/attack"),
) -> None:
    """Attack correctly classified images; write results.jsonl, summary.json and report.html.

    Plain attacks (pgd, cw, stadv) fool the classifier; joint attacks (adv2, advedge, advedge+) also keep
    each interpreter's map close to a target map and run once per interpreter. The run is an experiment
    of its own (the same store as `idls run`: records.jsonl, done.jsonl, tensors/; the same --out resumes).
    """
    from idls.analysis.store_reader import load_store
    from idls.evaluate import group_summaries
    from idls.experiments import run_experiment
    from idls.experiments.config import experiment_from_mapping
    from idls.report.experiment_report import write_experiment_report
    from idls.runner import write_json, write_records

    if epsilon is not None and not 0 < epsilon <= 1:
        raise UserError(f"--epsilon {epsilon} is outside (0, 1]; it is on the [0,1] pixel scale (8/255 = 0.031)")
    mode = mode or _default_mode(attack)
    _check_fit_sources(attack, fit_data, perturbation, detector)
    given = {"epsilon": epsilon, "norm": norm, "random_start": random_start, "step_size": step_size, "steps": steps}
    options = {key: value for key, value in given.items() if value is not None}
    options.update(_joint_options(attack, framework, target, mode))
    options.update(_key_values(option or []))
    if perturbation is not None:
        if not perturbation.is_file():
            raise UserError(f"--perturbation {perturbation} does not exist; give a file saved by a universal attack "
                            "(DIR/universal.safetensors)")
        options["perturbation"] = str(perturbation.resolve())
    _check_attack_options(attack, options, mode, interpreter)
    if fit_data is not None and data is not None and \
            Path(fit_data).expanduser().resolve() == Path(data).expanduser().resolve():
        raise UserError(f"--fit-data and --data are the same ({fit_data}); fit on training images and evaluate "
                        "on held-out ones")
    config = _attack_experiment(attack, options, mode=mode, model=model, weights=weights, data=data, n=n,
                                interpreter=interpreter, rts=rts, mask_iterations=mask_iterations, fit_data=fit_data,
                                fit_n=fit_n, defense=defense, batch_size=batch_size, device=device, seed=seed)
    if detector:
        config["detectors"] = [_detector_entry(spec) for spec in detector]
    try:
        experiment = experiment_from_mapping(config, default_name="attack")
    except UserError as exc:
        raise UserError(_in_flag_terms(str(exc))) from None
    summary = run_experiment(experiment, out, backend=backend)
    records = [r for r in load_store(out).records if r.get("kind") == "attack"]
    per_attack = group_summaries(records)
    write_records(out / "results.jsonl", records)
    n_images = len({r["image_id"] for r in records})
    write_json(out / "summary.json", {"model": model, "attacks": per_attack,
                                      "config": {"n": n_images, "mode": mode, "attack": attack, **options}})
    _copy_fitted(out)
    write_experiment_report(out)
    _print_summary(per_attack)
    typer.echo(f"wrote {len(records)} records, summary.json and report.html to {out} "
               f"({summary.units_run} batches run, {summary.units_skipped} resumed)")


def _attack_experiment(attack: str, options: dict, *, mode: str, model: str, weights: str | None, data: str | None,
                       n: int, interpreter: list[str] | None, rts: Path | None, mask_iterations: int | None,
                       fit_data: str | None, fit_n: int | None, defense: str | None, batch_size: int, device: str,
                       seed: int) -> dict:
    """`idls attack` as an experiment of one cell per attacked interpreter (the one orchestrator of idls run)."""
    from idls.interpreters import interpreters_in_order
    from idls.models import MODELS

    _device(device)  # a device that does not exist fails here, with its own message
    embedded = MODELS.get(model).family == "embedded"
    if weights is None and not embedded:
        raise UserError(f"model {model!r} needs --weights (a checkpoint file, 'pretrained', or 'random' for random "
                        "weights)")
    if data is None and not embedded:
        raise UserError(f"model {model!r} needs --data (a folder with labels.csv or class sub-folders)")
    names = list(interpreter or interpreters_in_order())
    options = dict(options)
    grid = {"frameworks": [options.pop("framework")] if "framework" in options else ["pgd"],
            "targets": [options.pop("target_map")] if "target_map" in options else ["benign"]}
    model_entry: dict = {"name": model, "weights": weights or "pretrained",
                         "interpreter_options": _interpreter_options(names, rts, mask_iterations)}
    if defense is not None:
        model_entry["defense"] = defense
    data_section: dict = {"source": data or "embedded", "n": n, "batch_size": batch_size, "shuffle": False,
                          "seed": seed}
    if fit_data is not None:
        data_section["fit_source"] = fit_data
        if fit_n is not None:
            data_section["fit_n"] = fit_n
    return {"name": f"attack-{attack}", "models": [model_entry], "data": data_section, "interpreters": names,
            "attacks": [{"name": attack, "options": options}], "mode": mode, "seeds": [seed], "device": device,
            **grid}


def _detector_entry(spec: str) -> dict:
    """``--detector FILE`` or ``NAME[:KEY=VALUE,...]`` -> a ``detectors:`` entry of the experiment."""
    if spec.endswith(".safetensors"):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"--detector {spec}: no such file; fit one with `idls detector fit`")
        return {"path": str(path.resolve())}
    name, _, rest = spec.partition(":")
    return {"name": name.strip(), "options": _key_values([p for p in rest.split(",") if p.strip()])}


#: experiment-file keys and the `idls attack` flags that set them (for error messages)
_FLAG_OF_KEY = (("data.fit_source", "--fit-data"), ("data.fit_n", "--fit-n"), ("data.source", "--data"),
                ("data.n", "--n"), ("data.batch_size", "--batch-size"), ("models[0].weights", "--weights"),
                ("models[0].defense", "--defense"), ("models[0].name", "--model"), ("attacks[0].options.", "-o "),
                ("attacks[0]", "--attack"), ("interpreters", "--interpreter"), ("targets[0]", "--target"),
                ("frameworks", "--framework"), ("detectors", "--detector"), (" (relative paths are relative to the experiment file)", ""))


def _in_flag_terms(message: str) -> str:
    """An experiment-configuration error worded with the command-line flags the user typed."""
    for key, flag in _FLAG_OF_KEY:
        message = message.replace(key, flag)
    return message


def _copy_fitted(out: Path) -> None:
    """The fitted artifact of a one-attack run also as OUT/universal.safetensors (+ .json), for --perturbation."""
    import shutil

    from idls.experiments.execute import FITTED_DIR
    from idls.runner import UNIVERSAL_FILE

    fitted = sorted((out / FITTED_DIR).glob("*.safetensors"))
    if len(fitted) == 1:
        shutil.copyfile(fitted[0], out / UNIVERSAL_FILE)
        sidecar = fitted[0].with_name(fitted[0].name + ".json")
        if sidecar.is_file():
            shutil.copyfile(sidecar, out / (UNIVERSAL_FILE + ".json"))


detector_app = typer.Typer(no_args_is_help=True, help="Fit detectors of adversarial inputs (saved, then used with "
                                                         "`idls attack --detector FILE` or an experiment's detectors:).")
app.add_typer(detector_app, name="detector")


@detector_app.command("fit")
def detector_fit_command(
    name: Annotated[str, typer.Argument(help="detector name (see `idls list`; options: `idls options NAME`)")],
    fit_data: Annotated[str, typer.Option(help="training images to fit on: a folder with labels.csv or class "
                                               "sub-folders, or embedded-train")],
    model: ModelOpt = "embedded_cnn",
    weights: WeightsOpt = None,
    fit_n: Annotated[Optional[int], typer.Option(help="how many --fit-data images (a seeded subset; default: all)")] = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="detector option KEY=VALUE "
                                                                               "(e.g. -o fpr=0.05)")] = None,
    fit_attack: Annotated[Optional[str], typer.Option(help="supervised detectors: the attack that makes the "
                                                           "adversarial fit images (e.g. pgd, adv2)")] = None,
    fit_attack_option: Annotated[Optional[list[str]], typer.Option(help="an option of --fit-attack, KEY=VALUE")] = None,
    interpreter: Annotated[Optional[str], typer.Option("--interpreter", "-i", help="the interpreter a joint "
                                                                                   "--fit-attack attacks")] = None,
    rts: RtsOpt = None,
    batch_size: BatchOpt = 64,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option(help="the fitted detector (.safetensors; metadata beside it as .json)")]
        = Path("runs/detector.safetensors"),
) -> None:
    """Fit a detector on training images (and adversarial ones for supervised detectors) and save it."""
    from idls.attacks import create_attack
    from idls.data.datasets import load_images, select_correct
    from idls.defenses.detectors import create_detector
    from idls.experiments.detector_fit import adversarial_fit_images
    from idls.interpreters import create_interpreter

    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: a detector is saved as a .safetensors file, e.g. --out runs/fs.safetensors")
    detector = create_detector(name, **_key_values(option or []))
    if detector.needs_adversarial and fit_attack is None:
        raise UserError(f"detector {name!r} is supervised: name the attack that makes its adversarial fit images, "
                        "e.g. --fit-attack pgd")
    classifier = _classifier(model, weights, _device(device))
    images = load_images(fit_data, input_size=classifier.input_size, n=fit_n, seed=seed,
                         num_classes=classifier.num_classes)
    benign, adversarial = images.images, None
    if detector.needs_adversarial:
        extra = {}
        if interpreter is not None:
            options = _interpreter_options([interpreter], rts, None).get(interpreter, {})
            extra["interpreter"] = create_interpreter(interpreter, classifier, **options)
        attack = create_attack(str(fit_attack), seed=seed, **extra, **_key_values(fit_attack_option or []))
        correct = select_correct(classifier, images, len(images))
        adversarial = adversarial_fit_images(classifier, attack, correct.images, correct.labels,
                                             batch_size=batch_size, label=name)
        benign = correct.images
    device_ = classifier.device
    detector.fit(classifier, benign.to(device_), None if adversarial is None else adversarial.to(device_),
                 progress=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    detector.save(out)
    flagged = float(detector.flag(benign.to(device_)).float().mean())
    typer.echo(f"fitted {detector.describe()} on {benign.shape[0]} benign"
               + ("" if adversarial is None else f" + {adversarial.shape[0]} adversarial")
               + f" images; threshold {detector.threshold:.4g} (flags {flagged:.3f} of the benign fit images); "
               f"wrote {out}")


@app.command("train")
def train_command(
    objective: Annotated[str, typer.Argument(help="training objective: standard, adversarial (Madry PGD) or "
                                                  "interpretation-robust (paper 000 Eq. 21); `idls options NAME`")],
    data: Annotated[str, typer.Option(help="training images: a folder with labels.csv or class sub-folders, or "
                                           "embedded-train (never the images you evaluate on)")],
    model: ModelOpt = "embedded_cnn",
    weights: WeightsOpt = None,
    n: Annotated[Optional[int], typer.Option("--n", help="how many --data images (a seeded subset; default: all)")]
        = None,
    option: Annotated[Optional[list[str]], typer.Option("--option", "-o", help="objective or loop option KEY=VALUE "
                                                                               "(e.g. -o gamma=0.01 -o epochs=3)")]
        = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    out: Annotated[Path, typer.Option(help="the trained weights (.safetensors; use as --weights FILE); a killed "
                                           "run resumes from OUT's .checkpoint.safetensors")]
        = Path("runs/trained.safetensors"),
) -> None:
    """Train (fine-tune) a classifier with a training defence, then attack it with --weights OUT."""
    from idls.data.datasets import load_images
    from idls.defenses.training import save_trained, train_classifier
    from idls.defenses.training.spec import training_from_options

    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: trained weights are saved as a .safetensors file, e.g. --out runs/robust.safetensors")
    training, loop = training_from_options(objective, _key_values(option or []), seed=seed)
    classifier = _classifier(model, weights, _device(device))
    images = load_images(data, input_size=classifier.input_size, n=n, seed=seed, num_classes=classifier.num_classes)
    checkpoint = out.with_name(out.stem + ".checkpoint.safetensors")
    run = train_classifier(classifier, images.images, images.labels, training, loop, checkpoint=checkpoint)
    save_trained(classifier, out, run, {"base_weights": weights, "data": str(data), "n": n})
    last = run.history[-1] if run.history else {}
    shown = ", ".join(f"{k} {v:.3f}" for k, v in last.items() if k in ("loss", "accuracy", "adv_accuracy", "discrepancy"))
    resumed = f" (resumed after epoch {run.resumed_from})" if run.resumed_from else ""
    typer.echo(f"trained {model} with {training.describe()} on {len(images)} images for {loop.epochs} epochs{resumed}; "
               f"last epoch: {shown}; wrote {out} (attack it with --model {model} --weights {out})")


@app.command()
def demo(
    quick: Annotated[bool, typer.Option(help="fewer images and steps (under a minute on 2 cores)")] = False,
    n: Annotated[Optional[int], typer.Option("--n", help="images to attack")] = None,
    device: DeviceOpt = "cpu",
    seed: SeedOpt = 0,
    out: OutOpt = Path("runs/demo"),
) -> None:
    """End to end on the embedded default: train (cached), validity table, attacks, report."""
    from idls.demo import run_demo

    run_demo(out=out, quick=quick, n=n, device=_device(device), seed=seed)


BackendOpt = Annotated[str, typer.Option(help="'local' (this process) or 'ray' (a Ray cluster; pip install 'idls\\[ray]')")]
QuickOpt = Annotated[bool, typer.Option(help="fewer images and iterations (the experiment files' quick: settings)")]
CellsOpt = Annotated[
    Optional[list[str]],
    typer.Option("--cells", help="run only the cells matching KEY=PATTERN[,KEY=PATTERN] (a cell field such as attack, "
                                 "framework, interpreter or variant; repeat for several), e.g. "
                                 "--cells framework=cw,interpreter=cam; the store stays the whole grid's, so the "
                                 "command without --cells runs the rest"),
]
RedoOpt = Annotated[
    bool,
    typer.Option("--redo", help="discard the finished units (and fitted perturbations) of the cells --cells selects "
                                "and run them again, e.g. after an upgrade changed a default; other cells are kept"),
]


@app.command("run")
def run_command(
    experiment: Annotated[Path, typer.Argument(help="experiment file (YAML); see experiments/ for examples")],
    out: Annotated[Path, typer.Option(help="result store (run the same command again to resume)")] = Path("runs/experiment"),
    quick: QuickOpt = False,
    backend: BackendOpt = "local",
    ray_address: Annotated[Optional[str], typer.Option(help="Ray cluster address (default: start a local one)")] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option("--set", help="override a setting as KEY=VALUE with dotted keys, e.g. --set data.n=8 "
                                   "--set models.cifar_resnet20.weights=ckpt.th; repeat for several"),
    ] = None,
    report_: Annotated[bool, typer.Option("--report/--no-report", help="write report.html and tables/ at the end")] = True,
    cells: CellsOpt = None,
    redo: RedoOpt = False,
) -> None:
    """Run (or resume) an experiment grid into an append-only store; then the report and a summary table."""
    from idls.analysis.store_reader import load_store
    from idls.experiments import parse_overrides, run_experiment
    from idls.report.experiment_report import write_experiment_report
    from idls.report.tables import print_summary_table

    if not experiment.is_file():
        raise UserError(f"experiment file {experiment} does not exist; see experiments/ for examples")
    summary = run_experiment(experiment, out, backend=backend, quick=quick, overrides=parse_overrides(set_ or []),
                             ray_address=ray_address, cells=cells, redo=redo)
    if summary.units_discarded:
        typer.echo(f"--redo discarded {summary.units_discarded} finished unit(s) of the selected cells and ran them again")
    print_summary_table(load_store(out).records)
    if report_:
        typer.echo(f"report: {write_experiment_report(out)}")
    typer.echo(f"{summary.units_run} unit(s) run, {summary.units_skipped} already done; "
               f"{summary.records_total} records in {out} ({summary.seconds:.0f} s)")
    if summary.cells_selected is not None:
        left = summary.units - summary.units_run - summary.units_skipped
        typer.echo(f"--cells ran {summary.cells_selected} of {summary.cells} cells; {left} unit(s) of the others "
                   "are left: the same command without --cells runs them")


@app.command()
def reproduce(
    out: Annotated[Path, typer.Option(help="output folder (one store per experiment; run again to resume)")] = Path("runs/reproduce"),
    quick: QuickOpt = False,
    weights: Annotated[Optional[Path], typer.Option(help="the --model checkpoint (cifar_resnet20: default the shared one if found, "
                                                         "else the embedded system)")] = None,
    data: Annotated[Optional[str], typer.Option(help="CIFAR-10 images: folder with labels.csv, or cifar10")] = None,
    shared: Annotated[Optional[Path], typer.Option(help="shared-data folder holding cifar10/models and cifar10/images")] = None,
    rts: Annotated[Optional[Path], typer.Option("--rts", help="a trained RTS masker of --model (default: one is "
                                                              "trained on the training images into OUT/rts_masker)")] = None,
    backend: BackendOpt = "local",
    experiments: Annotated[Optional[Path], typer.Option(help="folder of the bundled experiment files")] = None,
    only: Annotated[Optional[list[str]], typer.Option(help="run only this experiment (repeat for several)")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="CIFAR-10 model to reproduce on (with --weights unless "
                                                             "cifar_resnet20)")] = "cifar_resnet20",
    fit_data: Annotated[Optional[str], typer.Option(help="training images for fitted attacks and defences "
                                                         "(never the --data images)")] = None,
    cells: CellsOpt = None,
    redo: RedoOpt = False,
) -> None:
    """Reproduce the papers' observations: bundled experiments, scorecard.json, report.html."""
    from idls.reproduce.run import reproduce as run_reproduction

    run_reproduction(out, quick=quick, weights=weights, shared=shared, rts=rts, data=data, backend=backend,
                     experiments_dir=experiments, only=only, model=model, fit_data=fit_data, cells=cells,
                     redo=redo)


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="output folder of `idls run` / `idls reproduce` (one store, or a folder of stores)")],
    out: Annotated[Optional[Path], typer.Option(help="where report.html and tables/ go (default: RUN_DIR)")] = None,
    grids: Annotated[int, typer.Option(help="figure grids of images and maps (one per attack x interpreter group)")] = 8,
) -> None:
    """Write report.html and paper-shaped CSV/LaTeX tables (tables/) from an experiment store."""
    from idls.analysis.store_reader import load_store
    from idls.report.experiment_report import write_experiment_report
    from idls.report.tables import print_summary_table

    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder; give the --out folder of `idls run` or `idls reproduce`")
    path = write_experiment_report(run_dir, out, max_grids=grids)
    print_summary_table(load_store(run_dir).records)
    typer.echo(f"wrote {path} and {path.parent / 'tables'}")


def _print_summary(per_attack) -> None:
    from rich.console import Console
    from rich.table import Table

    from idls.report.cells import format_cell, missing_notes

    table = Table(title="summary")
    cols = ("attack", "interpreter", "n", "success", "confidence", "map_l1", "map_iou", "noise_rate", "seconds")
    summaries = [s for by_int in per_attack.values() for s in by_int.values()]
    labels = sorted({k.split(".")[1] for s in summaries for k in s if k.startswith("detector.")})
    # per detector: detection rate of the adversarial images and the share that succeeded unflagged
    cols += tuple(f"detector.{label}.{field}" for label in labels for field in ("flagged", "evaded"))
    for col in cols:
        table.add_column(col.replace("detector.", "").replace(".flagged", " detected").replace(".evaded", " evaded"))
    for a, by_int in per_attack.items():
        for i, s in by_int.items():
            table.add_row(a, i, *[format_cell(s.get(c)) for c in cols[2:]])
    table.caption = "\n".join(missing_notes(summaries, cols[2:])) or None
    Console(width=max(Console().width, 130)).print(table)  # full column names even in a narrow pipe


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``idls`` console script."""
    import torch

    # Subnormal floats make saturated attack steps ~4x slower on x86 (docs/design.md §6); the setting is
    # per thread, so set it before torch starts its worker threads.
    torch.set_flush_denormal(True)
    try:
        app(args=argv)  # click's standalone mode reports usage errors itself (exit 2)
    except UserError as err:
        typer.secho(f"error: {err}", err=True, fg="red")
        sys.exit(2)
    except OSError as exc:  # a full (or read-only) disk outside the writers that name their file themselves
        from idls.errors import storage_error

        full = storage_error(exc, str(exc.filename or "a file"), "run the same command again")
        if full is None:
            raise
        typer.secho(f"error: {full}", err=True, fg="red")
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
