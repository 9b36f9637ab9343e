"""Behaviour snapshot for refactors: run every attack configuration on fixed inputs, save the adversarial
images, and compare two snapshots bit for bit.

    OMP_NUM_THREADS=1 python benchmarks/snapshot.py save before.pt     # on the old code
    OMP_NUM_THREADS=1 python benchmarks/snapshot.py save after.pt      # on the new code
    python benchmarks/snapshot.py compare before.pt after.pt            # 'same' on every row: no behaviour change

Covers PGD, C&W, StAdv and ADV² / AdvEdge / AdvEdge+ on every framework against every interpreter
(short schedules, 4 lossless CIFAR images, the pretrained ResNet-20 of ../shared/data; RTS with a seeded
untrained masker). Snapshots are written with torch.save and read back with weights_only=True.
"""
import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
torch.set_flush_denormal(True)
SHARED = Path(os.environ.get("IDLS_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))

def configs():
    small = dict(steps=6, warm_start=3)
    out = [("pgd", dict(steps=10), None)]
    out += [("cw", dict(steps=8, search_steps=2), None), ("stadv", dict(steps=8), None)]
    for interp in ["grad", "cam", "gradcam", "rts", "ig"]:
        for attack in ["adv2", "advedge", "advedge+"]:
            out.append((attack, dict(interpreter=interp, **small), interp))
        for fw in ["cw", "stadv"]:
            out.append(("adv2", dict(interpreter=interp, framework=fw, steps=6), interp))
    out.append(("adv2", dict(interpreter="mask", steps=4, warm_start=2, mask_reset_every=2), "mask"))
    out.append(("advedge", dict(interpreter="mask", steps=4, warm_start=2, mask_reset_every=2), "mask"))
    out.append(("adv2", dict(interpreter="mask", framework="cw", steps=4, mask_reset_every=2), "mask"))
    out.append(("adv2", dict(interpreter="cam", target_map="patch", **small), "cam"))
    return out

def save(path):
    from idls.attacks import create_attack
    from idls.data import load_images
    from idls.interpreters import create_interpreter
    from idls.models import create_model
    f = create_model("cifar_resnet20", weights=str(SHARED / "cifar10" / "models" / "resnet20-12fca82f.th"))
    data = load_images(str(SHARED / "cifar10" / "lossless"), input_size=32, num_classes=10)
    x, y = data.images[:4], data.labels[:4]
    results = {}
    for i, (name, opts, interp) in enumerate(configs()):
        key = f"{i}:{name}:{sorted(opts.items())}"
        torch.manual_seed(0)
        if interp is not None:
            opts = dict(opts)
            if interp == "rts":
                from idls.interpreters.rts import RTSMasker
                torch.manual_seed(1)
                ip = create_interpreter(interp, f, masker=RTSMasker(f))
            else:
                ip = create_interpreter(interp, f)
            opts["interpreter"] = ip
        t = time.time()
        r = create_attack(name, **opts).run(f, x, y)
        results[key] = r.x_adv
        print(f"{key[:80]:80s} {time.time()-t:6.1f}s success={r.success.tolist()}", flush=True)
    torch.save(results, path)

def compare(a, b):
    A, B = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    bad = 0
    for k in A:
        if k not in B:
            print("missing", k)
            bad += 1
            continue
        d = (A[k] - B[k]).abs().max().item()
        status = "same" if d == 0 else ("close" if d < 1e-5 else "DIFF")
        if status != "same":
            bad += status == "DIFF"
        print(f"{status:5s} {d:.2e} {k[:90]}")
    print("DIFFS:", bad)

if __name__ == "__main__":
    {"save": lambda: save(sys.argv[2]), "compare": lambda: compare(sys.argv[2], sys.argv[3])}[sys.argv[1]]()
