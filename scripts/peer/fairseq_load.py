"""Load an admin-convert safetensors output into stock fairseq 0.12, strictly.

Usage (in the environment of shared/reference/PEER.md):
    python scripts/peer/fairseq_load.py FOLDED.safetensors DATA_DIR OUT.pt

Builds `TransformerModel` from the model arguments admin-convert stored in
`__metadata__["fairseq.args"]` (through fairseq's own argument parser, so
every default is fairseq's), loads the tensors with
`load_state_dict(strict=True)` and saves a regular fairseq checkpoint that
`fairseq-generate DATA_DIR --path OUT.pt` can decode. Exits non-zero if
fairseq refuses any key or shape.
"""
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from fairseq import options, tasks


def main(src, data_dir, out):
    with safe_open(src, "pt") as f:
        meta = f.metadata()
    margs = json.loads(meta["fairseq.args"])
    argv = [data_dir, "--task", "translation", "--arch", margs.pop("arch")]
    for k, v in margs.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            if v:
                argv.append(flag)
        elif v is not None:
            argv += [flag, str(v)]
    parser = options.get_training_parser()
    args, unknown = options.parse_args_and_arch(parser, argv, parse_known=True)
    # Keys fairseq has no flag for (e.g. decoder_input_dim) are set directly.
    for k, v in margs.items():
        if "--" + k.replace("_", "-") in unknown:
            setattr(args, k, v)
    task = tasks.setup_task(args)
    model = task.build_model(args)
    sd = load_file(src)
    missing, unexpected = model.load_state_dict(sd, strict=True)
    print(f"strict load OK: {len(sd)} tensors, missing={list(missing)}, unexpected={list(unexpected)}")
    history = [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "Adam",
                "lr_scheduler_state": {"best": None}, "num_updates": 0}]
    torch.save({"args": args, "model": model.state_dict(), "optimizer_history": history,
                "extra_state": {"train_iterator": {"epoch": 1}}, "last_optimizer_state": None}, out)


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    main(*sys.argv[1:])
