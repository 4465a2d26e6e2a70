"""cProfile of eager bf16 inference (host time per forward), vssm vs Swin-T. usage: python .notes/hostprof_inf.py [batch]"""
import cProfile, pstats, sys, time, io
import torch, timm, vssm
batch = int(sys.argv[1]) if len(sys.argv) > 1 else 8
torch.backends.cudnn.benchmark = True
for name in ("vmamba_tiny_s1l8", "swin_tiny_patch4_window7_224"):
    m = (vssm.create_model(name) if name.startswith("vmamba") else timm.create_model(name)).cuda().eval()
    if name.startswith("vmamba"):
        m = m.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    def fwd():
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return m(x)
    for _ in range(20): fwd()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(50): fwd()
    enq = (time.perf_counter() - t) / 50
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / 50
    print(f"{name}: batch {batch} enqueue {enq*1e3:.2f} ms/forward, wall {wall*1e3:.2f} ms")
    pr = cProfile.Profile(); pr.enable()
    for _ in range(20): fwd()
    pr.disable(); torch.cuda.synchronize()
    s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25); print(s.getvalue()[:6000])
