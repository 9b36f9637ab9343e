"""Tables of study records (``kind: study``, :mod:`idls.reproduce.studies`): AID's paper 001 Table 10 / Fig. 15.

- ``aid_adv2``: per masker (RTS, RTS_A), ADV²'s success rate and map L1 (all images, the images it
  fooled, the images both attacks fooled), with the benign maps' L1 between the two maskers;
- ``aid_noise``: per noise kind and level (the scale that misclassifies the target share), the map L1
  between the benign and the noisy image's map for each masker.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from idls.report.tables import Table

MASKERS = {"rts": "RTS", "rts_aid": "RTS_A (AID)"}


def aid_tables(studies: Sequence[Mapping]) -> list[Table]:
    """The two tables above for every AID study record (``[]`` when there is none)."""
    adv2_rows, noise_rows = [], []
    for record in studies:
        if "adv2" not in record or "noise" not in record:
            continue
        study = str(record.get("study"))
        for key, name in MASKERS.items():
            a = record["adv2"][key]
            adv2_rows.append({"study": study, "masker": name, "ADV² success": a.get("success_rate"),
                              "map L1": a.get("map_l1"), "map L1 (fooled)": a.get("map_l1_success_only"),
                              "map L1 (both fooled)": a.get("map_l1_both_succeeded"),
                              "benign L1 RTS vs RTS_A": record.get("benign_map_l1")})
        for row in record["noise"]:
            noise_rows.append({"study": study, "noise": row["kind"], "target misclassification": row["target_rate"],
                               "reached": row["misclassification"], "scale": row["scale"],
                               **{f"map L1 {name}": row[key]["map_l1"] for key, name in MASKERS.items()}})
    if not adv2_rows:
        return []
    return [
        Table("aid_adv2", "ADV² against RTS and against its AID fine-tune RTS_A: success and the adversarial map's "
              "L1 to the benign map (paper 001 Table 10: 0.01 vs 0.10), and the benign maps' L1 between the two "
              "maskers (paper: 0.03).", list(adv2_rows[0]), adv2_rows, key_columns=2),
        Table("aid_noise", "Map L1 between benign and noisy images at the noise scales that misclassify the target "
              "share of the images (paper 001 Figure 15).", list(noise_rows[0]) if noise_rows else ["study"],
              noise_rows, key_columns=3),
    ]


__all__ = ["aid_tables"]
