"""Convert pytorch-fid's FID InceptionV3 weights to the npz that ``diffjax.metrics`` reads.

    python experiments/convert_inception_weights.py pt_inception-2015-12-05-6726825d.pth inception_fid.npz

The .pth file comes from the pytorch-fid releases (github.com/mseitzer/pytorch-fid/releases, tag
``fid_weights``); it is the TF 2015-12-05 Inception graph that FID is defined on. This script needs
torch (installed in Colab) and runs once; diffjax itself never imports torch. The npz keeps the
torch names and layouts; ``diffjax.metrics.load_inception_params`` converts and checks them on load.
"""

import argparse
import os
import sys

import numpy as np


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pth", help="pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("out", help="output .npz")
    args = parser.parse_args()
    if not args.out.endswith(".npz"):
        parser.error(f"the output must end in .npz; got {args.out!r}")
    if os.path.exists(args.out):
        parser.error(f"{args.out} exists; choose another name or move it away")
    try:
        import torch
    except ImportError:
        print("convert_inception_weights: needs torch (pip install torch, or run it in Colab)", file=sys.stderr)
        return 2
    state = torch.load(args.pth, map_location="cpu")
    arrays = {k: v.detach().cpu().numpy() for k, v in state.items()}
    np.savez(args.out, **arrays)
    from diffjax.metrics import load_inception_params

    load_inception_params(args.out)  # fails loudly if the names or shapes are not the FID network's
    print(f"{len(arrays)} arrays -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
