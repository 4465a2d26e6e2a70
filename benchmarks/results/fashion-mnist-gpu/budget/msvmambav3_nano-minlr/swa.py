# one-off measurement: uniform average of the second half's checkpoints (raw and EMA weights), rule fixed before the run
import glob, re, sys, torch
d = sys.argv[1]
fs = sorted(glob.glob(d + "/ckpt_e*.pth"))
ep = {f: int(re.search(r"ckpt_e(\d+)_", f).group(1)) for f in fs}
final = max(ep.values())
sel = [f for f in fs if ep[f] >= final / 2]
print("final epoch", final, "averaging", [ep[f] for f in sel])
base = torch.load(d + "/last.pth", map_location="cpu", weights_only=False)
for key in ("model", "model_ema"):
    acc = None
    for f in sel:
        sd = torch.load(f, map_location="cpu", weights_only=False)[key]
        if acc is None:
            acc = {k: v.double().clone() if v.is_floating_point() else v.clone() for k, v in sd.items()}
        else:
            for k, v in sd.items():
                if v.is_floating_point():
                    acc[k] += v.double()
    avg = {k: (v / len(sel)).float() if v.is_floating_point() else v for k, v in acc.items()}
    out = dict(base)
    out["model"] = avg
    out["model_ema"] = avg
    torch.save(out, f"{d}/../swa-{key}.pth")
    print("wrote", f"{d}/../swa-{key}.pth")
