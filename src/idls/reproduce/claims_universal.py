"""Paper 004's claims (universal and image-dependent joint perturbations) as data.

Records of universal attacks carry their configuration in ``variant``
(:meth:`~idls.attacks.base.Attack.variant`): the norm for the plain ones
(``'linf'``), generator, loss and norm for GAP / JUAP (``'resnet-cmin-linf'``,
``'-lam0'`` for the ablation without the map term, ``'-t3'`` for a targeted one).
Comparisons pair records of the same experiment, data, model, norm and evaluated
interpreter; JUAP's own records are those of the interpreter it attacked.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from idls.analysis.groups import NONE, group_records, own_records, summary
from idls.analysis.sink_class import sink_class
from idls.reproduce.claims import Check, Claim, _f, parts

#: JUAP's fooling ratio may fall this far below the best plain universal perturbation's
FR_TOLERANCE = 0.03
#: R- and U-JUAP fooling ratios within this of each other; CE and C_min likewise
GENERATOR_TOLERANCE = 0.05
LOSS_TOLERANCE = 0.05
#: the targeted JUAP must send at least this share of the images to its class
TARGET_SHARE = 0.5
JAP_SUCCESS = 0.99
PLAIN_UNIVERSAL = ("uap", "sgd-uap", "gap")
UNIVERSAL_KEYS = ("experiment", "data", "model", "norm", "interpreter")


def variant_parts(record: Mapping) -> dict[str, str | None]:
    """``norm``, ``generator``, ``loss``, ``target_class`` and ``lam`` read from a record's ``variant``."""
    tokens = str(record.get("variant") or "").split("-")
    out: dict[str, str | None] = {"norm": None, "generator": None, "loss": None, "target_class": None, "lam": None}
    for token in tokens:
        if token in ("linf", "l2"):
            out["norm"] = token
        elif token in ("resnet", "unet"):
            out["generator"] = token
        elif token in ("ce", "cmin", "target"):
            out["loss"] = token
        elif token.startswith("lam"):
            out["lam"] = token[3:]
        elif token.startswith("t") and token[1:].isdigit():
            out["target_class"] = token[1:]
    return out


def _with_parts(records: Sequence[Mapping]) -> list[dict]:
    return [{**r, **variant_parts(r)} for r in own_records(records)]


def _is_juap(record: Mapping, *, loss: tuple[str, ...] = ("ce", "cmin")) -> bool:
    """A JUAP record of the main configurations: untargeted, with the map term."""
    return record.get("attack") == "juap" and record.get("loss") in loss and record.get("lam") in (None, "") \
        and record.get("target_class") is None


def _best_plain(groups: Mapping[tuple, list[Mapping]], key: tuple) -> tuple[str, dict] | None:
    """The plain universal attack (untargeted) with the highest fooling ratio in the group ``key``."""
    candidates = []
    for attack in PLAIN_UNIVERSAL:
        rows = [r for r in groups.get(key, []) if r.get("attack") == attack and r.get("target_class") is None]
        if rows:
            candidates.append((attack, summary(rows)))
    return max(candidates, key=lambda pair: pair[1].get("fooling_ratio", pair[1]["success"])) if candidates else None


def _fr(s: Mapping) -> float:
    return float(s.get("fooling_ratio", s["success"]))


def _juap_groups(records) -> tuple[dict, dict]:
    """(JUAP records by group + generator + loss, all plain-universal records by group)."""
    rows = _with_parts(records)
    juap = group_records([r for r in rows if _is_juap(r)], (*UNIVERSAL_KEYS, "generator", "loss"))
    plain = group_records([r for r in rows if r.get("attack") in PLAIN_UNIVERSAL], UNIVERSAL_KEYS)
    return juap, plain


def _label(key: tuple, generator: str | None = None, loss: str | None = None) -> tuple[str, ...]:
    fields = dict(zip(UNIVERSAL_KEYS, key, strict=True))
    name = None if generator is None else f"{generator[0].upper()}-JUAP" + (f"-{loss}" if loss else "")
    return parts([name, fields["experiment"], fields["model"], fields["norm"], fields["interpreter"]])


def measure_fr(records) -> list[Check]:
    juap, plain = _juap_groups(records)
    checks = []
    for (*key, generator, loss), rows in juap.items():
        best = _best_plain(plain, tuple(key))
        if best is None:
            continue
        name, base = best
        s = summary(rows)
        passed = _fr(s) >= _fr(base) - FR_TOLERANCE
        text = f"fooling ratio {_f(_fr(s))} vs best plain ({name}) {_f(_fr(base))}"
        values = {"fooling_ratio": _fr(s), "baseline": name, "baseline_fooling_ratio": _fr(base)}
        sink = sink_class(r for r in plain[tuple(key)] if r.get("attack") == name and r.get("target_class") is None)
        if sink is not None and sink.is_sink and sink.ceiling < 1:
            text += (f"; {name} sends {sink.share:.0%} of the images to class {sink.label}, whose own "
                     f"{1 - sink.ceiling:.0%} a pattern sending every image there cannot fool "
                     f"(ceiling {_f(sink.ceiling)})")
            values.update(baseline_sink_share=sink.share, baseline_ceiling=sink.ceiling)
        checks.append(Check(_label(tuple(key), generator, loss), values, text, bool(passed), s["n"] + base["n"]))
    return checks


def measure_maps(records) -> list[Check]:
    juap, plain = _juap_groups(records)
    checks = []
    for (*key, generator, loss), rows in juap.items():
        bases = {a: summary([r for r in plain.get(tuple(key), []) if r.get("attack") == a and r.get("target_class") is None])
                 for a in PLAIN_UNIVERSAL}
        bases = {a: s for a, s in bases.items() if s.get("n")}
        if not bases:
            continue
        s = summary(rows)
        lowest_l1 = min(b["map_l1"] for b in bases.values())
        highest_iou = max(b["map_iou"] for b in bases.values())
        passed = s["map_l1"] < lowest_l1 and s["map_iou"] > highest_iou
        text = (f"L1 {_f(s['map_l1'])} vs baselines' lowest {_f(lowest_l1)}, IoU {_f(s['map_iou'])} vs highest "
                f"{_f(highest_iou)} ({', '.join(bases)})")
        checks.append(Check(_label(tuple(key), generator, loss),
                            {"map_l1": s["map_l1"], "map_iou": s["map_iou"], "baseline_map_l1": lowest_l1,
                             "baseline_map_iou": highest_iou}, text, bool(passed), s["n"]))
    return checks


def measure_generators(records) -> list[Check]:
    juap, _ = _juap_groups(records)
    checks = []
    for (*key, generator, loss), rows in juap.items():
        if generator != "resnet" or (*key, "unet", loss) not in juap:
            continue
        r, u = summary(rows), summary(juap[(*key, "unet", loss)])
        passed = abs(_fr(r) - _fr(u)) <= GENERATOR_TOLERANCE
        text = f"fooling ratio R-JUAP {_f(_fr(r))} vs U-JUAP {_f(_fr(u))}"
        checks.append(Check(_label(tuple(key)) + (loss,), {"r_fooling_ratio": _fr(r), "u_fooling_ratio": _fr(u)},
                            text, bool(passed), r["n"] + u["n"]))
    return checks


def measure_norms(records) -> list[Check]:
    """Per generator and interpreter: both norms ran and each reached the fooling-ratio bar of 004-fr."""
    by_config: dict[tuple, dict[str, Check]] = {}
    for check in measure_fr(records):
        norm = next((p for p in check.group if p in ("linf", "l2")), None)
        config = tuple(p for p in check.group if p != norm)
        by_config.setdefault(config, {})[norm] = check
    checks = []
    for config, per_norm in by_config.items():
        if set(per_norm) != {"linf", "l2"}:
            continue
        passed = all(c.passed for c in per_norm.values())
        text = "; ".join(f"{norm}: {c.text}" for norm, c in sorted(per_norm.items()))
        checks.append(Check(config, {norm: c.values for norm, c in per_norm.items()}, text, passed,
                            sum(c.n for c in per_norm.values())))
    return checks


def measure_losses(records) -> list[Check]:
    rows = _with_parts(records)
    checks = []
    untargeted = group_records([r for r in rows if _is_juap(r)], (*UNIVERSAL_KEYS, "generator", "loss"))
    for (*key, generator, loss), group in untargeted.items():
        if loss != "cmin" or (*key, generator, "ce") not in untargeted:
            continue
        cmin, ce = summary(group), summary(untargeted[(*key, generator, "ce")])
        passed = abs(_fr(cmin) - _fr(ce)) <= LOSS_TOLERANCE
        checks.append(Check(_label(tuple(key), generator) + ("CE vs C_min",),
                            {"ce_fooling_ratio": _fr(ce), "cmin_fooling_ratio": _fr(cmin)},
                            f"fooling ratio CE {_f(_fr(ce))} vs C_min {_f(_fr(cmin))}", bool(passed),
                            cmin["n"] + ce["n"]))
    targeted = [r for r in rows if r.get("attack") == "juap" and r.get("target_class") is not None]
    for key, group in group_records(targeted, (*UNIVERSAL_KEYS, "generator", "target_class")).items():
        reached = sum(1 for r in group if str(r.get("pred_label")) == str(r.get("target_class"))) / len(group)
        passed = reached > TARGET_SHARE
        checks.append(Check(_label(key[:len(UNIVERSAL_KEYS)], key[-2]) + (f"C_t (class {key[-1]})",),
                            {"target_share": reached}, f"{_f(reached)} of the images sent to class {key[-1]}",
                            bool(passed), len(group)))
    return checks


def measure_jap(records) -> list[Check]:
    rows = own_records(records)
    keys = ("experiment", "data", "model", "interpreter")
    jap = group_records([r for r in rows if r.get("attack") == "jap"], keys)
    pgd = group_records([r for r in rows if r.get("attack") == "pgd" and r.get("attacked_interpreter") == NONE], keys)
    checks = []
    for key, group in jap.items():
        if key not in pgd:
            continue
        j, p = summary(group), summary(pgd[key])
        passed = j["success"] >= JAP_SUCCESS and j["map_l1"] < p["map_l1"] and j["map_iou"] > p["map_iou"]
        text = (f"success JAP {_f(j['success'])} vs PGD {_f(p['success'])}, L1 {_f(j['map_l1'])} vs {_f(p['map_l1'])}, "
                f"IoU {_f(j['map_iou'])} vs {_f(p['map_iou'])}")
        values = {"success": j["success"], "baseline_success": p["success"], "map_l1": j["map_l1"],
                  "baseline_map_l1": p["map_l1"], "map_iou": j["map_iou"], "baseline_map_iou": p["map_iou"]}
        checks.append(Check(parts(["JAP", key[0], key[2], key[3]]), values, text, bool(passed), j["n"] + p["n"]))
    return checks


UNIVERSAL_CLAIMS: tuple[Claim, ...] = (
    Claim(
        "004-fr", "004", "004: JUAP fools the classifier as often as plain universal perturbations",
        "fooling ratio R-JUAP 80.35 / U-JUAP 77.35 (CAM), 80.21 / 84.27 (Grad-CAM), 83.88 / 85.00 (RTS) vs UAP 77.64 "
        "and GUAP 79.91 (ImageNet, ResNet18, L2 2000; Table II)",
        f"every JUAP: fooling ratio >= the best of UAP / SGD-UAP / GAP at the same budget - {FR_TOLERANCE}",
        measure_fr,
    ),
    Claim(
        "004-maps", "004", "004: JUAP keeps the maps, plain universal perturbations do not",
        "JUAP maps perceptually indistinguishable from the benign ones, baselines' not (Fig. 4); JUAP L1 0.07-0.18, "
        "IoU 0.47-0.74 (Tables III, V)",
        "every JUAP: map L1 below and IoU@20 above those of every plain universal perturbation (UAP, SGD-UAP, GAP)",
        measure_maps,
    ),
    Claim(
        "004-generators", "004", "004: the generator architecture does not matter",
        "R-JUAP and U-JUAP reach similar fooling ratios (Table II: within 0.08 on every dataset and interpreter)",
        f"per interpreter and norm: |FR(R-JUAP) - FR(U-JUAP)| <= {GENERATOR_TOLERANCE}",
        measure_generators,
    ),
    Claim(
        "004-norms", "004", "004: JUAP works under L_inf and L2 budgets",
        "L_inf 10: FR 75.50-86.30, L2 2000: FR 76.12-85.00 (Table V)",
        "per generator and interpreter: both norms run and both reach the 004-fr bar",
        measure_norms,
    ),
    Claim(
        "004-losses", "004", "004: CE and least-likely losses are equivalent; the targeted loss reaches its class",
        "R-JUAP-CE and R-JUAP-C_min similar; R-JUAP-C_t at a fooling ratio similar to GUAP-C_t (Table VI)",
        f"|FR(CE) - FR(C_min)| <= {LOSS_TOLERANCE}; targeted: more than {TARGET_SHARE} of the images end in the class",
        measure_losses,
    ),
    Claim(
        "004-jap", "004", "004: JAP fools every image and keeps maps closer than PGD",
        "FR 100% for PGD and JAP; L1 27.15 vs 36.70, IoU 0.65 vs 0.55 (ImageNet ResNet18, Grad-CAM; Table IV)",
        f"JAP success >= {JAP_SUCCESS}, map L1 below and IoU@20 above PGD's on the same images",
        measure_jap,
    ),
)

__all__ = ["UNIVERSAL_CLAIMS", "variant_parts"]
