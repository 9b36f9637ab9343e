"""Experiment files: YAML -> a validated, fully resolved :class:`Experiment`.

Loading (:func:`load_experiment`) goes through these steps, in order:

1. read the YAML mapping and normalise shorthand (``data: embedded`` -> ``{source: embedded}``,
   ``models: [name]`` -> ``[{name: name}]``, ``attacks: [pgd]`` -> ``[{name: pgd}]``);
2. with ``quick=True``, deep-merge the file's ``quick:`` section over it (mappings merge key by key,
   a mapping merges into the named entries of a list, ``attacks: {pgd: {options: {steps: 20}}}``,
   anything else is replaced); a file without one gets :data:`DEFAULT_QUICK`;
3. apply the caller's overrides (``{"data.n": 8, "models.cifar_resnet20.weights": PATH}``, see
   :func:`apply_overrides`);
4. substitute ``${NAME}`` / ``${NAME:-default}`` in strings: ``--set variables.NAME=...`` beats the
   environment variable ``NAME``, which beats the file's ``variables:`` section, which beats the
   inline default;
5. resolve relative paths (weights files, data folders, target-map files, RTS checkpoints) against
   the YAML file's folder, fill in defaults and validate every key. Each mistake is one
   :class:`~idls.errors.UserError` line naming the key and the fix.

:meth:`Experiment.to_dict` is the resolved configuration (what ``experiment.yaml`` in the output
folder holds); :meth:`Experiment.from_dict` reads it back.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from idls.errors import UserError
from idls.experiments.detection import DetectorSpec, parse_detectors

TOP_LEVEL_KEYS: tuple[str, ...] = (
    "name", "description", "variables", "models", "data", "interpreters", "interpreter_options", "attacks",
    "attack_options", "frameworks", "targets", "mode", "epsilon", "seeds", "evaluate_all_interpreters",
    "transfer_models", "device", "quick", "detectors",
)
MODEL_KEYS: tuple[str, ...] = ("name", "weights", "init_seed", "interpreter_options", "defense", "training")
DATA_KEYS: tuple[str, ...] = ("source", "n", "pool", "seed", "shuffle", "batch_size", "n_by_interpreter", "fit_source",
                              "fit_n", "order")
#: ``data.order``: how the correctly classified images are ordered before the first ``n`` are taken
DATA_ORDERS: tuple[str, ...] = ("source", "classes-interleaved")
ATTACK_KEYS: tuple[str, ...] = ("name", "options", "interpreters")
DATA_KEYWORDS: tuple[str, ...] = ("embedded", "embedded-train", "cifar10", "cifar100")
WEIGHT_KEYWORDS: tuple[str, ...] = ("pretrained", "random")
WEIGHT_SUFFIXES: tuple[str, ...] = (".th", ".pt", ".pth", ".safetensors", ".bin")
ALL_ATTACKS = "*"  #: key of ``attack_options`` that applies to every attack
BY_INTERPRETER = "by_interpreter"  #: key of attack options holding per-attacked-interpreter options
#: ``--quick`` for a file without a ``quick:`` section
DEFAULT_QUICK: dict[str, Any] = {
    "data": {"n": 8, "n_by_interpreter": {"mask": 4}},
    "attack_options": {ALL_ATTACKS: {"steps": 20}},
    "interpreter_options": {"mask": {"iterations": 50}, "ig": {"steps": 8}},
}
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# ---------------------------------------------------------------------------------
# The resolved configuration
# ---------------------------------------------------------------------------------
#: fields added after stores existed: left out of stored configurations and cell identities while unset,
#: so that existing stores resume with the same cell ids
OPTIONAL_FIELDS: frozenset[str] = frozenset({"defense", "training", "trained", "fit_source", "fit_n", "interpreters", "order", "detectors",
                                             "fitted", "path", "fit_attack"})


def spec_dict(spec: Any) -> dict[str, Any]:
    """``asdict(spec)`` without the :data:`OPTIONAL_FIELDS` that are unset (``None``), at any depth."""
    def prune(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: prune(v) for k, v in value.items() if not (k in OPTIONAL_FIELDS and v is None)}
        if isinstance(value, list):
            return [prune(v) for v in value]
        return value

    return prune(asdict(spec))

@dataclass
class ModelSpec:
    """A model under attack (or receiving transferred images).

    Attributes:
        name: registry name (``idls list``).
        weights: ``'pretrained'``, ``'random'`` (initialised with ``init_seed``), a torchvision
            weights name or an absolute checkpoint path.
        init_seed: seed of random initial weights (so every worker builds the same model).
        interpreter_options: per-interpreter options for this model (e.g. its RTS ``checkpoint``),
            merged over the experiment's ``interpreter_options``.
        defense: an input defence in front of the model, ``NAME[:KEY=VALUE,...]`` (e.g.
            ``bit-depth:bits=4``; :func:`idls.defenses.defense_from_spec`), or ``None``.
        training: a training defence applied to ``weights`` before anything is attacked,
            ``OBJECTIVE[:KEY=VALUE,...]`` (e.g. ``interpretation-robust:gamma=0.01,epochs=2``;
            :func:`idls.defenses.training.spec.training_from_spec`), trained on ``data.fit_source``, or ``None``.
        trained: the weights file that training wrote (filled in by the run, not by the user).
    """

    name: str
    weights: str
    init_seed: int = 0
    interpreter_options: dict[str, dict] = field(default_factory=dict)
    defense: str | None = None
    training: str | None = None
    trained: str | None = None

    @property
    def key(self) -> str:
        """Identity of the built model (name, weights, init seed, defence, training)."""
        return f"{self.name}|{self.weights}|{self.init_seed}|{self.defense or ''}|{self.training or ''}"

    @property
    def label(self) -> str:
        """How tables name the model: its name, and its training defence when it has one."""
        return self.name if self.training is None else f"{self.name} [{self.training}]"


@dataclass
class DataSpec:
    """Which images are attacked.

    Attributes:
        source: ``'embedded'``, ``'cifar10'``/``'cifar100'`` or an absolute folder path.
        n: correctly classified images per cell (fewer if fewer are correct).
        pool: images loaded before selecting correct ones (``None``: all; embedded: 1000).
        seed: seeds the pool subset and the shuffle.
        shuffle: shuffle the pool (seeded) before selecting, so the first ``n`` correct images
            are not all of the first classes of a class-sorted folder.
        batch_size: images per unit.
        n_by_interpreter: smaller image counts for cells attacking an interpreter (e.g. ``mask: 8``).
        fit_source: images that attacks needing a fit (universal perturbations) are fitted on
            (``embedded-train`` or a folder; never ``source``), or ``None``.
        fit_n: how many of them (a seeded subset; ``None``: all).
        order: ``None`` / ``'source'`` (the pool's order, after the optional shuffle) or
            ``'classes-interleaved'`` (round-robin over classes of all correct images; the
            first ``n`` are class-balanced).
    """

    source: str
    n: int = 32
    pool: int | None = None
    seed: int = 0
    shuffle: bool = True
    batch_size: int = 16
    n_by_interpreter: dict[str, int] = field(default_factory=dict)
    fit_source: str | None = None
    fit_n: int | None = None
    order: str | None = None


@dataclass
class AttackSpec:
    """An attack name and the options it always gets (merged over ``attack_options``).

    ``interpreters``: for a joint attack, the listed interpreters it is run against (``None``: all).
    """

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    interpreters: list[str] | None = None


@dataclass
class Experiment:
    """A validated experiment (see the module notes; ``to_dict`` is what ``experiment.yaml`` holds)."""

    name: str
    models: list[ModelSpec]
    data: DataSpec
    interpreters: list[str]
    attacks: list[AttackSpec]
    description: str = ""
    interpreter_options: dict[str, dict] = field(default_factory=dict)
    attack_options: dict[str, dict] = field(default_factory=dict)
    frameworks: list[str] = field(default_factory=lambda: ["pgd"])
    targets: list[str] = field(default_factory=lambda: ["benign"])
    mode: str = "targeted"
    epsilon: float | None = None
    seeds: list[int] = field(default_factory=lambda: [0])
    evaluate_all_interpreters: bool = False
    transfer_models: list[ModelSpec] = field(default_factory=list)
    device: str = "cpu"
    quick: bool = False
    source_file: str | None = None
    detectors: list[DetectorSpec] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The resolved configuration as plain data (YAML/JSON serialisable; unset optional fields left out)."""
        return spec_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Experiment:
        """Inverse of :meth:`to_dict`."""
        data = copy.deepcopy(dict(data))
        data["models"] = [ModelSpec(**m) for m in data["models"]]
        data["transfer_models"] = [ModelSpec(**m) for m in data.get("transfer_models", [])]
        data["data"] = DataSpec(**data["data"])
        data["attacks"] = [AttackSpec(**a) for a in data["attacks"]]
        if data.get("detectors"):
            data["detectors"] = [DetectorSpec(**d) for d in data["detectors"]]
        return cls(**data)

    def interpreter_options_for(self, model: ModelSpec, name: str) -> dict[str, Any]:
        """Options of interpreter ``name`` on ``model`` (model-specific ones win)."""
        return {**self.interpreter_options.get(name, {}), **model.interpreter_options.get(name, {})}

    def attack_options_for(self, attack: AttackSpec, interpreter: str | None = None) -> dict[str, Any]:
        """Keyword arguments of an attack (against ``interpreter``, for joint attacks).

        Precedence, lowest first: ``attack_options['*']``, ``attack_options[name]``, the attack
        entry's ``options``; each may hold ``by_interpreter: {name: {...}}``, whose entry for
        ``interpreter`` applies on top of all of them.
        """
        layers = [self.attack_options.get(ALL_ATTACKS, {}), self.attack_options.get(attack.name, {}), attack.options]
        merged: dict[str, Any] = {}
        for layer in layers:
            merged.update({k: v for k, v in layer.items() if k != BY_INTERPRETER})
        for layer in layers:
            merged.update(layer.get(BY_INTERPRETER, {}).get(interpreter, {}) if interpreter else {})
        return merged


# ---------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------
def load_experiment(
    path: str | Path, overrides: Mapping[str, Any] | None = None, *, quick: bool = False
) -> Experiment:
    """Read, override, resolve and validate an experiment file (see the module notes).

    Args:
        path: the YAML file.
        overrides: dotted keys -> values (``{"data.n": 8}``; see :func:`apply_overrides`).
        quick: merge the file's ``quick:`` section (fewer images and iterations).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"experiment file {path} does not exist; pass a YAML file (see experiments/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}; check the indentation and quoting there") from None
    if not isinstance(raw, Mapping):
        raise UserError(f"{path}: the file must hold a mapping of keys (name:, models:, data:, attacks:, ...)")
    return experiment_from_mapping(raw, base_dir=path.parent, overrides=overrides, quick=quick,
                                   default_name=path.stem, source_file=str(path.resolve()))


def experiment_from_mapping(
    raw: Mapping[str, Any],
    *,
    base_dir: str | Path = ".",
    overrides: Mapping[str, Any] | None = None,
    quick: bool = False,
    default_name: str = "experiment",
    source_file: str | None = None,
) -> Experiment:
    """:func:`load_experiment` for an already parsed mapping (relative paths against ``base_dir``)."""
    config = normalise(copy.deepcopy(dict(raw)))
    quick_section = config.pop("quick", None)
    if quick:
        section = _default_quick(config) if quick_section is None else normalise(_mapping(quick_section, "quick"))
        if "quick" in section:
            raise UserError("quick: cannot hold another quick: section; remove the nested one")
        config = deep_merge(config, section)
    for key in overrides or {}:
        if key == "quick" or key.startswith("quick."):
            raise UserError(f"override {key!r}: overrides apply after the quick section is merged; "
                            f"set the key itself (e.g. {key.removeprefix('quick.') or 'data.n'})")
    variable_overrides = {k.split(".", 1)[1]: v for k, v in (overrides or {}).items() if k.startswith("variables.")}
    config = apply_overrides(config, {k: v for k, v in (overrides or {}).items() if not k.startswith("variables.")})
    variables = {**_mapping(config.pop("variables", None) or {}, "variables")}
    config = substitute_variables(config, variables, variable_overrides)
    config["quick"] = bool(quick)
    return _build(config, Path(base_dir), default_name, source_file)


def _default_quick(config: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`DEFAULT_QUICK`, never raising the file's image count, and capping every ``steps`` the file sets."""
    section = copy.deepcopy(DEFAULT_QUICK)
    data = config.get("data")
    n = data.get("n") if isinstance(data, Mapping) else None
    if _is_int(n):
        section["data"]["n"] = min(n, section["data"]["n"])
    cap = section["attack_options"][ALL_ATTACKS]["steps"]
    for name, options in (config.get("attack_options") or {}).items():
        if isinstance(options, Mapping) and _is_int(options.get("steps")):
            section["attack_options"].setdefault(name, {})["steps"] = min(options["steps"], cap)
    for entry in config.get("attacks") or []:
        options = entry.get("options") if isinstance(entry, Mapping) else None
        if isinstance(options, Mapping) and _is_int(options.get("steps")) and isinstance(entry.get("name"), str):
            section.setdefault("attacks", {})[entry["name"]] = {"options": {"steps": min(options["steps"], cap)}}
    return section


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def normalise(config: dict[str, Any]) -> dict[str, Any]:
    """Expand shorthand (``data: embedded``, ``models: [name]``, ``seeds: 0``); modifies and returns ``config``."""
    if isinstance(config.get("data"), str):
        config["data"] = {"source": config["data"]}
    for key in ("models", "transfer_models", "attacks"):
        if isinstance(config.get(key), str):
            config[key] = [config[key]]
        if isinstance(config.get(key), list):
            config[key] = [{"name": item} if isinstance(item, str) else item for item in config[key]]
    for key in ("interpreters", "frameworks", "targets"):
        if isinstance(config.get(key), str):
            config[key] = [config[key]]
    if isinstance(config.get("seeds"), int) and not isinstance(config.get("seeds"), bool):
        config["seeds"] = [config["seeds"]]
    return config


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """``base`` with ``update`` merged in.

    Mappings merge recursively; a mapping merged into a list of named entries (``models``,
    ``attacks``) merges into the entries it names (``attacks: {pgd: {options: {steps: 20}}}``);
    anything else is replaced.
    """
    merged = dict(base)
    for key, value in update.items():
        current = merged.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            merged[key] = deep_merge(current, value, f"{where}{key}.")
        elif isinstance(value, Mapping) and isinstance(current, list):
            entries = [{"name": item} if isinstance(item, str) else dict(item) for item in current]
            for name, part in value.items():
                index = _list_index(entries, str(name), f"{where}{key}.{name}")
                entries[index] = deep_merge(entries[index], _mapping(part, f"{where}{key}.{name}"),
                                            f"{where}{key}.{name}.")
            merged[key] = entries
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``['data.n=8', 'interpreters=[cam, grad]']`` -> ``{'data.n': 8, 'interpreters': ['cam', 'grad']}``.

    Values are read as YAML (numbers, booleans, lists); anything else stays a string.
    """
    overrides: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {pair!r} is not KEY=VALUE; write e.g. --set data.n=8")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            value = text
        overrides[key.strip()] = text if value is None and text.strip() else value
    return overrides


def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted keys in ``config``.

    A segment addresses a mapping key, a list position (``models.0.weights``) or the list items
    whose ``name`` it is (``models.cifar_resnet20.weights``: every entry of that model, e.g. its
    normal and its robust-trained copy). Missing mapping levels are created.
    """
    for dotted, value in overrides.items():
        for parts in _expand_named(config, [p for p in str(dotted).split(".") if p]):
            _apply_override(config, str(dotted), parts, value)
    return config


def _expand_named(config: Any, parts: list[str]) -> list[list[str]]:
    """``parts`` with each list segment that names several entries replaced by each of their positions."""
    node: Any = config
    for depth, part in enumerate(parts):
        if isinstance(node, list) and not part.lstrip("-").isdigit():
            names = [item.get("name") if isinstance(item, Mapping) else item for item in node]
            matches = [i for i, name in enumerate(names) if name == part]
            if len(matches) > 1:
                return [expanded for i in matches
                        for expanded in _expand_named(config, parts[:depth] + [str(i)] + parts[depth + 1:])]
        if isinstance(node, list):
            try:
                node = node[_list_index(node, part, ".".join(parts[: depth + 1]))]
            except UserError:
                return [parts]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return [parts]
    return [parts]


def _apply_override(config: dict[str, Any], dotted: str, parts: list[str], value: Any) -> None:
    """Set one expanded override (see :func:`apply_overrides`)."""
    if not parts:
        raise UserError(f"override key {dotted!r} is empty; write e.g. data.n=8")
    node: Any = config
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[: depth + 1])
        if isinstance(node, list):
            index = _list_index(node, part, where)
            if last:
                node[index] = value
            else:
                if isinstance(node[index], str):
                    node[index] = {"name": node[index]}
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise UserError(f"override {dotted!r}: {'.'.join(parts[:depth])} is a single value, not a "
                            "mapping or list; set it directly")


def _list_index(items: list, part: str, where: str) -> int:
    if part.lstrip("-").isdigit():
        index = int(part)
        if not -len(items) <= index < len(items):
            raise UserError(f"{where}: no entry {index}, the list has {len(items)} entries")
        return index % len(items)
    names = [item.get("name") if isinstance(item, Mapping) else item for item in items]
    if part not in names:
        raise UserError(f"{where}: no entry named {part!r} (entries: {', '.join(map(str, names))})")
    return names.index(part)


def substitute_variables(value: Any, variables: Mapping[str, Any], overrides: Mapping[str, Any]) -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of ``value`` (recursively)."""
    if isinstance(value, Mapping):
        return {k: substitute_variables(v, variables, overrides) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_variables(v, variables, overrides) for v in value]
    if not isinstance(value, str) or "${" not in value:
        return value

    def lookup(match: re.Match) -> str:
        name, default = match.group(1), match.group(2)
        for source in (overrides, os.environ, variables):
            if name in source and source[name] is not None:
                return str(source[name])
        if default is not None:
            return default
        raise UserError(f"${{{name}}} is not set; define it under variables:, in the environment, "
                        f"or with --set variables.{name}=VALUE")

    return _VARIABLE.sub(lookup, value)


# ---------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------
def _build(config: dict[str, Any], base_dir: Path, default_name: str, source_file: str | None) -> Experiment:
    from idls.attacks import ATTACKS, list_frameworks
    from idls.attacks.targets import TargetMode

    _check_keys(config, TOP_LEVEL_KEYS, "")
    from idls.interpreters import interpreters_in_order

    interpreters = _interpreter_names(config.get("interpreters", interpreters_in_order()), "interpreters")
    models = [_model(m, f"models[{i}]", base_dir) for i, m in enumerate(_list(config.get("models"), "models"))]
    if not models:
        raise UserError("models: is empty; list at least one model, e.g. models: [{name: embedded_cnn}]")
    attacks = [_attack(a, f"attacks[{i}]") for i, a in enumerate(_list(config.get("attacks"), "attacks"))]
    if not attacks:
        raise UserError("attacks: is empty; list at least one attack, e.g. attacks: [pgd, adv2]")
    for attack in attacks:
        ATTACKS.get(attack.name)
    attack_options = {k: _mapping(v, f"attack_options.{k}") for k, v in _mapping(config.get("attack_options") or {},
                                                                                   "attack_options").items()}
    for key, options in attack_options.items():
        if key != ALL_ATTACKS:
            ATTACKS.get(key)
        _check_not_grid_keys(options, f"attack_options.{key}")
    frameworks = _strings(config.get("frameworks", ["pgd"]), "frameworks")
    for name in frameworks:
        if name not in list_frameworks():
            raise UserError(f"frameworks: unknown framework {name!r}; choose from {', '.join(list_frameworks())}")
    mode = TargetMode.parse(config.get("mode", "targeted")).value
    experiment = Experiment(
        name=str(config.get("name") or default_name),
        description=str(config.get("description") or ""),
        models=models,
        data=_data(config.get("data"), base_dir),
        interpreters=interpreters,
        interpreter_options=_interpreter_options(config.get("interpreter_options"), "interpreter_options", base_dir),
        attacks=attacks,
        attack_options=attack_options,
        frameworks=_unique(frameworks, "frameworks"),
        targets=_unique([_target(t, f"targets[{i}]", base_dir) for i, t in
                         enumerate(_strings(config.get("targets", ["benign"]), "targets"))], "targets"),
        mode=mode,
        epsilon=_epsilon(config.get("epsilon")),
        seeds=_unique(_ints(config.get("seeds", [0]), "seeds"), "seeds"),
        evaluate_all_interpreters=_bool(config.get("evaluate_all_interpreters", False), "evaluate_all_interpreters"),
        transfer_models=[_model(m, f"transfer_models[{i}]", base_dir)
                         for i, m in enumerate(_list(config.get("transfer_models") or [], "transfer_models"))],
        device=str(config.get("device") or "cpu"),
        quick=bool(config.get("quick", False)),
        source_file=source_file,
        detectors=parse_detectors(config.get("detectors"), base_dir),
    )
    labels = [d.label for d in experiment.detectors or []]
    for where, options in [*((f"attacks[{i}].options", a.options) for i, a in enumerate(attacks)),
                           *((f"attack_options.{k}", v) for k, v in attack_options.items())]:
        named = options.get("detector")
        if isinstance(named, str) and named not in labels and not named.endswith(".safetensors"):
            raise UserError(f"{where}.detector: {named!r} is not a label of detectors: "
                            f"({', '.join(labels) or 'none listed'}) nor a saved detector file")
    if experiment.detectors and experiment.data.fit_source is None and \
            any(d.path is None for d in experiment.detectors):
        raise UserError("detectors: are fitted on training images; set data.fit_source (or give path: to a "
                        "detector fitted earlier)")
    if not experiment.seeds:
        raise UserError("seeds: is empty; give at least one seed, e.g. seeds: [0]")
    _check_unique_models(experiment.models, "models")
    _check_unique_models(experiment.transfer_models, "transfer_models")
    return experiment


def _check_keys(section: Mapping[str, Any], allowed: Sequence[str], where: str) -> None:
    for key in section:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
            raise UserError(f"unknown key {where}{key!r}; {hint}")


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise UserError(f"{where}: must be a mapping (key: value lines), got {_describe(value)}")
    return dict(value)


def _list(value: Any, where: str) -> list:
    if value is None:
        raise UserError(f"{where}: is missing; add it (see experiments/*.yaml for examples)")
    if not isinstance(value, list):
        raise UserError(f"{where}: must be a list, got {_describe(value)}")
    return value


def _strings(value: Any, where: str) -> list[str]:
    items = _list(value, where)
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise UserError(f"{where}[{i}]: must be a non-empty name, got {_describe(item)}")
    return list(items)


def _ints(value: Any, where: str) -> list[int]:
    items = _list(value, where)
    for i, item in enumerate(items):
        if not isinstance(item, int) or isinstance(item, bool):
            raise UserError(f"{where}[{i}]: must be an integer, got {_describe(item)}")
    return list(items)


def _int(value: Any, where: str, minimum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UserError(f"{where}: must be an integer >= {minimum}, got {_describe(value)}")
    return value


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UserError(f"{where}: must be true or false, got {_describe(value)}")
    return value


def _unique(items: list, where: str) -> list:
    seen = set()
    for item in items:
        if item in seen:
            raise UserError(f"{where}: {item!r} is listed twice; list it once")
        seen.add(item)
    return items


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}" if not isinstance(value, (dict, list)) else type(value).__name__


def _interpreter_names(value: Any, where: str) -> list[str]:
    from idls.interpreters import INTERPRETERS

    names = _unique(_strings(value, where), where)
    for name in names:
        INTERPRETERS.get(name)
    return names


def _registered_interpreter(name: str, where: str) -> str:
    from idls.interpreters import INTERPRETERS

    if name not in INTERPRETERS:
        raise UserError(f"{where}.{name}: unknown interpreter; choose from {', '.join(INTERPRETERS.names())}")
    return name


def _interpreter_options(value: Any, where: str, base_dir: Path) -> dict[str, dict]:
    from idls.interpreters import INTERPRETERS

    options: dict[str, dict] = {}
    for name, opts in _mapping(value or {}, where).items():
        INTERPRETERS.get(name)
        opts = _mapping(opts or {}, f"{where}.{name}")
        if opts.get("checkpoint") not in (None, ""):
            opts["checkpoint"] = _existing_path(opts["checkpoint"], base_dir, f"{where}.{name}.checkpoint",
                                                "an RTS checkpoint from `idls train-rts`")
        elif "checkpoint" in opts:
            opts["checkpoint"] = None
        options[name] = opts
    return options


def _model(value: Any, where: str, base_dir: Path) -> ModelSpec:
    from idls.models import MODELS

    entry = _mapping(value, where)
    _check_keys(entry, MODEL_KEYS, f"{where}.")
    name = entry.get("name")
    if not isinstance(name, str):
        raise UserError(f"{where}.name: missing; name a registered model (see `idls list`)")
    family = MODELS.get(name).family
    weights = entry.get("weights")
    if weights in (None, ""):
        if family != "embedded":
            raise UserError(f"{where}.weights: model {name!r} needs weights: a checkpoint file, 'pretrained' "
                            f"(download) or 'random'; or --set models.{name}.weights=PATH")
        weights = "pretrained"
    if not isinstance(weights, str):
        raise UserError(f"{where}.weights: must be a string, got {_describe(weights)}")
    if _looks_like_path(weights, WEIGHT_KEYWORDS):
        weights = _existing_path(weights, base_dir, f"{where}.weights",
                                 f"a checkpoint file, or --set {where.split('[')[0]}.{name}.weights=PATH")
    defense = entry.get("defense")
    if defense is not None:
        from idls.defenses import defense_from_spec

        if not isinstance(defense, str):
            raise UserError(f"{where}.defense: must be a string like bit-depth:bits=4, got {_describe(defense)}")
        try:
            defense_from_spec(defense)
        except UserError as exc:
            raise UserError(f"{where}.defense: {exc}") from None
    training = entry.get("training")
    if training is not None:
        from idls.defenses.training.spec import training_from_spec

        if not isinstance(training, str):
            raise UserError(f"{where}.training: must be a string like interpretation-robust:epochs=2, "
                            f"got {_describe(training)}")
        try:
            training_from_spec(training)
        except UserError as exc:
            raise UserError(f"{where}.training: {exc}") from None
    return ModelSpec(
        name=name,
        weights=weights,
        init_seed=_int(entry.get("init_seed", 0), f"{where}.init_seed", 0),
        interpreter_options=_interpreter_options(entry.get("interpreter_options"), f"{where}.interpreter_options",
                                                 base_dir),
        defense=defense,
        training=training,
    )


def _check_unique_models(models: list[ModelSpec], where: str) -> None:
    keys = [m.key for m in models]
    for model in models:
        if keys.count(model.key) > 1:
            raise UserError(f"{where}: model {model.name!r} is listed twice with the same weights, defence and "
                            "training; list each model once")


def _data(value: Any, base_dir: Path) -> DataSpec:
    if value is None:
        raise UserError("data: is missing; add e.g. data: {source: embedded, n: 32}")
    section = _mapping(value, "data")
    _check_keys(section, DATA_KEYS, "data.")
    source = section.get("source")
    if not isinstance(source, str) or not source:
        raise UserError("data.source: missing; use embedded, cifar10, or a folder with labels.csv")
    if source.lower() not in DATA_KEYWORDS:
        source = _existing_path(source, base_dir, "data.source", "a folder with labels.csv or class sub-folders")
    pool = section.get("pool")
    n_by = _mapping(section.get("n_by_interpreter") or {}, "data.n_by_interpreter")
    fit_source = section.get("fit_source")
    if fit_source is not None:
        if not isinstance(fit_source, str) or not fit_source:
            raise UserError("data.fit_source: use embedded-train or a folder of training images")
        if fit_source.lower() not in DATA_KEYWORDS:
            fit_source = _existing_path(fit_source, base_dir, "data.fit_source", "a folder with labels.csv")
        if fit_source == source:
            raise UserError(f"data.fit_source is data.source ({source}); fit on training images and evaluate on "
                            "held-out ones")
    fit_n = section.get("fit_n")
    order = section.get("order")
    if order is not None and order not in DATA_ORDERS:
        raise UserError(f"data.order: unknown order {order!r}; choose one of: {', '.join(DATA_ORDERS)}")
    return DataSpec(
        source=source,
        n=_int(section.get("n", 32), "data.n", 1),
        pool=None if pool is None else _int(pool, "data.pool", 1),
        seed=_int(section.get("seed", 0), "data.seed", 0),
        shuffle=_bool(section.get("shuffle", True), "data.shuffle"),
        batch_size=_int(section.get("batch_size", 16), "data.batch_size", 1),
        n_by_interpreter={_registered_interpreter(k, "data.n_by_interpreter"): _int(v, f"data.n_by_interpreter.{k}", 1)
                          for k, v in n_by.items()},
        fit_source=fit_source,
        fit_n=None if fit_n is None else _int(fit_n, "data.fit_n", 1),
        order=order,
    )


def _attack(value: Any, where: str) -> AttackSpec:
    entry = _mapping(value, where)
    _check_keys(entry, ATTACK_KEYS, f"{where}.")
    name = entry.get("name")
    if not isinstance(name, str):
        raise UserError(f"{where}.name: missing; name a registered attack (see `idls list`)")
    options = _mapping(entry.get("options") or {}, f"{where}.options")
    _check_not_grid_keys(options, f"{where}.options")
    interpreters = entry.get("interpreters")
    if interpreters is not None:
        interpreters = _interpreter_names(interpreters, f"{where}.interpreters")
    return AttackSpec(name=name, options=options, interpreters=interpreters)


#: attack options the grid sets, and the top-level key that sets them (``mode`` is not one: the top-level
#: ``mode`` is every attack's default, and an attack's options may set its own, e.g. ADV²'s least_likely
#: beside untargeted universal attacks)
GRID_KEYS: dict[str, str] = {"interpreter": "interpreters", "framework": "frameworks", "target_map": "targets",
                             "seed": "seeds"}


def _check_not_grid_keys(options: Mapping[str, Any], where: str) -> None:
    """Refuse options the grid sets; check ``by_interpreter`` (interpreter name -> options)."""
    for key, top in GRID_KEYS.items():
        if key in options:
            raise UserError(f"{where}.{key}: set by the experiment grid; use the top-level {top}: key instead")
    if BY_INTERPRETER in options:
        from idls.interpreters import INTERPRETERS

        for name, sub in _mapping(options[BY_INTERPRETER] or {}, f"{where}.{BY_INTERPRETER}").items():
            INTERPRETERS.get(name)
            sub = _mapping(sub or {}, f"{where}.{BY_INTERPRETER}.{name}")
            if BY_INTERPRETER in sub:
                raise UserError(f"{where}.{BY_INTERPRETER}.{name}: cannot nest {BY_INTERPRETER}; remove the inner one")
            _check_not_grid_keys(sub, f"{where}.{BY_INTERPRETER}.{name}")


def _target(value: str, where: str, base_dir: Path) -> str:
    from idls.attacks.target_maps import MAP_FILE_SUFFIXES, TARGET_MAP_KINDS

    if value in TARGET_MAP_KINDS:
        return value
    if Path(value).suffix not in MAP_FILE_SUFFIXES:
        raise UserError(f"{where}: unknown target {value!r}; use {', '.join(TARGET_MAP_KINDS)} or a map file "
                        f"({', '.join(MAP_FILE_SUFFIXES)})")
    return _existing_path(value, base_dir, where, "a target-map file")


def _epsilon(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise UserError(f"epsilon: must be a number in (0, 1] on the [0, 1] pixel scale (8/255 = 0.0314), "
                        f"got {_describe(value)}")
    return float(value)


def _looks_like_path(value: str, keywords: Sequence[str]) -> bool:
    if value in keywords:
        return False
    return ("/" in value or "\\" in value or value.startswith((".", "~"))
            or Path(value).suffix.lower() in WEIGHT_SUFFIXES)


def _existing_path(value: Any, base_dir: Path, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise UserError(f"{where}: must be a path string, got {_describe(value)}")
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    path = Path(os.path.normpath(path.absolute()))
    if not path.exists():
        raise UserError(f"{where}: {path} does not exist; give {what} (relative paths are relative to the "
                        "experiment file)")
    return str(path)


__all__ = [
    "ALL_ATTACKS",
    "AttackSpec",
    "DEFAULT_QUICK",
    "DataSpec",
    "Experiment",
    "ModelSpec",
    "apply_overrides",
    "deep_merge",
    "experiment_from_mapping",
    "load_experiment",
    "normalise",
    "parse_overrides",
    "substitute_variables",
]
